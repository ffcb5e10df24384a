"""Regression gates for GPU CI runners: noise-aware speed gates, correctness gates, baselines per card.

* :mod:`suite.gate.decision`   the decision rule on the timing samples of both sides;
* :mod:`suite.gate.compare`    matching rows by case_id and one verdict per case;
* :mod:`suite.gate.baseline`   ``results/baselines/<gpu-model>.json``;
* :mod:`suite.gate.thresholds` per-case max slowdowns from YAML;
* :mod:`suite.gate.confirm`    ``--confirm N``: re-measure first-pass regressions, keep those a majority reproduce;
* :mod:`suite.gate.ab`         same-job A/B against a git ref, interleaved on one card;
* :mod:`suite.gate.slowdown`   the test-only slowdown switch (``CGSPN_BENCH_TEST_SLOWDOWN``);
* :mod:`suite.gate.cli`        ``cgspn-bench gate`` and ``cgspn-bench baseline``.

See docs/gates.md.
"""



def register_cli(subparsers) -> None:
    """Add ``gate`` and ``baseline`` to the suite's CLI.

    Imported lazily: the measurement core imports :mod:`suite.gate.slowdown`, and the gate's
    comparison imports the measurement core, so the package itself must import neither.
    """
    from suite.gate.cli import register_cli as register

    register(subparsers)


__all__ = ["register_cli"]
