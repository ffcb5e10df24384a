"""The original GSPN family (GSPN v1 in a ViT attention slot): the baseline C-GSPN is measured against.

``original_scan`` is the original's scan kernel structure (one launch per step); ``GSPNLayer`` the
layer with its components behind flags; ``entries`` registers sublayer/layer/block/network cases.
"""

from kernels.gspn.original_scan import original_scan

__all__ = ["original_scan"]
