"""The run directory: rows appended as they come survive a writer killed mid-line."""

from __future__ import annotations

from suite.results import Row, RunDir


def _row(cid: str) -> Row:
    return Row(case_id=cid, implementation="test-sleep", family="vit", level="sublayer", mode="fwd", dtype="float32",
               params={"batch": 1, "grid": 1})


def test_append_after_a_torn_last_line_keeps_the_new_row(tmp_path):
    """A run killed mid-write leaves a partial last line; the resumed run's first row must not be glued to it."""
    run = RunDir(tmp_path)
    run.append(_row("before"))
    with open(run.rows_path, "a", encoding="utf-8") as f:
        f.write('{"case_id":"torn","implementa')  # SIGKILL in the middle of a write
    run.append(_row("after"))
    run.append(_row("later"))
    assert [r.case_id for r in run.rows()] == ["before", "after", "later"]
