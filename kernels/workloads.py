"""Helpers that turn modules and functions into registry :class:`~kernels.registry.Workload` s.

Shared by every family so that a block or network is built, initialized, fed and counted the
same way whatever its token mixer is.
"""

from __future__ import annotations

import torch
from torch import nn

from kernels.params import Params
from kernels.registry import GRID_PARAMS, Workload
from kernels.vit import mlp_flops


def random_tokens(params: Params, dtype: torch.dtype, device: torch.device, channels: int | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Random channels-last grid ``(B, H, W, C)``, unit variance (never zeros)."""
    c = params.channels if channels is None else channels
    return torch.randn(params.batch, params.H, params.W, c, device=device, dtype=dtype, generator=generator)


def random_images(params: Params, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Random images ``(B, 3, H*patch, W*patch)`` for network-level cases."""
    h, w = params.image_side
    return torch.randn(params.batch, 3, h, w, device=device, dtype=dtype)


def module_workload(module: nn.Module, inputs: list[torch.Tensor], dtype: torch.dtype, mode: str, *,
                    reference_module: nn.Module | None = None, flops: float | None = None,
                    bytes_ideal: float | None = None, backend_detail: str = "") -> Workload:
    """Run ``module(*inputs)`` as a workload; parameters are cast to ``dtype`` (no autocast,
    so the timed kernels are exactly the dtype's kernels).

    ``reference_module`` (optional, same architecture) is evaluated on the same device in float32
    (float64 for float64 cases): a float64 CPU reference is too slow at benchmark shapes. It runs
    with ``module``'s own parameters cast up (``torch.func.functional_call``), so it computes from
    the very weights the case uses and, in ``fwd+bwd`` mode, autograd reaches ``inputs`` and
    ``parameters`` through it (the harness's gradient check).
    """
    module = module.to(device=inputs[0].device, dtype=dtype)
    if mode == "fwd+bwd":
        for t in inputs:
            t.requires_grad_(True)
    else:
        module.requires_grad_(False)
    reference = None
    if reference_module is not None:
        ref_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        reference_module = reference_module.to(device=inputs[0].device, dtype=ref_dtype)

        def reference() -> torch.Tensor:
            weights = {name: p.to(ref_dtype) for name, p in module.named_parameters()}
            return torch.func.functional_call(reference_module, weights, tuple(t.to(ref_dtype) for t in inputs))

    return Workload(
        fn=lambda: module(*inputs),
        inputs=[t for t in inputs if t.requires_grad],
        parameters=[p for p in module.parameters() if p.requires_grad],
        reference=reference,
        flops=flops,
        bytes_ideal=bytes_ideal,
        backend_detail=backend_detail,
        module=module,
    )


def ideal_bytes(module: nn.Module, inputs: list[torch.Tensor], out_numel: int, dtype: torch.dtype) -> float:
    """Ideal traffic of a module case: read every input and weight once, write the output once."""
    numel = sum(t.numel() for t in inputs) + sum(p.numel() for p in module.parameters()) + out_numel
    return float(numel * torch.empty((), dtype=dtype).element_size())


def linear_flops(tokens: int, c_in: int, c_out: int) -> float:
    return 2.0 * tokens * c_in * c_out


def block_flops(params: Params, mixer_flops: float) -> float:
    """Forward FLOPs of a pre-norm block around a mixer: mixer + MLP (norms are negligible)."""
    tokens = params.batch * params.tokens
    return mixer_flops + mlp_flops(tokens, params.channels, params.mlp_hidden)


def embed_flops(params: Params) -> float:
    """Patch embedding: a (3*p*p -> C) projection per token."""
    return linear_flops(params.batch * params.tokens, 3 * params.patch * params.patch, params.channels)


BLOCK_PARAMS = ("batch", "channels", "mlp_hidden") + GRID_PARAMS
NETWORK_PARAMS = BLOCK_PARAMS + ("depth",)
