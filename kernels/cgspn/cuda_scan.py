"""The C-GSPN scan's GPU fast path: a CUDA C++ forward compiled at first use (NVRTC through CuPy).

What it is for: the Triton quad forward spends its time on a global scratch tile for the neighbour
shift, on 43% padding lanes (P=147 -> 256) and on registers (NOTES.md, Round 4). This forward
(source and design: :mod:`kernels.cgspn.cuda_scan_source`) keeps the same algorithm and memory
contract -- one program per (channel vector, batch element, direction), each direction's h stored in
the input dtype as ``hs (4, B, H, W, C)``, then ``y = u * sum_d h_d`` -- but exchanges neighbours in
shared memory, pads to a warp instead of a power of two, and keeps DEPTH rows of loads in flight.
Because ``hs`` is the Triton quad backward's input, the backward stays the Triton one
(:func:`kernels.cgspn.scan_quad._scan_quad_bwd`).

Selection (:func:`unavailable_reason`): CUDA tensors on an sm_90 device (the only architecture it has
been verified on), CuPy importable, the module compiled, ``CGSPN_FAST_PATH`` not ``0``, float32/
bfloat16/float16, both grid sides <= 512 (a state row must fit one block). Otherwise callers run the
Triton path and report the reason. Nothing here imports CuPy or touches CUDA until a CUDA tensor asks.
"""

from __future__ import annotations

import functools
import os
import threading

import torch

from kernels.cgspn.cuda_scan_source import SOURCE

__all__ = ["FastConfig", "allow_shared_memory", "device_index", "device_unavailable_reason", "first_line", "pick_config",
           "scan_forward", "unavailable_reason", "write_source"]

ENV_SWITCH = "CGSPN_FAST_PATH"  # "0" disables the fast path (the Triton path runs)
SUPPORTED_CAPABILITIES = ((9, 0),)
MAX_SIDE = 512  # PPT=1 up to 256 positions per row, PPT=2 up to 512 (<= 256 threads per block)
_DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_lock = threading.Lock()
_SMEM_SET: dict[int, int] = {}  # id(kernel) -> dynamic shared memory limit already raised to


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
        return f"cupy not importable ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
    try:
        with cupy.cuda.Device(device_index):
            _module(_fwd_expression(1, FastConfig()))  # the bf16 default (smem ring, two vectors per block)
            _module(_combine_expression(1, True))
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


def allow_shared_memory(kernel, nbytes: int) -> None:
    """Raise ``kernel``'s dynamic shared-memory limit to ``nbytes`` when that is above the default 48 KB
    (the opt-in), once per kernel and size."""
    if nbytes > 48 * 1024 and _SMEM_SET.get(id(kernel), 0) < nbytes:
        kernel.max_dynamic_shared_size_bytes = nbytes
        _SMEM_SET[id(kernel)] = nbytes


def device_unavailable_reason(device: torch.device | str) -> str | None:
    """None when the fast path can run on ``device``, else the reason (no exception is raised)."""
    device = torch.device(device)
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return f"disabled by {ENV_SWITCH}=0"
    if device.type != "cuda":
        return f"device {device.type} is not CUDA"
    if not torch.cuda.is_available():
        return "torch has no CUDA"
    index = device_index(device)
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


def pick_config(H: int, W: int, C: int, cpt: int) -> FastConfig:
    """One thread per state position while a row fits (<= 256), two vectors per block (a 32-byte sector
    per pixel) when C has two; rows up to 512 take two positions per thread and one vector (registers and
    shared memory of a 256-thread block)."""
    if max(H, W) <= 256:
        return FastConfig(nv=2 if C > cpt else 1, ppt=1)
    return FastConfig(nv=1, ppt=2)


def _fwd_expression(dt: int, config: FastConfig, vec: bool = True) -> str:
    flags = f"{config.ppt}, {config.depth}, {str(vec).lower()}, {str(config.fast_sigmoid).lower()}"
    if config.ring == "regs":
        return f"cgspn_fwd_regs<{dt}, {flags}>"
    return f"cgspn_fwd<{dt}, {config.nv}, {flags}>"


def _combine_expression(dt: int, vec: bool) -> str:
    return f"cgspn_combine<{dt}, {str(vec).lower()}>"


