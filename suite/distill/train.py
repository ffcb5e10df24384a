"""The distillation run: stages in order, checkpoints, resume, logging, evaluation, DDP.

Stage kinds (paper Sec. 4.2-4.3):

* ``sublayer`` (stage 1): :class:`~suite.distill.model.SublayerStage` on the teacher's block
  inputs and attention outputs;
* ``end-to-end`` (stage 2): :class:`~suite.distill.model.TapStage` against the attention teacher;
* ``curriculum``: :class:`~suite.distill.model.TapStage` against the previous stage's student,
  frozen, run at the previous resolution and bilinearly upsampled to the new token grid.

Every stage starts from the student the previous one left. Outputs under ``out``: ``run.json``
(config, environment, world size, scan backend and the backward it uses), ``log.jsonl`` (+ ``tb/``),
``checkpoints/``, ``eval.json`` (cosine similarity per stage), ``summary.json`` (evaluations,
final losses, latency).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from suite.distill import checkpoint, distributed
from suite.distill.config import DistillConfig, StageConfig
from suite.distill.data import BatchStream, CenterCropDataset, CropDataset, builtin_image_paths, folder_image_paths
from suite.distill.evaluate import cosine_report, custom_backward_nodes, latency_report, sublayer_cosine, teacher_tap_fn
from suite.distill.metrics import MetricLog
from suite.distill.model import (
    SublayerStage,
    TapStage,
    build_adaptors,
    build_student,
    build_teacher,
    cgspn_blocks,
    encoder_taps,
    resolve_attention_backend,
    resolve_scan,
    student_attention_blocks,
    supervised_blocks,
    uses_bf16,
)
from suite.environment import collect_environment
from suite.errors import InputError


class DistillError(InputError):
    """A run that cannot start as asked (e.g. existing checkpoints without --resume)."""


RESUME_KEYS = ("student", "rng", "stage_index", "stage_step", "global_step", "evaluations")


def lr_factor(stage: StageConfig, step: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine / linear decay to ``min_lr_ratio`` (or constant)."""
    if step < stage.warmup:
        return (step + 1) / stage.warmup
    if stage.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - stage.warmup) / max(1, stage.steps - stage.warmup))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if stage.schedule == "cosine" else 1 - progress
    return stage.min_lr_ratio + (1 - stage.min_lr_ratio) * shape


