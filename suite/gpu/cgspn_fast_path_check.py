"""GPU check and timing of the C-GSPN scan's CUDA fast path (``variant="cuda-fast"``) against the Triton path.

Run on an H100/H200 from the repository root::

    PYTHONPATH=. python -m suite.gpu.cgspn_fast_path_check --out $OUT

1. Build: compile the CUDA module (NVRTC through CuPy), report the selection (``scan_backend``).
2. Correctness, every case vs the float64 reference (on the GPU) with the tolerances of
   ``suite/tests/test_cgspn_scan.py`` and vs the Triton quad-scratch path: forward and every gradient
   (fp32/bf16/fp16, odd and non-square grids, channel counts off the 16-byte vector, strided head views,
   saturated and below-clamp gates, both positions-per-thread layouts, every prefetch depth), B=32 at
   147x147 in bf16 fwd+bwd against an fp32 reference, and (``--big``) the > 2^31-element index case.
3. Timing (first, before any check touches a shape: Triton autotunes per (H, W, C), not per batch),
   ``cgspn_scan_head`` as the layer calls it, Triton quad-scratch vs cuda-fast (and, for fwd+bwd, the CUDA
   forward with the Triton backward, ``cuda-fwd-triton-bwd``), CUDA events (eager) and CUDA-graph replays
   (``suite.measure``): B=32, C_c=64, bf16, grids 27/37/74/147, fwd and fwd+bwd; C_c 32 and 384, B=1, fp32;
   then the fast path's launch configurations at 74 and 147.
4. Host time of one eager forward at grid 27 (B=32, C_c=64, bf16), taken apart: the public call, the custom
   operator, ``scan_forward`` itself, one bare launch, the two output allocations (``perf_counter`` over
   back-to-back calls, synchronized once), and a cProfile of the public call.

Writes ``<out>/fast_path_check.json`` and prints a table last. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from kernels.cgspn import cgspn_scan, cgspn_scan_reference, cuda_scan, head_views
from kernels.cgspn import scan as scan_module
from suite.gpu.common import CheckLog, gpu_report, measure_copy_bandwidth, print_table
from suite.measure import TimingSettings, measure_cuda, measure_cuda_graph

TOLERANCE = {torch.float32: 1e-5, torch.float16: 4 * torch.finfo(torch.float16).eps,
             torch.bfloat16: 4 * torch.finfo(torch.bfloat16).eps}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FAST, TRITON, FAST_FWD = "cuda-fast", "quad-scratch", "cuda-fwd-triton-bwd"
TIMING = TimingSettings(budget_ms=80, warmup_ms=15, min_reps=5, max_reps=200, l2_flush="auto", cuda_graph=True)


def rel_rms(out: torch.Tensor, ref: torch.Tensor) -> float:
    diff = (out.double() - ref.double()).pow(2).mean().sqrt()
    err = (diff / ref.double().pow(2).mean().sqrt().clamp_min(1e-9)).item()
    return err if err == err and err != float("inf") else float("inf")


def gates_of(kind: str, shape, gen):
    B, H, W, C = shape
    if kind == "random":
        return torch.randn(B, H, W, 3, C, generator=gen)
    if kind == "saturated+-30":
        return 30.0 * torch.sign(torch.randn(B, H, W, 3, C, generator=gen))
    if kind == "all-equal":
        return torch.full((B, H, W, 3, C), 0.7)
    if kind == "all-very-negative":
        return torch.full((B, H, W, 3, C), -30.0)
    raise ValueError(kind)


def with_grads(fn, leaves_in, dy, dtype):
    leaves = [t.detach().clone().to(dtype).requires_grad_(True) for t in leaves_in]
    out = fn(*leaves)
    out.backward(dy.to(dtype))
    return [out.detach()] + [t.grad for t in leaves]


def check_split(shape, dtype, gate_kind="random", seed=0, ref_dtype=torch.float64, triton=True):
    """cgspn_scan (x, lam, u, gates) with variant cuda-fast vs the reference and (``triton``) vs quad-scratch."""
    gen = torch.Generator().manual_seed(seed)
    B, H, W, C = shape
    ins = [torch.randn(B, H, W, C, generator=gen) for _ in range(3)] + [gates_of(gate_kind, shape, gen)]
    ins = [t.cuda() for t in ins]
    dy = torch.randn(shape, generator=gen).cuda()
    fast = with_grads(lambda *a: cgspn_scan(*a, variant=FAST), ins, dy, dtype)
    ref = with_grads(cgspn_scan_reference, ins, dy, ref_dtype)
    tri = with_grads(lambda *a: cgspn_scan(*a, variant=TRITON), ins, dy, dtype) if triton else ref
    names = ("y", "dx", "dlam", "du", "dgates")
    return {n: {"vs_ref": rel_rms(a, r), "triton_vs_ref": rel_rms(t, r) if triton else None,
                "vs_triton": rel_rms(a, t) if triton else None}
            for n, a, t, r in zip(names, fast, tri, ref, strict=True)}


def check_head(shape, dtype, layout="contiguous", seed=1):
    """cgspn_scan_head (the layer's call) on a head tensor, contiguous or heads-outer (every stride differs)."""
    gen = torch.Generator().manual_seed(seed)
    B, H, W, C = shape
    x = torch.randn(B, H, W, C, generator=gen).cuda()
    head = (torch.randn(B, H, W, 5, C, generator=gen) if layout == "contiguous"
            else torch.randn(B, 5, H, W, C, generator=gen).permute(0, 2, 3, 1, 4)).cuda()
    dy = torch.randn(shape, generator=gen).cuda()
    out = {}
    for name, variant in (("fast", FAST), ("triton", TRITON)):
        xl = x.detach().to(dtype).requires_grad_(True)
        hl = head.detach().to(dtype).clone() if dtype != head.dtype else head.detach().clone()
        if layout != "contiguous":  # keep the strided layout in the target dtype
            hl = torch.empty_strided(head.shape, head.stride(), device="cuda", dtype=dtype).copy_(head)
        hl.requires_grad_(True)
        y = scan_module.cgspn_scan_head(xl, hl, variant=variant)
        y.backward(dy.to(dtype))
        out[name] = (y.detach(), xl.grad, hl.grad)
    xr, hr = x.double().requires_grad_(True), head.double().requires_grad_(True)
    yr = cgspn_scan_reference(xr, *head_views(hr))
    yr.backward(dy.double())
    ref = (yr.detach(), xr.grad, hr.grad)
    return {n: {"vs_ref": rel_rms(f, r), "triton_vs_ref": rel_rms(t, r), "vs_triton": rel_rms(f, t)}
            for n, f, t, r in zip(("y", "dx", "dhead"), out["fast"], out["triton"], ref, strict=True)}


def fast_configs():
    """The launch configurations compared: the default (smem ring, 2 vectors, 1 position, depth 3) first."""
    F = cuda_scan.FastConfig
    return [F("smem", 2, 1, 3), F("smem", 2, 1, 2), F("smem", 2, 1, 4), F("smem", 2, 1, 3, True), F("smem", 1, 1, 3),
            F("smem", 2, 2, 3), F("smem", 1, 2, 3), F("regs", 1, 1, 3), F("regs", 1, 1, 2)]


def check_configs(shape, dtype):
    """Every launch configuration's forward (y and hs) vs the default configuration's and the reference's y."""
    gen = torch.Generator().manual_seed(2)
    B, H, W, C = shape
    ins = [torch.randn(B, H, W, C, generator=gen).cuda().to(dtype) for _ in range(3)]
    gates = torch.randn(B, H, W, 3, C, generator=gen).cuda().to(dtype)
    ref = cgspn_scan_reference(*(t.double() for t in (*ins, gates)))
    base_y, base_hs = cuda_scan.scan_forward(*ins, gates)
    rows = {}
    for cfg in fast_configs():
        try:
            y, hs = cuda_scan.scan_forward(*ins, gates, config=cfg)
        except ValueError as error:  # a configuration that cannot hold this row (threads per block)
            rows[repr(cfg)] = {"skipped": str(error)}
            continue
        rows[repr(cfg)] = {"y_vs_ref": rel_rms(y, ref), "y_vs_default": rel_rms(y, base_y), "hs_vs_default": rel_rms(hs, base_hs)}
    return rows


def run_checks(args, report) -> bool:
    log = CheckLog(report["checks"])
    record, checks = log.record, report["checks"]

    for dname, dtype in DTYPES.items():
        record(f"split 3x37x54x40 {dname}", lambda dtype=dtype: check_split((3, 37, 54, 40), dtype), TOLERANCE[dtype])
    for layout in ("contiguous", "heads-outer"):
        for dname in ("fp32", "bf16"):
            dtype = DTYPES[dname]
            record(f"head 2x37x54x40 {layout} {dname}",
                   lambda dtype=dtype, layout=layout: check_head((2, 37, 54, 40), dtype, layout), TOLERANCE[dtype])
    odd = [(1, 1, 1, 8), (1, 1, 7, 3), (1, 6, 1, 3), (3, 5, 7, 1), (2, 20, 73, 64), (2, 27, 27, 20), (1, 300, 17, 24),
           (1, 9, 512, 16), (2, 64, 64, 8), (1, 13, 200, 64)]  # 200: the adjoint's one-vector blocks
    fp32 = torch.float32
    for shape in odd:
        record(f"split {'x'.join(map(str, shape))} fp32", lambda shape=shape: check_split(shape, fp32, triton=False), 1e-5)
    record("split 1x13x200x64 bf16 (adjoint: one vector per block)",
           lambda: check_split((1, 13, 200, 64), torch.bfloat16), TOLERANCE[torch.bfloat16])
    for dname in ("bf16", "fp16"):  # 20 channels: element loads (not a whole 16-byte vector), one dead vector
        dtype = DTYPES[dname]
        record(f"split 2x27x27x20 {dname}", lambda d=dtype: check_split((2, 27, 27, 20), d, triton=False), TOLERANCE[dtype])
    for kind in ("saturated+-30", "all-equal", "all-very-negative"):
        record(f"gates {kind} 2x37x54x16 fp32", lambda kind=kind: check_split((2, 37, 54, 16), fp32, kind, triton=False), 1e-5)
        record(f"gates {kind} 2x147x147x64 fp32 (fp32 ref)",
               lambda kind=kind: check_split((2, 147, 147, 64), fp32, kind, triton=False, ref_dtype=fp32), 1e-5)
        record(f"gates {kind} 2x74x74x64 bf16", lambda kind=kind: check_split((2, 74, 74, 64), torch.bfloat16, kind),
               TOLERANCE[torch.bfloat16])
    record("split 2x147x147x64 fp16", lambda: check_split((2, 147, 147, 64), torch.float16), TOLERANCE[torch.float16])
    # B=32 at the target shape, fp32 reference on the GPU (float64 would take minutes)
    record("split 32x147x147x64 bf16 (fp32 ref)",
           lambda: check_split((32, 147, 147, 64), torch.bfloat16, ref_dtype=torch.float32), TOLERANCE[torch.bfloat16])
    t0 = time.perf_counter()
    try:
        cfg = {"147 bf16": check_configs((2, 147, 147, 64), torch.bfloat16),
               "300x17 fp32": check_configs((1, 300, 17, 24), torch.float32)}
        checks["configs"] = cfg
        bad = [(k, n, v) for k, rows in cfg.items() for n, v in rows.items()
               if "skipped" not in v and not (v["y_vs_ref"] <= (1e-5 if "fp32" in k else TOLERANCE[torch.bfloat16]))]
        checks["configs"]["pass"] = not bad
        log.ok = log.ok and not bad
        print(f"[check] configs: {'ok' if not bad else f'FAIL {bad}'} ({time.perf_counter() - t0:.1f} s)", flush=True)
        for k, rows in cfg.items():
            if isinstance(rows, dict):
                for n, v in rows.items():
                    if isinstance(v, dict) and "skipped" not in v:
                        print(f"   {k} {n}: y_vs_ref {v['y_vs_ref']:.2e} y_vs_default {v['y_vs_default']:.2e} hs_vs_default "
                              f"{v['hs_vs_default']:.2e}")
    except Exception as error:
        checks["configs"] = {"error": f"{type(error).__name__}: {error}", "pass": False}
        log.ok = False
        print(f"[check] configs: ERROR {error}", flush=True)
    return log.ok


def run_big_check(args, report) -> bool:
    """The > 2^31-element index case, forward and backward, run last so that a crash there cannot cost the
    timings: y and every gradient of the last batch element vs an fp32 reference of that element alone."""
    ok = True
    checks = report["checks"]
    if args.big:
        t0 = time.perf_counter()
        name = "index past 2^31 (32x147x147x3200 bf16 fwd+bwd, last batch)"
        try:
            B, H, W, C = 32, 147, 147, 3200
            gen = torch.Generator(device="cuda").manual_seed(0)
            leaves = [torch.randn(B, H, W, C, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3)]
            leaves.append(torch.randn(B, H, W, 3, C, device="cuda", dtype=torch.bfloat16, generator=gen))
            dy = torch.randn(B, H, W, C, device="cuda", dtype=torch.bfloat16, generator=gen)
            for t in leaves:
                t.requires_grad_(True)
            y = cgspn_scan(*leaves, variant=FAST)
            y.backward(dy)
            last = slice(B - 1, B)
            ours = [y.detach()[last]] + [t.grad[last] for t in leaves]
            del y
            ref_leaves = [t.detach()[last].float().requires_grad_(True) for t in leaves]
            ref_y = cgspn_scan_reference(*ref_leaves)
            ref_y.backward(dy[last].float())
            refs = [ref_y.detach()] + [t.grad for t in ref_leaves]
            errors = {n: rel_rms(a, r) for n, a, r in zip(("y", "dx", "dlam", "du", "dgates"), ours, refs, strict=True)}
            passed = all(e <= TOLERANCE[torch.bfloat16] for e in errors.values())
            checks[name] = {**{n: {"vs_ref": e} for n, e in errors.items()}, "pass": passed}
            ok = passed
            print(f"[check] {name}: {'ok' if passed else 'FAIL'} {errors} ({time.perf_counter() - t0:.1f} s)", flush=True)
        except Exception as error:
            checks[name] = {"error": f"{type(error).__name__}: {error}", "pass": False}
            ok = False
            print(f"[check] {name}: ERROR {error}", flush=True)
        torch.cuda.empty_cache()
    return ok


def time_case(B, grid, C, dtype, mode, variant, copy_gbps, W=None):
    H, W = grid, W or grid
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(B, H, W, C, device="cuda", dtype=dtype, generator=gen)
    head = torch.randn(B, H, W, 5, C, device="cuda", dtype=dtype, generator=gen)
    dy = None if mode == "fwd" else torch.randn(B, H, W, C, device="cuda", dtype=dtype, generator=gen)
    return timed_scan_head(x, head, variant, mode, dy, copy_gbps)


def timed_scan_head(x, head, variant, mode, dy, copy_gbps, **fields) -> dict:
    """``cgspn_scan_head(x, head, variant)`` timed by :func:`timed_row`: the forward without autograd (``mode``
    "fwd"), else forward and backward of ``dy``; ideal bytes 7 (fwd) or 20 elements per (b, pixel, channel); the
    row names the shape, dtype, mode, ``fields``, the variant and the backend that ran."""
    if mode == "fwd":
        def step():
            with torch.no_grad():
                scan_module.cgspn_scan_head(x, head, variant=variant)
    else:
        x.requires_grad_(True)
        head.requires_grad_(True)

        def step():
            x.grad = None
            head.grad = None
            scan_module.cgspn_scan_head(x, head, variant=variant).backward(dy)
    B, H, W, C = x.shape
    ideal = (7 if mode == "fwd" else 20) * x.numel() * (torch.finfo(x.dtype).bits // 8)
    return timed_row(step, ideal, copy_gbps, {"B": B, "H": H, "W": W, "C": C, "dtype": str(x.dtype).replace("torch.", ""),
                                              "mode": mode, **fields, "variant": variant,
                                              "backend": scan_module.scan_backend(variant, x, head)})


def timed_row(step, ideal: float, copy_gbps: float | None, row: dict) -> dict:
    """``row`` with ``step`` timed eagerly and as CUDA-graph replays (:data:`TIMING`): medians, IQRs, why no
    graph (if none), the ideal bytes and their fraction of the copy bandwidth at the graph time (eager
    without a graph; None without ideal bytes)."""
    eager = measure_cuda(step, torch.device("cuda"), TIMING, ideal or None)
    graph, message = measure_cuda_graph(step, torch.device("cuda"), TIMING, ideal or None)
    row.update({"eager_ms": eager.median_ms, "eager_iqr_ms": eager.iqr_ms, "graph_ms": graph.median_ms if graph else None,
                "graph_iqr_ms": graph.iqr_ms if graph else None, "graph_message": message, "bytes_ideal": ideal})
    best = row["graph_ms"] or row["eager_ms"]
    row["bw_fraction"] = ideal / (best * 1e-3) / (copy_gbps * 1e9) if ideal and copy_gbps else None
    return row


def random_rows(B, grid, C, dtype, with_dy=False):
    """x, lam, u ``(B, grid, grid, C)``, the gates ``(B, grid, grid, 3, C)`` and (``with_dy``) dy, random on the GPU
    from one seeded generator."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    ins = [torch.randn(B, grid, grid, C, device="cuda", dtype=dtype, generator=gen) for _ in range(3)]
    gates = torch.randn(B, grid, grid, 3, C, device="cuda", dtype=dtype, generator=gen)
    if not with_dy:
        return ins, gates
    return ins, gates, torch.randn(B, grid, grid, C, device="cuda", dtype=dtype, generator=gen)


def time_config(B, grid, C, dtype, cfg, copy_gbps):
    ins, gates = random_rows(B, grid, C, dtype)
    ideal = 7 * B * grid * grid * C * (torch.finfo(dtype).bits // 8)
    graph, message = measure_cuda_graph(lambda: cuda_scan.scan_forward(*ins, gates, config=cfg), torch.device("cuda"), TIMING,
                                        ideal)
    ms = graph.median_ms if graph else None
    return {"B": B, "grid": grid, "C": C, "dtype": str(dtype).replace("torch.", ""), "config": repr(cfg), "graph_ms": ms,
            "message": message, "bw_fraction": ideal / (ms * 1e-3) / (copy_gbps * 1e9) if ms and copy_gbps else None}


#: (B, grid) of the channel-vector A/B (``--only-vectors``): from one block per SM and direction down to B=1
VECTOR_CASES = tuple((b, g) for g in (27, 74, 147) for b in (1, 2, 4, 8, 16, 32))


def time_vectors(B, grid, C=64, dtype=torch.bfloat16):
    """Forward and adjoint (backward's scan) device time with one and two 16-byte channel vectors per block: two
    read whole 32-byte sectors (the default, measured 2x faster at B=32, NOTES.md Round 5), one doubles the blocks
    where two leave SMs idle (small B). Also checks both give the same outputs (y, hs, every gradient)."""
    ins, gates, dy = random_rows(B, grid, C, dtype, with_dy=True)
    pair = 2 * (16 // ins[0].element_size())  # channels of two 16-byte vectors
    row = {"B": B, "grid": grid, "C": C, "dtype": str(dtype).replace("torch.", ""),
           "blocks_nv2": -(-C // pair) * B * 4, "sms": cuda_scan.sm_count(0)}
    outs = {}
    for nv in (1, 2):
        cfg = cuda_scan.FastConfig("smem", nv, 1, 3)
        y, hs = cuda_scan.scan_forward(*ins, gates, config=cfg)
        grads = cuda_scan.scan_backward(*ins, gates, hs, dy, config=cfg)
        outs[nv] = (y, hs, *grads)
        fwd, _ = measure_cuda_graph(lambda c=cfg: cuda_scan.scan_forward(*ins, gates, config=c), torch.device("cuda"), TIMING)
        bwd, _ = measure_cuda_graph(lambda c=cfg, h=hs: cuda_scan.scan_backward(*ins, gates, h, dy, config=c),
                                    torch.device("cuda"), TIMING)
        row[f"fwd_ms_nv{nv}"] = fwd.median_ms if fwd else None
        row[f"bwd_ms_nv{nv}"] = bwd.median_ms if bwd else None
    row["identical"] = all(torch.equal(a, b) for a, b in zip(outs[1], outs[2], strict=True))
    return row


def _host_us(fn, calls: int = 300) -> float:
    """Median over 5 rounds of the host microseconds per call of ``fn``, ``calls`` back-to-back calls per round
    (the device may lag behind; it is synchronized after each round)."""
    import statistics  # noqa: PLC0415

    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - t0) / calls * 1e6)
        torch.cuda.synchronize()
    return statistics.median(rounds)


def host_breakdown(B: int = 32, grid: int = 27, C: int = 64, dtype=torch.bfloat16) -> dict:
    """Host microseconds per eager forward call at one small grid, from the public call down to one launch."""
    import cProfile  # noqa: PLC0415
    import io  # noqa: PLC0415
    import pstats  # noqa: PLC0415

    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(B, grid, grid, C, device="cuda", dtype=dtype, generator=gen)
    head = torch.randn(B, grid, grid, 5, C, device="cuda", dtype=dtype, generator=gen)
    lam, u, gates = head_views(head)
    hs = torch.empty((4, B, grid, grid, C), device="cuda", dtype=dtype)
    y = torch.empty((B, grid, grid, C), device="cuda", dtype=dtype)
    cpt = 16 // x.element_size()
    npix = B * grid * grid
    sh, su = hs.stride(), u.stride()
    combine = cuda_scan._combine_expression(1 if dtype == torch.bfloat16 else 2, True)
    blocks = cuda_scan._elementwise_blocks(npix, C, cpt)
    parts = {}
    with torch.no_grad():
        parts["cgspn_scan_head (public)"] = _host_us(lambda: scan_module.cgspn_scan_head(x, head))
        parts["cgspn::scan_head (custom op)"] = _host_us(lambda: scan_module._scan_head_op(x, head, "auto"))
        parts["cuda_scan.scan_forward"] = _host_us(lambda: cuda_scan.scan_forward(x, lam, u, gates))
        parts["cuda_scan.unavailable_reason"] = _host_us(lambda: cuda_scan.unavailable_reason(x, head))
        parts["one launch (combine)"] = _host_us(lambda: cuda_scan.launch(
            combine, (blocks, 1, 1), 256, 0, 0, (hs.data_ptr(), u.data_ptr(), y.data_ptr(), npix, grid, grid, C, sh[0], *su[:3])))
        parts["two torch.empty"] = _host_us(lambda: (torch.empty((4, B, grid, grid, C), device="cuda", dtype=dtype),
                                                     torch.empty((B, grid, grid, C), device="cuda", dtype=dtype)))
        parts["triton quad-scratch (public)"] = _host_us(lambda: scan_module.cgspn_scan_head(x, head, variant=TRITON))
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(500):
            scan_module.cgspn_scan_head(x, head)
        profile.disable()
        torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(25)
    for name, us in parts.items():
        print(f"[host] {name}: {us:.1f} us", flush=True)
    print(text.getvalue()[:6000], flush=True)
    return {"shape": [B, grid, grid, C], "dtype": str(dtype), "us_per_call": parts, "cprofile_tottime": text.getvalue()[:20000]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--big", action="store_true",
                        help="also the > 2^31-element index check, forward and backward (~100 GB of GPU memory)")
    parser.add_argument("--skip-checks", action="store_true")
    parser.add_argument("--skip-configs", action="store_true")
    parser.add_argument("--skip-host", action="store_true", help="no host-time breakdown of the eager forward")
    parser.add_argument("--only-host", action="store_true", help="the host-time breakdown only (no timings, checks)")
    parser.add_argument("--only-big", action="store_true", help="the > 2^31-element check only (implies --big)")
    parser.add_argument("--only-vectors", action="store_true",
                        help="one vs two channel vectors per block, forward and adjoint, B=1-32 at grids 27/74/147")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        print("cgspn_fast_path_check: needs a CUDA GPU", file=sys.stderr)
        return 2
    report = gpu_report(checks={}, timings=[], configs=[])
    t0 = time.perf_counter()
    reason = cuda_scan.device_unavailable_reason("cuda")
    report["build"] = {"seconds": round(time.perf_counter() - t0, 2), "unavailable_reason": reason}
    print(f"[build] fast path: {'available' if reason is None else reason} ({report['build']['seconds']} s)", flush=True)
    copy_gbps = measure_copy_bandwidth(report)

    def save():
        (args.out / "fast_path_check.json").write_text(json.dumps(report, indent=1, default=str))

    if args.only_host:
        report["host"] = host_breakdown()
        save()
        return 0
    if args.only_vectors:
        report["vectors"] = []
        for B, grid in VECTOR_CASES:
            report["vectors"].append(time_vectors(B, grid))
            print(f"[vectors] {json.dumps(report['vectors'][-1])}", flush=True)
            save()
        return 0 if all(r["identical"] for r in report["vectors"]) else 1
    if args.only_big:
        args.big = True
        report["checks_pass"] = ok = run_big_check(args, report)
        save()
        return 0 if ok else 1
    cases = [(32, g, 64, torch.bfloat16, m) for g in (27, 37, 74, 147) for m in ("fwd", "fwd+bwd")]
    cases += [(32, 74, 32, torch.bfloat16, "fwd"), (32, 74, 384, torch.bfloat16, "fwd"), (32, 147, 384, torch.bfloat16, "fwd"),
              (1, 147, 64, torch.bfloat16, "fwd"), (1, 147, 64, torch.bfloat16, "fwd+bwd"), (32, 74, 64, torch.float32, "fwd"),
              (32, 147, 64, torch.float32, "fwd"), (32, 147, 64, torch.float16, "fwd"), (32, 147, 32, torch.bfloat16, "fwd+bwd")]
    if not args.skip_host:
        report["host"] = host_breakdown()
        save()
    for B, g, C, dtype, mode in cases:
        for variant in (TRITON, FAST) if mode == "fwd" else (TRITON, FAST_FWD, FAST):
            try:
                row = time_case(B, g, C, dtype, mode, variant, copy_gbps)
            except Exception as error:
                row = {"B": B, "H": g, "C": C, "dtype": str(dtype), "mode": mode, "variant": variant, "error": str(error)[:500]}
            report["timings"].append(row)
            print(f"[time] {json.dumps({k: v for k, v in row.items() if k not in ('graph_message',)}, default=str)}", flush=True)
            save()
    if not args.skip_configs:
        for g in (74, 147):
            for cfg in fast_configs():
                try:
                    row = time_config(32, g, 64, torch.bfloat16, cfg, copy_gbps)
                except Exception as error:
                    row = {"grid": g, "config": repr(cfg), "error": str(error)[:300]}
                report["configs"].append(row)
                print(f"[config] {json.dumps(row, default=str)}", flush=True)
        save()
    # checks after the timings: Triton's autotuner keys on (H, W, C) but not B, so a check at B=2 run
    # first would pick the configs the B=32 timings then reuse (seen in the first two runs at grid 74)
    ok = True if args.skip_checks else run_checks(args, report)
    report["checks_pass"] = ok
    save()
    if args.big:
        report["checks_pass"] = ok = run_big_check(args, report) and ok
        save()
    # the table: Triton vs fast per case
    lines = [["case", "mode", "triton ms (graph)", "fast ms (graph)", "fast eager", "speedup", "fast bw frac", "fwd+bwd/fwd",
              "fwd-only fast ms"]]
    by = {(r.get("B"), r.get("H"), r.get("C"), r.get("dtype"), r.get("mode"), r.get("variant")): r for r in report["timings"]}
    for B, g, C, dtype, mode in cases:
        d = str(dtype).replace("torch.", "")
        t, f = by.get((B, g, C, d, mode, TRITON), {}), by.get((B, g, C, d, mode, FAST), {})
        h = by.get((B, g, C, d, mode, FAST_FWD), {}).get("graph_ms")
        tg, fg = t.get("graph_ms"), f.get("graph_ms")
        ratio = ""
        if mode == "fwd+bwd":
            fw = by.get((B, g, C, d, "fwd", FAST), {}).get("graph_ms")
            ratio = f"{fg / fw:.2f}" if fg and fw else ""
        lines.append([f"B{B} {g}x{g} C{C} {d}", mode, f"{tg:.4f}" if tg else "-", f"{fg:.4f}" if fg else f.get("error", "-")[:30],
                      f"{f['eager_ms']:.4f}" if f.get("eager_ms") else "-", f"{tg / fg:.2f}x" if tg and fg else "-",
                      f"{f['bw_fraction']:.3f}" if f.get("bw_fraction") else "-", ratio, f"{h:.4f}" if h else "-"])
    print(f"\nchecks: {'ALL PASS' if ok else 'FAILURES (see above / JSON)'}; backend at bf16 147: "
          f"{next((r.get('backend') for r in report['timings'] if r.get('variant') == FAST), '?')}")
    print_table(lines)
    save()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