def _vector_ok(tensors: list[torch.Tensor], cpt: int) -> bool:
    """16-byte vector loads: every base 16-byte aligned, every stride (elements) and C a multiple of CPT."""
    return all(t.data_ptr() % 16 == 0 and all(s % cpt == 0 for s in t.stride()[:-1]) and t.shape[-1] % cpt == 0
               for t in tensors)


def _stream(cupy, device_index: int):
    return cupy.cuda.ExternalStream(torch.cuda.current_stream(device_index).cuda_stream, device_index)


def scan_forward(x: torch.Tensor, lam: torch.Tensor, u: torch.Tensor, gates: torch.Tensor,
                 config: FastConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, hs)``: y ``(B, H, W, C)`` contiguous and the four directions' states ``hs (4, B, H, W, C)``
    (tb, bt, lr, rl) in x's dtype, the layout the Triton quad backward reads. Inputs: any strides with
    unit stride on C (views of the layer's head); the caller checked :func:`unavailable_reason`."""
    import numpy as np  # noqa: PLC0415

    cupy = _cupy()
    B, H, W, C = x.shape
    dt = _DTYPE_CODE[x.dtype]
    cpt = 16 // x.element_size()
    config = config or pick_config(H, W, C, cpt)
    hs = torch.empty((4, B, H, W, C), device=x.device, dtype=x.dtype)
    y = torch.empty((B, H, W, C), device=x.device, dtype=x.dtype)
    index = device_index(x.device)
    vec = _vector_ok([x, lam, gates, hs], cpt)
    fwd = _module(_fwd_expression(dt, config, vec))
    positions = -(-max(H, W) // config.ppt)  # threads per block: vectors x the longer side's positions / PPT, whole warps
    nt = -(-(config.nv * positions) // 32) * 32
    if nt > (256 if config.ppt > 1 else 512):  # the kernel's launch bounds
        raise ValueError(f"cuda_scan: {nt} threads per block for {config} at {H}x{W}")
    kinds = 2 if config.ppt > 1 else 1
    if config.ring == "regs":
        smem_bytes = 2 * 2 * (cpt // 4) * nt * 16
    else:
        smem_bytes = (2 * kinds * (cpt // 4) + config.depth * 5 * config.ppt) * nt * 16
        allow_shared_memory(fwd, smem_bytes)
    i64, i32, ptr = np.int64, np.int32, np.uint64
    sx, sl, sg, sh = x.stride(), lam.stride(), gates.stride(), hs.stride()
    with cupy.cuda.Device(index), _stream(cupy, index):
        fwd((-(-C // (cpt * config.nv)), B, 4), (nt, 1, 1),
            (ptr(x.data_ptr()), ptr(lam.data_ptr()), ptr(gates.data_ptr()), ptr(hs.data_ptr()), i32(H), i32(W), i32(C),
             i64(sx[0]), i64(sx[1]), i64(sx[2]), i64(sl[0]), i64(sl[1]), i64(sl[2]),
             i64(sg[0]), i64(sg[1]), i64(sg[2]), i64(sg[3]), i64(sh[0]), i64(sh[1]), i64(sh[2]), i64(sh[3])),
            shared_mem=smem_bytes)
        cvec = _vector_ok([hs, u, y], cpt)
        combine = _module(_combine_expression(dt, cvec))
        npix = B * H * W
        work = npix * -(-C // cpt)
        blocks = max(1, min(-(-work // 256), 132 * 16))
        su = u.stride()
        combine((blocks,), (256,), (ptr(hs.data_ptr()), ptr(u.data_ptr()), ptr(y.data_ptr()), i32(npix), i32(H), i32(W),
                                    i32(C), i64(sh[0]), i64(su[0]), i64(su[1]), i64(su[2])))
    return y, hs


def write_source(path: str, configs: list[FastConfig] | None = None) -> None:
    """The source with explicit instantiations (default: every configuration the host can launch, each
    dtype, vector and element loads), for ``nvcc -arch=sm_90 -Xptxas -v -c`` (registers, spills)."""
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
        for vec in (True, False):
            lines.append(f"template __global__ void {_combine_expression(dt, vec)}"
                         "(const void*, const void*, void*, int, int, int, int, i64, i64, i64, i64);")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-source", required=True, help="file to write the CUDA source (all instantiations) to")
    write_source(parser.parse_args().write_source)
