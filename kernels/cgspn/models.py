"""Registry entries of C-GSPN at layer, block and network level (its sublayer, ``cgspn-scan``, is
registered with the kernels).

- ``cgspn``: :class:`~kernels.cgspn.layer.CGSPNLayer` (fused scan, normalization folded in), in a
  pre-norm ViT block (SO400M MLP) and in the patch-14 encoder of ``depth`` blocks.
- ``cgspn-<variant>`` (layer, block; e.g. ``cgspn-quad-gather``): the same layer with its scan variant fixed
  (every non-default variant of ``kernels.cgspn.scan.SCAN_VARIANTS``), for design A/B inside the block.
- ``cgspn-eager-norm`` (layer, block): the same layer with the gate normalization run as eager
  PyTorch before four single-direction scans, so the layer-level worth of the fused
  normalization (paper Sec. 4.1) is one ratio.

Params read: batch, channels, compression / latent_channels (C_c), the grid, mlp_hidden (block),
depth and patch (network). Reference (layer, block, network): the same weights through the PyTorch
reference scan in float32 (float64 for float64 cases); the latent scan is small, so it is
affordable at every benchmark shape, networks included.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from kernels.cgspn.layer import CGSPNLayer, cgspn_layer_flops, latent_width
from kernels.cgspn.scan import DEFAULT_VARIANT, SCAN_VARIANTS
from kernels.cgspn.triton_support import runnable
from kernels.params import ParamError, Params
from kernels.registry import GRID_PARAMS, Workload, register
from kernels.vit import Block, VisionEncoder
from kernels.workloads import (
    BLOCK_PARAMS,
    NETWORK_PARAMS,
    block_flops,
    embed_flops,
    ideal_bytes,
    module_workload,
    random_images,
    random_tokens,
)

LAYER_PARAMS = ("batch", "channels", "compression", "latent_channels") + GRID_PARAMS
CGSPN_BLOCK_PARAMS = BLOCK_PARAMS + ("compression", "latent_channels")
CGSPN_NETWORK_PARAMS = NETWORK_PARAMS + ("compression", "latent_channels")
DTYPES = ("float32", "bfloat16", "float16", "float64")


def _requires(params: Params, dtype: str, device: str) -> str | None:
    if not runnable(device):
        return f"cgspn: the Triton scan needs CUDA, or TRITON_INTERPRET=1 set before triton is imported (device: {device})"
    try:
        params.check_compression()
    except ParamError as err:
        return str(err)
    return None


def make_layer(params: Params, fused_norm: bool = True, variant: str = DEFAULT_VARIANT) -> CGSPNLayer:
    return CGSPNLayer(params.channels, compression=params.compression, latent_channels=params.latent_channels,
                      fused_norm=fused_norm, variant=variant)


def as_reference(module: nn.Module) -> nn.Module:
    """A same-weights copy whose C-GSPN layers run the PyTorch reference scan."""
    ref = copy.deepcopy(module)
    for m in ref.modules():
        if isinstance(m, CGSPNLayer):
            m.scan = "reference"
    return ref


def layer_flops(params: Params) -> float:
    latent = latent_width(params.channels, params.compression, params.latent_channels)
    return cgspn_layer_flops(params.batch * params.tokens, params.channels, latent)


def _case(module: nn.Module, inputs: list[torch.Tensor], out_numel: int, dtype: torch.dtype, mode: str, flops: float,
          reference: bool, detail: str) -> Workload:
    return module_workload(module, inputs, dtype, mode, reference_module=as_reference(module) if reference else None,
                           flops=flops, bytes_ideal=ideal_bytes(module, inputs, out_numel, dtype), backend_detail=detail)


def _detail(params: Params, fused_norm: bool, variant: str = DEFAULT_VARIANT) -> str:
    latent = latent_width(params.channels, params.compression, params.latent_channels)
    norm = "normalization folded into the fused scan" if fused_norm else "eager normalization + 4 single-direction scans"
    return f"C_c={latent}; {norm}" + (f"; scan variant {variant}" if variant != DEFAULT_VARIANT else "")


def build_layer(params: Params, dtype: torch.dtype, device: torch.device, mode: str, fused_norm: bool = True,
                variant: str = DEFAULT_VARIANT) -> Workload:
    device = torch.device(device)
    with device:
        layer = make_layer(params, fused_norm, variant)
    x = random_tokens(params, dtype, device)
    return _case(layer, [x], x.numel(), dtype, mode, layer_flops(params), True, _detail(params, fused_norm, variant))


def build_block(params: Params, dtype: torch.dtype, device: torch.device, mode: str, fused_norm: bool = True,
                variant: str = DEFAULT_VARIANT) -> Workload:
    device = torch.device(device)
    with device:
        block = Block(make_layer(params, fused_norm, variant), params.channels, params.mlp_hidden)
    x = random_tokens(params, dtype, device)
    return _case(block, [x], x.numel(), dtype, mode, block_flops(params, layer_flops(params)), True,
                 _detail(params, fused_norm, variant))


def cgspn_network(params: Params) -> VisionEncoder:
    """Patch-14 embedding + ``depth`` C-GSPN blocks."""
    return VisionEncoder(lambda i: make_layer(params), params.channels, params.depth, params.mlp_hidden, params.patch)


def build_network(params: Params, dtype: torch.dtype, device: torch.device, mode: str) -> Workload:
    device = torch.device(device)
    with device:
        net = cgspn_network(params)
    images = random_images(params, dtype, device)
    flops = embed_flops(params) + params.depth * block_flops(params, layer_flops(params))
    out_numel = params.batch * params.tokens * params.channels
    return _case(net, [images], out_numel, dtype, mode, flops, True, _detail(params, True))


register("cgspn", family="cgspn", level="layer", params=LAYER_PARAMS, dtypes=DTYPES, requires=_requires,
         description="C-GSPN layer: P_down, fused heads, fused four-direction latent scan, P_up (Fig. 4)")(build_layer)
register("cgspn", family="cgspn", level="block", params=CGSPN_BLOCK_PARAMS, dtypes=DTYPES, requires=_requires,
         description="pre-norm ViT block around the C-GSPN layer (SO400M MLP)")(build_block)
register("cgspn", family="cgspn", level="network", params=CGSPN_NETWORK_PARAMS, dtypes=DTYPES, requires=_requires,
         description="patch-14 embedding + depth C-GSPN blocks")(build_network)


def build_layer_eager_norm(params: Params, dtype: torch.dtype, device: torch.device, mode: str) -> Workload:
    return build_layer(params, dtype, device, mode, fused_norm=False)


def build_block_eager_norm(params: Params, dtype: torch.dtype, device: torch.device, mode: str) -> Workload:
    return build_block(params, dtype, device, mode, fused_norm=False)


register("cgspn-eager-norm", family="cgspn", level="layer", params=LAYER_PARAMS, dtypes=DTYPES, requires=_requires,
         description="C-GSPN layer with eager-PyTorch gate normalization and four single-direction scans")(build_layer_eager_norm)
register("cgspn-eager-norm", family="cgspn", level="block", params=CGSPN_BLOCK_PARAMS, dtypes=DTYPES, requires=_requires,
         description="C-GSPN block with eager-PyTorch gate normalization")(build_block_eager_norm)


def _variant_builders(variant: str):
    """Layer and block builders with the scan variant fixed (for ``cgspn-<variant>``)."""
    def layer(params: Params, dtype: torch.dtype, device: torch.device, mode: str) -> Workload:
        return build_layer(params, dtype, device, mode, variant=variant)

    def block(params: Params, dtype: torch.dtype, device: torch.device, mode: str) -> Workload:
        return build_block(params, dtype, device, mode, variant=variant)

    return layer, block


for _variant in SCAN_VARIANTS:
    if _variant != DEFAULT_VARIANT:
        _layer, _block = _variant_builders(_variant)
        register(f"cgspn-{_variant}", family="cgspn", level="layer", params=LAYER_PARAMS, dtypes=DTYPES, requires=_requires,
                 description=f"C-GSPN layer with the scan variant fixed to {_variant} (design A/B)")(_layer)
        register(f"cgspn-{_variant}", family="cgspn", level="block", params=CGSPN_BLOCK_PARAMS, dtypes=DTYPES,
                 requires=_requires, description=f"C-GSPN block with the scan variant fixed to {_variant} (design A/B)")(_block)