def make_optimizer(params: list[nn.Parameter], stage: StageConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (norm scales and biases are not decayed)."""
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": stage.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=stage.lr)


def image_paths(cfg: DistillConfig) -> list[Path]:
    try:
        return folder_image_paths(cfg.data.path) if cfg.data.path else builtin_image_paths()
    except FileNotFoundError as err:
        raise DistillError(str(err)) from None


class Distiller:
    """One run of all configured stages; ``run()`` returns the summary (on every rank)."""

    def __init__(self, cfg: DistillConfig, out: str | Path, *, resume: bool = False, stop_after: int | None = None):
        self.cfg = cfg
        self.out = Path(out)
        self.resume = resume
        self.stop_after = stop_after
        self.ctx = distributed.setup(cfg.device)
        self.device = self.ctx.device
        self.ckpt_dir = self.out / "checkpoints"
        bf16 = uses_bf16(cfg, self.device)
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        self.precision = "bf16-autocast" if bf16 else "fp32"
        self.paths = image_paths(cfg)
        self.evaluations: dict[str, dict] = {}
        self.final_losses: dict[str, dict] = {}

    # ---- set-up ----------------------------------------------------------------------------------
    def _start_state(self) -> dict | None:
        """The newest intact step checkpoint on --resume (a corrupt newer one is skipped, with a message)."""
        existing = checkpoint.latest(self.ckpt_dir)
        if existing is not None and not self.resume:
            raise DistillError(f"--out {self.out} already holds checkpoints ({existing.name}); pass --resume or use a new --out")
        if existing is None or not self.resume:
            return None
        state, path, skipped = checkpoint.load_latest(self.ckpt_dir, RESUME_KEYS)
        if state is None:
            raise DistillError(f"--resume: no intact checkpoint in {self.ckpt_dir}: {'; '.join(skipped)}; "
                               "start over with a new --out")
        if skipped and self.ctx.is_main:
            print(f"warning: skipped {len(skipped)} checkpoint(s): {'; '.join(skipped)}; resuming from {path.name}",
                  file=sys.stderr)
        return state

    def _build_models(self) -> None:
        saved = self.out / "teacher.pt"
        self.teacher = build_teacher(self.cfg, self.device, saved=saved)
        random_teacher = not self.cfg.teacher.checkpoint
        if random_teacher and self.ctx.is_main and not saved.exists():
            # Keep the random teacher, so a resumed run distills the same one.
            checkpoint.atomic_save({"model": self.teacher.state_dict()}, saved)
        self.student = build_student(self.cfg, self.teacher, self.device)

    def _run_meta(self) -> dict:
        cfg = self.cfg
        probe = torch.randn(1, 3, cfg.model.patch * 2, cfg.model.patch * 2, device=self.device)
        with self.autocast():  # the dtypes of a training step (FlashAttention takes half types only)
            backward_nodes = custom_backward_nodes(self.student, probe)
        environment = collect_environment()
        return {
            "config": cfg.to_dict(),
            "environment": environment,
            "world_size": self.ctx.world,
            "device": str(self.device),
            "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "precision": self.precision,
            "student_scan": resolve_scan(cfg.model.scan, self.device),
            "attention_backend": resolve_attention_backend(cfg, self.device),
            "student_attention_blocks": student_attention_blocks(cfg),
            "student_custom_backward": backward_nodes,
            "images": [str(p) for p in self.paths],
            "log": self.log.backend if self.log else "jsonl",
        }

    # ---- one stage -------------------------------------------------------------------------------
    def _stage_teacher(self, k: int) -> tuple[nn.Module, int | None]:
        """The teacher of stage ``k`` and the resolution it runs at (None: the stage's own)."""
        if self.cfg.stages[k].kind != "curriculum":
            return self.teacher, None
        previous = copy.deepcopy(self.student)
        final = checkpoint.stage_final_path(self.ckpt_dir, k - 1, self.cfg.stages[k - 1].name)
        previous.load_state_dict(checkpoint.load(final)["student"])
        previous.requires_grad_(False)
        return previous.eval(), self.cfg.stages[k - 1].resolution

    def _targets(self, kind: str, teacher: nn.Module, teacher_res: int | None, images: torch.Tensor, blocks: list[int]):
        if kind == "sublayer":
            x0, taps = encoder_taps(teacher, images, upto=max(blocks))
            inputs = [x0 if i == 0 else taps[i - 1]["pb"] for i in blocks]
            return inputs, [taps[i]["pp"] for i in blocks]
        if kind == "end-to-end":
            taps = encoder_taps(teacher, images, upto=max(blocks))[1]
        else:
            taps = teacher_tap_fn(teacher, teacher_res)(images)
        return images, {b: taps[b] for b in blocks}

    def _evaluate(self, k: int, teacher: nn.Module, teacher_res: int | None, adaptors: nn.ModuleDict | None) -> dict:
        stage = self.cfg.stages[k]
        data = CenterCropDataset(self.paths[: self.cfg.evaluate.images], stage.resolution, self.cfg.data.max_side)
        images = torch.stack([data[i] for i in range(len(data))]).to(self.device)
        batches = list(images.split(self.cfg.data.batch_size))
        self.student.eval()
        report = {"stage": stage.name, "kind": stage.kind, "resolution": stage.resolution, "images": len(data)}
        report["against_stage_teacher"] = cosine_report(self.student, teacher_tap_fn(teacher, teacher_res), batches,
                                                        adaptors=adaptors, autocast=self.autocast)
        report["sublayer_vs_attention_teacher"] = sublayer_cosine(self.student, self.teacher, batches, cgspn_blocks(self.cfg),
                                                                  autocast=self.autocast)
        if teacher is not self.teacher:
            report["against_attention_teacher"] = cosine_report(self.student, teacher_tap_fn(self.teacher), batches,
                                                                autocast=self.autocast)
        self.student.train()
        return report

    def _checkpoint(self, path: Path, **state) -> None:
        if self.ctx.is_main:
            checkpoint.atomic_save({"student": self.student.state_dict(), "rng": checkpoint.rng_state(),
                                    "evaluations": self.evaluations, "final_losses": self.final_losses, **state}, path)
            checkpoint.prune(self.ckpt_dir, self.cfg.checkpoint.keep)
        distributed.barrier(self.ctx)

    def _run_stage(self, k: int, start_step: int, global_step: int, resumed: dict | None) -> tuple[int, bool]:
        """Train stage ``k`` from ``start_step``; returns (global step, stopped early)."""
        cfg, stage = self.cfg, self.cfg.stages[k]
        teacher, teacher_res = self._stage_teacher(k)
        if stage.kind == "sublayer":
            blocks = cgspn_blocks(cfg)
            module: nn.Module = SublayerStage(self.student, blocks)
            adaptors = None
        else:
            blocks = supervised_blocks(cfg.model.depth, cfg.loss.taps_every)
            adaptors = None
            if cfg.loss.adaptor:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(cfg.seed + 100 + k)
                    adaptors = build_adaptors(cfg.model.channels, blocks).to(self.device)
            module = TapStage(self.student, adaptors, blocks, cfg.loss)
        self.student.requires_grad_(False)
        trainable = module.trainable()
        for p in trainable:
            p.requires_grad_(True)
        optimizer = make_optimizer(trainable, stage)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(stage, step))
        position = (0, 0)
        if resumed is not None:
            if adaptors is not None:
                adaptors.load_state_dict(resumed["adaptors"])
            optimizer.load_state_dict(resumed["optimizer"])
            scheduler.load_state_dict(resumed["scheduler"])
            position = tuple(resumed["data_position"])
        wrapped = module
        if self.ctx.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DistributedDataParallel(module, device_ids=device_ids)
        dataset = CropDataset(self.paths, stage.resolution, seed=cfg.seed * 1000 + k, repeats=cfg.data.repeats,
                              scale=cfg.data.scale, ratio=cfg.data.ratio, max_side=cfg.data.max_side)
        stream = BatchStream(dataset, rank=self.ctx.rank, world=self.ctx.world, global_batch=cfg.data.batch_size,
                             seed=cfg.seed * 1000 + k, workers=cfg.data.workers, position=position,
                             pin_memory=self.device.type == "cuda")
        if resumed is not None:
            checkpoint.set_rng_state(resumed["rng"])

        stopped = False
        with self._progress(stage, start_step) as advance:
            for step in range(start_step, stage.steps):
                images = stream.next().to(self.device, non_blocking=True)
                with torch.no_grad(), self.autocast():
                    inputs, targets = self._targets(stage.kind, teacher, teacher_res, images, blocks)
                with self.autocast():
                    losses = wrapped(inputs, targets)
                losses["loss"].backward()
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                global_step += 1
                last = step + 1 == stage.steps
                if (step + 1) % cfg.log_every == 0 or last:
                    self._log(k, step + 1, global_step, losses, scheduler.get_last_lr()[0], blocks)
                advance()
                stop = self.stop_after is not None and global_step >= self.stop_after
                if global_step % cfg.checkpoint.every == 0 or stop:
                    self._checkpoint(checkpoint.step_path(self.ckpt_dir, global_step), stage_index=k, stage_step=step + 1,
                                     global_step=global_step, optimizer=optimizer.state_dict(),
                                     scheduler=scheduler.state_dict(), data_position=stream.position,
                                     adaptors=adaptors.state_dict() if adaptors is not None else None)
                if stop and not last:
                    stopped = True
                    break
        if stopped:
            return global_step, True

        if self.ctx.is_main:
            checkpoint.atomic_save({"student": self.student.state_dict(), "stage": stage.name},
                                   checkpoint.stage_final_path(self.ckpt_dir, k, stage.name))
            if cfg.evaluate.after_each_stage:
                self.evaluations[stage.name] = self._evaluate(k, teacher, teacher_res, adaptors)
                (self.out / "eval.json").write_text(json.dumps(self.evaluations, indent=2))
        # Stage boundary: the next stage starts fresh from here (its optimizer does not exist yet).
        self._checkpoint(checkpoint.step_path(self.ckpt_dir, global_step), stage_index=k + 1, stage_step=0,
                         global_step=global_step)
        stop = self.stop_after is not None and global_step >= self.stop_after
        return global_step, stop and k + 1 < len(cfg.stages)

    def _log(self, k: int, step: int, global_step: int, losses: dict, lr: float, blocks: list[int]) -> None:
        values = {key: float(v.detach()) for key, v in losses.items() if key != "per_block"}
        values.update({f"block{b}": float(v) for b, v in zip(blocks, losses["per_block"].tolist(), strict=True)})
        values = distributed.mean_across_ranks(values, self.ctx)  # a collective: every rank calls it
        self.final_losses[self.cfg.stages[k].name] = values
        if self.log is not None:
            record = {"stage": self.cfg.stages[k].name, "step": step, "global_step": global_step, "lr": lr,
                      "time": time.time(), **values}
            self.log.write(record)

    @contextlib.contextmanager
    def _progress(self, stage: StageConfig, start: int):
        if not (self.cfg.progress and self.ctx.is_main):
            yield lambda: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn(f"{stage.name} ({stage.kind}, {stage.resolution} px)"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn())
        with Progress(*columns) as progress:
            task = progress.add_task(stage.name, total=stage.steps, completed=start)
            yield lambda: progress.advance(task)

    # ---- the run ---------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        try:
            state = self._start_state()
            self._build_models()
            self.log = MetricLog(self.out, tensorboard=cfg.tensorboard) if self.ctx.is_main else None
            stage_index, stage_step, global_step = 0, 0, 0
            if state is not None:
                self.student.load_state_dict(state["student"])
                stage_index, stage_step, global_step = state["stage_index"], state["stage_step"], state["global_step"]
                self.evaluations = state["evaluations"]
                self.final_losses = state.get("final_losses", {})
                if self.log is not None:
                    self.log.truncate_after(global_step)
            if self.ctx.is_main:
                meta = self._run_meta()
                meta["resumed_from_step"] = global_step if state is not None else None
                (self.out / "run.json").write_text(json.dumps(meta, indent=2, default=str))
            for k in range(stage_index, len(cfg.stages)):
                resumed = state if (state is not None and k == stage_index and stage_step > 0) else None
                global_step, stopped = self._run_stage(k, stage_step if k == stage_index else 0, global_step, resumed)
                if stopped:
                    return {"stopped_at": global_step}
            summary = {"name": cfg.name, "world_size": self.ctx.world, "global_steps": global_step,
                       "final_losses": self.final_losses, "evaluations": self.evaluations}
            if self.ctx.is_main and cfg.evaluate.latency_resolutions:
                models = {"teacher": self.teacher, "student": self.student}
                summary["latency"] = latency_report(models, cfg.evaluate.latency_resolutions, cfg.evaluate.latency_batch,
                                                    self.device, cfg.evaluate.timing)
            if self.ctx.is_main:
                (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
            distributed.barrier(self.ctx)
            return summary
        finally:
            if getattr(self, "log", None) is not None:
                self.log.close()
            distributed.teardown(self.ctx)


def distill(cfg: DistillConfig, out: str | Path, *, resume: bool = False, stop_after: int | None = None) -> dict:
    """Run the configured distillation (single process, or one DDP rank under torchrun)."""
    return Distiller(cfg, out, resume=resume, stop_after=stop_after).run()
