"""Registry entries of the attention family: ``attention-<variant>`` at every level.

Variants: ``math``, ``flash``, ``cudnn``, ``mem-efficient``, ``tiled-flash``
(:mod:`kernels.attention.variants`). Levels (docs/design.md "Terms"):

- sublayer: ``softmax(QK^T/sqrt(d))V`` on random ``(B, heads, N, head_dim)`` q, k, v;
- layer: :class:`AttentionLayer` (QKV + attention + output projection) on ``(B, H, W, C)``;
- block: ``kernels.vit.Block`` around the layer (pre-norm, SO400M MLP);
- network: ``kernels.vit.VisionEncoder`` (patch-14 embedding + ``depth`` blocks) on images.

References are the same tensors / the same weights through chunked math attention in float32
(float64 on CPU or for float64 cases), per tile for the tiled variant.
"""

from __future__ import annotations

import copy

import torch

from kernels.attention.layer import AttentionLayer, layer_flops, set_variant
from kernels.attention.sublayer import BWD_FLOP_FACTOR, attention_flops
from kernels.attention.tiled import tiled_flops
from kernels.attention.variants import REFERENCE_OF, VARIANTS, grid_attention, variant_unavailable
from kernels.params import Params
from kernels.registry import DTYPES, GRID_PARAMS, Workload, register
from kernels.vit import Block, VisionEncoder
from kernels.workloads import (
    BLOCK_PARAMS,
    block_flops,
    embed_flops,
    ideal_bytes,
    module_workload,
    random_images,
    random_tokens,
)

ALL_DTYPES = ("float32", "bfloat16", "float16", "float64")
SUBLAYER_PARAMS = ("batch", "channels", "heads") + GRID_PARAMS
ATTN_BLOCK_PARAMS = BLOCK_PARAMS + ("heads",)
ATTN_NETWORK_PARAMS = ATTN_BLOCK_PARAMS + ("depth",)


def _with_tile(variant: str, names: tuple[str, ...]) -> tuple[str, ...]:
    return names + ("tile",) if variant.startswith("tiled") else names


def mixer_flops(variant: str, params: Params) -> float:
    """Forward FLOPs of the attention itself (all heads, whole batch)."""
    if variant.startswith("tiled"):
        return tiled_flops(params.batch, params.heads, params.head_dim, (params.H, params.W), params.tile)
    return attention_flops(params.batch, params.heads, params.tokens, params.head_dim)


def attention_layer_flops(variant: str, params: Params) -> float:
    return layer_flops(params.batch * params.tokens, params.channels) + mixer_flops(variant, params)


def _requires(variant: str):
    def requires(params: Params, dtype: str, device: str) -> str | None:
        return variant_unavailable(variant, DTYPES[dtype], params.head_dim, device)

    return requires


# ---- sublayer --------------------------------------------------------------------------------
def build_sublayer(variant: str, params: Params, dtype: torch.dtype, device: torch.device, mode: str) -> Workload:
    """Random q, k, v ``(B, heads, H*W, head_dim)``; ``fn`` runs the variant on them."""
    device = torch.device(device)
    b, heads, n, d = params.batch, params.heads, params.tokens, params.head_dim
    grid = (params.H, params.W)
    q, k, v = (torch.randn(b, heads, n, d, device=device, dtype=dtype) for _ in range(3))
    if mode == "fwd+bwd":
        for t in (q, k, v):
            t.requires_grad_(True)
    attn = grid_attention(variant, device.type, params.tile)
    ref = grid_attention(REFERENCE_OF[variant], device.type, params.tile)
    flops = mixer_flops(variant, params)
    tensor_bytes = float(q.numel() * q.element_size())

    def reference() -> torch.Tensor:  # not detached: the harness differentiates it in fwd+bwd mode
        return ref.fn(q, k, v, grid)

    return Workload(
        fn=lambda: attn.fn(q, k, v, grid),
        inputs=[q, k, v] if mode == "fwd+bwd" else [],
        reference=reference,
        flops=flops,
        flops_bwd=BWD_FLOP_FACTOR * flops,
        bytes_ideal=4 * tensor_bytes,  # read q, k, v; write o
        bytes_ideal_bwd=8 * tensor_bytes,  # read q, k, v, o, dO; write dq, dk, dv
        backend_detail=attn.detail,
    )


