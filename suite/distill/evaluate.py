"""Evaluation: student-teacher cosine similarity at PP and PB per block, and forward latency.

Cosine similarity is the mean over tokens of the cosine of the C-vectors, on deterministic
center crops, for every block (raw student features, as deployed, without adaptors) and for
the supervised blocks after their adaptors. Latency goes through the suite's one timer,
``suite.measure.measure`` (CUDA events on GPU), on bf16 copies of the models on GPU.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import torch
from torch import nn

from suite.distill.losses import token_cosine, upsample_tokens
from suite.distill.model import encoder_taps
from suite.measure import TimingSettings, measure

FeatureFn = Callable[[torch.Tensor], list[dict]]


@torch.no_grad()
def cosine_report(student: nn.Module, teacher_taps: FeatureFn, batches: list[torch.Tensor], *,
                  adaptors: nn.ModuleDict | None = None, autocast: Callable = contextlib.nullcontext) -> dict:
    """Per-block cosine similarity of student and teacher taps, averaged over ``batches``."""
    depth = len(student.blocks)
    sums = {"pp": torch.zeros(depth, dtype=torch.float64), "pb": torch.zeros(depth, dtype=torch.float64)}
    adapted: dict[str, float] = {}
    for images in batches:
        with autocast():
            _, s_taps = encoder_taps(student, images)
            t_taps = teacher_taps(images)
            for tap in ("pp", "pb"):
                for b in range(depth):
                    sums[tap][b] += token_cosine(s_taps[b][tap], t_taps[b][tap]).item()
            if adaptors is not None:
                for key, adaptor in adaptors.items():
                    block, tap = key.split("-")
                    value = token_cosine(adaptor(s_taps[int(block)][tap]), t_taps[int(block)][tap]).item()
                    adapted[key] = adapted.get(key, 0.0) + value
    n = len(batches)
    report = {tap: (sums[tap] / n).tolist() for tap in ("pp", "pb")}
    report.update({f"{tap}_mean": float(sums[tap].mean() / n) for tap in ("pp", "pb")})
    if adaptors is not None:
        report["adapted"] = {k: v / n for k, v in adapted.items()}
    return report


@torch.no_grad()
def sublayer_cosine(student: nn.Module, teacher: nn.Module, batches: list[torch.Tensor], blocks: list[int], *,
                    autocast: Callable = contextlib.nullcontext) -> dict[int, float]:
    """Stage-1 view: cosine of each student mixer ``mixer(norm1(h_t))`` with the teacher's
    attention output, both fed the teacher's block input ``h_t`` (paper Eq. 8)."""
    sums = dict.fromkeys(blocks, 0.0)
    for images in batches:
        with autocast():
            x0, taps = encoder_taps(teacher, images)
            for i in blocks:
                x = x0 if i == 0 else taps[i - 1]["pb"]
                block = student.blocks[i]
                sums[i] += token_cosine(block.mixer(block.norm1(x)), taps[i]["pp"]).item()
    return {i: v / len(batches) for i, v in sums.items()}


def teacher_tap_fn(teacher: nn.Module, resolution: int | None = None) -> FeatureFn:
    """Teacher taps for student images; with ``resolution`` the teacher sees the images resized
    to it and its taps are bilinearly upsampled to the student's grid (curriculum, Eq. 13)."""

    def taps(images: torch.Tensor) -> list[dict]:
        if resolution is None or resolution == images.shape[-1]:
            return encoder_taps(teacher, images)[1]
        small = torch.nn.functional.interpolate(images, size=(resolution, resolution), mode="bilinear",
                                                antialias=True, align_corners=False)
        t_taps = encoder_taps(teacher, small)[1]
        return [{k: upsample_tokens(v, *_grid(images, teacher)) for k, v in tap.items()} for tap in t_taps]

    return taps


def _grid(images: torch.Tensor, model: nn.Module) -> tuple[int, int]:
    return images.shape[-2] // model.embed.patch, images.shape[-1] // model.embed.patch


def custom_backward_nodes(module: nn.Module, images: torch.Tensor) -> list[str]:
    """Backward nodes of custom ``torch.autograd.Function`` s that a training step through
    ``module`` runs: evidence of which backward (e.g. the Triton scan's) the run uses."""
    with torch.enable_grad():
        out = module(images)
    found, seen, stack = set(), set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            found.add(type(node).__name__)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return sorted(found)


def latency_report(models: dict[str, nn.Module], resolutions: list[int], batch: int, device: torch.device,
                   timing: dict) -> list[dict]:
    """Forward latency of each model at each resolution through ``suite.measure.measure``.

    Models are timed as bf16 copies on CUDA (float32 on CPU), without autocast, like the
    benchmark's network-level cases. OOM becomes a recorded status.
    """
    settings = TimingSettings.from_dict(timing, where="evaluate.timing")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for name, model in models.items():
        timed = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
        for resolution in resolutions:
            row = {"model": name, "resolution": resolution, "batch": batch, "dtype": str(dtype).removeprefix("torch.")}
            try:
                images = torch.randn(batch, 3, resolution, resolution, device=device, dtype=dtype)

                def step(model=timed, images=images) -> None:
                    with torch.no_grad():
                        model(images)

                result = measure(step, device, settings)
                row.update(status="ok", median_ms=result.median_ms, iqr_ms=result.iqr_ms, min_ms=result.min_ms,
                           n=result.n, timer=result.timer)
            except torch.OutOfMemoryError as err:
                row.update(status="oom", message=str(err).splitlines()[0])
            rows.append(row)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        del timed
    return rows
