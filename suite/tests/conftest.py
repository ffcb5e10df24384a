"""Fixtures shared by the report tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from suite.report.render import render_report

FIXTURE_RUN = Path(__file__).parent / "data" / "fixture_run"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """The committed fixture run (suite/tests/data/fixture_run) rendered once per test module."""
    out = tmp_path_factory.mktemp("report")
    render_report(FIXTURE_RUN, out)
    return out
