"""GPU check and timing of the C-GSPN image forward (planar inputs) against the row fast path and Triton.

Run on an H100/H200 from the repository root::

    PYTHONPATH=. python -m suite.gpu.cgspn_image_check --out $OUT

1. Build: compile the image kernel, report the selection for planar and channels-last inputs.
2. Timing first (Triton autotunes per (H, W, C), not per batch; a check at B=2 must not choose the B=32
   configs): ``cgspn_scan_head`` as the layer calls it, B=32, C_c=64, bf16, grids 27/37/74/147, fwd and
   fwd+bwd, three ways in one run: planar inputs (image kernel), channels-last (row CUDA forward),
   channels-last Triton quad-scratch; then other channel counts, B=1, fp16, non-square grids; then the
   C-GSPN layer (C=1152, C_c=64) with ``layout="planar"`` vs ``"channels-last"``. CUDA events (eager) and
   CUDA-graph replays (``suite.measure``).
3. Correctness, every case vs the float64 reference on the GPU (tolerances of ``suite/tests/test_cgspn_scan.py``)
   and vs the Triton path on the same inputs: forward and every gradient (x, head, head bias), odd and
   non-square grids, 1-pixel sides, saturated / all-equal / below-clamp gates, with and without the head bias;
   B=32 at 147x147 against an fp32 reference; the planar layer vs the channels-last layer (same weights),
   eager, compiled (``torch.compile``) and CUDA-graph replay.

``--brief``: forward timings and a subset of the checks; ``--phases``: first, the kernel's per-phase clock
counters; ``--variants``: only the opt-in launch configurations (``ImageConfig``: an L2 prefetch of the next image,
two helper warps with two rows' loads in flight, one helper warp), bit for bit against the default configuration,
then timed.
Writes ``<out>/image_check.json``; prints a table last. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import torch

from kernels.cgspn import cgspn_scan_reference, cuda_image, head_views
from kernels.cgspn import scan as scan_module
from kernels.cgspn.cuda_image_source import DEFAULT_CONFIG, IMAGE_SOURCE, TIMING_SLOTS, ImageConfig, expression
from kernels.cgspn.layer import CGSPNLayer
from suite.gpu.cgspn_fast_path_check import TOLERANCE, gates_of, rel_rms, timed_row, timed_scan_head
from suite.gpu.common import CheckLog, gpu_report, measure_copy_bandwidth, print_table

LAYOUTS = ("planar-cb", "channels-last")
#: B=32, C_c=64 checks at these grids: 2048 images, several per persistent block at each of them
MANY_IMAGE_GRIDS = (27, 37, 74, 147)
#: the grids of :func:`run_brief_checks`
BRIEF_GRIDS = ((37, 54), (147, 147), (1, 1), (1, 7), (6, 1), (20, 73), (149, 149), (27, 27), (37, 37), (74, 74))
#: the grids the checks use (compiled in parallel first, see :func:`precompile`)
CHECK_GRIDS = ((37, 54), (147, 147), (1, 7), (6, 1), (1, 1), (5, 7), (20, 73), (27, 27), (100, 190), (9, 190), (190, 9),
               (74, 74), (2, 2), (33, 65), (149, 149), (37, 37))
WAYS = (("planar-cb", "cuda-image"), ("channels-last", "auto"), ("channels-last", "quad-scratch"))


def inputs(B, H, W, C, dtype, layout, gen, gate_kind="random", device="cuda"):
    """x ``(B, H, W, C)`` and head ``(B, H, W, 5, C)``: planar storage (B, C, H, W) / (B, 5, C, H, W) viewed,
    or channels-last contiguous; the same values either way for one generator state."""
    x = torch.randn(B, C, H, W, generator=gen)
    head = torch.randn(B, 5, C, H, W, generator=gen)
    if gate_kind != "random":
        head[:, 2:] = gates_of(gate_kind, (B, H, W, C), gen).permute(0, 3, 4, 1, 2)
    x, head = x.permute(0, 2, 3, 1), head.permute(0, 3, 4, 1, 2)
    if layout == "planar-cb":  # channels outermost: (C, B, H, W) and (5, C, B, H, W) storage, the layer's layout
        x = x.permute(3, 0, 1, 2).contiguous().permute(1, 2, 3, 0)
        head = head.permute(3, 4, 0, 1, 2).contiguous().permute(2, 3, 4, 0, 1)
    if layout == "channels-last":
        x, head = x.contiguous(), head.contiguous()
    return x.to(device=device, dtype=dtype), head.to(device=device, dtype=dtype)


def planar_like(t: torch.Tensor, dtype) -> torch.Tensor:
    """A copy of t in dtype with t's strides (the planar layout kept), as a leaf."""
    return torch.empty_strided(t.shape, t.stride(), device=t.device, dtype=dtype).copy_(t).requires_grad_(True)


