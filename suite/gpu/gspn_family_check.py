"""GPU check of the GSPN family: correctness at realistic shapes, then the key timings (~5 minutes).

Run on a CUDA machine from the repository root::

    python -m suite.gpu.gspn_family_check --out results/gpu-check/gspn-family [--quick]

Writes ``check.json`` under ``--out``: the environment, every correctness check (relative RMS of
output and gradients vs the PyTorch reference, the tolerance, passed), and the timing rows of

* Fig. 2: the original-GSPN propagation sublayer vs ``cgspn-scan`` at 1K, channels 72..1152 at
  B=32 and batch 1..32 at C=1152, with each case's grid size (launch blocks) next to the device's
  resident-block capacity, which is where the paper's concurrency wall would come from;
* the Sec. 4.1 layer split at 1K (B=32, C=1152, s=18, bf16, forward): original GSPN layer ->
  same layer on the fast scan (kernel) -> components removed -> C-GSPN structure at C_c = C ->
  C_c = 64 (compression) -> fused normalization, each step's ratio and their product (= the
  total speedup, compared with the paper's 13.7x).

Timing goes through :func:`suite.measure.measure_case` (the one measurement core). Exits non-zero
when a correctness check fails.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch

from kernels import registry
from kernels.cgspn.layer import CGSPNLayer
from kernels.gspn.layer import GSPNLayer
from kernels.gspn.original_scan import BLOCK, original_scan, original_scan_reference
from kernels.params import Params
from suite.environment import collect_environment
from suite.measure import TimingSettings, compare, measure_case

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
SPLIT = [  # (label, implementation, extra params): each step's ratio is previous / this
    ("original GSPN layer (original scan)", "gspn-original", {}),
    ("kernel: fast scan, same layer", "gspn-original-fast", {}),
    ("components removed (projections, inner residual, channel extension)", "gspn-original-fast-no-proj-residual-ext", {}),
    ("C-GSPN structure at C_c = C (eager normalization)", "cgspn-eager-norm", {"compression": 1}),
    ("latent compression C_c = C/18 (eager normalization)", "cgspn-eager-norm", {"compression": 18}),
    ("fused normalization: C-GSPN layer", "cgspn", {"compression": 18}),
]


def _errors(outs: list[torch.Tensor], refs: list[torch.Tensor], names: list[str], dtype: torch.dtype) -> dict:
    result = {name: compare(o, r)["rel_rms"] for name, o, r in zip(names, outs, refs, strict=True)}
    worst = max(result.values())
    return {"rel_rms": result, "tolerance": TOL[dtype], "passed": math.isfinite(worst) and worst <= TOL[dtype]}


def check_original_scan(dtype: torch.dtype, chunk: int | None, shape=(2, 64, 74, 74)) -> dict:
    """The original scan vs the chunked reference, forward and all gradients."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    x, lam, *gates = (torch.rand(shape, device="cuda", generator=gen) for _ in range(5))
    gates = [g / sum(gates) for g in gates]
    leaves = [t.to(dtype).requires_grad_() for t in (x, lam, *gates)]
    refs = [t.detach().to(dtype).float().requires_grad_() for t in leaves]
    out, ref = original_scan(*leaves, chunk=chunk), original_scan_reference(*refs, chunk=chunk)
    dy = torch.randn(shape, device="cuda", generator=gen)
    out.backward(dy.to(dtype))
    ref.backward(dy)
    names = ["h", "dx", "dlam", "dg1", "dg2", "dg3"]
    return {"what": f"original_scan {tuple(shape)} chunk={chunk} {dtype}",
            **_errors([out] + [t.grad for t in leaves], [ref] + [t.grad for t in refs], names, dtype)}