# ---- layer / block / network -----------------------------------------------------------------
def backward_flops(flops: float, attention: float) -> float:
    """Backward FLOPs of a module whose forward is ``flops``, ``attention`` of them in attention
    sublayers: those at ``BWD_FLOP_FACTOR`` x (the sublayer's convention), the rest at 2x."""
    return 2 * (flops - attention) + BWD_FLOP_FACTOR * attention


def _module_case(variant: str, module: torch.nn.Module, inputs: list[torch.Tensor], out_numel: int,
                 dtype: torch.dtype, mode: str, flops: float, tile: int, attention: float) -> Workload:
    """The module through ``variant``; its reference is a deep copy (same weights) through the
    reference variant, evaluated by ``module_workload`` in fp32/fp64. ``attention``: the forward
    FLOPs of its attention sublayers (counted at the sublayer's backward factor)."""
    reference = set_variant(copy.deepcopy(module), REFERENCE_OF[variant])
    detail = grid_attention(variant, inputs[0].device.type, tile).detail
    workload = module_workload(module, inputs, dtype, mode, reference_module=reference, flops=flops,
                               bytes_ideal=ideal_bytes(module, inputs, out_numel, dtype), backend_detail=detail)
    workload.flops_bwd = backward_flops(flops, attention)
    return workload


def build_layer(variant: str, params: Params, dtype: torch.dtype, device: torch.device, mode: str) -> Workload:
    device = torch.device(device)
    with device:
        layer = AttentionLayer(params.channels, params.heads, variant, params.tile)
    x = random_tokens(params, dtype, device)
    return _module_case(variant, layer, [x], x.numel(), dtype, mode, attention_layer_flops(variant, params), params.tile,
                        mixer_flops(variant, params))


def build_block(variant: str, params: Params, dtype: torch.dtype, device: torch.device, mode: str) -> Workload:
    device = torch.device(device)
    with device:
        block = Block(AttentionLayer(params.channels, params.heads, variant, params.tile), params.channels, params.mlp_hidden)
    x = random_tokens(params, dtype, device)
    flops = block_flops(params, attention_layer_flops(variant, params))
    return _module_case(variant, block, [x], x.numel(), dtype, mode, flops, params.tile, mixer_flops(variant, params))


def attention_network(params: Params, variant: str) -> VisionEncoder:
    """Patch-14 embedding + ``depth`` attention blocks, all through ``variant``."""
    return VisionEncoder(lambda i: AttentionLayer(params.channels, params.heads, variant, params.tile),
                         params.channels, params.depth, params.mlp_hidden, params.patch)


def network_flops(params: Params, mixer_layer_flops: list[float]) -> float:
    """Embedding + one block per entry of ``mixer_layer_flops`` (each the FLOPs of its mixer)."""
    return embed_flops(params) + sum(block_flops(params, f) for f in mixer_layer_flops)


def build_network(variant: str, params: Params, dtype: torch.dtype, device: torch.device, mode: str) -> Workload:
    device = torch.device(device)
    with device:
        net = attention_network(params, variant)
    images = random_images(params, dtype, device)
    flops = network_flops(params, [attention_layer_flops(variant, params)] * params.depth)
    out_numel = params.batch * params.tokens * params.channels
    return _module_case(variant, net, [images], out_numel, dtype, mode, flops, params.tile,
                        params.depth * mixer_flops(variant, params))


_BUILDERS = {
    "sublayer": (build_sublayer, SUBLAYER_PARAMS, "softmax(QK^T/sqrt(d))V on (B, heads, N, d)"),
    "layer": (build_layer, SUBLAYER_PARAMS, "QKV projection + attention + output projection on (B, H, W, C)"),
    "block": (build_block, ATTN_BLOCK_PARAMS, "pre-norm ViT block: x + attn(LN(x)), x + MLP(LN(x))"),
    "network": (build_network, ATTN_NETWORK_PARAMS, "patch-14 embedding + depth attention blocks"),
}


def _bind(build, variant: str):
    def build_variant(params: Params, dtype: torch.dtype, device: torch.device, mode: str) -> Workload:
        return build(variant, params, dtype, device, mode)

    build_variant.__qualname__ = f"{build.__name__}[{variant}]"
    return build_variant


for _variant in VARIANTS:
    for _level, (_build, _params, _what) in _BUILDERS.items():
        register(f"attention-{_variant}", family="attention", level=_level, params=_with_tile(_variant, _params),
                 dtypes=ALL_DTYPES, requires=_requires(_variant), description=f"{_variant} attention: {_what}")(
            _bind(_build, _variant))
