"""The hybrid network (paper Sec. 5.3): C-GSPN blocks with a few attention blocks evenly spaced.

``depth`` pre-norm blocks after a patch-14 embedding; ``attn_blocks`` of them (paper: 3 of 27)
are attention blocks at :func:`kernels.vit.attention_positions` (the end of each of
``attn_blocks`` equal segments: 8, 17, 26), the rest hold
``kernels.cgspn.layer.CGSPNLayer(channels, compression=s, latent_channels=...)``. The attention
blocks use the strongest attention baseline that runs here
(:func:`kernels.attention.fastest_backend`: cuDNN attention on Hopper, else FlashAttention, ...);
the row's ``backend_detail`` records which. ``attn_blocks=0`` is the pure C-GSPN network.

Reference: the same weights with the attention blocks through chunked math attention and the
C-GSPN layers through their PyTorch reference scan, in float32 (float64 for float64 cases).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from kernels.attention.entries import ATTN_NETWORK_PARAMS, attention_layer_flops, backward_flops, mixer_flops, network_flops
from kernels.attention.layer import AttentionLayer, set_variant
from kernels.attention.sublayer import fastest_backend
from kernels.attention.variants import grid_attention
from kernels.params import Params
from kernels.registry import Workload, register
from kernels.vit import VisionEncoder, attention_positions
from kernels.workloads import ideal_bytes, module_workload, random_images

CGSPN_LAYER_MODULE = "kernels.cgspn.layer"
HYBRID_PARAMS = ATTN_NETWORK_PARAMS + ("attn_blocks", "compression", "latent_channels")


def hybrid_layout(depth: int, attn_blocks: int) -> list[str]:
    """The mixer of each block, ``"attention"`` or ``"cgspn"``; e.g. 3 of 27 -> attention at 8, 17, 26."""
    positions = set(attention_positions(depth, attn_blocks))
    return ["attention" if i in positions else "cgspn" for i in range(depth)]


def hybrid_network(params: Params, attention_variant: str) -> VisionEncoder:
    """The hybrid encoder for ``params`` (depth, attn_blocks, compression/latent_channels, ...)."""
    from kernels.cgspn.layer import CGSPNLayer  # written by the GSPN-family work; imported only when built

    layout = hybrid_layout(params.depth, params.attn_blocks)

    def make_mixer(i: int) -> nn.Module:
        if layout[i] == "attention":
            return AttentionLayer(params.channels, params.heads, attention_variant, params.tile)
        return CGSPNLayer(params.channels, compression=params.compression, latent_channels=params.latent_channels)

    return VisionEncoder(make_mixer, params.channels, params.depth, params.mlp_hidden, params.patch)


def as_reference(net: nn.Module) -> nn.Module:
    """Same weights, reference kernels: math attention and the C-GSPN PyTorch scan."""
    from kernels.cgspn.layer import CGSPNLayer

    set_variant(net, "reference")
    for m in net.modules():
        if isinstance(m, CGSPNLayer):
            m.scan = "reference"
    return net


def _requires(params: Params, dtype: str, device: str) -> str | None:
    from kernels.cgspn.triton_support import runnable  # imported when asked: Triton may only load after TRITON_INTERPRET
    if not runnable(device):
        return f"hybrid: the C-GSPN Triton scan needs CUDA, or TRITON_INTERPRET=1 before triton is imported (device: {device})"
    try:
        params.check_compression()
    except ValueError as err:
        return f"hybrid: {err}"
    return None


@register("hybrid", family="cgspn", level="network", params=HYBRID_PARAMS, dtypes=("float32", "bfloat16", "float16", "float64"),
          requires=_requires, description="C-GSPN network with attn_blocks attention blocks evenly spaced (Sec. 5.3)")
def build_hybrid(params: Params, dtype: torch.dtype, device: torch.device, mode: str) -> Workload:
    from kernels.cgspn.layer import cgspn_layer_flops, latent_width

    device = torch.device(device)
    variant = fastest_backend(device.type, dtype, params.head_dim)
    with device:
        net = hybrid_network(params, variant)
    images = random_images(params, dtype, device)
    tokens = params.batch * params.tokens
    latent = latent_width(params.channels, params.compression, params.latent_channels)
    cgspn_flops = cgspn_layer_flops(tokens, params.channels, latent)
    mixers = [attention_layer_flops(variant, params) if kind == "attention" else cgspn_flops
              for kind in hybrid_layout(params.depth, params.attn_blocks)]
    positions = attention_positions(params.depth, params.attn_blocks)
    detail = (f"attention blocks {positions} of {params.depth}: attention-{variant} "
              f"[{grid_attention(variant, device.type, params.tile).detail}]; C-GSPN C_c={latent}")
    reference = as_reference(copy.deepcopy(net))
    out_numel = tokens * params.channels
    flops = network_flops(params, mixers)
    workload = module_workload(net, [images], dtype, mode, reference_module=reference, flops=flops,
                               bytes_ideal=ideal_bytes(net, [images], out_numel, dtype), backend_detail=detail)
    workload.flops_bwd = backward_flops(flops, len(positions) * mixer_flops(variant, params))
    return workload