def check_int64_scan() -> dict:
    """147x147 x 4608 channels x batch 32 (the original crashes here: int32 overflow); checks the last slices."""
    B, C, P, L = 32, 4608, 147, 147
    free, _ = torch.cuda.mem_get_info()
    need = B * C * P * L * (5 * 2 + 4 + 2)
    if need > 0.9 * free:
        return {"what": "original_scan int64 indexing", "skipped": f"needs {need / 2**30:.0f} GiB, {free / 2**30:.0f} free"}
    gen = torch.Generator(device="cuda").manual_seed(1)
    tensors = [torch.rand(B, C, P, L, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(5)]
    with torch.no_grad():
        h = original_scan(*tensors)
        tail = original_scan_reference(*(t[-1:, -4:].float() for t in tensors))
    result = _errors([h[-1:, -4:]], [tail], ["h (last batch, last 4 channels)"], torch.bfloat16)
    del tensors, h
    torch.cuda.empty_cache()
    return {"what": f"original_scan int64 indexing {(B, C, P, L)} = {B * C * P * L:.3g} elements", **result}


def check_module(module: torch.nn.Module, shape: tuple, dtype: torch.dtype, what: str) -> dict:
    """``module`` in ``dtype`` vs a same-weights float32 copy on the reference scan: output, dx, weight grads."""
    reference = copy.deepcopy(module).float().cuda()
    for m in reference.modules():
        if isinstance(m, (GSPNLayer, CGSPNLayer)):
            m.scan = "reference"
    module = module.to("cuda", dtype)
    x = torch.randn(shape, device="cuda")
    xa, xr = x.to(dtype).clone().requires_grad_(), x.clone().requires_grad_()
    out, ref = module(xa), reference(xr)
    dy = torch.randn(shape, device="cuda")
    out.backward(dy.to(dtype))
    ref.backward(dy)
    outs = [out, xa.grad] + [p.grad for p in module.parameters()]
    refs = [ref, xr.grad] + [p.grad for p in reference.parameters()]
    names = ["y", "dx"] + [f"d{n}" for n, _ in module.named_parameters()]
    return {"what": f"{what} {tuple(shape)} {dtype}", **_errors(outs, refs, names, dtype)}


def correctness(quick: bool) -> list[dict]:
    checks = [check_original_scan(torch.float32, None), check_original_scan(torch.bfloat16, 8),
              check_original_scan(torch.bfloat16, None, (2, 64, 37, 54))]
    torch.manual_seed(0)
    checks.append(check_module(GSPNLayer(96), (2, 37, 54, 96), torch.bfloat16, "GSPN layer, all components, original scan"))
    checks.append(check_module(GSPNLayer(96, scan="fast"), (2, 37, 37, 96), torch.bfloat16, "GSPN layer, fast scan"))
    checks.append(check_module(CGSPNLayer(1152), (4, 74, 74, 1152), torch.bfloat16, "C-GSPN layer s=18"))
    checks.append(check_module(CGSPNLayer(1152, fused_norm=False), (4, 37, 54, 1152), torch.float32, "C-GSPN layer, eager norm"))
    if not quick:
        checks.append(check_int64_scan())
    return checks


def _row(name: str, level: str, params: Params, settings: TimingSettings, check: bool) -> dict:
    impl = registry.get(name, level)
    row = measure_case(impl, params, "bfloat16", "cuda", "fwd", settings, check=check, nvml=True)
    torch.cuda.empty_cache()
    return {"implementation": name, "level": level, "params": row.params, "status": row.status, "message": row.message,
            "median_ms": row.median_ms, "iqr_ms": row.iqr_ms, "n": row.n, "peak_mem_bytes": row.peak_mem_bytes,
            "correctness": row.correctness, "nvml_throttled": (row.nvml or {}).get("throttled"),
            "backend_detail": row.backend_detail}


def concurrency(params: Params, slices: int) -> dict:
    """Launch geometry of one original-scan step vs what the device holds resident at once."""
    props = torch.cuda.get_device_properties(0)
    blocks = math.ceil(params.batch * slices * params.H / BLOCK)  # one step: B x C x P threads, 512 per block
    per_sm = max(1, props.max_threads_per_multi_processor // BLOCK)  # thread-limited residency of 512-thread blocks
    resident = props.multi_processor_count * per_sm
    return {"stacked_slices": slices, "threads_per_step": params.batch * slices * params.H, "blocks_per_step": blocks,
            "resident_blocks": resident, "waves_per_step": blocks / resident}


def fig2(settings: TimingSettings, quick: bool) -> list[dict]:
    points = [(32, c) for c in (72, 144, 288, 576, 1152)] + [(b, 1152) for b in (1, 2, 4, 8, 16)]
    if quick:
        points = [(32, 288), (32, 576), (8, 1152), (16, 1152), (32, 1152)]
    rows = []
    for batch, channels in points:
        params = Params(batch=batch, channels=channels, heads=8, resolution=1036, compression=18)
        for name in ("gspn-original", "cgspn-scan"):
            row = _row(name, "sublayer", params, settings, check=name == "cgspn-scan")
            if name == "gspn-original":
                row["geometry"] = concurrency(params, 4 * channels)
            rows.append(row)
    return rows


def layer_split(settings: TimingSettings) -> dict:
    base = Params(batch=32, channels=1152, resolution=1036)
    steps, previous = [], None
    for label, name, extra in SPLIT:
        row = _row(name, "layer", base.replace(**extra), settings, check=True)
        row["step"] = label
        ms = row["median_ms"]
        row["ratio_vs_previous"] = previous / ms if previous and ms else None
        previous = ms if ms else previous
        steps.append(row)
    first, last = steps[0]["median_ms"], steps[-1]["median_ms"]
    return {"steps": steps, "total_speedup": first / last if first and last else None, "paper_total": 13.7}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for check.json")
    parser.add_argument("--quick", action="store_true", help="fewer Fig. 2 points, no int64 check (~2 minutes)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gspn_family_check: needs a CUDA GPU", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    report: dict = {"environment": collect_environment()}
    report["correctness"] = correctness(args.quick)
    print(json.dumps(report["correctness"], indent=1, default=str))
    settings = TimingSettings(budget_ms=200, warmup_ms=20, min_reps=3, max_reps=100)
    report["fig2"] = fig2(settings, args.quick)
    report["layer_split"] = layer_split(settings)
    report["elapsed_s"] = time.time() - started
    (out / "check.json").write_text(json.dumps(report, indent=1, default=str))
    for row in report["fig2"]:
        print(f"fig2 {row['implementation']:14s} {row['params']} {row['status']} {row['median_ms']}")
    for step in report["layer_split"]["steps"]:
        print(f"split {step['step']:70s} {step['median_ms']} ms  x{step['ratio_vs_previous']}")
    total = report["layer_split"]["total_speedup"]
    print(f"total speedup {total} (paper 13.7); {report['elapsed_s']:.0f} s; wrote {out / 'check.json'}")
    failed = [c["what"] for c in report["correctness"] if c.get("passed") is False]
    if failed:
        print("FAILED correctness:", failed, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
