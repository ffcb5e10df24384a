"""The report's tables as pandas frames: one frame = one HTML table = one CSV file.

Column names carry their unit, the same units as the run's ``rows.csv``: times in ms
(``median_ms``), sizes in bytes (``peak_mem_bytes``), shares as fractions of 1 (``bw_fraction``,
``*_fraction``), clocks in MHz, power in W, energy in J. Each parameter of a case is its own
column, ``p_<name>`` as in ``rows.csv``. Every table has its columns even when it has no rows, so
every CSV loads with ``pandas.read_csv``. The HTML shows fractions as percentages.
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


def make_frame(records: list[dict[str, Any]], columns: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """A frame of ``records`` whose columns are those of the records (first seen first) plus any of
    ``columns`` they lack, the ``p_<name>`` parameter columns together after the case columns; with
    no records, exactly ``columns``, so the CSV still has its header."""
    seen = dict.fromkeys(k for r in records for k in r)
    names = list(dict.fromkeys([*seen, *columns])) if records else list(columns)
    params = sorted(n for n in names if n.startswith("p_"))
    names = [n for n in names if not n.startswith("p_")]
    at = names.index(CASE_FIELDS[-1]) + 1 if CASE_FIELDS[-1] in names else 0
    names[at:at] = params
    return pd.DataFrame.from_records(records, columns=names) if records else pd.DataFrame(columns=names)


# The columns every per-case table starts with (then one p_<name> column per parameter of its rows).
CASE_FIELDS = ("scenario", "implementation", "level", "mode", "dtype", "resolution_px", "grid_h", "grid_w")


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
    """The columns that identify a case in every per-row table: :data:`CASE_FIELDS` and one
    ``p_<name>`` column per parameter (as in rows.csv)."""
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
        **{f"p_{k}": v for k, v in sorted(row.params.items())},
    }


def record_params(record: dict) -> dict[str, Any]:
    """The parameters of a table record: its ``p_<name>`` columns (NaN from other rows' columns left out)."""
    out = {}
    for key, value in record.items():
        if key.startswith("p_") and value is not None and value == value:  # NaN != NaN
            out[key[2:]] = int(value) if isinstance(value, float) and value.is_integer() else value
    return out


# Params at the paper's reference values are left out of case labels (the report says so).
REFERENCE_PARAMS = {"B": 32, "C": 1152, "heads": 16, "mlp": 4304, "s": 18, "depth": 27, "tile": 27, "patch": 14}


def case_label(record: dict) -> str:
    """``attention-flash · block · 1036 px (74) · fwd bfloat16``, plus non-reference params."""
    res, h, w = record.get("resolution_px"), record.get("grid_h"), record.get("grid_w")
    grid = "" if h is None or (isinstance(h, float) and math.isnan(h)) else f"{h:g}" if h == w else f"{h:g}x{w:g}"
    shape = f"{res:g} px ({grid})" if res is not None and not (isinstance(res, float) and math.isnan(res)) else grid
    packed = record["params"] if isinstance(record.get("params"), str) else params_label(record_params(record))
    extra = " ".join(kv for kv in packed.split() if kv.split("=")[0] not in REFERENCE_PARAMS
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


def report_title(run: Run) -> str:
    """The page title from the run's environment: its scenarios, card and date (not the run hash)."""
    names = [s.get("name") for s in run.scenarios if s.get("name")] or sorted({r.scenario for r in run.rows if r.scenario})
    what = (", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")) if names else run.name
    when = str(run.environment.get("time") or "")[:10]
    return f"cgspn-bench: {what} on {run.device_name}" + (f", {when}" if when else "")


def commit_text(env: dict[str, Any]) -> str:
    """The measured commit (10 hex digits, ``(dirty)`` for a modified tree), or why there is none."""
    git = env.get("git") or {}
    if not git.get("commit"):
        return "not recorded (tree without .git; set CGSPN_BENCH_COMMIT)"
    return git["commit"][:10] + (" (dirty)" if git.get("dirty") else "") + (f" ({git['source']})" if git.get("source") else "")


def flash_attention_text(env: dict[str, Any]) -> str:
    """Which FlashAttention SDPA ran and which FlashAttention packages were installed."""
    packages = [f"{label} {env[key]}" for key, label in (("flash_attn", "flash-attn"), ("flash_attn_3", "FA3"),
                                                           ("flash_attn_4", "FA4")) if env.get(key)]
    sdpa = f"SDPA {env['sdpa_flash_impl']}" if env.get("sdpa_flash_impl") else "SDPA implementation not recorded"
    return f"{sdpa}; " + (", ".join(packages) if packages else "no flash-attn package")


def key_facts(run: Run) -> list[tuple[str, str]]:
    """The few environment facts a reader needs next to any number (the page's header)."""
    env, gpu = run.environment, run.environment.get("gpu") or {}
    clocks = clocks_seen(run.rows)
    facts = [("card", run.device_name), ("driver", env.get("driver")), ("torch", env.get("torch")), ("triton", env.get("triton")),
             ("cuDNN", env.get("cudnn")), ("CUDA", env.get("cuda_runtime")),
             ("FlashAttention", flash_attention_text(env)), ("commit", commit_text(env))]
    if clocks:
        facts.append(("SM clocks seen", f"{clocks.get('sm_clock_min_mhz', '?'):g}-{clocks.get('sm_clock_max_mhz', '?'):g} MHz"
                      + (f" (max {gpu['sm_clock_max_mhz']:g})" if gpu.get("sm_clock_max_mhz") else "")))
    if run.multi_gpu:
        facts.append(("GPUs", f"{len(run.gpus)} ({'variance mode' if run.spread else 'sharded'})"))
    if env.get("copy_bandwidth_gbps"):
        facts.append(("copy bandwidth", f"{env['copy_bandwidth_gbps']:.0f} GB/s"))
    if env.get("gemm_tflops"):
        facts.append(("bf16 GEMM", f"{env['gemm_tflops']:.0f} TFLOP/s"))
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


LATENCY_FIELDS = ("status", "median_ms", "graph_median_ms", "host_overhead_ms", "host_bound", "iqr_ms", "graph_iqr_ms", "min_ms",
                  "n", "graph_n", "outliers", "tflops", "gbps", "bw_fraction", "peak_mem_bytes", "timer", "backend_detail",
                  "case_id")


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
            "bw_fraction": row.bw_fraction,
            "peak_mem_bytes": row.peak_mem_bytes,
            "timer": row.timer,
            "backend_detail": row.backend_detail,
            "case_id": row.case_id,
        })
        if run.multi_gpu:
            rec["gpu"] = gpu_label(row)
        records.append(rec)
    frame = make_frame(records, [*CASE_FIELDS, *LATENCY_FIELDS])
    if not frame.empty:
        params = sorted(c for c in frame if c.startswith("p_"))
        order = ["scenario", "level", "implementation", "mode", "dtype", "grid_h", *params]
        frame = frame.sort_values(order, kind="stable")
    caption = ("Every row of the run: median, interquartile range and minimum over n timed repetitions. median_ms is the "
               "eager call (host launches included), graph_median_ms the same step as CUDA-graph replays (device time; "
               "empty where capture was impossible, graph_message in rows.csv says why), host_overhead_ms their "
               "difference. tflops, gbps and bw_fraction (ideal bytes over time as a fraction of the measured copy "
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
    ``params`` (the packed label the speedup figure groups its lines by) is left out of the CSV.
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
        rec.update({"params": params_label(row.params), "median_ms": ms(row), "timing": timing,
                    "baseline": base.implementation, "baseline_ms": ms(base), "speedup_x": ms(base) / ms(row),
                    "speedup_eager_x": eager_base / eager if eager and eager_base else None})
        records.append(rec)
    return make_frame(records, [*CASE_FIELDS, "params", *SPEEDUP_FIELDS])


SPEEDUP_FIELDS = ("median_ms", "timing", "baseline", "baseline_ms", "speedup_x", "speedup_eager_x")


def speedup_table(run: Run) -> Table:
    frame = speedups(run.case_rows).drop(columns="params")
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
            rec[f"{cat}_share_fraction"] = cats[cat] / total if total else None
        records.append(rec)
    frame = make_frame(records, [*CASE_FIELDS, "total_ms", "median_ms"])
    caption = ("GPU time per kernel category from one profiled repetition (torch.profiler); the profiled total "
               "can differ from the timed median (profiler overhead, no L2 flush).")
    return Table("breakdown", "Time breakdown by kernel category", frame, caption)


# Occupancy fields that are fractions in the profiler's table; named ``*_fraction`` here (like every share).
FRACTIONS = ("theoretical_occupancy", "est_achieved_occupancy")


def occupancy_record(kernel: dict) -> dict[str, Any]:
    """One launch of Row.profile["occupancy"], flattened: grid/block as ``AxBxC``, fractions as ``*_fraction``,
    the Triton compile metadata (when the kernel is ours) as ``triton_<field>``."""
    rec: dict[str, Any] = {}
    for key, value in kernel.items():
        if key in FRACTIONS:
            rec[f"{key}_fraction"] = value
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
    columns = [*CASE_FIELDS, "name", "category", "grid", "block", "registers_per_thread", "shared_memory_bytes",
               "theoretical_occupancy_fraction", "resident_blocks_per_sm", "waves", "limiter"]
    return Table("occupancy", "Occupancy", make_frame(records, columns), caption)


def kernels_table(run: Run, top: int = 5) -> Table:
    """The heaviest kernels of each profiled row (Row.profile["kernels"])."""
    records = []
    for row in run.rows:
        kernels = sorted((row.profile or {}).get("kernels") or [], key=lambda k: -(k.get("total_ms") or 0))
        for kernel in kernels[:top]:
            rec = case_columns(row)
            rec.update({k: kernel.get(k) for k in ("name", "category", "calls", "total_ms", "mean_ms")})
            rec["share_fraction"] = kernel.get("share")
            records.append(rec)
    caption = f"The {top} heaviest kernels of each profiled row."
    columns = [*CASE_FIELDS, "name", "category", "calls", "total_ms", "mean_ms", "share_fraction"]
    return Table("kernels", "Heaviest kernels", make_frame(records, columns), caption)


# ---- NVML, correctness, status ---------------------------------------------------------------------------

# NVML summary keys shown first (the sampler's names carry units); anything else follows.
NVML_FIRST = ("throttled", "clock_drop_fraction", "sm_clock_min_mhz", "sm_clock_median_mhz", "sm_clock_max_seen_mhz",
              "mem_clock_median_mhz", "temp_max_c", "power_mean_w", "power_max_w", "energy_per_call_j", "energy_per_image_j",
              "energy_source", "util_gpu_mean", "n_samples", "duration_s", "throttle_reasons")
# Summary keys not shown: the time series lives in the run directory, not next to the report.
NVML_HIDDEN = ("available", "series")


def energy_columns(nv: dict[str, Any], batch: int | None) -> dict[str, Any]:
    """Energy per call, per image and its source; rows written before the energy counter have
    ``energy_per_iter_j`` (mean sampled power x median time) and no per-image figure."""
    out = {k: nv[k] for k in ("energy_per_call_j", "energy_per_image_j", "energy_source") if k in nv}
    if "energy_per_call_j" not in out and nv.get("energy_per_iter_j") is not None:
        out["energy_per_call_j"] = nv["energy_per_iter_j"]
        out["energy_source"] = "mean sampled power x median time"
    if "energy_per_image_j" not in out and out.get("energy_per_call_j") is not None and batch:
        out["energy_per_image_j"] = out["energy_per_call_j"] / batch
    return out


def nvml_table(run: Run) -> Table:
    records, flagged = [], []
    for row in run.rows:
        nv = dict(row.nvml or {})
        if not nv or nv.get("available") is False:
            continue
        nv["clock_drop_fraction"] = nv.pop("clock_drop", None)
        nv.update(energy_columns(nv, row.params.get("batch")))
        nv.pop("energy_per_iter_j", None)
        rec = case_columns(row)
        rec["median_ms"] = row.median_ms
        keys = [k for k in NVML_FIRST if k in nv] + sorted(k for k in nv if k not in NVML_FIRST and k not in NVML_HIDDEN)
        for key in keys:
            value = nv[key]
            rec[key] = ", ".join(map(str, value)) if isinstance(value, list) else value
        records.append(rec)
        flagged.append(bool(nv.get("throttled")))
    caption = ("GPU state sampled by NVML during each measurement. clock_drop_fraction = 1 - min SM clock / max SM clock "
               "seen in the run; a row is throttled when it exceeds 5% or NVML reports a power/thermal/hardware slowdown "
               "(highlighted). Energy per call = the measurement's mean power x the median time: the mean power from NVML's "
               "total-energy counter where the card has one, else from the 20 Hz power samples (energy_source says which); "
               "per image = per call / batch. The time series of each row is nvml/<case_id>.json in the run directory.")
    columns = [*CASE_FIELDS, "median_ms", *NVML_FIRST]
    return Table("nvml", "GPU state and energy during measurement (NVML)", make_frame(records, columns), caption, flagged)


CORRECTNESS_FIELDS = ("implementation", "level", "mode", "dtype", "checked", "passed", "failed", "not_checked", "worst_rel_rms",
                      "worst_max_rel_err", "tolerance", "reference", "worst_grad_rel_rms", "grad_tolerance", "gradients")


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
    frame = make_frame(list(groups.values()), CORRECTNESS_FIELDS)
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
    frame = make_frame(records, [*CASE_FIELDS, "status", "message", "case_id"])
    return Table("status", "Cases without a valid time", frame, caption, [True] * len(records))


def status_counts(run: Run) -> dict[str, int]:
    return pd.Series([r.status for r in run.rows], dtype="object").value_counts().to_dict() if run.rows else {}


def missing_table(missing: list[dict]) -> Table:
    caption = "Cases the run's scenarios define that have no row in rows.jsonl (an interrupted or partial run)."
    return Table("missing", "Missing cases", make_frame(missing, [*CASE_FIELDS, "case_id", "note"]), caption)


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
    matched_columns = [*CASE_FIELDS, "status", "other_status", "device_ms", "other_device_ms", "other_over_run", "median_ms",
                       "other_median_ms", "eager_other_over_run", "case_id"]
    return (Table("compare", f"Compared with {other.name}", make_frame(matched, matched_columns), caption),
            Table("compare_only", "Cases in only one of the two runs",
                  make_frame(only, ["only_in", *CASE_FIELDS, "status", "median_ms", "case_id"])))


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
    columns = ["gpu", "ranks", "gpu_index", "gpu_uuid", "name", "rows", "ok", "not_ok", "nvml_rows", "sm_clock_median_mhz",
               "sm_clock_min_mhz", "mem_clock_median_mhz", "temp_max_c", "power_mean_w", "throttled_rows"]
    return Table("gpus", "Rows per GPU", make_frame(records, columns), caption, flagged)


def spread_records(spread: list[dict], rows: list[Row] | None = None) -> list[dict[str, Any]]:
    """gpu_spread.json entries as table lines: the case, per-GPU medians (``<label>_ms``) and the spread.

    ``spread_fraction`` = (max - min) / median of the per-GPU medians; ``spread_of_min_fraction`` is the
    runner's ``spread`` ((max - min) / min). ``rows`` supply each case's scenario.
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
                    "spread_fraction": (high - low) / middle, "spread_of_min_fraction": entry.get("spread"),
                    "case_id": entry["case_id"]})
        rec.update({f"{label}_ms": ms for label, ms in medians.items()})
        records.append(rec)
    return records


def spread_table(run: Run) -> Table:
    records = spread_records(run.spread, run.rows)
    caption = ("Variance mode (--same-case-on-every-gpu): every GPU measured every case. Per case the median of each GPU "
               "(<rank>/<gpu>_ms), their median, and spread_fraction = (max - min) / median; spread_of_min_fraction is the "
               f"runner's (max - min) / min from gpu_spread.json. Spreads above {SPREAD_FLAG_PCT:g}% are highlighted.")
    columns = [*CASE_FIELDS, "gpus", "median_ms", "min_ms", "max_ms", "spread_fraction", "spread_of_min_fraction", "case_id"]
    return Table("gpu_spread", "Card-to-card spread per case", make_frame(records, columns), caption,
                 [100.0 * r["spread_fraction"] > SPREAD_FLAG_PCT for r in records])
