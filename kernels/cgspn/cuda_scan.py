"""The C-GSPN scan's GPU fast path: CUDA C++ forward and backward compiled at first use (NVRTC through CuPy).

What it is for: the Triton quad forward spends its time on a global scratch tile for the neighbour
shift, on 43% padding lanes (P=147 -> 256) and on registers (NOTES.md, Round 4). This forward
(source and design: :mod:`kernels.cgspn.cuda_scan_source`) keeps the same algorithm and memory
contract -- one program per (channel vector, batch element, direction), each direction's h stored in
the input dtype as ``hs (4, B, H, W, C)``, then ``y = u * sum_d h_d`` -- but exchanges neighbours in
shared memory, pads to a warp instead of a power of two, and keeps DEPTH rows of loads in flight.
The backward (:func:`scan_backward`) runs the same row skeleton in reverse (the adjoint of every direction,
``cgspn_rows<..., ADJ=true>``) and one elementwise pass that forms every input gradient; ``hs`` is also what
the Triton quad backward (:func:`kernels.cgspn.scan_quad._scan_quad_bwd`) reads, so either backward follows
either forward.

Launches go to the driver directly (:class:`_Launch`: ``cuLaunchKernel`` with the arguments packed into a
reusable buffer), not through CuPy's kernel call, which type-checks and packs every argument on every call:
the fast path exists for small grids too, where the host's time per call is the cost.

Selection (:func:`unavailable_reason`): CUDA tensors on an sm_90 device (the only architecture it has
been verified on), CuPy importable, the module compiled, ``CGSPN_FAST_PATH`` not ``0``, float32/
bfloat16/float16, both grid sides <= 512 (a state row must fit one block). Otherwise callers run the
Triton path and report the reason. Nothing here imports CuPy or touches CUDA until a CUDA tensor asks.
"""

from __future__ import annotations

import ctypes
import functools
import os
import struct
import threading

import torch

from kernels.cgspn.cuda_scan_source import SOURCE

__all__ = ["FastConfig", "device_index", "device_unavailable_reason", "first_line", "launch",
           "pick_config", "scan_backward", "scan_forward", "sm_count", "unavailable_reason", "write_source"]

ENV_SWITCH = "CGSPN_FAST_PATH"  # "0" disables the fast path (the Triton path runs)
SUPPORTED_CAPABILITIES = ((9, 0),)
MAX_SIDE = 512  # PPT=1 up to 256 positions per row, PPT=2 up to 512 (<= 256 threads per block)
_DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_lock = threading.Lock()


@functools.cache
def _cupy():
    import cupy  # noqa: PLC0415 - optional, GPU machines only

    return cupy


@functools.cache
def _module(expression: str, source: str = SOURCE):
    """One compiled template instantiation of ``source`` (NVRTC; CuPy caches the binary on disk across processes)."""
    cupy = _cupy()
    module = cupy.RawModule(code=source, options=("-std=c++17",), name_expressions=[expression])
    return module.get_function(expression)


@functools.cache
def _probe(device_index: int) -> str | None:
    """Compile and load the default bf16 kernels on ``device_index`` once: None, or why not."""
    try:
        cupy = _cupy()
    except Exception as error:  # ImportError, or a CuPy that finds no CUDA
        return f"cupy not importable ({type(error).__name__}: {first_line(error)})"
    try:
        with cupy.cuda.Device(device_index):
            _module(_fwd_expression(1, FastConfig()))  # the bf16 defaults (smem ring, two vectors per block)
            _module(_combine_expression(1, True))
            _module(_fwd_expression(1, FastConfig(), adjoint=True))
            _module(_epilogue_expression(1, True))
    except Exception as error:
        return f"CUDA build failed ({type(error).__name__}: {first_line(error)[:200]})"
    return None


def first_line(error: Exception) -> str:
    """The first line of an exception's message ("" when it has none), for a one-line fallback reason."""
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def device_index(device: torch.device) -> int:
    """The CUDA device index of ``device``: its own, or the current device when it names none."""
    return device.index if device.index is not None else torch.cuda.current_device()


