"""One shape's C-GSPN image forward, launched a few times: the target of an Nsight Compute pass.

    ncu --kernel-name regex:cgspn_image --launch-skip 1 --launch-count 1 --section SpeedOfLight \
        python -m suite.gpu.probes.image_forward_once 32 147 147 64 [threads=256,ahead=2]

The optional fifth argument is an ``ImageConfig`` as ``field=value`` pairs (integers; default: the default
configuration).
"""

import sys

import torch

from kernels.cgspn import cuda_image, head_views
from kernels.cgspn.cuda_image_source import ImageConfig
from suite.gpu.cgspn_image_check import inputs

B, H, W, C = (int(v) for v in sys.argv[1:5])
fields = dict(kv.split("=") for kv in sys.argv[5].split(",")) if len(sys.argv) > 5 else {}
config = ImageConfig(**{k: type(getattr(ImageConfig(), k))(int(v)) for k, v in fields.items()})
x, head = inputs(B, H, W, C, torch.bfloat16, "planar-cb", torch.Generator().manual_seed(0))
lam, u, gates = head_views(head)
with torch.no_grad():
    for _ in range(3):
        cuda_image.scan_forward(x, lam, u, gates, config=config)
torch.cuda.synchronize()
