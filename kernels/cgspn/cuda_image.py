"""Host side of the C-GSPN image forward (source and design: :mod:`kernels.cgspn.cuda_image_source`).

Selection (:func:`unavailable_reason`): everything the row fast path needs (:func:`kernels.cgspn.cuda_scan.
device_unavailable_reason`: CUDA on sm_90, CuPy, ``CGSPN_FAST_PATH`` not ``0``), plus bfloat16/float16 (the
gates are held as fp16 in shared memory: too coarse for float32's tolerance), planar inputs (unit stride
along W), an image that fits one block's shared memory (up to 149 x 149) and sides of at most 192 (a warp
runs a direction, six positions per lane). Otherwise the caller runs another path and reports why. The
kernel is compiled per grid (H and W are template arguments, so every shared-memory offset is an immediate):
the first call at a new grid compiles, later ones (and later processes: CuPy's disk cache) do not.
"""

from __future__ import annotations

import functools

import torch

from kernels.cgspn import cuda_scan
from kernels.cgspn.cuda_image_source import (
    DEFAULT_CONFIG,
    IMAGE_SOURCE,
    MAX_LANE_POSITIONS,
    TIMING_SLOTS,
    ImageConfig,
    check_config,
    expression,
    launch_blocks,
    launch_threads,
    smem_bytes,
)

__all__ = ["empty_outputs", "grid_size", "hs_channels_last", "is_planar", "plan_reason", "scan_forward", "unavailable_reason"]

_DTYPE_CODE = {torch.bfloat16: 1, torch.float16: 2}


def is_planar(t: torch.Tensor) -> bool:
    """A ``(B, H, W, C)`` or ``(B, H, W, 3, C)`` view with unit stride along W (channel-major storage)."""
    return t.shape[2] == 1 or t.stride(2) == 1


@functools.cache
def _smem_limit(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).shared_memory_per_block_optin


def grid_size(images: int, H: int, W: int, device_index: int, config: ImageConfig = DEFAULT_CONFIG) -> int:
    """Persistent blocks: as many as fit the GPU at once (:func:`launch_blocks` per SM), at most one per image."""
    return max(1, min(images, cuda_scan.sm_count(device_index) * launch_blocks(H, W, config)))


@functools.cache
def _probe(device_index: int) -> str | None:
    """Compile the image kernel once on ``device_index``: None, or why not."""
    try:
        with cuda_scan._cupy().cuda.Device(device_index):
            cuda_scan._module(expression(1, 1, 1), IMAGE_SOURCE)
    except Exception as error:
        return f"CUDA build of the image kernel failed ({type(error).__name__}: {cuda_scan.first_line(error)[:200]})"
    return None


@torch.compiler.assume_constant_result  # traced by torch.compile as a constant (it takes a lock and may compile)
def plan_reason(device: torch.device, dtype: torch.dtype, B: int, H: int, W: int) -> str | None:
    """None when the image kernel runs a ``(B, H, W, C)`` scan of ``dtype`` on ``device`` given planar
    inputs, else why not (the device, the dtype, the image's sides and shared memory)."""
    reason = cuda_scan.device_unavailable_reason(device)
    if reason is not None:
        return reason
    if dtype not in _DTYPE_CODE:
        return f"dtype {dtype}: the image kernel holds gates as fp16 (bfloat16, float16 only)"
    if max(H, W) > 32 * MAX_LANE_POSITIONS:
        return (f"grid {H}x{W}: a side above {32 * MAX_LANE_POSITIONS} "
                f"(one warp per direction, {MAX_LANE_POSITIONS} positions per lane)")
    index = cuda_scan.device_index(device)
    if smem_bytes(H, W) > _smem_limit(index):
        return f"grid {H}x{W}: {smem_bytes(H, W)} bytes of shared memory > {_smem_limit(index)}"
    return _probe(index)


def unavailable_reason(x: torch.Tensor, *others: torch.Tensor) -> str | None:
    """None when :func:`scan_forward` takes x ``(B, H, W, C)`` and the other inputs, else why not."""
    for t in others:
        if t.device != x.device:
            return "inputs on several devices"
    if not all(is_planar(t) for t in (x, *others)):
        return "inputs are not planar (unit stride along W)"
    B, H, W, _ = x.shape
    return plan_reason(x.device, x.dtype, B, H, W)


