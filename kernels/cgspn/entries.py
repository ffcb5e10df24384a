"""Registry entries of the C-GSPN propagation at sublayer level (family ``cgspn``).

- ``cgspn-scan``: the fused four-direction scan (Triton, or the CUDA fast path where the default
  variant selects it and it can run: ``backend_detail`` names the path) on the inputs as the C-GSPN layer produces
  and passes them (:func:`kernels.cgspn.cgspn_scan_head`): u, lam and the 3 raw gates in one head
  output ``(B, H, W, 5, C_c)`` (read through strided views, its gradient written as one tensor),
  x the latent grid;
- ``cgspn-scan-<variant>`` (``cgspn-scan-quad-gather``, ``cgspn-scan-pairs-scratch``, ...): the same case with
  the scan variant fixed (:data:`kernels.cgspn.scan.SCAN_VARIANTS` other than the default), so design A/B
  comparisons are ordinary scenario cases (``scenarios/cgspn-scan-variants.yaml``); ``cgspn-scan-cuda-image``
  takes its inputs in the planar layer's layout (channels outermost), the one its image kernel reads;
- ``cgspn-scan-reference``: the PyTorch reference on the same inputs (its own ground truth);
- ``cgspn-gate-norm-eager`` / ``cgspn-gate-norm-fused``: Eq. 2 for both scan axes from one raw
  gate tensor (paper Sec. 4.1: fused normalization vs PyTorch).

Every entry runs at C_c = ``params.c_latent`` channels. Ideal bytes count each input read once
and each output written once: scan forward 7 elements per (b, pixel, channel) (x, lam, u, 3
gates in, y out), backward 13 (x, lam, u, 3 gates, dy in; dx, dlam, du, 3 dgates out);
normalization 3 in + 6 out (two axes), backward 9 in (the raw gates, which the gradient of Eq. 2
needs, and two upstream grads) + 3 out.
"""

from __future__ import annotations

import torch

from kernels.cgspn.gate_norm import normalize_gates_eager_both, normalize_gates_fused
from kernels.cgspn.reference import cgspn_scan_reference
from kernels.cgspn.scan import DEFAULT_VARIANT, IMAGE_VARIANT, SCAN_VARIANTS, cgspn_scan_head, head_views, scan_backend
from kernels.cgspn.triton_support import runnable
from kernels.params import ParamError, Params
from kernels.registry import GRID_PARAMS, Workload, register

SUBLAYER_PARAMS = ("batch", "channels", "compression", "latent_channels") + GRID_PARAMS
SCAN_FLOPS_PER_ELEMENT = 4 * 8 + 4  # per direction 3 gate FMAs + lam*x FMA; merge of 4 + u (normalization not counted)
NORM_FLOPS_PER_ELEMENT = 3 * 4 + 2 * 6  # 3 sigmoids (~4 each), per axis 2 adds + 1 reciprocal + 3 multiplies


def _requires(triton: bool):
    def requires(params: Params, dtype: str, device: str) -> str | None:
        try:
            params.check_compression()
        except ParamError as error:
            return str(error)
        if triton and not runnable(device):
            return "Triton kernels need CUDA, or TRITON_INTERPRET=1 on CPU"
        return None

    return requires


def _numel(params: Params) -> int:
    return params.batch * params.H * params.W * params.c_latent


def _scan_inputs(params: Params, dtype: torch.dtype, device: torch.device, mode: str, planar: bool = False):
    """x ``(B, H, W, C_c)`` and the layer's fused head output ``(B, H, W, 5, C_c)`` = [u, lam, l, m, r]:
    channels-last, or (``planar``) with the strides of the planar layer's GEMM outputs, ``(C_c, B, H, W)``
    and ``(5, C_c, B, H, W)`` storage (``kernels.cgspn.layer``, ``layout="planar"``)."""
    B, H, W, C = params.batch, params.H, params.W, params.c_latent
    if planar:
        x = torch.empty_strided((B, H, W, C), (H * W, W, 1, B * H * W), device=device, dtype=dtype).normal_()
        head = torch.empty_strided((B, H, W, 5, C), (H * W, W, 1, C * B * H * W, B * H * W), device=device,
                                   dtype=dtype).normal_()
    else:
        x = torch.randn(B, H, W, C, device=device, dtype=dtype)
        head = torch.randn(B, H, W, 5, C, device=device, dtype=dtype)
    if mode == "fwd+bwd":
        x.requires_grad_(True)
        head.requires_grad_(True)
    return x, head


def _scan_builder(variant: str):
    def build_scan(params: Params, dtype: torch.dtype, device: torch.device, mode: str) -> Workload:
        x, head = _scan_inputs(params, dtype, device, mode, planar=variant == IMAGE_VARIANT)

        def reference() -> torch.Tensor:  # not detached: the harness differentiates it in fwd+bwd mode
            lam, u, gates = head_views(head.float())
            return cgspn_scan_reference(x.float(), lam, u, gates)

        element = torch.finfo(dtype).bits // 8
        return Workload(
            fn=lambda: cgspn_scan_head(x, head, variant=variant),
            inputs=[x, head] if mode == "fwd+bwd" else [],
            reference=reference,
            flops=SCAN_FLOPS_PER_ELEMENT * _numel(params),
            flops_bwd=2 * SCAN_FLOPS_PER_ELEMENT * _numel(params),
            bytes_ideal=7 * _numel(params) * element,
            bytes_ideal_bwd=13 * _numel(params) * element,
            backend_detail=scan_backend(variant, x, head),  # which path runs here, and why
        )

    return build_scan


