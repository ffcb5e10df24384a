"""The distillation table: several runs side by side, and a DDP run against a single-GPU run.

    python -m suite.distill.report --run cgspn=OUT/cgspn --run hybrid=OUT/hybrid \\
        --ddp OUT/ddp2 --single OUT/cgspn --out OUT

writes ``OUT/table.json`` and ``OUT/table.md``: per run and stage the mean student-teacher cosine
similarity at PP and PB (and the stage-1 sublayer view), the final losses, teacher vs student
latency per resolution; and the loss-curve comparison of the DDP run with the single-GPU run.

"Within noise" is defined on the single-GPU curve itself: its step-to-step jitter is the median
of ``|L_i - L_{i-1}| / L_i``; the DDP curve matches when the mean relative difference of the two
curves at equal global steps is at most that jitter.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from suite.distill.metrics import read_log


def run_rows(name: str, run: Path) -> dict:
    """The table entry of one run directory (summary.json, run.json)."""
    summary = json.loads((run / "summary.json").read_text())
    meta = json.loads((run / "run.json").read_text())
    stages = []
    for stage, report in summary["evaluations"].items():
        cos = report["against_stage_teacher"]
        sub = report.get("sublayer_vs_attention_teacher") or {}
        row = {"stage": stage, "kind": report["kind"], "resolution": report["resolution"], "pp_cos": cos["pp_mean"],
               "pb_cos": cos["pb_mean"], "sublayer_cos": statistics.fmean(sub.values()) if sub else None,
               "final_loss": summary["final_losses"].get(stage, {}).get("loss")}
        if "against_attention_teacher" in report:
            row["pp_cos_vs_attention_teacher"] = report["against_attention_teacher"]["pp_mean"]
            row["pb_cos_vs_attention_teacher"] = report["against_attention_teacher"]["pb_mean"]
        stages.append(row)
    latency = {}
    for row in summary.get("latency", []):
        if row.get("status") == "ok":
            latency.setdefault(row["resolution"], {})[row["model"]] = row["median_ms"]
    for times in latency.values():
        if "teacher" in times and "student" in times:
            times["speedup"] = times["teacher"] / times["student"]
    return {"name": name, "dir": str(run), "device": meta.get("device_name"), "world_size": meta.get("world_size"),
            "student_scan": meta.get("student_scan"), "student_custom_backward": meta.get("student_custom_backward"),
            "attention_blocks": meta.get("student_attention_blocks"), "stages": stages, "latency_ms": latency}


def compare_curves(single: Path, ddp: Path) -> dict:
    """Loss curves of two runs at equal global steps (see the module docstring for the rule)."""
    a = {r["global_step"]: r["loss"] for r in read_log(single / "log.jsonl")}
    b = {r["global_step"]: r["loss"] for r in read_log(ddp / "log.jsonl")}
    steps = sorted(set(a) & set(b))
    if len(steps) < 2:
        return {"steps": len(steps), "verdict": "not comparable: fewer than 2 common logged steps"}
    rel = [abs(b[s] - a[s]) / abs(a[s]) for s in steps]
    ordered = [a[s] for s in steps]
    jitter = statistics.median(abs(x - y) / abs(x) for x, y in zip(ordered[1:], ordered[:-1], strict=True))
    mean_rel = statistics.fmean(rel)
    return {"steps": len(steps), "mean_rel_diff": mean_rel, "max_rel_diff": max(rel), "single_step_jitter": jitter,
            "final_single": a[steps[-1]], "final_ddp": b[steps[-1]],
            "verdict": "match (within noise)" if mean_rel <= jitter else "differs (beyond the step-to-step noise)"}


def _fmt(value, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def markdown(table: dict) -> str:
    lines = ["# Distillation: student vs teacher", "",
             "Cosine similarity: mean over blocks and tokens, raw student taps (no adaptor) against the stage's teacher "
             "(the attention teacher; in a curriculum stage the previous stage's student, upsampled). "
             "Sublayer cos: each C-GSPN mixer against the attention output, both fed the teacher's block input.", ""]
    for run in table["runs"]:
        lines += [f"## {run['name']} ({run['device']}, {run['world_size']} process(es), scan: {run['student_scan']}, "
                  f"backward: {', '.join(run['student_custom_backward'] or ['autograd'])}, "
                  f"attention blocks: {run['attention_blocks'] or 'none'})", "",
                  "| stage | kind | px | PP cos | PB cos | PP / PB cos vs attention teacher | sublayer cos | final loss |",
                  "|---|---|---|---|---|---|---|---|"]
        for s in run["stages"]:
            vs_attention = (f"{_fmt(s['pp_cos_vs_attention_teacher'])} / {_fmt(s['pb_cos_vs_attention_teacher'])}"
                            if "pp_cos_vs_attention_teacher" in s else "(same)")
            lines.append(f"| {s['stage']} | {s['kind']} | {s['resolution']} | {_fmt(s['pp_cos'])} | {_fmt(s['pb_cos'])} | "
                         f"{vs_attention} | {_fmt(s['sublayer_cos'])} | {_fmt(s['final_loss'], 5)} |")
        if run["latency_ms"]:
            lines += ["", "| px | teacher ms | student ms | speedup |", "|---|---|---|---|"]
            for res, t in sorted(run["latency_ms"].items(), key=lambda kv: int(kv[0])):
                times = " | ".join(_fmt(t.get(k), d) for k, d in (("teacher", 3), ("student", 3), ("speedup", 2)))
                lines.append(f"| {res} | {times} |")
        lines.append("")
    if "ddp_vs_single" in table:
        c = table["ddp_vs_single"]
        lines += ["## DDP vs single GPU (loss at equal global steps)", ""]
        lines += [f"- {k}: {v:.6g}" if isinstance(v, float) else f"- {k}: {v}" for k, v in c.items()]
    return "\n".join(lines) + "\n"


def build_table(runs: list[tuple[str, Path]], single: Path | None, ddp: Path | None) -> dict:
    table = {"runs": [run_rows(name, path) for name, path in runs]}
    if single is not None and ddp is not None:
        table["ddp_vs_single"] = compare_curves(single, ddp)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m suite.distill.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", default=[], metavar="NAME=DIR", help="a finished run directory (repeatable)")
    parser.add_argument("--single", type=Path, help="single-GPU run to compare the DDP run with")
    parser.add_argument("--ddp", type=Path, help="DDP run")
    parser.add_argument("--out", type=Path, required=True, help="where table.json and table.md go")
    args = parser.parse_args(argv)
    runs = []
    for item in args.run:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_dir():
            parser.error(f"--run {item!r}: expected NAME=DIR with an existing run directory")
        runs.append((name, Path(path)))
    table = build_table(runs, args.single, args.ddp)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.json").write_text(json.dumps(table, indent=2))
    text = markdown(table)
    (args.out / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
