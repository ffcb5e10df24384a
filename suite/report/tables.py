"""The report's tables as pandas frames: one frame = one HTML table = one CSV file.

Column names carry their unit (``median_ms``, ``tflops``, ``gbps``, ``bw_fraction_pct``,
``peak_mem_mib``, ``sm_clock_min_mhz``...), so a CSV is readable without the report.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from suite.profiling.categories import CATEGORIES
from suite.report.load import Run, gpu_key, gpu_label, resolution_of, scenario_hash
from suite.results import Row
from suite.selectors import GRID_KEYS, grid_of

# Short names of Params fields for compact labels ("B=32 C=1152 s=18").
PARAM_ABBREV = {"batch": "B", "channels": "C", "heads": "heads", "compression": "s", "latent_channels": "C_c",
                "mlp_hidden": "mlp", "depth": "depth", "attn_blocks": "attn", "tile": "tile", "chunk": "chunk"}


@dataclass
class Table:
    """A titled frame; ``flagged`` marks rows the HTML highlights (throttled, failed, disagreeing)."""

    name: str  # CSV file stem and HTML anchor
    title: str
    frame: pd.DataFrame
    caption: str = ""
    flagged: list[bool] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.frame.empty


def params_label(params: dict, skip: tuple[str, ...] = GRID_KEYS) -> str:
    """Compact label of the non-grid params, e.g. ``B=32 C=1152 s=18``."""
    return " ".join(f"{PARAM_ABBREV.get(k, k)}={v}" for k, v in sorted(params.items()) if k not in skip)


def grid_label(params: dict) -> str:
    res = resolution_of(params)
    grid = grid_of(params)
    if grid is None:
        return ""
    side = f"{grid[0]}" if grid[0] == grid[1] else f"{grid[0]}x{grid[1]}"
    return f"{res} px ({side})" if res else side


def case_columns(row: Row) -> dict[str, Any]:
    """The columns that identify a case in every per-row table."""
    grid = grid_of(row.params) or (None, None)
    return {
        "scenario": row.scenario,
        "implementation": row.implementation,
        "level": row.level,
        "mode": row.mode,
        "dtype": row.dtype,
        "resolution_px": resolution_of(row.params),
        "grid_h": grid[0],
        "grid_w": grid[1],
        "params": params_label(row.params),
    }


# Params at the paper's reference values are left out of case labels (the report says so).
REFERENCE_PARAMS = {"B": 32, "C": 1152, "heads": 16, "mlp": 4304, "s": 18, "depth": 27, "tile": 27, "patch": 14}


def case_label(record: dict) -> str:
    """``attention-flash · block · 1036 px (74) · fwd bfloat16``, plus non-reference params."""
    res, h, w = record.get("resolution_px"), record.get("grid_h"), record.get("grid_w")
    grid = "" if h is None or (isinstance(h, float) and math.isnan(h)) else f"{h:g}" if h == w else f"{h:g}x{w:g}"
    shape = f"{res:g} px ({grid})" if res is not None and not (isinstance(res, float) and math.isnan(res)) else grid
    extra = " ".join(kv for kv in str(record.get("params") or "").split() if kv.split("=")[0] not in REFERENCE_PARAMS
                     or str(REFERENCE_PARAMS[kv.split("=")[0]]) != kv.split("=", 1)[1])
    parts = [record.get("implementation"), record.get("level"), shape, extra, f"{record.get('mode')} {record.get('dtype')}"]
    return " · ".join(str(p) for p in parts if p and p == p)



def _nan_to_none(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


# ---- environment ---------------------------------------------------------------------------------


def clocks_seen(rows: list[Row]) -> dict[str, float]:
    """SM clock range over every NVML-sampled row (MHz): the lowest minimum and highest maximum seen."""
    lows, highs = [], []
    for row in rows:
        nv = row.nvml or {}
        for key, value in nv.items():
            if "sm_clock" not in key or "device" in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if "min" in key:
                lows.append(value)
            elif "max" in key:
                highs.append(value)
            else:  # a median or mean bounds both ends
                lows.append(value)
                highs.append(value)
    out = {}
    if lows:
        out["sm_clock_min_mhz"] = min(lows)
    if highs:
        out["sm_clock_max_mhz"] = max(highs)
    return out


def key_facts(run: Run) -> list[tuple[str, str]]:
    """The few environment facts a reader needs next to any number (the page's header)."""
    env, gpu = run.environment, run.environment.get("gpu") or {}
    git = env.get("git") or {}
    clocks = clocks_seen(run.rows)
    commit = (git.get("commit") or "")[:10] + (" (dirty)" if git.get("dirty") else "")
    facts = [("card", run.device_name), ("driver", env.get("driver")), ("torch", env.get("torch")), ("triton", env.get("triton")),
             ("cuDNN", env.get("cudnn")), ("CUDA", env.get("cuda_runtime")),
             ("flash-attn", env.get("flash_attn") or "not installed"), ("commit", commit)]
    if clocks:
        facts.append(("SM clocks seen", f"{clocks.get('sm_clock_min_mhz', '?'):g}-{clocks.get('sm_clock_max_mhz', '?'):g} MHz"
                      + (f" (max {gpu['sm_clock_max_mhz']:g})" if gpu.get("sm_clock_max_mhz") else "")))
    if run.multi_gpu:
        facts.append(("GPUs", f"{len(run.gpus)} ({'variance mode' if run.spread else 'sharded'})"))
    if env.get("copy_bandwidth_gbps"):
        facts.append(("copy bandwidth", f"{env['copy_bandwidth_gbps']:.0f} GB/s"))
    if run.meta.get("elapsed_s") is not None:
        facts.append(("elapsed", f"{run.meta['elapsed_s'] / 60:.1f} min"))
    return [(k, str(v)) for k, v in facts if v not in (None, "")]


def environment_table(run: Run) -> Table:
    env = run.environment
    items: list[tuple[str, Any]] = [("run", run.name), ("card", run.device_name)]
    for key, value in env.items():
        if isinstance(value, dict):
            items.extend((f"{key}.{k}", v) for k, v in value.items() if not isinstance(v, (dict, list)))
        elif not isinstance(value, list):
            items.append((key, value))
    for key, value in clocks_seen(run.rows).items():
        items.append((f"clocks seen: {key}", value))
    for key, value in (run.meta.get("settings") or {}).items():
        items.append((f"settings.{key}", value))
    for key in ("run_id", "created", "finished", "elapsed_s", "note"):
        value = run.meta.get(key)
        if value is None or isinstance(value, (dict, list)):
            continue
        if key in ("created", "finished") and isinstance(value, (int, float)):  # epoch seconds in run.json
            value = dt.datetime.fromtimestamp(value, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        items.append((key, value))
    if run.synthetic:
        items.insert(0, ("synthetic", "yes: test fixture, not a measurement"))
    frame = pd.DataFrame(items, columns=["field", "value"]).drop_duplicates("field")
    frame["value"] = frame["value"].map(str)
    return Table("environment", "Environment", frame, "Card, software and commit recorded with the run (run.json).")


def scenarios_table(run: Run, expected: dict[str, int] | None = None) -> Table:
    measured = pd.Series([r.scenario for r in run.rows]).value_counts().to_dict() if run.rows else {}
    records = []
    for s in run.scenarios:
        name = s.get("name", "")
        records.append({
            "scenario": name,
            "paper": s.get("paper", ""),
            "description": s.get("description", ""),
            "sha256": (s.get("_sha256") or scenario_hash({k: v for k, v in s.items() if not k.startswith("_")}))[:12],
            "path": s.get("_path", ""),
            "cases_expected": (expected or {}).get(name),
            "rows_measured": measured.get(name, 0),
        })
    frame = pd.DataFrame(records, columns=["scenario", "paper", "description", "sha256", "path", "cases_expected",
                                          "rows_measured"])
    caption = "Scenario files run, with the first 12 hex digits of the SHA-256 of each file as run (stored in run.json)."
    return Table("scenarios", "Scenarios", frame, caption)


# ---- claims ----------------------------------------------------------------------------------------


def claims_table(claims: list[dict]) -> Table:
    cols = ["scenario", "id", "text", "kind", "unit", "paper", "ours", "timer", "ours_device", "ours_eager", "ours_over_paper",
            "verdict", "target", "target_met", "card", "numerator_ms", "denominator_ms", "numerator_case", "denominator_case",
            "note"]
    frame = pd.DataFrame(claims, columns=cols)
    caption = ("ratio = time(numerator)/time(denominator); time = median in ms; share = 100 x numerator/denominator. "
               "'ours' uses the timer shown: graph = median of CUDA-graph replays (device time, no host launch overhead), "
               "eager = median of eager calls (host included); ours_eager is the eager figure beside it. "
               "Each selector names exactly one case of the claim's scenario. Rows matching no ok measurement are "
               "'not measured'. The paper measured on an A100; ours on the card shown.")
    return Table("claims", "Claims: the paper vs this run", frame, caption, [bool(c["disagrees"]) for c in claims])


# ---- latency, speedup --------------------------------------------------------------------------------


def latency_table(run: Run) -> Table:
    records = []
    for row in run.rows:
        rec = case_columns(row)
        rec.update({
            "status": row.status,
            "median_ms": row.median_ms,
            "graph_median_ms": row.graph_median_ms if row.timer != "cuda-graph" else row.median_ms,
            "host_overhead_ms": row.host_overhead_ms,
            "host_bound": row.host_bound,
            "iqr_ms": row.iqr_ms,
            "graph_iqr_ms": row.graph_iqr_ms,
            "min_ms": row.min_ms,
            "n": row.n,
            "graph_n": row.graph_n,
            "outliers": row.outliers,
            "tflops": row.tflops,
            "gbps": row.gbps,
            "bw_fraction_pct": None if row.bw_fraction is None else 100.0 * row.bw_fraction,
            "peak_mem_mib": None if row.peak_mem_bytes is None else row.peak_mem_bytes / 2**20,
            "timer": row.timer,
            "backend_detail": row.backend_detail,
            "case_id": row.case_id,
        })
        if run.multi_gpu:
            rec["gpu"] = gpu_label(row)
        records.append(rec)
    frame = pd.DataFrame.from_records(records)
    if not frame.empty:
        frame = frame.sort_values(["scenario", "level", "implementation", "mode", "dtype", "grid_h", "params"], kind="stable")
    caption = ("Every row of the run: median, interquartile range and minimum over n timed repetitions. median_ms is the "
               "eager call (host launches included), graph_median_ms the same step as CUDA-graph replays (device time; "
               "empty where capture was impossible, graph_message in rows.csv says why), host_overhead_ms their "
               "difference. tflops, gbps and bw_fraction_pct (ideal bytes over time as a share of the measured copy "
               "bandwidth) use the device time.")
    return Table("latency", "All measurements", frame.reset_index(drop=True), caption)


# Tiled FlashAttention attends inside windows only: a local approximation, not the global attention
# that C-GSPN replaces, so it is not a baseline here (it keeps its own latency line and claims).
LOCAL_ATTENTION = ("attention-tiled-flash",)


def speedups(rows: list[Row], timing: str = "device") -> pd.DataFrame:
    """Speedup of every non-attention ok row over the strongest global-attention baseline at its point.

    The baseline is, per level, mode, dtype, grid and (batch, channels), the fastest ok row of the
    attention family other than :data:`LOCAL_ATTENTION`; ``speedup_x = baseline_ms / median_ms``,
    both in the ``timing`` given (``device``: graph replays where captured; ``eager``).
    """

    def key(row: Row) -> tuple:
        return (row.level, row.mode, row.dtype, grid_of(row.params), row.params.get("batch"), row.params.get("channels"))

    def ms(row: Row) -> float | None:
        return row.time_ms(timing) if row.status == "ok" else None

    best: dict[tuple, Row] = {}
    for row in rows:
        if row.family == "attention" and row.implementation not in LOCAL_ATTENTION and ms(row) is not None:
            k = key(row)
            if k not in best or ms(row) < ms(best[k]):
                best[k] = row
    records = []
    for row in rows:
        if row.family == "attention" or ms(row) is None or key(row) not in best:
            continue
        base = best[key(row)]
        rec = case_columns(row)
        eager, eager_base = row.eager_ms, base.eager_ms
        rec.update({"median_ms": ms(row), "timing": timing, "baseline": base.implementation, "baseline_ms": ms(base),
                    "speedup_x": ms(base) / ms(row),
                    "speedup_eager_x": eager_base / eager if eager and eager_base else None})
        records.append(rec)
    cols = list(case_columns(rows[0]).keys()) + ["median_ms", "timing", "baseline", "baseline_ms", "speedup_x",
                                                 "speedup_eager_x"] if rows else []
    return pd.DataFrame.from_records(records, columns=cols)


def speedup_table(run: Run) -> Table:
    frame = speedups(run.case_rows)
    caption = ("Speedup over the strongest attention baseline: at each level, mode, dtype, grid, batch and width, the "
               "fastest ok global-attention row (named in 'baseline'; tiled FlashAttention, a windowed approximation, "
               "is not a baseline). speedup_x is on device time (CUDA-graph replays where captured), speedup_eager_x "
               "the same pair on eager time (host launches included).")
    if len(run.case_rows) < len(run.rows):
        caption += " A case measured on several GPUs counts with the median of their medians."
    return Table("speedup", "Speedup over the best attention baseline", frame, caption)


# ---- profile: breakdown and occupancy ---------------------------------------------------------------------


def breakdown_table(run: Run) -> Table:
    """Per profiled row: milliseconds per kernel category (Row.profile["categories"]) and shares."""
    records = []
    for row in run.rows:
        cats = (row.profile or {}).get("categories") or {}
        if not cats:
            continue
        rec = case_columns(row)
        total = sum(v for v in cats.values() if isinstance(v, (int, float)))
        rec["total_ms"] = total
        rec["median_ms"] = row.median_ms
        order = [c for c in CATEGORIES if c in cats] + sorted(c for c in cats if c not in CATEGORIES)
        for cat in order:
            rec[f"{cat}_ms"] = cats[cat]
        for cat in order:
            rec[f"{cat}_share_pct"] = 100.0 * cats[cat] / total if total else None
        records.append(rec)
    frame = pd.DataFrame.from_records(records)
    caption = ("GPU time per kernel category from one profiled repetition (torch.profiler); the profiled total "
               "can differ from the timed median (profiler overhead, no L2 flush).")
    return Table("breakdown", "Time breakdown by kernel category", frame, caption)


# Occupancy fields that are fractions in the profiler's table; shown as percentages (like every share here).
FRACTIONS = ("theoretical_occupancy", "est_achieved_occupancy")


def occupancy_record(kernel: dict) -> dict[str, Any]:
    """One launch of Row.profile["occupancy"], flattened: grid/block as ``AxBxC``, fractions as ``*_pct``,
    the Triton compile metadata (when the kernel is ours) as ``triton_<field>``."""
    rec: dict[str, Any] = {}
    for key, value in kernel.items():
        if key in FRACTIONS:
            rec[f"{key}_pct"] = None if value is None else 100.0 * value
        elif key in ("grid", "block") and isinstance(value, list):
            rec[key] = "x".join(map(str, value))
        elif key == "triton" and isinstance(value, dict):
            rec.update({f"triton_{k}": v for k, v in value.items() if not isinstance(v, (dict, list))})
        elif not isinstance(value, (dict, list)):
            rec[key] = value
    return rec


def occupancy_table(run: Run) -> Table:
    records = []
    for row in run.rows:
        for kernel in (row.profile or {}).get("occupancy") or []:
            records.append({**case_columns(row), **occupancy_record(kernel)})
    caption = ("Per distinct kernel launch of the profiled rows: launch shape, theoretical occupancy from the device limits "
               "(and its limiter), waves = grid blocks / resident capacity, CUPTI's estimated achieved occupancy when traced.")
    return Table("occupancy", "Occupancy", pd.DataFrame.from_records(records), caption)


def kernels_table(run: Run, top: int = 5) -> Table:
    """The heaviest kernels of each profiled row (Row.profile["kernels"])."""
    records = []
    for row in run.rows:
        kernels = sorted((row.profile or {}).get("kernels") or [], key=lambda k: -(k.get("total_ms") or 0))
        for kernel in kernels[:top]:
            rec = case_columns(row)
            rec.update({k: kernel.get(k) for k in ("name", "category", "calls", "total_ms", "mean_ms")})
            share = kernel.get("share")
            rec["share_pct"] = None if share is None else 100.0 * share
            records.append(rec)
    caption = f"The {top} heaviest kernels of each profiled row."
    return Table("kernels", "Heaviest kernels", pd.DataFrame.from_records(records), caption)


# ---- NVML, correctness, status ---------------------------------------------------------------------------

# NVML summary keys shown first (the sampler's names carry units); anything else follows.
NVML_FIRST = ("throttled", "clock_drop_pct", "sm_clock_min_mhz", "sm_clock_median_mhz", "sm_clock_max_seen_mhz",
              "mem_clock_median_mhz", "temp_max_c", "power_mean_w", "power_max_w", "energy_per_iter_j", "util_gpu_mean",
              "n_samples", "duration_s", "throttle_reasons")


def nvml_table(run: Run) -> Table:
    records, flagged = [], []
    for row in run.rows:
        nv = dict(row.nvml or {})
        if not nv or nv.get("available") is False:
            continue
        drop = nv.pop("clock_drop", None)  # a fraction in the sampler; a percentage here, like the other shares
        nv["clock_drop_pct"] = None if drop is None else 100.0 * drop
        rec = case_columns(row)
        rec["median_ms"] = row.median_ms
        keys = [k for k in NVML_FIRST if k in nv] + sorted(k for k in nv if k not in NVML_FIRST and k != "available")
        for key in keys:
            value = nv[key]
            rec[key] = ", ".join(map(str, value)) if isinstance(value, list) else value
        records.append(rec)
        flagged.append(bool(nv.get("throttled")))
    caption = ("GPU state sampled by NVML during each measurement. clock_drop_pct = 1 - min SM clock / max SM clock seen in "
               "the run; a row is throttled when it exceeds 5% or NVML reports a power/thermal/hardware slowdown "
               "(highlighted).")
    return Table("nvml", "GPU state during measurement (NVML)", pd.DataFrame.from_records(records), caption, flagged)


def correctness_table(run: Run) -> Table:
    """Per implementation, level, mode and dtype: checks passed/failed, worst error, tolerance; for
    fwd+bwd also the worst gradient error, its tolerance and what the gradient check did."""
    groups: dict[tuple, dict[str, Any]] = {}
    for row in run.rows:
        key = (row.implementation, row.level, row.mode, row.dtype)
        g = groups.setdefault(key, {"implementation": key[0], "level": key[1], "mode": key[2], "dtype": key[3],
                                    "checked": 0, "passed": 0, "failed": 0, "not_checked": 0,
                                    "worst_rel_rms": None, "worst_max_rel_err": None, "tolerance": None, "reference": "",
                                    "worst_grad_rel_rms": None, "grad_tolerance": None, "gradients": ""})
        check = row.correctness
        if not check or check.get("passed") is None:
            g["not_checked"] += 1
            continue
        g["checked"] += 1
        g["passed" if check["passed"] else "failed"] += 1
        for src, dst in (("rel_rms", "worst_rel_rms"), ("max_rel_err", "worst_max_rel_err"),
                         ("grad_rel_rms", "worst_grad_rel_rms")):
            value = _nan_to_none(check.get(src))
            if value is not None:
                g[dst] = value if g[dst] is None else max(g[dst], value)
            elif src in check:  # NaN error: the check failed on NaN
                g[dst] = float("nan")
        g["tolerance"] = check.get("tolerance", g["tolerance"])
        g["grad_tolerance"] = check.get("grad_tolerance", g["grad_tolerance"])
        note = check.get("gradients")  # e.g. "4 checked", "reference not differentiable"; distinct notes joined
        if note and note not in g["gradients"].split("; "):
            g["gradients"] = f"{g['gradients']}; {note}" if g["gradients"] else note
        g["reference"] = g["reference"] or str(check.get("reference", ""))
    frame = pd.DataFrame(list(groups.values()))
    flagged = [g["failed"] > 0 for g in groups.values()]
    caption = ("Correctness checks run before timing: relative RMS error against the reference implementation "
               "(higher precision), compared with the dtype's tolerance. fwd+bwd cases also compare the gradient of every "
               "input and parameter for one fixed upstream gradient (worst_grad_rel_rms, tolerance 2x the forward's). "
               "A failed case is reported as failed, not timed.")
    return Table("correctness", "Correctness", frame, caption, flagged)


def status_table(run: Run) -> Table:
    records = []
    for row in run.rows:
        if row.status == "ok":
            continue
        rec = case_columns(row)
        rec.update({"status": row.status, "message": row.message, "case_id": row.case_id})
        records.append(rec)
    caption = "Cases that did not produce a valid time: out of memory, unsupported here, errors and failed checks."
    return Table("status", "Cases without a valid time", pd.DataFrame.from_records(records), caption, [True] * len(records))


def status_counts(run: Run) -> dict[str, int]:
    return pd.Series([r.status for r in run.rows], dtype="object").value_counts().to_dict() if run.rows else {}


def missing_table(missing: list[dict]) -> Table:
    caption = "Cases the run's scenarios define that have no row in rows.jsonl (an interrupted or partial run)."
    return Table("missing", "Missing cases", pd.DataFrame.from_records(missing), caption)


# ---- compare ---------------------------------------------------------------------------------------------


def compare_tables(run: Run, other: Run) -> tuple[Table, Table]:
    """Rows of both runs matched by case_id with ``other_over_run`` = other device time / this device
    time (graph replays where both have them), the eager ratio beside it, and the rows present in only
    one of them."""
    mine = {r.case_id: r for r in run.case_rows}
    theirs = {r.case_id: r for r in other.case_rows}
    matched = []
    for cid, row in mine.items():
        if cid not in theirs:
            continue
        o = theirs[cid]
        rec = case_columns(row)
        ratio = o.device_ms / row.device_ms if row.device_ms and o.device_ms else None
        eager = o.eager_ms / row.eager_ms if row.eager_ms and o.eager_ms else None
        rec.update({"status": row.status, "other_status": o.status, "device_ms": row.device_ms, "other_device_ms": o.device_ms,
                    "other_over_run": ratio, "median_ms": row.median_ms, "other_median_ms": o.median_ms,
                    "eager_other_over_run": eager, "case_id": cid})
        matched.append(rec)
    only = []
    for source, rows, missing_from in ((run.name, mine, theirs), (other.name, theirs, mine)):
        for cid, row in rows.items():
            if cid not in missing_from:
                rec = {"only_in": source}
                rec.update(case_columns(row))
                rec.update({"status": row.status, "median_ms": row.median_ms, "case_id": cid})
                only.append(rec)
    caption = (f"Rows of this run ({run.name}, {run.device_name}) and of {other.name} ({other.device_name}) matched by "
               "case id; other_over_run > 1 means this run is faster, on device time (CUDA-graph replays where "
               "captured, else eager); eager_other_over_run is the same on the eager medians (host included).")
    if len(run.case_rows) < len(run.rows) or len(other.case_rows) < len(other.rows):
        caption += " A case measured on several GPUs (variance mode) counts with the median of its per-GPU medians."
    return (Table("compare", f"Compared with {other.name}", pd.DataFrame.from_records(matched), caption),
            Table("compare_only", "Cases in only one of the two runs", pd.DataFrame.from_records(only)))


# ---- GPUs: rows per card, card-to-card spread --------------------------------------------------------

# A case whose per-GPU medians spread by more than this share of their median is highlighted.
SPREAD_FLAG_PCT = 5.0


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def gpu_table(run: Run) -> Table:
    """One line per GPU (CPU rank) of the run: identity, rows, statuses, NVML clocks over its rows.

    Clock columns aggregate the rows' NVML summaries: ``sm_clock_median_mhz`` is the median of the
    rows' median SM clocks, ``sm_clock_min_mhz`` the lowest SM clock any of its rows saw.
    """
    names = {g.get("uuid"): g.get("name") for g in run.environment.get("gpus") or [] if isinstance(g, dict)}
    groups: dict[str, list[Row]] = {}
    for row in run.rows:
        groups.setdefault(gpu_key(row), []).append(row)
    records, flagged = [], []
    for rows in groups.values():
        first = rows[0]
        nvml = [r.nvml for r in rows if r.nvml and r.nvml.get("available") is not False]

        def values(key: str, nv: list[dict] = nvml) -> list[float]:
            return [n[key] for n in nv if isinstance(n.get(key), (int, float)) and not isinstance(n.get(key), bool)]

        throttled = sum(1 for n in nvml if n.get("throttled"))
        records.append({
            "gpu": gpu_label(first),
            "ranks": ", ".join(str(r) for r in sorted({r.rank for r in rows})),
            "gpu_index": first.gpu_index,
            "gpu_uuid": first.gpu_uuid,
            "name": first.device or names.get(first.gpu_uuid) or "",
            "rows": len(rows),
            "ok": sum(1 for r in rows if r.status == "ok"),
            "not_ok": sum(1 for r in rows if r.status != "ok"),
            "nvml_rows": len(nvml),
            "sm_clock_median_mhz": _median(values("sm_clock_median_mhz")),
            "sm_clock_min_mhz": min(values("sm_clock_min_mhz"), default=None),
            "mem_clock_median_mhz": _median(values("mem_clock_median_mhz")),
            "temp_max_c": max(values("temp_max_c"), default=None),
            "power_mean_w": statistics.fmean(values("power_mean_w")) if values("power_mean_w") else None,
            "throttled_rows": throttled,
        })
        flagged.append(throttled > 0)
    caption = ("Rows grouped by the GPU that measured them (by UUID; CPU ranks by rank). Clocks come from the rows' NVML "
               "summaries: sm_clock_median_mhz is the median of the rows' median SM clocks, sm_clock_min_mhz the lowest "
               "SM clock seen, power_mean_w the mean of the rows' mean power. GPUs with throttled rows are highlighted.")
    return Table("gpus", "Rows per GPU", pd.DataFrame.from_records(records), caption, flagged)


def spread_records(spread: list[dict], rows: list[Row] | None = None) -> list[dict[str, Any]]:
    """gpu_spread.json entries as table lines: the case, per-GPU medians (``<label>_ms``) and the spread.

    ``spread_pct`` = 100 x (max - min) / median of the per-GPU medians; ``spread_of_min_pct`` is the
    runner's ``spread`` ((max - min) / min) in percent. ``rows`` supply each case's scenario.
    """
    scenario = {r.case_id: r.scenario for r in rows or []}
    records = []
    for entry in spread:
        medians = {str(k): float(v) for k, v in entry["medians_ms"].items()}
        row = Row(case_id=entry["case_id"], implementation=entry["implementation"], family="", level=entry["level"],
                  mode=entry["mode"], dtype=entry["dtype"], params=entry["params"], scenario=scenario.get(entry["case_id"], ""))
        middle = statistics.median(medians.values())
        low, high = min(medians.values()), max(medians.values())
        rec = case_columns(row)
        rec.update({"gpus": len(medians), "median_ms": middle, "min_ms": low, "max_ms": high,
                    "spread_pct": 100.0 * (high - low) / middle,
                    "spread_of_min_pct": 100.0 * entry["spread"] if entry.get("spread") is not None else None,
                    "case_id": entry["case_id"]})
        rec.update({f"{label}_ms": ms for label, ms in medians.items()})
        records.append(rec)
    return records


def spread_table(run: Run) -> Table:
    records = spread_records(run.spread, run.rows)
    caption = ("Variance mode (--same-case-on-every-gpu): every GPU measured every case. Per case the median of each GPU "
               "(<rank>/<gpu>_ms), their median, and spread_pct = 100 x (max - min) / median; spread_of_min_pct is the "
               f"runner's (max - min) / min from gpu_spread.json. Spreads above {SPREAD_FLAG_PCT:g}% are highlighted.")
    return Table("gpu_spread", "Card-to-card spread per case", pd.DataFrame.from_records(records), caption,
                 [r["spread_pct"] > SPREAD_FLAG_PCT for r in records])
