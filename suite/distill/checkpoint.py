"""Checkpoints: everything a resumed run needs to produce the identical next loss.

A step checkpoint holds the stage and step, the student and adaptor weights, the optimizer and
scheduler states, the data position and the RNG states (Python, NumPy, torch CPU and CUDA), and
the evaluations done so far. A stage-final file holds the student weights at the end of a stage:
the next curriculum stage's frozen teacher, and the run's deliverable. Files are written to a
temporary name and renamed, so a run killed mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import torch

from suite.errors import InputError

STEP_PATTERN = re.compile(r"step-(\d+)\.pt$")


def rng_state() -> dict:
    """RNG states as tensors and plain data (what ``torch.load(weights_only=True)`` accepts)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def step_path(directory: Path, global_step: int) -> Path:
    return directory / f"step-{global_step:07d}.pt"


def stage_final_path(directory: Path, index: int, name: str) -> Path:
    return directory / f"stage{index}-{name}-final.pt"


def step_checkpoints(directory: Path) -> list[Path]:
    """Step checkpoints, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := STEP_PATTERN.search(p.name))]
    return [p for _, p in sorted(found)]


def latest(directory: Path) -> Path | None:
    paths = step_checkpoints(directory)
    return paths[-1] if paths else None


def prune(directory: Path, keep: int) -> None:
    for path in step_checkpoints(directory)[:-keep]:
        path.unlink(missing_ok=True)


class CheckpointError(InputError):
    """A checkpoint that cannot be read (torn, corrupt, or holding more than tensors and plain data)."""


def load(path: Path) -> dict:
    """A checkpoint, read with ``weights_only=True``: only tensors and plain data, so a crafted file cannot run code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torn zip, wrong format, a pickle asking for anything but tensors and plain data
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a mapping, got {type(state).__name__}")
    return state


def load_latest(directory: Path, required: tuple[str, ...] = ()) -> tuple[dict | None, Path | None, list[str]]:
    """The newest step checkpoint that loads and has the ``required`` keys: (state, path, one line per
    newer file skipped). (None, None, skipped) when there is none, or none is intact."""
    skipped = []
    for path in reversed(step_checkpoints(directory)):
        try:
            state = load(path)
        except CheckpointError as exc:
            skipped.append(str(exc))
            continue
        missing = [k for k in required if k not in state]
        if missing:
            skipped.append(f"{path}: incomplete (no {', '.join(missing)})")
            continue
        return state, path, skipped
    return None, None, skipped
