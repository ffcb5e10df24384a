"""The MLP half of a ViT block alone: ``x + MLP(LN(x))`` (entry ``vit-mlp-half``, level block).

Every block in the suite — attention, GSPN, C-GSPN — ends with this same half, so its latency is
(a) the ceiling of any attention replacement: a block cannot be faster than its MLP half
(docs/design.md "Floors"), and (b) the numerator of the paper's Sec. 6 claim
that the MLP is over 52% of the C-GSPN block latency at >= 512 px.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from kernels.params import Params
from kernels.registry import Workload, register
from kernels.vit import MLP, mlp_flops
from kernels.workloads import BLOCK_PARAMS, module_workload, random_tokens


class MLPHalf(nn.Module):
    """``x + fc2(gelu_tanh(fc1(LN(x))))`` on ``(B, H, W, C)``: the second half of ``kernels.vit.Block``
    with the same modules (LayerNorm eps 1e-6, SO400M MLP)."""

    def __init__(self, channels: int, mlp_hidden: int):
        super().__init__()
        self.norm2 = nn.LayerNorm(channels, eps=1e-6)
        self.mlp = MLP(channels, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm2(x))


@register("vit-mlp-half", family="vit", level="block", params=BLOCK_PARAMS, dtypes=("float32", "bfloat16", "float16", "float64"),
          description="x + MLP(LN(x)) alone: the part of every block that token mixing does not change")
def build_mlp_half(params: Params, dtype: torch.dtype, device: torch.device, mode: str) -> Workload:
    device = torch.device(device)
    with device:
        half = MLPHalf(params.channels, params.mlp_hidden)
    x = random_tokens(params, dtype, device)
    weights = sum(p.numel() for p in half.parameters())
    elem = x.element_size()
    return module_workload(half, [x], dtype, mode, reference_module=copy.deepcopy(half),
                           flops=mlp_flops(params.batch * params.tokens, params.channels, params.mlp_hidden),
                           bytes_ideal=float((2 * x.numel() + weights) * elem),
                           backend_detail="eager PyTorch: LayerNorm, Linear, GELU-tanh, Linear, residual add")