def device_unavailable_reason(device: torch.device | str) -> str | None:
    """None when the fast path can run on ``device``, else the reason (no exception is raised)."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return f"disabled by {ENV_SWITCH}=0"
    if not isinstance(device, torch.device):
        device = torch.device(device)
    if device.type != "cuda":
        return f"device {device.type} is not CUDA"
    if not torch.cuda.is_available():
        return "torch has no CUDA"
    return _cuda_device_reason(device_index(device))


@functools.cache
def _cuda_device_reason(index: int) -> str | None:
    """The architecture and build verdict for CUDA device ``index``, once per device and process."""
    capability = torch.cuda.get_device_capability(index)
    if capability not in SUPPORTED_CAPABILITIES:
        return f"sm_{capability[0]}{capability[1]} is not a verified architecture (sm_90 only)"
    with _lock:
        return _probe(index)


def unavailable_reason(x: torch.Tensor, *others: torch.Tensor) -> str | None:
    """None when :func:`scan_forward` takes these inputs (x ``(B, H, W, C)``, then lam/u/gates or a
    head), else the reason; checks the device first, then dtype and shape limits."""
    reason = device_unavailable_reason(x.device)
    if reason is not None:
        return reason
    if x.dtype not in _DTYPE_CODE:
        return f"dtype {x.dtype} not supported (float32, bfloat16, float16)"
    B, H, W, C = x.shape
    if max(H, W) > MAX_SIDE:
        return f"grid side {max(H, W)} > {MAX_SIDE}"
    if B > 65535:
        return f"batch {B} > 65535 (grid dimension)"
    if B * H * W >= 2**31:
        return "B*H*W >= 2^31 pixels"
    for t in (x, *others):
        if t.device != x.device:
            return "inputs on several devices"
    return None


class FastConfig:
    """Launch choices of the forward. ``ring``: ``"smem"`` (default kernel ``cgspn_fwd``: inputs in flight
    in a shared-memory ring filled by cp.async, ``nv`` 16-byte channel vectors per block) or ``"regs"``
    (``cgspn_fwd_regs``, the first version: the ring in registers, one vector per block, ``nv`` must be 1);
    ``ppt`` positions per thread (1, 2); ``depth`` rows in the ring (2-4 smem, 1-3 regs); ``fast_sigmoid``:
    one tanh.approx per sigmoid instead of ex2 + rcp."""

    __slots__ = ("ring", "nv", "ppt", "depth", "fast_sigmoid")

    def __init__(self, ring: str = "smem", nv: int = 2, ppt: int = 1, depth: int = 3, fast_sigmoid: bool = False):
        depths = (2, 3, 4) if ring == "smem" else (1, 2, 3)
        bad_nv = nv not in (1, 2) or (ring == "regs" and nv != 1)
        if ring not in ("smem", "regs") or bad_nv or ppt not in (1, 2) or depth not in depths:
            raise ValueError(f"FastConfig: ring smem/regs, nv 1/2 (1 for regs), ppt 1/2, depth in {depths}; "
                             f"got {ring}, nv={nv}, ppt={ppt}, depth={depth}")
        self.ring, self.nv, self.ppt, self.depth, self.fast_sigmoid = ring, nv, ppt, depth, fast_sigmoid

    def __repr__(self) -> str:
        return f"FastConfig({self.ring}, nv={self.nv}, ppt={self.ppt}, depth={self.depth}, fast_sigmoid={self.fast_sigmoid})"


@functools.cache
def sm_count(device_index: int) -> int:
    """Streaming multiprocessors of CUDA device ``device_index``."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.lru_cache(maxsize=256)
