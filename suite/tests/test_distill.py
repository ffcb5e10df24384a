"""Distillation entry point on CPU: losses, data, both stages, resume, DDP (2 gloo ranks).

The runs use the tiny-cpu config (4 blocks, C=64, 56 px) with the C-GSPN *reference* scan: the
Triton interpreter is too slow for dozens of training steps on 2 cores; the fused scan's
forward and backward are checked against that reference in the C-GSPN tests.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.nn import functional as F
from torch.utils.data import DistributedSampler

from suite.distill.config import ConfigError, load_config, parse_config
from suite.distill.data import BatchStream, CropDataset, EpochBatches, builtin_image_paths
from suite.distill.losses import tap_loss, tokenwise_kl, upsample_tokens
from suite.distill.metrics import read_log
from suite.distill.model import TapAdaptor, supervised_blocks
from suite.distill.train import DistillError, distill, lr_factor


def _photos_installed() -> bool:
    try:
        return bool(builtin_image_paths())
    except FileNotFoundError:
        return False


NO_PHOTOS = "the default images ship with scikit-image: pip install scikit-image (the project's distill extra)"
needs_photos = pytest.mark.skipif(not _photos_installed(), reason=NO_PHOTOS)
ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "suite" / "distill" / "configs" / "tiny-cpu.yaml"
SMALL = ROOT / "suite" / "distill" / "configs" / "small-gpu.yaml"


def tiny(stages: list[dict] | None = None, **top) -> dict:
    data = yaml.safe_load(TINY.read_text())
    data["evaluate"]["after_each_stage"] = False
    if stages is not None:
        data["stages"] = stages
    data.update(top)
    return data


STAGE1 = {"name": "stage1", "kind": "sublayer", "resolution": 56, "steps": 24, "lr": 3e-3, "warmup": 3, "schedule": "linear"}
STAGE2 = {"name": "stage2", "kind": "end-to-end", "resolution": 56, "steps": 24, "lr": 1e-3, "warmup": 3}


def losses(log: list[dict], stage: str, key: str = "loss") -> list[float]:
    return [r[key] for r in log if r["stage"] == stage]


# ---- config ------------------------------------------------------------------------------------


def test_configs_in_repo_are_valid():
    assert load_config(TINY).model.depth == 4
    small = load_config(SMALL)
    assert (small.model.depth, small.model.channels, small.stages[0].resolution) == (12, 384, 224)
    assert [s.kind for s in small.stages] == ["sublayer", "end-to-end", "curriculum"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model": {"chanels": 64}}, "model.chanels: unknown field; allowed: channels"),
        ({"stages": [dict(STAGE1, kind="stage-one")]}, "stages[0].kind: 'stage-one' is not allowed; allowed: sublayer"),
        ({"stages": [dict(STAGE1, kind="curriculum")]}, "stages[0].kind: a curriculum stage needs a previous stage"),
        ({"stages": [STAGE1, dict(STAGE2, kind="curriculum", resolution=56)]}, "stages[1].resolution: a curriculum stage must"),
        ({"stages": [dict(STAGE1, resolution=60)]}, "stages[0].resolution: 60 px is not a positive multiple of model.patch=14"),
        ({"model": {"compression": 5}}, "model.compression: 5 does not divide channels=64"),
        ({"loss": {"lambda_pp": "seven thirds"}}, "loss.lambda_pp: expected a number or a fraction"),
        ({"evaluate": {"timing": {"budget": 3}}}, "evaluate.timing.budget: unknown timing setting"),
    ],
)
def test_config_errors_name_the_field(change, message):
    data = tiny()
    for key, value in change.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert message in str(err.value)


def test_fraction_and_override():
    cfg = load_config(TINY, ["model.attn_blocks=2", "stages.1.steps=7"])
    assert cfg.loss.lambda_pp == 7 / 3
    assert cfg.model.attn_blocks == 2 and cfg.stages[1].steps == 7


def test_lr_schedule_warmup_then_cosine_to_min():
    stage = parse_config(tiny([dict(STAGE2, steps=10, warmup=2, min_lr_ratio=0.1)])).stages[0]
    factors = [lr_factor(stage, s) for s in range(10)]
    assert factors[:2] == [0.5, 1.0]
    assert factors[2] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(factors[2:], factors[3:], strict=False))
    assert lr_factor(stage, 10) == pytest.approx(0.1)


# ---- losses and parts ----------------------------------------------------------------------------


def test_tokenwise_kl_matches_torch_kl_div():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 5, 7, generator=g), torch.randn(2, 3, 5, 7, generator=g)
    # F.kl_div(input=log q, target=log p, log_target=True) sums p * (log p - log q): KL(p || q), p = student
    expected = F.kl_div(F.log_softmax(t, -1), F.log_softmax(s, -1), log_target=True, reduction="sum") / (2 * 3 * 5)
    assert torch.allclose(tokenwise_kl(s, t), expected, rtol=1e-6)
    assert tokenwise_kl(s, s).abs() < 1e-6
    loss, mse, kl = tap_loss(s, t, 7 / 3)
    assert torch.allclose(loss, F.mse_loss(s, t) + 7 / 3 * expected, rtol=1e-6)


def test_upsample_tokens_is_bilinear_on_the_grid():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 5, 6, generator=g)  # (B, h, w, C), non-square
    up = upsample_tokens(x, 7, 9)
    expected = F.interpolate(x.permute(0, 3, 1, 2), size=(7, 9), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    assert up.shape == (2, 7, 9, 6) and torch.allclose(up, expected)
    assert upsample_tokens(torch.full((1, 2, 2, 3), 4.0), 5, 5).eq(4.0).all()  # constants stay constant


def test_adaptor_starts_as_identity():
    x = torch.randn(2, 3, 3, 8)
    assert torch.equal(TapAdaptor(8)(x), x)


def test_supervised_blocks_count_back_from_the_last():
    assert supervised_blocks(27, 9) == [8, 17, 26]
    assert supervised_blocks(12, 3) == [2, 5, 8, 11]
    assert supervised_blocks(4, 1) == [0, 1, 2, 3]


# ---- data ----------------------------------------------------------------------------------------


@needs_photos
def test_crops_are_a_function_of_epoch_and_index():
    paths = builtin_image_paths()[:3]
    ds = CropDataset(paths, 28, seed=5, repeats=2, max_side=128)
    a, b = ds[(0, 4)], ds[(0, 4)]
    assert a.shape == (3, 28, 28) and torch.equal(a, b)
    assert not torch.equal(ds[(0, 4)], ds[(1, 4)])
    assert -1.0 <= float(a.min()) and float(a.max()) <= 1.0


@needs_photos
def test_rank_batches_union_is_the_single_process_batch():
    ds = CropDataset(builtin_image_paths()[:5], 14, seed=0, repeats=3, max_side=64)
    single = EpochBatches(DistributedSampler(ds, num_replicas=1, rank=0, seed=3, drop_last=True), epoch=2, batch=6)
    ranks = [EpochBatches(DistributedSampler(ds, num_replicas=2, rank=r, seed=3, drop_last=True), epoch=2, batch=3)
             for r in range(2)]
    for step, batch in enumerate(single):
        assert sorted(batch) == sorted(ranks[0].batches[step] + ranks[1].batches[step])


@needs_photos
def test_stream_position_resumes_the_same_batches():
    ds = CropDataset(builtin_image_paths()[:3], 14, seed=0, repeats=2, max_side=64)
    full = BatchStream(ds, rank=0, world=1, global_batch=4, seed=1)
    seen = [full.next() for _ in range(5)]  # crosses an epoch boundary (6 crops, 1 batch per epoch)
    resumed = BatchStream(ds, rank=0, world=1, global_batch=4, seed=1, position=(2, 1))
    assert torch.equal(resumed.next(), seen[3])  # (2, 1) is the end of epoch 2, i.e. the start of epoch 3
    mid = BatchStream(ds, rank=0, world=1, global_batch=2, seed=1)
    batches = [mid.next() for _ in range(4)]
    again = BatchStream(ds, rank=0, world=1, global_batch=2, seed=1, position=(0, 2))
    assert torch.equal(again.next(), batches[2])
    workers = BatchStream(ds, rank=0, world=1, global_batch=2, seed=1, workers=2)
    assert all(torch.equal(workers.next(), b) for b in batches)  # crops do not depend on the worker


# ---- training runs (CPU, reference scan) --------------------------------------------------------


@pytest.fixture(scope="module")
def two_stage_run(tmp_path_factory) -> list[dict]:
    if not _photos_installed():
        pytest.skip(NO_PHOTOS)
    out = tmp_path_factory.mktemp("two-stage")
    cfg = parse_config(tiny([STAGE1, STAGE2], checkpoint={"every": 10, "keep": 10}))
    distill(cfg, out)
    return read_log(out / "log.jsonl")


def test_stage_losses_decrease(two_stage_run):
    for stage in ("stage1", "stage2"):
        curve = losses(two_stage_run, stage)
        first, last = sum(curve[:3]) / 3, sum(curve[-5:]) / 5
        assert last < 0.7 * first, f"{stage}: loss went from {first:.4f} to {last:.4f}"


def test_stage1_initialization_beats_stage2_from_scratch(two_stage_run, tmp_path):
    distill(parse_config(tiny([STAGE2])), tmp_path)
    scratch = losses(read_log(tmp_path / "log.jsonl"), "stage2", "pp")
    warm = losses(two_stage_run, "stage2", "pp")
    assert len(scratch) == len(warm) == STAGE2["steps"]
    assert sum(warm[-5:]) < sum(scratch[-5:]), f"PP loss after stage 1: {warm[-5:]}, from scratch: {scratch[-5:]}"


def test_resume_gives_the_identical_next_loss(two_stage_run, tmp_path):
    cfg = parse_config(tiny([STAGE1, STAGE2], checkpoint={"every": 10, "keep": 10}))
    stop = STAGE1["steps"] + 7  # mid stage 2: optimizer, scheduler, adaptors and data position all matter
    assert distill(cfg, tmp_path, stop_after=stop) == {"stopped_at": stop}
    with pytest.raises(DistillError, match="--resume"):
        distill(cfg, tmp_path)
    distill(cfg, tmp_path, resume=True)
    resumed = {r["global_step"]: r["loss"] for r in read_log(tmp_path / "log.jsonl")}
    full = {r["global_step"]: r["loss"] for r in two_stage_run}
    assert resumed[stop + 1] == full[stop + 1]
    assert resumed == full


@needs_photos
def test_curriculum_stage_distills_the_upsampled_previous_student(tmp_path):
    stages = [dict(STAGE2, steps=4), {"name": "up", "kind": "curriculum", "resolution": 84, "steps": 3, "lr": 1e-4}]
    data = tiny(stages)
    data["evaluate"]["after_each_stage"] = True
    summary = distill(parse_config(data), tmp_path)
    report = summary["evaluations"]["up"]
    assert report["resolution"] == 84 and "against_attention_teacher" in report
    # The student starts as its own (upsampled) teacher: its taps are already far closer to it than a
    # fresh stage-2 student's are to the attention teacher.
    first_up = losses(read_log(tmp_path / "log.jsonl"), "up", "pp")[0]
    first_e2e = losses(read_log(tmp_path / "log.jsonl"), "stage2", "pp")[0]
    assert first_up < 0.5 * first_e2e
    assert len(report["against_stage_teacher"]["pp"]) == 4


def test_hybrid_student_keeps_teacher_attention_blocks(tmp_path):
    from kernels.attention.layer import AttentionLayer
    from suite.distill.model import build_student, build_teacher

    cfg = parse_config(tiny([dict(STAGE1, steps=1)], model={**tiny()["model"], "attn_blocks": 2}))
    teacher = build_teacher(cfg, torch.device("cpu"))
    student = build_student(cfg, teacher, torch.device("cpu"))
    kinds = [type(b.mixer).__name__ for b in student.blocks]
    assert kinds == ["CGSPNLayer", "AttentionLayer", "CGSPNLayer", "AttentionLayer"]
    for i in (1, 3):
        assert isinstance(student.blocks[i].mixer, AttentionLayer)
        assert torch.equal(student.blocks[i].mixer.qkv.weight, teacher.blocks[i].mixer.qkv.weight)
    assert torch.equal(student.blocks[0].mlp.fc1.weight, teacher.blocks[0].mlp.fc1.weight)


@needs_photos
def test_two_rank_gloo_run_matches_single_process(tmp_path):
    stages = [dict(STAGE1, steps=4), dict(STAGE2, steps=4)]
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(tiny(stages)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "suite.distill", "--config", str(config), "--out", str(tmp_path / "ddp")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    distill(parse_config(tiny(copy.deepcopy(stages))), tmp_path / "single")
    ddp = read_log(tmp_path / "ddp" / "log.jsonl")
    single = read_log(tmp_path / "single" / "log.jsonl")
    assert [r["global_step"] for r in ddp] == [r["global_step"] for r in single]
    for a, b in zip(ddp, single, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), (a["global_step"], a["loss"], b["loss"])


@needs_photos
def test_fused_triton_scan_trains_like_the_reference(tmp_path):
    """Stage 1 with the Triton scan (interpreted on CPU) and its Triton backward: the second
    step's loss depends on the first step's gradients, so it checks the backward too."""
    model = {**tiny()["model"], "depth": 1, "channels": 32, "heads": 2}
    curves, backward = {}, {}
    for scan in ("fused", "reference"):
        data = tiny([dict(STAGE1, steps=2, resolution=28)], model={**model, "scan": scan}, device="auto")
        data["data"]["batch_size"] = 4
        distill(parse_config(data), tmp_path / scan)
        curves[scan] = [r["loss"] for r in read_log(tmp_path / scan / "log.jsonl")]
        backward[scan] = yaml.safe_load((tmp_path / scan / "run.json").read_text())["student_custom_backward"]
    assert curves["fused"] == pytest.approx(curves["reference"], rel=1e-4)
    # the fused scan's autograd node is the custom operator's (GeneratedBackwardFor_cgspn_scan_head_...)
    assert backward["reference"] == [] and any("cgspn_scan" in name for name in backward["fused"]), backward


@needs_photos
def test_latency_and_report_table(tmp_path):
    from suite.distill.report import build_table, markdown

    data = tiny([dict(STAGE1, steps=2)])
    data["evaluate"].update(after_each_stage=True, latency_resolutions=[28, 56], latency_batch=2,
                            timing={"budget_ms": 5, "warmup_ms": 1, "min_reps": 2, "max_reps": 3})
    summary = distill(parse_config(data), tmp_path / "run")
    rows = summary["latency"]
    assert [(r["model"], r["resolution"], r["status"]) for r in rows] == [
        ("teacher", 28, "ok"), ("teacher", 56, "ok"), ("student", 28, "ok"), ("student", 56, "ok")]
    assert all(r["n"] >= 2 and r["median_ms"] > 0 and r["timer"] == "cpu-perf-counter" for r in rows)
    table = build_table([("cgspn", tmp_path / "run")], tmp_path / "run", tmp_path / "run")
    latency = table["runs"][0]["latency_ms"][56]
    assert latency["speedup"] == pytest.approx(latency["teacher"] / latency["student"])
    assert table["ddp_vs_single"]["mean_rel_diff"] == 0.0 and table["ddp_vs_single"]["verdict"].startswith("match")
    assert "| stage1 | sublayer | 56 |" in markdown(table)


# ---- timm ViT checkpoints --------------------------------------------------------------------------


def timm_vit_state(depth: int, channels: int, hidden: int, patch: int, grid: int, prefix: int = 0) -> dict:
    """Random weights under timm VisionTransformer key names (SigLIP-style: no class token)."""
    g = torch.Generator().manual_seed(7)
    r = lambda *shape: 0.2 * torch.randn(*shape, generator=g)
    state = {"patch_embed.proj.weight": r(channels, 3, patch, patch), "patch_embed.proj.bias": r(channels),
             "pos_embed": r(1, prefix + grid * grid, channels), "norm.weight": 1 + r(channels), "norm.bias": r(channels),
             "attn_pool.latent": r(1, 1, channels)}
    if prefix:
        state["cls_token"] = r(1, 1, channels)
    for i in range(depth):
        b = f"blocks.{i}."
        state.update({b + "norm1.weight": 1 + r(channels), b + "norm1.bias": r(channels),
                      b + "attn.qkv.weight": r(3 * channels, channels), b + "attn.qkv.bias": r(3 * channels),
                      b + "attn.proj.weight": r(channels, channels), b + "attn.proj.bias": r(channels),
                      b + "norm2.weight": 1 + r(channels), b + "norm2.bias": r(channels),
                      b + "mlp.fc1.weight": r(hidden, channels), b + "mlp.fc1.bias": r(hidden),
                      b + "mlp.fc2.weight": r(channels, hidden), b + "mlp.fc2.bias": r(channels)})
    return state


def timm_vit_blocks_reference(state: dict, images: torch.Tensor, depth: int, heads: int, patch: int) -> list[torch.Tensor]:
    """timm's VisionTransformer forward written out (tokens + pos_embed, pre-norm blocks), per block."""
    x = F.conv2d(images, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=patch)
    b, c = x.shape[:2]
    x = x.flatten(2).transpose(1, 2) + state["pos_embed"]
    outs = []
    for i in range(depth):
        p = lambda name, i=i: state[f"blocks.{i}.{name}"]
        y = F.layer_norm(x, (c,), p("norm1.weight"), p("norm1.bias"), eps=1e-6)
        qkv = F.linear(y, p("attn.qkv.weight"), p("attn.qkv.bias")).reshape(b, -1, 3, heads, c // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, c)
        x = x + F.linear(a, p("attn.proj.weight"), p("attn.proj.bias"))
        y = F.layer_norm(x, (c,), p("norm2.weight"), p("norm2.bias"), eps=1e-6)
        x = x + F.linear(F.gelu(F.linear(y, p("mlp.fc1.weight"), p("mlp.fc1.bias")), approximate="tanh"),
                         p("mlp.fc2.weight"), p("mlp.fc2.bias"))
        outs.append(x)
    return outs


def test_timm_vit_checkpoint_teacher_matches_timm_forward(tmp_path):
    from suite.distill.model import build_student, build_teacher, encoder_taps

    state = timm_vit_state(depth=2, channels=64, hidden=128, patch=14, grid=3)
    torch.save({"model": state}, tmp_path / "vit.pth")
    data = tiny([dict(STAGE1, steps=1, resolution=42)], model={**tiny()["model"], "depth": 2},
                teacher={"checkpoint": str(tmp_path / "vit.pth"), "format": "timm-vit"})
    cfg = parse_config(data)
    teacher = build_teacher(cfg, torch.device("cpu"))
    images = torch.randn(2, 3, 42, 42)
    _, taps = encoder_taps(teacher, images)
    for ours, theirs in zip(taps, timm_vit_blocks_reference(state, images, depth=2, heads=4, patch=14), strict=True):
        err = (ours["pb"].reshape(theirs.shape) - theirs).pow(2).mean().sqrt() / theirs.pow(2).mean().sqrt()
        assert err < 1e-5, err  # also fails on NaN
    student = build_student(cfg, teacher, torch.device("cpu"))
    assert torch.equal(student.embed.proj.weight, state["patch_embed.proj.weight"])
    assert not hasattr(student.embed, "pos")  # the C-GSPN student has no position embedding
    assert encoder_taps(teacher, torch.randn(1, 3, 70, 70))[1][0]["pb"].shape == (1, 5, 5, 64)  # pos_embed resampled


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.update({"blocks.0.ls1.gamma": torch.ones(64)}), "blocks.0.ls1.gamma: ls1 is not part of the plain ViT"),
        (lambda s: s.update({"blocks.0.mlp.fc1.weight": torch.ones(96, 64)}), "blocks.0.mlp.fc1.weight: checkpoint shape"),
        (lambda s: s.pop("blocks.1.norm2.bias"), "blocks.1.norm2.bias: missing from the checkpoint"),
    ],
)
def test_timm_vit_checkpoint_errors_name_the_key(tmp_path, edit, message):
    from suite.distill.model import build_teacher
    from suite.distill.timm_checkpoint import TimmCheckpointError

    state = timm_vit_state(depth=2, channels=64, hidden=128, patch=14, grid=3, prefix=1)
    edit(state)
    torch.save(state, tmp_path / "vit.pth")
    data = tiny(model={**tiny()["model"], "depth": 2}, teacher={"checkpoint": str(tmp_path / "vit.pth"), "format": "timm-vit"})
    with pytest.raises(TimmCheckpointError) as err:
        build_teacher(parse_config(data), torch.device("cpu"))
    assert message in str(err.value)
