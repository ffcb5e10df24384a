"""Training scalars: always a JSONL log (``log.jsonl``), plus TensorBoard when it is installed.

The JSONL file is what the tests and the DDP-vs-single-GPU comparison read; TensorBoard event
files (``tb/``) are for looking at curves. Only rank 0 writes.
"""

from __future__ import annotations

import json
from pathlib import Path


def tensorboard_writer(directory: Path):
    """A ``torch.utils.tensorboard.SummaryWriter``, or None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises ImportError when the tensorboard package is missing
        return None
    return SummaryWriter(log_dir=str(directory))


class MetricLog:
    """Appends one JSON object per logged step; mirrors numeric fields to TensorBoard."""

    def __init__(self, out: Path, *, tensorboard: bool):
        self.path = out / "log.jsonl"
        out.mkdir(parents=True, exist_ok=True)
        self.writer = tensorboard_writer(out / "tb") if tensorboard else None

    @property
    def backend(self) -> str:
        return "jsonl+tensorboard" if self.writer is not None else "jsonl"

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            step = record["global_step"]
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("global_step", "step"):
                    self.writer.add_scalar(f"{record['stage']}/{key}", value, step)

    def truncate_after(self, global_step: int) -> None:
        """Drop records past ``global_step`` (a resumed run rewrites the steps after its checkpoint)."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["global_step"] <= global_step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