def scan_variant_name(variant: str) -> str:
    """The registered sublayer name of a scan variant: ``cgspn-scan`` for the default, else ``cgspn-scan-<variant>``."""
    return "cgspn-scan" if variant == DEFAULT_VARIANT else f"cgspn-scan-{variant}"


register("cgspn-scan", family="cgspn", level="sublayer", params=SUBLAYER_PARAMS, requires=_requires(True),
         description="C-GSPN sublayer: fused four-direction Triton scan, normalization folded in")(_scan_builder(DEFAULT_VARIANT))
for _variant in SCAN_VARIANTS:
    if _variant != DEFAULT_VARIANT:
        register(scan_variant_name(_variant), family="cgspn", level="sublayer", params=SUBLAYER_PARAMS,
                 requires=_requires(True),
                 description=f"C-GSPN sublayer with the scan variant fixed to {_variant} (design A/B)")(_scan_builder(_variant))


@register("cgspn-scan-reference", family="cgspn", level="sublayer", params=SUBLAYER_PARAMS, requires=_requires(False),
          dtypes=("float32", "bfloat16", "float16", "float64"),
          description="C-GSPN sublayer: PyTorch reference (loop over scan steps, fp32/fp64 math)")
def build_scan_reference(params: Params, dtype: torch.dtype, device: torch.device, mode: str) -> Workload:
    x, head = _scan_inputs(params, dtype, device, mode)
    element = torch.finfo(dtype).bits // 8
    return Workload(
        fn=lambda: cgspn_scan_reference(x, *head_views(head)),
        inputs=[x, head] if mode == "fwd+bwd" else [],
        flops=SCAN_FLOPS_PER_ELEMENT * _numel(params),
        flops_bwd=2 * SCAN_FLOPS_PER_ELEMENT * _numel(params),
        bytes_ideal=7 * _numel(params) * element,
        bytes_ideal_bwd=13 * _numel(params) * element,
        backend_detail="pytorch reference",
    )


class _BothAxes(torch.autograd.Function):
    """The harness back-propagates the first output of a workload; a gate-norm case has two
    (vertical, horizontal). This returns the vertical one as a view (no kernel) and sends its
    upstream gradient to both, so fwd+bwd runs the backward of both axes, as a layer using both would."""

    @staticmethod
    def forward(ctx, vertical: torch.Tensor, horizontal: torch.Tensor) -> torch.Tensor:
        return vertical.view_as(vertical)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, grad


def _gate_workload(params: Params, dtype: torch.dtype, device: torch.device, mode: str, fn, detail: str) -> Workload:
    B, H, W, C = params.batch, params.H, params.W, params.c_latent
    gates = torch.randn(B, H, W, 3, C, device=device, dtype=dtype)
    if mode == "fwd+bwd":
        gates.requires_grad_(True)
    element = torch.finfo(dtype).bits // 8

    def reference():  # what fn returns (one output through _BothAxes in fwd+bwd); not detached: differentiated in fwd+bwd
        both = normalize_gates_eager_both(gates.to(torch.float64 if dtype == torch.float64 else torch.float32))
        return _BothAxes.apply(*both) if mode == "fwd+bwd" else both

    return Workload(
        fn=(lambda: _BothAxes.apply(*fn(gates))) if mode == "fwd+bwd" else (lambda: fn(gates)),
        inputs=[gates] if mode == "fwd+bwd" else [],
        reference=reference,
        flops=NORM_FLOPS_PER_ELEMENT * _numel(params),
        bytes_ideal=9 * _numel(params) * element,
        bytes_ideal_bwd=12 * _numel(params) * element,
        backend_detail=detail,
    )


@register("cgspn-gate-norm-eager", family="cgspn", level="sublayer", params=SUBLAYER_PARAMS, requires=_requires(False),
          description="gate normalization (Eq. 2) for both scan axes in eager PyTorch")
def build_gate_norm_eager(params: Params, dtype: torch.dtype, device: torch.device, mode: str) -> Workload:
    return _gate_workload(params, dtype, device, mode, normalize_gates_eager_both, "pytorch eager")


@register("cgspn-gate-norm-fused", family="cgspn", level="sublayer", params=SUBLAYER_PARAMS, requires=_requires(True),
          description="gate normalization (Eq. 2) for both scan axes in one Triton pass")
def build_gate_norm_fused(params: Params, dtype: torch.dtype, device: torch.device, mode: str) -> Workload:
    return _gate_workload(params, dtype, device, mode, lambda g: normalize_gates_fused(g, "both"), "triton fused")