def _channels_outer(x: torch.Tensor) -> bool:
    """Whether x's channels are its outermost dimension (the planar layer's whole-batch GEMM layout)."""
    return x.shape[3] > 1 and x.shape[0] > 1 and x.stride(3) > x.stride(0)


def empty_outputs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The image forward's outputs for x ``(B, H, W, C)``, uninitialized (the custom op's fake builds its
    outputs here too, so both agree on strides): y as a ``(B, H, W, C)`` view of ``(C, B, H, W)`` storage when
    x's channels are outermost, else of ``(B, C, H, W)``; ``hs (4, B, C, H, WP)``, WP = W rounded up to 8."""
    B, H, W, C = x.shape
    if _channels_outer(x):
        y = x.new_empty(C, B, H, W).permute(1, 2, 3, 0)
    else:
        y = x.new_empty(B, C, H, W).permute(0, 2, 3, 1)
    return y, x.new_empty(4, B, C, H, -(-W // 8) * 8)


def scan_forward(x: torch.Tensor, lam: torch.Tensor, u: torch.Tensor, gates: torch.Tensor,
                 bias: torch.Tensor | None = None, x_bias: torch.Tensor | None = None,
                 timing: torch.Tensor | None = None, config: ImageConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, hs)``: y ``(B, H, W, C)`` as a view of planar storage, ``(C, B, H, W)`` when x's channels are
    outermost (the layer's whole-batch GEMM layout), else ``(B, C, H, W)``; and the states
    ``hs (4, B, C, H, WP)`` (tb, bt, lr, rl, each in image order; WP = W rounded up to 8). ``bias``: optional
    ``(5 C,)`` head bias in [u, lam, l, m, r] order, ``x_bias`` optional ``(C,)``, both added where the kernel
    uses the values. ``timing``: optional int64 CUDA tensor of ``TIMING_SLOTS`` per block (:func:`grid_size`
    blocks), filled with each block's clock cycles per phase (the source's docstring). ``config``: opt-in launch
    choices for A/B (:class:`~kernels.cgspn.cuda_image_source.ImageConfig`; default: the fastest measured), same
    outputs bit for bit. The caller checked :func:`unavailable_reason` (for the default configuration)."""
    config = DEFAULT_CONFIG if config is None else config
    check_config(config)
    B, H, W, C = x.shape
    y, hs = empty_outputs(x)
    bias, x_bias = (None if t is None else t.contiguous() for t in (bias, x_bias))
    sx, sl, su, sg, sy = x.stride(), lam.stride(), u.stride(), gates.stride(), y.stride()
    index = cuda_scan.device_index(x.device)
    blocks = grid_size(B * C, H, W, index, config)
    if timing is not None and (timing.dtype != torch.int64 or timing.numel() < TIMING_SLOTS * blocks):
        raise ValueError(f"timing: expected an int64 tensor of at least {TIMING_SLOTS * blocks} elements")
    pointer = lambda t: 0 if t is None else t.data_ptr()  # noqa: E731
    cuda_scan.launch(expression(_DTYPE_CODE[x.dtype], H, W, config, timed=timing is not None), (blocks, 1, 1),
                     launch_threads(H, W, config),
                     smem_bytes(H, W), index,
                     (x.data_ptr(), lam.data_ptr(), u.data_ptr(), gates.data_ptr(), pointer(bias), pointer(x_bias),
                      hs.data_ptr(), y.data_ptr(), pointer(timing), B, C,
                      sx[0], sx[3], sx[1], sl[0], sl[3], sl[1], su[0], su[3], su[1], sg[0], sg[3], sg[4], sg[1], sy[0], sy[3]),
                     IMAGE_SOURCE)
    return y, hs


def hs_channels_last(hs: torch.Tensor, W: int) -> torch.Tensor:
    """The image forward's ``hs (4, B, C, H, WP)`` as the backward's ``(4, B, H, W, C)`` (one copy, the padding cut)."""
    out = torch.empty((hs.shape[0], hs.shape[1], hs.shape[3], W, hs.shape[2]), device=hs.device, dtype=hs.dtype)
    out.permute(0, 1, 4, 2, 3).copy_(hs[..., :W])  # (4, B, C, H, W) view of the channels-last result
    return out