def check_image(shape, dtype, gate_kind="random", bias=True, seed=0, ref_dtype=torch.float64, layout="planar"):
    """y, dx, dhead and the two bias gradients of the image path (cuda-image) vs the reference and vs Triton on
    the same inputs (planar ``(B, C, H, W)`` or, ``planar-cb``, channels outermost)."""
    gen = torch.Generator().manual_seed(seed)
    B, H, W, C = shape
    x, head = inputs(B, H, W, C, torch.float32, layout, gen, gate_kind)
    b = (0.5 * torch.randn(5 * C, generator=gen)).cuda() if bias else None
    xb = (0.5 * torch.randn(C, generator=gen)).cuda() if bias else None
    dy = torch.randn(B, H, W, C, generator=gen).cuda()
    backend = scan_module.scan_backend("cuda-image", x.to(dtype), head.to(dtype))
    if not backend.startswith("cuda-image"):
        raise AssertionError(f"the image path did not run: {backend}")
    out = {}
    for name, variant in (("image", "cuda-image"), ("triton", "quad-scratch")):
        xl, hl = planar_like(x, dtype), planar_like(head, dtype)
        bl = b.detach().to(dtype).requires_grad_(True) if bias else None
        xbl = xb.detach().to(dtype).requires_grad_(True) if bias else None
        y = scan_module.cgspn_scan_head(xl, hl, variant=variant, bias=bl, x_bias=xbl)
        y.backward(dy.to(dtype))
        out[name] = [y.detach(), xl.grad, hl.grad] + ([bl.grad, xbl.grad] if bias else [])
    xr, hr = x.to(ref_dtype).requires_grad_(True), head.to(ref_dtype).requires_grad_(True)
    br = b.to(ref_dtype).requires_grad_(True) if bias else None
    xbr = xb.to(ref_dtype).requires_grad_(True) if bias else None
    yr = cgspn_scan_reference(xr + xbr if bias else xr, *head_views(hr + br.view(5, C) if bias else hr))
    yr.backward(dy.to(ref_dtype))
    ref = [yr.detach(), xr.grad, hr.grad] + ([br.grad, xbr.grad] if bias else [])
    names = ("y", "dx", "dhead", "dbias", "dx_bias")
    result = {}
    for n, a, t, r in zip(names, out["image"], out["triton"], ref, strict=False):
        if r.abs().max() > torch.finfo(dtype).max:  # a bias gradient (a sum over B H W) past the dtype's range
            result[n] = {"vs_ref": None, "why": f"the reference exceeds {dtype}'s range ({r.abs().max().item():.3g})"}
        else:
            result[n] = {"vs_ref": rel_rms(a, r), "triton_vs_ref": rel_rms(t, r), "vs_triton": rel_rms(a, t)}
    return result


