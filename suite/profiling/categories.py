"""The one place where kernels are rolled up into categories.

A profiled case is a list of GPU kernels (or, on CPU, of ``aten`` ops). Each one gets one of
:data:`CATEGORIES` by the first rule that matches, in this order:

1. **Its own name.** Our Triton kernels and the library kernels have telling names:
   gate normalization (``_normalize_gates_kernel``, ``_gate_norm_*``, sigmoid), propagation
   (``_cgspn_scan_*``, ``_gspn_original_step*``: "cgspn", "gspn", "propagat", "scan" except
   cub's ``DeviceScan``), attention (flash / fmha / sdpa / cuDNN attention / softmax),
   normalization layers (layer/group/batch/RMS norm, GRN, vector norm).
2. ``Memcpy``/``Memset`` activities are *other*.
3. **MLP, by shape**: a kernel launched by an op whose input shapes have ``mlp_hidden`` (4304 in
   SO400M) as a dimension belongs to the MLP: fc1/fc2 GEMMs and their bias adds, GELU, and
   their backward (``AddmmBackward``'s ``mm``, ``gelu_backward``, the bias-grad ``sum``). The
   op consulted is the innermost enclosing op that recorded input shapes
   (``record_shapes=True``). The rule needs no change to ``kernels/vit.py``; it misfires only if
   another tensor of the case has a dimension equal to ``mlp_hidden`` (none does at the paper's
   shapes: widths 64..27648 but never 4304, tokens 729..21609, heads 16 x 72).
4. **Batched product of two activations** (``aten::bmm``/``baddbmm`` whose operands are both
   3-D or more): only explicit-math attention computes one (QK^T, PV) -- *attention*.
5. **GEMM** by kernel name (cutlass, cuBLAS, nvjet, xmma, gemm...) or launching op: the
   projections (QKV/out, P_down/P_up, channel extension, parameter heads, patch embedding).
6. **Its context**: the names of the ops and ``record_function`` ranges enclosing the launch,
   innermost first, against the rules of step 1. An autograd ``Function`` records its class name
   (``_NormalizeGatesFunction``), and eager code may wrap itself in
   ``torch.profiler.record_function("gate_norm")``: that is how the original GSPN's eager gate
   normalization (sigmoid, sum, clamp, divide: plain elementwise kernels) counts as gate
   normalization, and a layer-norm backward's helper kernels as normalization.
7. **Elementwise** (vectorized/unrolled elementwise, reductions, copies, fills, concatenation,
   Inductor pointwise) and finally **other**.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PROPAGATION = "propagation"
GATE_NORM = "gate_norm"
PROJECTION = "projection_gemm"
MLP = "mlp"
ATTENTION = "attention"
NORMALIZATION = "normalization"
ELEMENTWISE = "elementwise"
OTHER = "other"

# Display order of the roll-up.
CATEGORIES = (PROPAGATION, GATE_NORM, PROJECTION, MLP, ATTENTION, NORMALIZATION, ELEMENTWISE, OTHER)

# Default MLP hidden width (SO400M), same as kernels.params.Params.mlp_hidden.
DEFAULT_MLP_HIDDEN = 4304


def _any(*patterns: str) -> re.Pattern:
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


# Checked on the kernel's own name (step 1) and on each enclosing op/range name (step 6), in this
# order: gate_norm before propagation so "_cgspn_gate_norm" is gate normalization, not scan.
NAME_RULES: tuple[tuple[str, re.Pattern], ...] = (
    (GATE_NORM, _any(r"(?<![a-z])gates?_?norm", r"normali[sz]e_?gates?", r"sigmoid")),
    (PROPAGATION, _any(r"cgspn", r"gspn", r"propagat", r"(?<!device)scan")),
    (ATTENTION, _any(r"flash", r"fmha", r"sdpa", r"attention", r"attn", r"softmax")),
    (NORMALIZATION, _any(r"layer_?norm", r"group_?norm", r"batch_?norm", r"rms_?norm", r"(?<![a-z])grn(?![a-z])",
                         r"vector_norm")),
)

GEMM = _any(r"gemm", r"cutlass", r"cublas", r"xmma", r"nvjet", r"matmul", r"aten::(?:add)?mm\b", r"aten::linear",
            r"aten::(?:bmm|baddbmm)", r"aten::(?:_)?convolution", r"aten::conv\dd", r"mkldnn", r"\bsgemm", r"dot_?product")
BATCHED_GEMM_OP = re.compile(r"aten::(?:bmm|baddbmm)\b")
ELEMENTWISE_PATTERN = _any(
    r"elementwise", r"vectorized", r"reduce_kernel", r"reduction", r"copy", r"fill", r"cat_?array", r"\bcat\b",
    r"index", r"triton_(?:poi|red|per)_", r"gelu", r"aten::(?:add|sub|mul|div|neg|exp|pow|sqrt|rsqrt|clamp\w*|where|sum|"
    r"mean|clone|contiguous|copy_|fill_|zero_|cat|stack|flip|permute_copy|to_copy|_to_copy|gelu|gelu_backward|tanh|"
    r"maximum|minimum|abs|sign)\b",
)
OTHER_PATTERN = _any(r"^memcpy", r"^memset")


@dataclass(frozen=True)
class OpFrame:
    """One op or ``record_function`` range enclosing a kernel launch (or the op itself on CPU)."""

    name: str
    input_dims: tuple = ()  # as recorded with record_shapes: one list of ints per input ([] for scalars)


@dataclass(frozen=True)
class KernelContext:
    """What encloses a launch, innermost first; empty when the trace did not link it."""

    frames: tuple[OpFrame, ...] = field(default_factory=tuple)

    def shaped_op(self) -> OpFrame | None:
        """The innermost enclosing op that recorded input shapes."""
        for frame in self.frames:
            if any(isinstance(d, (list, tuple)) and d for d in frame.input_dims):
                return frame
        return None


def _dims(frame: OpFrame) -> list[list[int]]:
    return [list(d) for d in frame.input_dims if isinstance(d, (list, tuple))]


def _has_dimension(frame: OpFrame, size: int) -> bool:
    return any(size in dims for dims in _dims(frame))


def _is_activation_product(frame: OpFrame) -> bool:
    """``bmm`` of two >= 3-D operands: QK^T or PV of explicit attention (no weight is batched)."""
    if not BATCHED_GEMM_OP.search(frame.name):
        return False
    operands = [d for d in _dims(frame) if d]
    return len(operands) >= 2 and all(len(d) >= 3 for d in operands[-2:])


def _ignored(name: str) -> bool:
    """Profiler bookkeeping ranges say nothing about the kernel."""
    return name.startswith("ProfilerStep#") or name.startswith("## ")


def categorize(name: str, context: KernelContext | None = None, *, mlp_hidden: int | None = DEFAULT_MLP_HIDDEN) -> str:
    """The category of one kernel (or CPU op) ``name`` launched inside ``context``.

    >>> categorize("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float>(...)")
    'normalization'
    """
    context = context or KernelContext()
    by_name = _name_category(name)
    if by_name:
        return by_name
    if OTHER_PATTERN.search(name):
        return OTHER
    shaped = context.shaped_op()
    if mlp_hidden is not None and shaped is not None and _has_dimension(shaped, mlp_hidden):
        return MLP
    if shaped is not None and _is_activation_product(shaped):
        return ATTENTION
    if GEMM.search(name) or (shaped is not None and GEMM.search(shaped.name)):
        return PROJECTION
    for frame in context.frames:
        by_context = None if _ignored(frame.name) else _name_category(frame.name)
        if by_context:
            return by_context
    if ELEMENTWISE_PATTERN.search(name) or (shaped is not None and ELEMENTWISE_PATTERN.search(shaped.name)):
        return ELEMENTWISE
    return OTHER


def _name_category(name: str) -> str | None:
    for category, pattern in NAME_RULES:
        if pattern.search(name):
            return category
    return None


def short_kernel_name(name: str, width: int = 60) -> str:
    """A readable kernel name for tables: no ``void``, no template arguments or parameter list."""
    text = re.sub(r"^void\s+", "", name.strip())
    depth, out = 0, []
    for ch in text:  # drop everything inside <...> and (...) at any nesting depth
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth = max(depth - 1, 0)
        elif depth == 0:
            out.append(ch)
    short = "".join(out).strip() or text
    return short if len(short) <= width else short[: width - 3] + "..."
