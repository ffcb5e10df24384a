"""C-GSPN propagation (paper Sec. 3-4.1): PyTorch reference, gate normalization, Triton scans.

Public API (channels-last ``(B, H, W, C)``, gates ``(B, H, W, 3, C)`` raw logits l, m, r):

- :func:`cgspn_scan` - the fused four-direction sublayer ``y = u * sum_d h_d`` (Triton fwd+bwd; on sm_90
  with CuPy the default ``auto`` variant runs the CUDA fast-path forward of ``cuda_scan`` for 16-bit inputs);
- :func:`cgspn_scan_head` - the same on the layer's fused head output ``(B, H, W, 5, C)``, whose
  gradient the backward writes as one tensor (what the layer calls);
- :func:`cgspn_scan_reference`, :func:`propagate_reference` - the PyTorch ground truth;
- :func:`propagate` - one direction in one Triton launch (the original GSPN's fast-scan switch);
- :func:`normalize_gates`, :func:`normalize_gates_eager`, :func:`normalize_gates_fused` - Eq. 2.

The scan functions are PyTorch custom operators (``torch.ops.cgspn.*``), so ``torch.compile`` and CUDA
graphs take the C-GSPN layer whole. One design per module: ``scan_quad`` (Triton quad scan), ``cuda_scan``
(CUDA fast path), ``scan_directions`` (one direction per launch, ``propagate``), ``scan_pairs`` (one launch per axis); ``scan``
selects among them. The layer and model modules (``layer.py``, ``models.py``) build on these.
"""

from kernels.cgspn.gate_norm import normalize_gates, normalize_gates_eager, normalize_gates_eager_both, normalize_gates_fused
from kernels.cgspn.reference import AXES, DIRECTIONS, cgspn_scan_reference, propagate_reference
from kernels.cgspn.scan import SCAN_VARIANTS, cgspn_scan, cgspn_scan_head, head_views
from kernels.cgspn.scan_directions import propagate

__all__ = [
    "AXES",
    "DIRECTIONS",
    "SCAN_VARIANTS",
    "cgspn_scan",
    "cgspn_scan_head",
    "cgspn_scan_reference",
    "head_views",
    "normalize_gates",
    "normalize_gates_eager",
    "normalize_gates_eager_both",
    "normalize_gates_fused",
    "propagate",
    "propagate_reference",
]