def check_layer(B, grid, dtype, compile_too=True):
    """The planar layer vs the channels-last layer with the same weights: eager y and gradients, compiled y,
    and a CUDA-graph replay of the planar layer's forward."""
    torch.manual_seed(0)
    cl = CGSPNLayer(1152, latent_channels=64, layout="channels-last").cuda().to(dtype)
    pl = CGSPNLayer(1152, latent_channels=64, variant="cuda-image").cuda().to(dtype)  # layout auto -> planar
    pl.load_state_dict(cl.state_dict())
    auto = pl
    x = torch.randn(B, grid, grid, 1152, device="cuda", dtype=dtype)
    res = {"auto_chooses_planar": auto.planar(x)}
    outs = {}
    for name, layer in (("cl", cl), ("pl", pl)):
        xl = x.detach().clone().requires_grad_(True)
        y = layer(xl)
        y.float().square().mean().backward()
        outs[name] = [y.detach(), xl.grad] + [p.grad for p in layer.parameters()]
    names = ["y", "dx"] + [f"d{n}" for n, _ in pl.named_parameters()]
    res.update({f"{n}_planar_vs_cl": rel_rms(a, b) for n, a, b in zip(names, outs["pl"], outs["cl"], strict=True)})
    with torch.no_grad():
        y_eager = pl(x)
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            pl(x)
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            y_static = pl(x)
        graph.replay()
        torch.cuda.synchronize()
        res["graph_vs_eager"] = rel_rms(y_static, y_eager)
        if compile_too:
            t0 = time.perf_counter()
            compiled = torch.compile(pl, fullgraph=True)
            res["compiled_vs_eager"] = rel_rms(compiled(x), y_eager)
            res["compile_seconds"] = round(time.perf_counter() - t0, 1)
    return res


def time_scan(B, H, W, C, dtype, mode, layout, variant, copy_gbps):
    x, head = inputs(B, H, W, C, dtype, layout, torch.Generator().manual_seed(0))
    dy = None if mode == "fwd" else torch.randn(B, H, W, C, device="cuda", dtype=dtype)
    return timed_scan_head(x, head, variant, mode, dy, copy_gbps, layout=layout)


def phase_timing(B, H, W, C, dtype=torch.bfloat16, config=DEFAULT_CONFIG) -> dict:
    """Where one image forward's time goes: the kernel's per-block clock counters (``timing``) averaged per image
    -- load, scan, the previous image's combine beside the scan, the scan phase barrier to barrier, the last
    combine -- in SM cycles, with the kernel's time (CUDA events) and the clock rate they imply."""
    x, head = inputs(B, H, W, C, dtype, "planar-cb", torch.Generator().manual_seed(0))
    lam, u, gates = head_views(head)
    blocks = cuda_image.grid_size(B * C, H, W, torch.cuda.current_device(), config)
    timing = torch.zeros(blocks * TIMING_SLOTS, dtype=torch.int64, device="cuda")
    cuda_image.scan_forward(x, lam, u, gates, config=config)  # compiled, warm
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    cuda_image.scan_forward(x, lam, u, gates, timing=timing, config=config)
    end.record()
    torch.cuda.synchronize()
    t = timing.view(blocks, TIMING_SLOTS).double().cpu()
    images = t[:, 5].sum().item()
    per_block = (t[:, 0] + t[:, 3] + t[:, 4]).mean().item()
    ms = start.elapsed_time(end)
    begin, finish = t[:, 6], t[:, 7]  # global ns
    lifetimes = finish - begin
    return {"B": B, "H": H, "W": W, "C": C, "config": str(config), "blocks": blocks, "images": images, "kernel_ms": ms,
            "cycles_per_image": {"load": t[:, 0].sum().item() / images, "scan": t[:, 1].sum().item() / images,
                                 "combine_beside_scan": t[:, 2].sum().item() / max(images - blocks, 1),
                                 "scan_phase": t[:, 3].sum().item() / images, "last_combine": t[:, 4].mean().item()},
            "block_cycles_mean": per_block, "implied_ghz": per_block / (ms * 1e6),
            # where the kernel's time goes outside the blocks' counted phases, on the global timer (ns): how far apart
            # the blocks start and end, their lives; cycles_per_ns_mean is the counted ticks per ns of a block's life,
            # not the clock rate (the phases tick at the nominal clock; the rest of the life is the gaps)
            "blocks_ns": {"first_to_last_end": (finish.max() - begin.min()).item(),
                          "start_spread": (begin.max() - begin.min()).item(), "lifetime_mean": lifetimes.mean().item(),
                          "lifetime_max": lifetimes.max().item(), "lifetime_min": lifetimes.min().item(),
                          "cycles_per_ns_mean": per_block / lifetimes.mean().item(),
                          "load_per_image": t[:, 8].sum().item() / images, "scan_phase_per_image": t[:, 9].sum().item() / images,
                          # per block: entry to the first image, the loop, the loop's end to the block's end
                          "before_loop_mean": (t[:, 10] - begin).mean().item(), "loop_mean": (t[:, 11] - t[:, 10]).mean().item(),
                          "after_loop_mean": (finish - t[:, 11]).mean().item(),
                          "phases_mean": (t[:, 8] + t[:, 9]).mean().item(), "gaps_mean": t[:, 12].mean().item(),
                          "gap_ticks_mean": t[:, 13].mean().item()}}


