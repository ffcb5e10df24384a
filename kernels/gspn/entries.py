"""Registry entries of the original GSPN family at sublayer, layer, block and network level.

Names (``gspn-original`` plus ablation / kernel variants ``gspn-original-<variant>``):

==========================================  =====================================================
``gspn-original``                           all components on, original scan (one launch per step)
``gspn-original-fast``                      same layer on the C-GSPN single-direction Triton scan
``gspn-original-no-proj``                   Fig. 3 right (1): attention-template projections removed
``gspn-original-no-proj-residual``          (1) + (2): inner residual removed too
``gspn-original-no-proj-residual-ext``      (1) + (2) + (3): channel extension removed too
``gspn-original-fast-no-proj...``           the three cumulative removals on the fast scan, where the
                                            propagation is a small share, i.e. the layer time is
                                            the paper's "overhead" (non-propagation) time
``gspn-original[-fast]-no-proj-residual-``  beyond Fig. 3: (1)-(3) + one parameter set shared by
``ext-dirparams``                           the four directions instead of four (component 3)
``gspn-original[-fast]-no-proj-residual-``  all five components removed: directions summed, no
``ext-dirparams-merge``                     merge conv / LayerNorm / GRN (component 5); what is
                                            left is C-GSPN's structure at full width (no P_down)
                                            with eager normalization, so against ``cgspn`` it
                                            isolates latent compression + fused normalization
==========================================  =====================================================

The first eight names (all but the ``-dirparams`` ones) leave ``direction_parameters`` and
``merge_norm`` at their defaults (on); their structure and case ids are those of the committed
measurements.

The sublayer (``gspn-original``, ``gspn-original-fast``) is the propagation over ``4 * channels``
raw-space channel slices given x ``(B, C, H, W)``, lambda and u ``(B, 4C, H, W)`` and raw gates
``(B, 12C, H, W)`` (docs/design.md "Terms"): direction stacking, eager gate normalization, the scan,
``h * u``, directions summed. At sublayer level ``channels`` is the width the propagation sees
(inside the layer that is d_inner = 2C). Params read: batch, channels, the grid, chunk, and
mlp_hidden / depth / patch at block / network level. Reference: the same computation (same
weights) through the PyTorch reference scan in float32, when its stacked tensors stay below
:data:`REFERENCE_LIMIT` elements (at full benchmark shapes it would need tens of GB).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from kernels.cgspn.triton_support import runnable
from kernels.gspn.layer import GSPNLayer, gspn_layer_flops, gspn_propagation
from kernels.params import Params
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

SUBLAYER_PARAMS = ("batch", "channels", "chunk") + GRID_PARAMS
LAYER_PARAMS = SUBLAYER_PARAMS
GSPN_BLOCK_PARAMS = BLOCK_PARAMS + ("chunk",)
GSPN_NETWORK_PARAMS = NETWORK_PARAMS + ("chunk",)
DTYPES = ("float32", "bfloat16", "float16")  # the original kernel's dtypes
REFERENCE_LIMIT = 2**28  # stacked elements (B x 4 d x H x W) up to which a float32 reference is built

ALL_ON = {"attention_projections": True, "channel_extension": True, "inner_residual": True}
NO_PROJ = {**ALL_ON, "attention_projections": False}
NO_PROJ_RESIDUAL = {**NO_PROJ, "inner_residual": False}
NO_PROJ_RESIDUAL_EXT = {**NO_PROJ_RESIDUAL, "channel_extension": False}
NO_PROJ_RESIDUAL_EXT_DIRPARAMS = {**NO_PROJ_RESIDUAL_EXT, "direction_parameters": False, "merge_norm": True}
NONE_ON = {**NO_PROJ_RESIDUAL_EXT_DIRPARAMS, "merge_norm": False}
# name -> (scan, layer flags, levels)
VARIANTS: dict[str, tuple[str, dict, tuple[str, ...]]] = {
    "gspn-original": ("original", ALL_ON, ("sublayer", "layer", "block", "network")),
    "gspn-original-fast": ("fast", ALL_ON, ("sublayer", "layer", "block", "network")),
    "gspn-original-no-proj": ("original", NO_PROJ, ("layer", "block")),
    "gspn-original-no-proj-residual": ("original", NO_PROJ_RESIDUAL, ("layer", "block")),
    "gspn-original-no-proj-residual-ext": ("original", NO_PROJ_RESIDUAL_EXT, ("layer", "block")),
    "gspn-original-fast-no-proj": ("fast", NO_PROJ, ("layer", "block")),
    "gspn-original-fast-no-proj-residual": ("fast", NO_PROJ_RESIDUAL, ("layer", "block")),
    "gspn-original-fast-no-proj-residual-ext": ("fast", NO_PROJ_RESIDUAL_EXT, ("layer", "block")),
    "gspn-original-no-proj-residual-ext-dirparams": ("original", NO_PROJ_RESIDUAL_EXT_DIRPARAMS, ("layer", "block")),
    "gspn-original-no-proj-residual-ext-dirparams-merge": ("original", NONE_ON, ("layer", "block")),
    "gspn-original-fast-no-proj-residual-ext-dirparams": ("fast", NO_PROJ_RESIDUAL_EXT_DIRPARAMS, ("layer", "block")),
    "gspn-original-fast-no-proj-residual-ext-dirparams-merge": ("fast", NONE_ON, ("layer", "block")),
}


def _requires(scan: str):
    def requires(params: Params, dtype: str, device: str) -> str | None:
        if not runnable(device):
            return f"gspn-original: the Triton scans need CUDA, or TRITON_INTERPRET=1 set before triton is imported ({device})"
        if scan == "fast" and params.chunk is not None and params.chunk < max(params.H, params.W):
            return f"chunk: the fast scan propagates globally; chunk={params.chunk} needs the original scan"
        return None

    return requires


def stacked_elements(params: Params, d_inner: int) -> int:
    return params.batch * 4 * d_inner * params.tokens


# ---- sublayer --------------------------------------------------------------------------------
def sublayer_flops(params: Params) -> float:
    """Per stacked element: ~9 (normalization) + ~8 (scan) + 1 (u); plus the 4-way sum."""
    return float(stacked_elements(params, params.channels) * 18 + 3 * params.batch * params.channels * params.tokens)


def build_sublayer(scan: str, params: Params, dtype: torch.dtype, device: torch.device, mode: str) -> Workload:
    device = torch.device(device)
    B, C, H, W = params.batch, params.channels, params.H, params.W
    x = torch.randn(B, C, H, W, device=device, dtype=dtype)
    lam = torch.rand(B, 4 * C, H, W, device=device, dtype=dtype)
    u = torch.randn(B, 4 * C, H, W, device=device, dtype=dtype)
    gates = torch.randn(B, 12 * C, H, W, device=device, dtype=dtype)
    inputs = [x, lam, u, gates]
    if mode == "fwd+bwd":
        for t in inputs:
            t.requires_grad_(True)

    def run(*tensors: torch.Tensor, which: str = scan) -> torch.Tensor:
        return gspn_propagation(*tensors, chunk=params.chunk, scan=which).sum(dim=1)

    reference = None
    if stacked_elements(params, C) <= REFERENCE_LIMIT:
        def reference() -> torch.Tensor:  # not detached: the harness differentiates it in fwd+bwd mode
            return run(*(t.float() for t in inputs), which="reference")

    elem = x.element_size()
    io = (1 + 4 + 4 + 12 + 1) * B * C * H * W  # read x, lambda, u, gates; write y
    return Workload(
        fn=lambda: run(*inputs),
        inputs=inputs if mode == "fwd+bwd" else [],
        reference=reference,
        flops=sublayer_flops(params),
        bytes_ideal=float(io * elem),
        bytes_ideal_bwd=float(2 * io * elem),  # read the inputs and dy, write their gradients
        backend_detail=f"{scan} scan over {4 * C} stacked channel slices, chunk={params.chunk or 'global'}",
    )


# ---- layer / block / network -----------------------------------------------------------------
def make_layer(params: Params, scan: str, flags: dict) -> GSPNLayer:
    return GSPNLayer(params.channels, chunk=params.chunk, scan=scan, **flags)


def as_reference(module: nn.Module) -> nn.Module:
    ref = copy.deepcopy(module)
    for m in ref.modules():
        if isinstance(m, GSPNLayer):
            m.scan = "reference"
    return ref


def _module_case(module: nn.Module, params: Params, inputs: list[torch.Tensor], dtype: torch.dtype, mode: str,
                 flops: float, flags: dict, scan: str, with_reference: bool) -> Workload:
    d_inner = 2 * params.channels if flags["channel_extension"] else params.channels
    if stacked_elements(params, d_inner) > REFERENCE_LIMIT:
        with_reference = False
    out_numel = params.batch * params.tokens * params.channels
    on = ", ".join(k for k, v in flags.items() if v) or "no optional components"
    return module_workload(module, inputs, dtype, mode, reference_module=as_reference(module) if with_reference else None,
                           flops=flops, bytes_ideal=ideal_bytes(module, inputs, out_numel, dtype),
                           backend_detail=f"{scan} scan; d_inner={d_inner}; {on}; chunk={params.chunk or 'global'}")


def layer_flops(params: Params, flags: dict) -> float:
    return gspn_layer_flops(params.batch * params.tokens, params.channels, **flags)


def build_layer(scan: str, flags: dict, params: Params, dtype: torch.dtype, device: torch.device, mode: str) -> Workload:
    device = torch.device(device)
    with device:
        layer = make_layer(params, scan, flags)
    x = random_tokens(params, dtype, device)
    return _module_case(layer, params, [x], dtype, mode, layer_flops(params, flags), flags, scan, True)


def build_block(scan: str, flags: dict, params: Params, dtype: torch.dtype, device: torch.device, mode: str) -> Workload:
    device = torch.device(device)
    with device:
        block = Block(make_layer(params, scan, flags), params.channels, params.mlp_hidden)
    x = random_tokens(params, dtype, device)
    return _module_case(block, params, [x], dtype, mode, block_flops(params, layer_flops(params, flags)), flags, scan, True)


def build_network(scan: str, flags: dict, params: Params, dtype: torch.dtype, device: torch.device, mode: str) -> Workload:
    device = torch.device(device)
    with device:
        net = VisionEncoder(lambda i: make_layer(params, scan, flags), params.channels, params.depth, params.mlp_hidden,
                            params.patch)
    images = random_images(params, dtype, device)
    flops = embed_flops(params) + params.depth * block_flops(params, layer_flops(params, flags))
    return _module_case(net, params, [images], dtype, mode, flops, flags, scan, False)


_LEVELS = {
    "sublayer": (SUBLAYER_PARAMS, "four-direction raw-space propagation: stacking, eager normalization, scan, h*u, sum"),
    "layer": (LAYER_PARAMS, "original GSPN layer in a ViT attention slot"),
    "block": (GSPN_BLOCK_PARAMS, "pre-norm ViT block around the original GSPN layer (SO400M MLP)"),
    "network": (GSPN_NETWORK_PARAMS, "patch-14 embedding + depth original-GSPN blocks"),
}


def _bind(level: str, scan: str, flags: dict, name: str):
    if level == "sublayer":
        def build(params: Params, dtype: torch.dtype, device: torch.device, mode: str) -> Workload:
            return build_sublayer(scan, params, dtype, device, mode)
    else:
        builder = {"layer": build_layer, "block": build_block, "network": build_network}[level]

        def build(params: Params, dtype: torch.dtype, device: torch.device, mode: str) -> Workload:
            return builder(scan, flags, params, dtype, device, mode)

    build.__qualname__ = f"build_{level}[{name}]"
    return build


def _describe(what: str, scan: str, flags: dict) -> str:
    removed = [k for k, v in flags.items() if not v]
    return f"{what} ({scan} scan; {'removed: ' + ', '.join(removed) if removed else 'all components on'})"


for _name, (_scan, _flags, _levels) in VARIANTS.items():
    for _level in _levels:
        _params, _what = _LEVELS[_level]
        register(_name, family="gspn", level=_level, params=_params, dtypes=DTYPES, requires=_requires(_scan),
                 description=_describe(_what, _scan, _flags))(_bind(_level, _scan, _flags, _name))
