"""One shape's C-GSPN image forward, launched a few times: the target of an Nsight Compute pass.

    ncu --kernel-name regex:cgspn_image --launch-skip 1 --launch-count 1 --section SpeedOfLight \
        python -m suite.gpu.probes.image_forward_once 32 147 147 64
"""

import sys

import torch

from kernels.cgspn import scan as scan_module
from suite.gpu.cgspn_image_check import inputs

B, H, W, C = (int(v) for v in sys.argv[1:5])
x, head = inputs(B, H, W, C, torch.bfloat16, "planar-cb", torch.Generator().manual_seed(0))
with torch.no_grad():
    for _ in range(3):
        scan_module.cgspn_scan_head(x, head, variant="cuda-image")
torch.cuda.synchronize()
