"""The environment record: the git commit of the measured tree, with or without .git."""

from __future__ import annotations

import subprocess

from suite.environment import COMMIT_ENV, REPO_ROOT, collect_environment, git_state


def test_commit_of_this_checkout(monkeypatch):
    monkeypatch.delenv(COMMIT_ENV, raising=False)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    state = git_state()
    assert state["commit"] == head
    assert state["dirty"] in (True, False)


def test_tree_without_git_takes_the_commit_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(COMMIT_ENV, raising=False)
    assert git_state(tmp_path)["commit"] is None  # nothing to read and nothing named
    monkeypatch.setenv(COMMIT_ENV, "0123abcd")
    state = git_state(tmp_path)
    assert state == {"commit": "0123abcd", "dirty": None, "branch": None, "source": COMMIT_ENV}
    assert git_state(REPO_ROOT)["commit"] == "0123abcd"  # named explicitly: wins over the checkout's HEAD


def test_environment_names_versions_and_the_device():
    env = collect_environment("cpu")
    assert env["torch"] and env["python"]
    assert "git" in env
