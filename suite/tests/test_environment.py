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


def test_flash_attention_packages_are_found_one_by_one(monkeypatch):
    """An FA3-only install is reported as FA3, not as no FlashAttention."""
    import importlib.metadata
    import importlib.util

    from suite import environment

    present = {"flash_attn_interface"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name in present else None)
    versions = {"flash-attn-3": "3.0.0b1"}

    def version(name):
        if name not in versions:
            raise importlib.metadata.PackageNotFoundError(name)
        return versions[name]

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert environment.flash_attention_packages() == {"flash_attn": None, "flash_attn_3": "3.0.0b1", "flash_attn_4": None}
    present.update({"flash_attn", "flash_attn.cute"})
    versions["flash-attn"] = "2.8.3"
    assert environment.flash_attention_packages() == {"flash_attn": "2.8.3", "flash_attn_3": "3.0.0b1", "flash_attn_4": "2.8.3"}


def test_sdpa_flash_implementation_is_asked_of_torch(monkeypatch):
    import torch.nn.attention as attention

    from kernels.attention import sublayer
    from suite.environment import sdpa_flash

    monkeypatch.setattr(attention, "current_flash_attention_impl", lambda: "FA4", raising=False)
    monkeypatch.setattr(attention, "list_flash_attention_impls", lambda: ["FA3", "FA4"], raising=False)
    assert sublayer.sdpa_flash_impl() == "FA4"
    assert sdpa_flash() == {"sdpa_flash_impl": "FA4", "sdpa_flash_impls_registered": "FA3, FA4"}
    monkeypatch.setattr(attention, "current_flash_attention_impl", lambda: None)
    assert sublayer.sdpa_flash_impl() == "FA2 (bundled)"
    monkeypatch.delattr(attention, "current_flash_attention_impl")  # an older torch
    monkeypatch.delattr(attention, "list_flash_attention_impls")
    assert sdpa_flash() == {"sdpa_flash_impl": "FA2 (bundled)", "sdpa_flash_impls_registered": "none"}


def test_sdpa_flash_detail_follows_the_active_implementation(monkeypatch):
    import torch.nn.attention as attention

    from kernels.attention import sublayer

    monkeypatch.setattr(sublayer, "HAS_FLASH_ATTN_3", False)
    monkeypatch.setattr(sublayer, "HAS_FLASH_ATTN_2", False)
    monkeypatch.setattr(attention, "current_flash_attention_impl", lambda: "FA3", raising=False)
    assert sublayer.resolve("flash", "cuda").detail.startswith("sdpa-flash FA3 (torch ")
    monkeypatch.setattr(attention, "current_flash_attention_impl", lambda: None)
    assert sublayer.resolve("flash", "cuda").detail.startswith("sdpa-flash FA2 (bundled) (torch ")