def time_layer(B, grid, dtype, mode, layout, copy_gbps):
    torch.manual_seed(0)
    variant = "cuda-image" if layout == "planar-cb" else "auto"
    layer = CGSPNLayer(1152, latent_channels=64, layout="planar" if layout == "planar-cb" else layout,
                       variant=variant).cuda().to(dtype)
    x = torch.randn(B, grid, grid, 1152, device="cuda", dtype=dtype, requires_grad=mode != "fwd")
    if mode == "fwd":
        def step():
            with torch.no_grad():
                layer(x)
    else:
        dy = torch.randn(B, grid, grid, 1152, device="cuda", dtype=dtype)

        def step():
            x.grad = None
            for p in layer.parameters():
                p.grad = None
            layer(x).backward(dy)
    return timed_row(step, 0, copy_gbps, {"B": B, "H": grid, "W": grid, "C": 1152, "dtype": str(dtype).replace("torch.", ""),
                                       "mode": mode, "layout": layout, "variant": "layer"})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--skip-checks", action="store_true")
    parser.add_argument("--skip-timings", action="store_true", help="the checks only")
    parser.add_argument("--quick", action="store_true", help="the B=32 C_c=64 bf16 grid cases only, then the checks")
    parser.add_argument("--phases", action="store_true", help="first, the kernel's per-phase clock counters per grid")
    parser.add_argument("--variants", nargs="*", choices=list(VARIANTS), metavar="NAME",
                        help="only the opt-in launch configurations (these names, else all of "
                             f"{', '.join(VARIANTS)}): bit-for-bit against the default configuration, then timed")
    parser.add_argument("--brief", action="store_true",
                        help="forward timings (image and row kernels, B=32 C_c=64 bf16, grids 27-147) and a subset of the "
                             "checks (both planar layouts, clamped gates, edges, the largest grid)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        print("cgspn_image_check: needs a CUDA GPU", file=sys.stderr)
        return 2
    report = gpu_report(checks={}, timings=[])

    def save():
        (args.out / "image_check.json").write_text(json.dumps(report, indent=1, default=str))

    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    probe = {lay: inputs(1, 27, 27, 64, torch.bfloat16, lay, gen) for lay in LAYOUTS}
    report["build"] = {"seconds": None, **{lay: scan_module.scan_backend("cuda-image", *probe[lay]) for lay in LAYOUTS}}
    report["build"]["seconds"] = round(time.perf_counter() - t0, 2)
    print(f"[build] {report['build']}", flush=True)
    copy_gbps = measure_copy_bandwidth(report)

    bf16 = torch.bfloat16
    if args.variants is not None:
        configs = [VARIANTS[name] for name in args.variants or VARIANTS]
        grids = {(H, W, dt) for H, W in VARIANT_GRIDS for dt in (torch.bfloat16, torch.float16)}
        phase_grids = {(g, g, torch.bfloat16) for g in (74, 147)}
        report["precompile_seconds"] = round(precompile(grids, configs=(ImageConfig(), *configs), timed_shapes=phase_grids), 1)
        print(f"[precompile] {len(grids)} grids x {1 + len(configs)} configurations in "
              f"{report['precompile_seconds']} s", flush=True)
        report["checks_pass"] = ok = variant_checks(report["checks"], configs)
        save()
        report["timings"] = variant_timings(copy_gbps, save, report["timings"], configs)
        report["phases"] = [phase_timing(32, grid, grid, 64, config=config)
                            for grid in (74, 147) for config in (DEFAULT_CONFIG, *configs)]
        for row in report["phases"]:
            print(f"[phases] {json.dumps(row)}", flush=True)
        save()
        print(f"\nchecks: {'ALL PASS' if ok else 'FAILURES (see above / JSON)'}")
        return 0 if ok else 1
    modes = ("fwd",) if args.brief else ("fwd", "fwd+bwd")
    cases = [] if args.skip_timings else [(32, g, g, 64, bf16, m) for g in (27, 37, 74, 147) for m in modes]
    ways = WAYS[:2] if args.brief else WAYS
    if not args.quick and not args.brief and not args.skip_timings:
        cases += [(32, 74, 74, 384, bf16, "fwd"), (1, 147, 147, 64, bf16, "fwd"), (1, 147, 147, 64, bf16, "fwd+bwd"),
                  (8, 147, 147, 64, bf16, "fwd"), (32, 147, 147, 64, torch.float16, "fwd"), (32, 100, 190, 64, bf16, "fwd"),
                  (32, 74, 74, 32, bf16, "fwd"), (32, 147, 147, 32, bf16, "fwd"), (32, 147, 147, 384, bf16, "fwd")]
    grids = {(H, W, dtype) for _, H, W, _, dtype, _ in cases}
    grids |= {(H, W, dt) for H, W in (BRIEF_GRIDS if args.brief else CHECK_GRIDS) for dt in (torch.bfloat16, torch.float16)}
    phase_grids = ((74, 147) if args.brief else (27, 37, 74, 147)) if args.phases else ()
    grids |= {(g, g, bf16) for g in phase_grids}
    report["precompile_seconds"] = round(precompile(grids, timed_shapes={(g, g, bf16) for g in phase_grids}), 1)
    print(f"[precompile] {len(grids)} grids in {report['precompile_seconds']} s", flush=True)
    if args.phases:
        report["phases"] = []
        for grid in phase_grids:
            report["phases"].append(phase_timing(32, grid, grid, 64))
            print(f"[phases] {json.dumps(report['phases'][-1])}", flush=True)
        save()
    for B, H, W, C, dtype, mode in cases:
        for layout, variant in ways:
            try:
                row = time_scan(B, H, W, C, dtype, mode, layout, variant, copy_gbps)
            except Exception as error:
                row = {"B": B, "H": H, "W": W, "C": C, "dtype": str(dtype), "mode": mode, "layout": layout, "variant": variant,
                       "error": f"{type(error).__name__}: {str(error)[:500]}"}
            report["timings"].append(row)
            print(f"[time] {json.dumps({k: v for k, v in row.items() if k != 'graph_message'}, default=str)}", flush=True)
            save()
    for grid, mode in () if args.skip_timings or args.brief else ((74, "fwd"), (74, "fwd+bwd"), (147, "fwd")):
        for layout in LAYOUTS:
            try:
                row = time_layer(32, grid, bf16, mode, layout, copy_gbps)
            except Exception as error:
                row = {"B": 32, "H": grid, "mode": mode, "layout": layout, "variant": "layer",
                       "error": f"{type(error).__name__}: {str(error)[:500]}"}
            report["timings"].append(row)
            print(f"[time] {json.dumps({k: v for k, v in row.items() if k != 'graph_message'}, default=str)}", flush=True)
            save()

    ok = True
    if not args.skip_checks:
        ok = run_brief_checks(report["checks"]) if args.brief else run_checks(report["checks"])
    report["checks_pass"] = ok
    save()
    lines = [["case", "mode", "image ms", "row ms", "triton ms", "image eager", "image/row", "image bw", "fwd+bwd/fwd"]]
    key = lambda r: (r.get("B"), r.get("H"), r.get("W"), r.get("C"), r.get("dtype"), r.get("mode"))  # noqa: E731
    by = {(*key(r), r.get("layout"), r.get("variant")): r for r in report["timings"]}
    for B, H, W, C, dtype, mode in cases:
        d = str(dtype).replace("torch.", "")
        im, rw, tr = (by.get((B, H, W, C, d, mode, lay, var), {}) for lay, var in WAYS)
        fmt = lambda r, k="graph_ms": f"{r[k]:.4f}" if r.get(k) else (r.get("error", "-")[:24])  # noqa: E731
        ratio = ""
        if mode == "fwd+bwd":
            fw = by.get((B, H, W, C, d, "fwd", *WAYS[0]), {}).get("graph_ms")
            ratio = f"{im['graph_ms'] / fw:.2f}" if im.get("graph_ms") and fw else ""
        lines.append([f"B{B} {H}x{W} C{C} {d}", mode, fmt(im), fmt(rw), fmt(tr), fmt(im, "eager_ms"),
                      f"{im['graph_ms'] / rw['graph_ms']:.2f}" if im.get("graph_ms") and rw.get("graph_ms") else "-",
                      f"{im['bw_fraction']:.3f}" if im.get("bw_fraction") else "-", ratio])
    for r in report["timings"]:
        if r.get("variant") == "layer":
            lines.append([f"layer B32 {r['H']} {r['layout']}", r["mode"], fmt(r), "", "", fmt(r, "eager_ms"), "", "", ""])
    print(f"\nchecks: {'ALL PASS' if ok else 'FAILURES (see above / JSON)'}")
    print_table(lines)
    save()
    return 0 if ok else 1


def run_checks(checks) -> bool:
    log = CheckLog(checks)

    def versus(res):
        worst = max(v["vs_ref"] for v in res.values() if v["vs_ref"] is not None)
        return f"(worst vs ref {worst:.2e}; vs triton " + ", ".join(
            f"{k} {v['vs_triton']:.1e}" if v["vs_ref"] is not None else f"{k} not compared ({v['why']})"
            for k, v in res.items()) + ")"

    def record(name, fn, tol):
        log.record(name, fn, tol, describe=versus)

    bf16, fp16 = torch.bfloat16, torch.float16
    for dtype in (bf16, fp16):
        d = str(dtype).replace("torch.", "")
        for bias in (True, False):
            for layout in ("planar", "planar-cb"):
                record(f"3x37x54x40 {d} bias={bias} {layout}", lambda dtype=dtype, bias=bias, layout=layout:
                       check_image((3, 37, 54, 40), dtype, bias=bias, layout=layout), TOLERANCE[dtype])
    for kind in ("all-equal", "all-very-negative", "saturated+-30"):
        for shape in ((2, 37, 54, 16), (2, 147, 147, 4), (1, 1, 7, 3), (1, 6, 1, 3)):
            for dtype in (bf16, fp16) if shape[1] > 1 and shape[2] > 1 else (bf16,):
                record(f"gates {kind} {'x'.join(map(str, shape))} {str(dtype).replace('torch.', '')}",
                       lambda kind=kind, shape=shape, dtype=dtype: check_image(shape, dtype, kind, bias=False), TOLERANCE[dtype])
    record("32x147x147x64 bf16 (fp32 ref)", lambda: check_image((32, 147, 147, 64), bf16, ref_dtype=torch.float32),
           TOLERANCE[bf16])
    record("4x147x147x64 bf16 planar-cb (fp32 ref)",
           lambda: check_image((4, 147, 147, 64), bf16, ref_dtype=torch.float32, layout="planar-cb"), TOLERANCE[bf16])
    for grid in MANY_IMAGE_GRIDS:  # several images per persistent block at every grid (the combine beside the scan)
        record(f"32x{grid}x{grid}x64 bf16 planar-cb (fp32 ref)",
               lambda grid=grid: check_image((32, grid, grid, 64), bf16, ref_dtype=torch.float32, layout="planar-cb"),
               TOLERANCE[bf16])

    def layer_failures(res, tol):
        bad = [k for k, v in res.items() if isinstance(v, float) and not k.endswith("seconds") and not v <= tol]
        return bad + ([] if res["auto_chooses_planar"] else ["auto layout did not choose planar"])

    for grid in (27, 74):
        log.record(f"layer planar vs channels-last B2 {grid} bf16",
                   lambda grid=grid: check_layer(2, grid, bf16, compile_too=grid == 27), 2 * TOLERANCE[bf16],
                   failures=layer_failures, describe=str)
    odd = [(1, 1, 1, 8), (1, 1, 7, 3), (1, 6, 1, 3), (3, 5, 7, 1), (2, 20, 73, 16), (2, 27, 27, 20), (2, 147, 147, 8),
           (1, 100, 190, 4), (2, 9, 190, 3), (1, 190, 9, 3), (2, 74, 74, 6), (1, 2, 2, 5), (1, 33, 65, 3), (1, 149, 149, 2)]
    for shape in odd:
        for dtype in (bf16, fp16) if shape in odd[:3] + odd[6:8] else (bf16,):
            record(f"{'x'.join(map(str, shape))} {str(dtype).replace('torch.', '')}",
                   lambda shape=shape, dtype=dtype: check_image(shape, dtype), TOLERANCE[dtype])
    for shape in ((1, 100, 200, 4), (1, 150, 150, 2)):  # past the image kernel's limits: the path says why
        log.record(f"{'x'.join(map(str, shape))} falls back", lambda shape=shape: {"backend": scan_module.scan_backend(
            "cuda-image", *inputs(*shape, torch.bfloat16, "planar", torch.Generator().manual_seed(0)))}, 0,
            failures=lambda res, tol: [] if "image kernel not used" in res["backend"] else [res["backend"]], describe=str)
    return log.ok


def run_brief_checks(checks) -> bool:
    """A subset of :func:`run_checks`: the planar-cb layout and the planar one ((B, C, H, W) storage: other
    batch and channel strides, the five planes at other phases), both dtypes, biases; clamped and saturated
    gates; 1-pixel sides, odd grids; the largest grid; B=32 at every benchmark grid (several images per block)
    against an fp32 reference."""
    log = CheckLog(checks)
    bf16, fp16 = torch.bfloat16, torch.float16
    cases = [("3x37x54x40 bf16 planar-cb", lambda: check_image((3, 37, 54, 40), bf16, layout="planar-cb"), TOLERANCE[bf16]),
             ("3x37x54x40 fp16 planar-cb", lambda: check_image((3, 37, 54, 40), fp16, layout="planar-cb"), TOLERANCE[fp16]),
             ("3x37x54x40 bf16 planar", lambda: check_image((3, 37, 54, 40), bf16), TOLERANCE[bf16]),
             ("gates saturated+-30 2x147x147x4 bf16", lambda: check_image((2, 147, 147, 4), bf16, "saturated+-30", bias=False),
              TOLERANCE[bf16]),
             ("gates all-very-negative 2x37x54x16 fp16",
              lambda: check_image((2, 37, 54, 16), fp16, "all-very-negative", bias=False), TOLERANCE[fp16])]
    cases += [(f"{'x'.join(map(str, shape))} bf16", lambda shape=shape: check_image(shape, bf16, layout="planar-cb"),
               TOLERANCE[bf16]) for shape in ((1, 1, 1, 8), (1, 1, 7, 3), (1, 6, 1, 3), (2, 20, 73, 16), (1, 149, 149, 2))]
    cases += [(f"32x{grid}x{grid}x64 bf16 planar-cb (fp32 ref)", lambda grid=grid: check_image(
        (32, grid, grid, 64), bf16, ref_dtype=torch.float32, layout="planar-cb"), TOLERANCE[bf16]) for grid in MANY_IMAGE_GRIDS]
    for name, fn, tol in cases:
        log.record(name, fn, tol, describe=lambda res: str({k: v["vs_ref"] for k, v in res.items()}))
    return log.ok


#: the opt-in launch configurations by name (``--variants [NAME ...]``; ``one-helper`` is the default before round
#: 9 at grids <= 74; ``t256-ahead2`` two helper warps and two rows' loads in
#: flight, 1.07x faster at 74, 1.07x slower at 147) and the grids they run at
VARIANTS = {"prefetch": ImageConfig(prefetch=True),
            "t256-ahead2": ImageConfig(threads=256, ahead=2), "one-helper": ImageConfig(threads=160, blocks=3)}
VARIANT_GRIDS = ((147, 147), (74, 74), (27, 27), (37, 37), (37, 54), (1, 7), (6, 1), (20, 73), (40, 33), (149, 149))


def _image_outputs(x, head, bias, x_bias, config=None):
    lam, u, gates = head_views(head)
    y, hs = cuda_image.scan_forward(x, lam, u, gates, bias, x_bias, config=config)
    return y, hs[..., :x.shape[2]]  # the padding columns of hs are not written by every direction


def variant_checks(checks, configs) -> bool:
    """Every configuration of ``configs`` gives the default configuration's y and hs bit for bit
    (the same arithmetic per position), on odd, non-square, one-pixel, clamped and full-size shapes."""
    log = CheckLog(checks)
    bf16, fp16 = torch.bfloat16, torch.float16
    cases = [((32, 147, 147, 64), bf16, "random"), ((32, 74, 74, 64), bf16, "random"), ((32, 27, 27, 64), bf16, "random"),
             ((3, 37, 54, 40), bf16, "random"), ((3, 37, 54, 40), fp16, "random"), ((2, 1, 7, 3), bf16, "random"),
             ((2, 6, 1, 3), bf16, "random"), ((2, 20, 73, 16), bf16, "random"), ((2, 40, 33, 5), bf16, "random"),
             ((1, 149, 149, 2), bf16, "random"), ((2, 147, 147, 4), bf16, "saturated+-30"),
             ((2, 37, 54, 16), fp16, "all-very-negative")]
    for shape, dtype, kind in cases:
        x, head = inputs(*shape, dtype, "planar-cb", torch.Generator().manual_seed(0), kind)
        C = shape[3]
        bias = (0.5 * torch.randn(5 * C, generator=torch.Generator().manual_seed(1))).to("cuda", dtype)
        x_bias = (0.5 * torch.randn(C, generator=torch.Generator().manual_seed(2))).to("cuda", dtype)
        reference = _image_outputs(x, head, bias, x_bias)
        for config in configs:
            name = f"{'x'.join(map(str, shape))} {str(dtype).replace('torch.', '')} {kind} {config}"
            log.record(name, functools.partial(_same_outputs, (x, head, bias, x_bias), reference, config), 0,
                       failures=lambda res, tol: [k for k in ("y_equal", "hs_equal") if not res[k]], describe=str)
    return log.ok


def _same_outputs(args, reference, config) -> dict:
    y, hs = _image_outputs(*args, config)
    return {"y_equal": torch.equal(y, reference[0]), "hs_equal": torch.equal(hs, reference[1]),
            "y_max_abs_diff": (y.float() - reference[0].float()).abs().max().item()}


def _forward_no_grad(args, config) -> None:
    with torch.no_grad():
        _image_outputs(*args, None, None, config)


def variant_timings(copy_gbps, save, rows, configs) -> list:
    """The forward (B=32, C_c=64, bf16, planar-cb) per configuration, default first, grids 27-147; the row kernel
    (``auto`` on channels-last inputs) in the same run for the ratio."""
    for grid in (27, 37, 74, 147):
        rows.append(time_scan(32, grid, grid, 64, torch.bfloat16, "fwd", "channels-last", "auto", copy_gbps))
        print(f"[row time] {json.dumps({k: v for k, v in rows[-1].items() if k != 'graph_message'}, default=str)}", flush=True)
        x, head = inputs(32, grid, grid, 64, torch.bfloat16, "planar-cb", torch.Generator().manual_seed(0))
        for config in (ImageConfig(), *configs):
            step = functools.partial(_forward_no_grad, (x, head), config)
            try:
                row = timed_row(step, 7 * x.numel() * 2, copy_gbps, {"H": grid, "W": grid, "config": str(config)})
            except Exception as error:
                row = {"H": grid, "config": str(config), "error": f"{type(error).__name__}: {str(error)[:500]}"}
            rows.append(row)
            print(f"[variant time] {json.dumps({k: v for k, v in row.items() if k != 'graph_message'}, default=str)}",
                  flush=True)
            save()
    return rows


def precompile(shapes, workers=12, configs=(DEFAULT_CONFIG,), timed_shapes=(), source=IMAGE_SOURCE) -> float:
    """Compile ``source``'s image-kernel instantiations for ``shapes`` ((H, W, dtype)) and ``configs``, and the
    TIMED ones (:func:`phase_timing`) for ``timed_shapes``, in parallel processes, so the checks and timings load
    them from CuPy's disk cache (each grid is its own instantiation); seconds taken."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    t0 = time.perf_counter()
    code = lambda dtype: 1 if dtype == torch.bfloat16 else 2  # noqa: E731
    expressions = {expression(code(dtype), H, W, config) for H, W, dtype in shapes for config in configs}
    expressions |= {expression(code(dtype), H, W, config, timed=True) for H, W, dtype in timed_shapes for config in configs}
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        list(pool.map(_compile_one, sorted(expressions), [source] * len(expressions)))
    return time.perf_counter() - t0


def _compile_one(expr: str, source: str) -> None:
    from kernels.cgspn import cuda_scan
    cuda_scan._module(expr, source)


if __name__ == "__main__":
    sys.exit(main())
