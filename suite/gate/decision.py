"""The gate's decision rule: is the current run slower than the baseline, beyond its noise?

One mean against one threshold (pytest-benchmark's ``--benchmark-compare-fail``) breaks on a
noisy card: a single slow outlier fails the build, a real 15% slowdown hidden in a wide
distribution passes. The gate instead uses every timing sample of both sides and calls a case a
**regression** only when all three hold:

1. *effect*: the median ratio ``r = median(current) / median(baseline)`` exceeds ``1 + t``
   (``t`` = the case's max slowdown, 10% by default);
2. *beyond noise*: the median shift is larger than the combined run-to-run spread,
   ``median(cur) - median(base) > (IQR(base) + IQR(cur)) / 2``, and the bootstrap confidence
   interval of ``r`` (95% by default) lies above 1. The IQR rule keeps a shift that is
   statistically detectable but smaller than the spread of the timings from failing the build:
   samples of one run are autocorrelated (clocks, thermals), so tests overstate certainty;
3. *significance*: a one-sided Mann-Whitney U test (``scipy.stats.mannwhitneyu``) says the
   current samples are stochastically larger, ``p < alpha`` (0.01 by default).

An **improvement** is the mirror image, with ``r < 1 / (1 + t)`` (symmetric in log space: a 10%
slowdown undone is a 9.1% speedup). A ratio beyond the threshold that fails (2) or (3) is
**inconclusive**: listed, never failing the gate.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class DecisionRule:
    """Knobs of the rule; ``max_slowdown`` is the default threshold (a fraction: 0.10 = 10%)."""

    max_slowdown: float = 0.10
    alpha: float = 0.01  # one-sided Mann-Whitney U significance level
    confidence: float = 0.95  # bootstrap confidence interval of the median ratio
    min_samples: int = 5  # fewer samples on either side: no verdict, only "inconclusive"
    bootstrap: int = 2000  # bootstrap resamples
    seed: int = 0  # fixed, so the same two runs always give the same verdict

    def __post_init__(self) -> None:
        if not self.max_slowdown >= 0:
            raise ValueError(f"max_slowdown: must be >= 0 (a fraction, 0.10 = 10%), got {self.max_slowdown}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha: must be in (0, 1), got {self.alpha}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence: must be in (0, 1), got {self.confidence}")
        if self.min_samples < 2:
            raise ValueError(f"min_samples: must be >= 2, got {self.min_samples}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SampleComparison:
    """What the rule saw for one case; times in ms."""

    verdict: str  # regression | improvement | unchanged | inconclusive
    ratio: float  # median(current) / median(baseline)
    ci_low: float  # bootstrap CI of the ratio
    ci_high: float
    delta_ms: float  # median(current) - median(baseline)
    noise_ms: float  # (IQR(baseline) + IQR(current)) / 2
    p_slower: float  # one-sided Mann-Whitney U p-values
    p_faster: float
    threshold: float
    reason: str


def _mannwhitneyu():
    """scipy's Mann-Whitney U test (exact for small samples without ties, normal approximation with
    tie correction otherwise); imported on use so the rest of the CLI works without scipy."""
    try:
        from scipy.stats import mannwhitneyu
    except ImportError as err:
        raise ImportError("the regression gate needs scipy (scipy.stats.mannwhitneyu): pip install 'scipy>=1.10'") from err
    return mannwhitneyu


def iqr(samples: np.ndarray) -> float:
    q1, q3 = np.percentile(samples, [25, 75])
    return float(q3 - q1)


def bootstrap_ratio_ci(base: np.ndarray, cur: np.ndarray, confidence: float, resamples: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap CI of ``median(cur) / median(base)``, each side resampled independently
    (``scipy.stats.bootstrap`` with ``paired=False``; a fixed seed, so a verdict is reproducible)."""
    from scipy.stats import bootstrap

    def ratio(b: np.ndarray, c: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.median(c, axis=axis) / np.median(b, axis=axis)

    seeded = {"rng" if "rng" in inspect.signature(bootstrap).parameters else "random_state": np.random.default_rng(seed)}
    result = bootstrap((base, cur), ratio, n_resamples=resamples, confidence_level=confidence, method="percentile",
                       paired=False, vectorized=True, **seeded)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def compare_samples(baseline_ms, current_ms, rule: DecisionRule, threshold: float | None = None) -> SampleComparison:
    """Apply the rule to two sample lists (ms). ``threshold`` overrides ``rule.max_slowdown``."""
    t = rule.max_slowdown if threshold is None else threshold
    base = np.asarray(baseline_ms, dtype=np.float64)
    cur = np.asarray(current_ms, dtype=np.float64)
    for name, arr in (("baseline", base), ("current", cur)):
        if arr.size and (not np.all(np.isfinite(arr)) or np.any(arr <= 0)):
            raise ValueError(f"{name} samples: every timing must be a finite positive number of ms")
    nan = float("nan")
    if base.size < rule.min_samples or cur.size < rule.min_samples:
        ratio = float(np.median(cur) / np.median(base)) if base.size and cur.size else nan
        reason = f"too few samples (baseline {base.size}, current {cur.size}; need {rule.min_samples})"
        return SampleComparison("inconclusive", ratio, nan, nan, nan, nan, nan, nan, t, reason)

    med_b, med_c = float(np.median(base)), float(np.median(cur))
    ratio = med_c / med_b
    delta = med_c - med_b
    noise = (iqr(base) + iqr(cur)) / 2
    ci_low, ci_high = bootstrap_ratio_ci(base, cur, rule.confidence, rule.bootstrap, rule.seed)
    mannwhitneyu = _mannwhitneyu()
    p_slower = float(mannwhitneyu(cur, base, alternative="greater").pvalue)
    p_faster = float(mannwhitneyu(cur, base, alternative="less").pvalue)

    def verdict(direction: str, effect: bool, beyond_iqr: bool, ci_clear: bool, p: float) -> tuple[str, str]:
        pct = f"{100 * (ratio - 1):+.1f}%"
        if not effect:
            return "unchanged", f"{pct} within the {100 * t:.0f}% threshold"
        failed = []
        if not beyond_iqr:
            failed.append(f"shift {abs(delta):.4g} ms within the IQR noise {noise:.4g} ms")
        if not ci_clear:
            failed.append(f"{100 * rule.confidence:.0f}% CI [{ci_low:.3f}, {ci_high:.3f}] includes 1")
        if not p < rule.alpha:
            failed.append(f"Mann-Whitney p={p:.3g} >= {rule.alpha}")
        if failed:
            return ("inconclusive" if direction == "regression" else "unchanged"), f"{pct} but " + "; ".join(failed)
        return direction, f"{pct}, beyond noise, p={p:.2g}"

    if ratio > 1 + t:
        name, reason = verdict("regression", True, delta > noise, ci_low > 1, p_slower)
    elif ratio < 1 / (1 + t):
        name, reason = verdict("improvement", True, -delta > noise, ci_high < 1, p_faster)
    else:
        name, reason = verdict("unchanged", False, False, False, 1.0)
    return SampleComparison(name, ratio, ci_low, ci_high, delta, noise, p_slower, p_faster, t, reason)