def pick_config(H: int, W: int, C: int, cpt: int, adjoint: bool = False, batch: int = 0, sms: int = 0) -> FastConfig:
    """One thread per state position while a row fits (<= 256), two vectors per block (a 32-byte sector
    per pixel) when C has two; rows up to 512 take two positions per thread and one vector (registers and
    shared memory of a 256-thread block). The adjoint keeps two blocks per SM (at most 320 threads, 96
    registers), so it takes two vectors only up to 160 positions. Given ``batch`` and the GPU's ``sms``: one
    vector where the two-vector grid (4 directions x batch x vector pairs) would fill at most half the SMs, so
    twice the blocks still get an SM each (measured 1.1-1.2x faster at B <= 4, C=64, grids 74 and 147; slower
    from one two-vector block per SM on, results/h200/2026-11-30-image-v4/run4-vectors)."""
    side = max(H, W)
    if side <= 256:
        two = C > cpt and (not adjoint or side <= 160)
        if two and sms and 2 * (4 * batch * -(-C // (2 * cpt))) <= sms:
            two = False
        return FastConfig(nv=2 if two else 1, ppt=1)
    return FastConfig(nv=1, ppt=2)


def _fwd_expression(dt: int, config: FastConfig, vec: bool = True, adjoint: bool = False) -> str:
    flags = f"{config.ppt}, {config.depth}, {str(vec).lower()}, {str(config.fast_sigmoid).lower()}"
    if config.ring == "regs":
        if adjoint:
            raise ValueError("cuda_scan: the adjoint runs on the smem ring only")
        return f"cgspn_fwd_regs<{dt}, {flags}>"
    return f"cgspn_rows<{dt}, {config.nv}, {flags}, {str(adjoint).lower()}>"


def _combine_expression(dt: int, vec: bool) -> str:
    return f"cgspn_combine<{dt}, {str(vec).lower()}>"


def _epilogue_expression(dt: int, vec: bool) -> str:
    return f"cgspn_bwd_epilogue<{dt}, {str(vec).lower()}>"


def _vector_ok(tensors: list[torch.Tensor], cpt: int) -> bool:
    """16-byte vector loads: every base 16-byte aligned, every stride (elements) and C a multiple of CPT."""
    return all(t.data_ptr() % 16 == 0 and all(s % cpt == 0 for s in t.stride()[:-1]) and t.shape[-1] % cpt == 0
               for t in tensors)


_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES


class _Launch:
    """One kernel's launches through ``cuLaunchKernel`` with its arguments written into one reusable buffer:
    8 bytes per argument (signed; the kernel reads 4 of an int's, little-endian), an array of pointers to them.
    The driver copies the arguments at launch, so the buffer is free again on return; a lock keeps two
    threads from filling it at once. ``smem``: the dynamic shared-memory limit already raised to (the opt-in
    above 48 KB, a function attribute on the device)."""

    __slots__ = ("function", "pointer", "launch_kernel", "packer", "slots", "params", "lock", "smem")

    def __init__(self, function, pointer: int, nargs: int):
        self.function = function  # the CuPy RawKernel: keeps the module (and the function pointer) alive
        self.pointer = pointer  # its CUfunction on one device
        self.launch_kernel = _cupy().cuda.driver.launchKernel
        self.packer = struct.Struct("<" + "q" * nargs)
        self.slots = (ctypes.c_uint64 * nargs)()
        base = ctypes.addressof(self.slots)
        self.params = (ctypes.c_void_p * nargs)(*(base + 8 * i for i in range(nargs)))
        self.lock = threading.Lock()
        self.smem = 48 * 1024

    def __call__(self, grid: tuple[int, int, int], block: int, smem: int, stream: int, args: tuple[int, ...]) -> None:
        with self.lock:
            self.packer.pack_into(self.slots, 0, *args)
            self.launch_kernel(self.pointer, grid[0], grid[1], grid[2], block, 1, 1, smem, stream,
                                ctypes.addressof(self.params), 0)


@functools.cache
def _launcher(expression: str, nargs: int, source: str, device: int) -> _Launch:
    """The launcher of one instantiation on one device (CuPy loads the module per device)."""
    function = _module(expression, source)
    with _cupy().cuda.Device(device):
        return _Launch(function, function.kernel.ptr, nargs)


def launch(expression: str, grid: tuple[int, int, int], block: int, smem: int, device: int, args: tuple[int, ...],
           source: str = SOURCE, stream: int | None = None) -> None:
    """Launch ``expression`` (a template instantiation of ``source``) on ``stream`` (default: torch's current
    stream of CUDA device ``device``); ``args`` are Python ints (pointers, int32 and int64 values alike). Raises
    the dynamic shared-memory limit first when ``smem`` needs the opt-in."""
    kernel = _launcher(expression, len(args), source, device)
    if smem > kernel.smem:
        _cupy().cuda.driver.funcSetAttribute(kernel.pointer, _MAX_DYNAMIC_SHARED_SIZE_BYTES, smem)
        kernel.smem = smem
    if stream is None:
        stream = torch.cuda.current_stream(device).cuda_stream
    if device == torch.cuda.current_device():
        kernel(grid, block, smem, stream, args)
    else:  # the module lives in that device's context
        with torch.cuda.device(device):
            kernel(grid, block, smem, stream, args)


def _threads(config: FastConfig, H: int, W: int) -> int:
    """Threads per block: vectors x the longer side's positions / PPT, whole warps."""
    positions = -(-max(H, W) // config.ppt)
    return -(-(config.nv * positions) // 32) * 32


def _rows_smem(config: FastConfig, cpt: int, nt: int, adjoint: bool) -> int:
    """Dynamic shared memory of ``cgspn_rows`` / ``cgspn_fwd_regs``: the edge array (and the smem ring)."""
    if config.ring == "regs":
        return 2 * 2 * (cpt // 4) * nt * 16
    kinds = 2 if config.ppt > 1 or adjoint else 1
    return (2 * kinds * (cpt // 4) + config.depth * 5 * config.ppt) * nt * 16


def _scan_rows(dt: int, config: FastConfig, adjoint: bool, in0: torch.Tensor, in1: torch.Tensor, gates: torch.Tensor,
               out: torch.Tensor, index: int, stream: int) -> None:
    """One launch of the row skeleton (either ring): forward (x, lam, gates -> hs) or adjoint (dy, u, gates -> adj)."""
    B, H, W, C = in0.shape
    cpt = 16 // in0.element_size()
    nt = _threads(config, H, W)
    limit = 256 if config.ppt > 1 else (320 if adjoint else 512)
    if nt > limit:  # the kernel's launch bounds
        raise ValueError(f"cuda_scan: {nt} threads per block for {config} at {H}x{W} (at most {limit})")
    vec = _vector_ok([in0, in1, gates, out], cpt)
    s0, s1, sg, so = in0.stride(), in1.stride(), gates.stride(), out.stride()
    launch(_fwd_expression(dt, config, vec, adjoint), (-(-C // (cpt * config.nv)), B, 4), nt,
           _rows_smem(config, cpt, nt, adjoint), index,
           (in0.data_ptr(), in1.data_ptr(), gates.data_ptr(), out.data_ptr(), H, W, C, *s0[:3], *s1[:3], *sg[:4],
            *so[:4]), stream=stream)


def _elementwise_blocks(npix: int, C: int, cpt: int) -> int:
    """Blocks of 256 threads for one thread per (pixel, cpt channels), capped at 16 per SM of an H100/H200 (grid-stride)."""
    return max(1, min(-(-(npix * -(-C // cpt)) // 256), 132 * 16))


def scan_forward(x: torch.Tensor, lam: torch.Tensor, u: torch.Tensor, gates: torch.Tensor,
                 config: FastConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, hs)``: y ``(B, H, W, C)`` contiguous and the four directions' states ``hs (4, B, H, W, C)``
    (tb, bt, lr, rl) in x's dtype, the layout both backwards read. Inputs: any strides with unit stride on
    C (views of the layer's head); the caller checked :func:`unavailable_reason`."""
    B, H, W, C = x.shape
    dt = _DTYPE_CODE[x.dtype]
    cpt = 16 // x.element_size()
    index = device_index(x.device)
    config = config or pick_config(H, W, C, cpt, batch=B, sms=sm_count(index))
    hs = torch.empty((4, B, H, W, C), device=x.device, dtype=x.dtype)
    y = torch.empty((B, H, W, C), device=x.device, dtype=x.dtype)
    stream = torch.cuda.current_stream(index).cuda_stream
    _scan_rows(dt, config, False, x, lam, gates, hs, index, stream)
    npix = B * H * W
    su, sh = u.stride(), hs.stride()
    launch(_combine_expression(dt, _vector_ok([hs, u, y], cpt)), (_elementwise_blocks(npix, C, cpt), 1, 1), 256, 0,
           index, (hs.data_ptr(), u.data_ptr(), y.data_ptr(), npix, H, W, C, sh[0], *su[:3]), stream=stream)
    return y, hs


def scan_backward(x: torch.Tensor, lam: torch.Tensor, u: torch.Tensor, gates: torch.Tensor, hs: torch.Tensor,
                  dy: torch.Tensor, out: tuple[torch.Tensor, ...] | None = None,
                  config: FastConfig | None = None) -> tuple[torch.Tensor, ...]:
    """``(dx, dlam, du, dgates)`` of :func:`scan_forward` from its inputs, its ``hs`` and ``dy`` (unit stride on
    C), written into ``out`` (the same four, any strides with unit stride on C, e.g. slices of the head
    gradient) when given. Two launches: the adjoint of every direction (``adj (4, B, H, W, C)`` in x's
    dtype) on the forward's row skeleton, then one elementwise pass: dx = lam sum_d a_d, dlam = x sum_d a_d,
    du = dy sum_d h_d and the raw-gate gradient from a_d times the previous row's h (per direction pair,
    through Eq. 2). 12 + 2 + 8 + 14 bytes per (b, pixel, channel) and direction-sum (NOTES.md Round 7)."""
    B, H, W, C = x.shape
    dt = _DTYPE_CODE[x.dtype]
    cpt = 16 // x.element_size()
    index = device_index(x.device)
    config = config or pick_config(H, W, C, cpt, adjoint=True, batch=B, sms=sm_count(index))
    if out is None:
        out = tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (x, lam, u, gates))
    dx, dlam, du, dg = out
    adj = torch.empty((4, B, H, W, C), device=x.device, dtype=x.dtype)
    stream = torch.cuda.current_stream(index).cuda_stream
    _scan_rows(dt, config, True, dy, u, gates, adj, index, stream)
    npix = B * H * W
    tensors = [adj, hs, gates, x, lam, dy, dx, dlam, du, dg]
    vec = _vector_ok(tensors, cpt)
    strides = (*gates.stride()[:4], *x.stride()[:3], *lam.stride()[:3], *dy.stride()[:3], *dx.stride()[:3],
               *dlam.stride()[:3], *du.stride()[:3], *dg.stride()[:4])
    launch(_epilogue_expression(dt, vec), (_elementwise_blocks(npix, C, cpt // 2), 1, 1), 256, 0, index,
           (*(t.data_ptr() for t in tensors), npix, H, W, C, adj.stride(0), *strides), stream=stream)
    return dx, dlam, du, dg


def write_source(path: str, configs: list[FastConfig] | None = None) -> None:
    """The source with explicit instantiations (default: every configuration the host can launch, each
    dtype, vector and element loads; the adjoint on the smem ring), for ``nvcc -arch=sm_90 -Xptxas -v -c``
    (registers, spills)."""
    lines = [SOURCE]
    args = "(const void*, const void*, const void*, void*, int, int, int" + ", i64" * 14 + ")"
    if configs is None:
        configs = [FastConfig("regs", 1, ppt, depth, fast) for ppt in (1, 2) for depth in (1, 2, 3) for fast in (False, True)]
        configs += [FastConfig("smem", nv, ppt, depth, fast) for nv in (1, 2) for ppt in (1, 2) for depth in (2, 3, 4)
                    for fast in (False, True)]
    for dt in (0, 1, 2):
        for config in configs:
            for vec in (True, False):
                lines.append(f"template __global__ void {_fwd_expression(dt, config, vec)}{args};")
                if config.ring == "smem":
                    lines.append(f"template __global__ void {_fwd_expression(dt, config, vec, adjoint=True)}{args};")
        for vec in (True, False):
            lines.append(f"template __global__ void {_combine_expression(dt, vec)}"
                         "(const void*, const void*, void*, int, int, int, int, i64, i64, i64, i64);")
            lines.append(f"template __global__ void {_epilogue_expression(dt, vec)}(const void*, const void*, const void*, "
                         "const void*, const void*, const void*, void*, void*, void*, void*, int, int, int, int"
                         + ", i64" * 27 + ");")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-source", required=True, help="file to write the CUDA source (all instantiations) to")
    write_source(parser.parse_args().write_source)
