"""Distillation config: nested dataclasses read from YAML with strict validation.

Every section is a dataclass; :func:`load_config` rejects unknown keys, wrong types and values
outside the allowed set with a message naming the dotted field (``stages[1].kind``) and what is
allowed. Float fields accept fraction strings (``"7/3"``) so the paper's constants read as written.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from suite import yaml_safe
from suite.errors import InputError, describe, unsafe_name


class ConfigError(InputError):
    """An invalid config value; the message names the field and the allowed values."""


STAGE_KINDS = ("sublayer", "end-to-end", "curriculum")
SCHEDULES = ("cosine", "linear", "constant")
SCANS = ("auto", "fused", "reference")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp32")
TEACHER_FORMATS = ("kernels", "timm-vit")


@dataclass
class ModelConfig:
    """Teacher and student topology (a kernels.vit.VisionEncoder)."""

    channels: int = 64
    depth: int = 4
    heads: int = 4
    mlp_hidden: int = 256
    patch: int = 14
    compression: int = 18  # C-GSPN s: C_c = channels // s (paper Eq. 3)
    latent_channels: int | None = None  # C_c given directly; overrides compression
    scan: str = field(default="auto", metadata={"choices": SCANS})  # auto: Triton "fused" on CUDA, "reference" on CPU
    attn_blocks: int = 0  # hybrid student: attention blocks kept at kernels.vit.attention_positions
    attention_backend: str = "auto"  # kernels.attention backend of teacher and hybrid attention blocks


@dataclass
class TeacherConfig:
    """Where the teacher's weights come from (random init only when no checkpoint is given)."""

    checkpoint: str | None = None  # local weights file (nothing is downloaded)
    format: str = field(default="kernels", metadata={"choices": TEACHER_FORMATS})  # kernels: our VisionEncoder state dict;
    # timm-vit: a timm VisionTransformer state dict (.pth/.bin/.safetensors), see suite/distill/timm_checkpoint.py
    init_student: bool = True  # copy embedding, norms, MLPs (and hybrid attention blocks) into the student


@dataclass
class DataConfig:
    """Images and random resized crops (torchvision's RandomResizedCrop recipe, seeded per sample)."""

    path: str | None = None  # image folder (recursive); None: photographs shipped with scikit-image / scikit-learn
    batch_size: int = 8  # global batch; split evenly over DDP ranks
    repeats: int = 4  # crops of each image per epoch
    scale: list[float] = field(default_factory=lambda: [0.35, 1.0])  # crop area fraction
    ratio: list[float] = field(default_factory=lambda: [0.75, 4 / 3])  # crop aspect ratio
    max_side: int = 640  # images are downscaled at load so their short side is at most this
    workers: int = 0


@dataclass
class LossConfig:
    """Stage-2 / curriculum objective, paper Eq. 11-12 and 14: alpha*L_PP + beta*L_PB."""

    alpha: float = 0.5
    beta: float = 0.5
    lambda_pp: float = 7 / 3  # lambda_1
    lambda_pb: float = 7 / 3  # lambda_2
    taps_every: int = 1  # supervise every k-th block, counted back from the last (paper: 9 of 27)
    adaptor: bool = True  # 2-layer MLP adaptor before each student tap


@dataclass
class StageConfig:
    """One training stage; stages run in order, each starting from the previous stage's student."""

    name: str
    kind: str = field(metadata={"choices": STAGE_KINDS})
    resolution: int
    steps: int
    lr: float
    warmup: int = 0
    schedule: str = field(default="cosine", metadata={"choices": SCHEDULES})
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.05


@dataclass
class CheckpointConfig:
    every: int = 100  # steps between checkpoints (each stage also ends with one)
    keep: int = 2  # step checkpoints kept (stage-final student weights are always kept)


@dataclass
class EvaluateConfig:
    after_each_stage: bool = True
    images: int = 16  # center crops used for the student-teacher cosine similarity
    latency_resolutions: list[int] = field(default_factory=list)  # teacher vs student forward latency
    latency_batch: int = 8
    timing: dict[str, Any] = field(default_factory=dict)  # suite.measure.TimingSettings fields


@dataclass
class DistillConfig:
    name: str
    stages: list[StageConfig]
    seed: int = 0
    device: str = field(default="auto", metadata={"choices": DEVICES})
    precision: str = field(default="auto", metadata={"choices": PRECISIONS})  # auto: bf16 autocast on CUDA
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    log_every: int = 1
    progress: bool = True  # rich progress bar on rank 0
    tensorboard: bool = True  # TensorBoard scalars when tensorboard is installed (JSONL log always)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---- parsing ---------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (dataclass, list, optional, scalar)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, options[0], where)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if value is None:
        raise ConfigError(f"{where}: a value is required (expected {_type_name(tp)})")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                return float(Fraction(value.replace(" ", "")))
            except (ValueError, ZeroDivisionError):
                raise ConfigError(f"{where}: expected a number or a fraction like '7/3', got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {tp!r}")  # a bug in this module, not in the YAML


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields_ = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields_:
            raise ConfigError(f"{where}.{key}: unknown field; allowed: {', '.join(fields_)}")
    values = {}
    for name, f in fields_.items():
        sub = f"{where}.{name}" if where else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{sub}: required field is missing")
            continue
        value = _convert(data[name], hints[name], sub)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{sub}: {value!r} is not allowed; allowed: {', '.join(choices)}")
        values[name] = value
    return cls(**values)


def _positive(value: float | int | None, where: str, minimum: float = 1) -> None:
    if value is not None and value < minimum:
        raise ConfigError(f"{where}: must be >= {minimum}, got {value}")


def _check(cfg: DistillConfig) -> None:
    """Cross-field rules."""
    if unsafe_name(cfg.name):
        raise ConfigError(f"name: {unsafe_name(cfg.name)}")
    m = cfg.model
    for name in ("channels", "depth", "heads", "mlp_hidden", "patch", "compression", "latent_channels"):
        _positive(getattr(m, name), f"model.{name}")
    if m.channels % m.heads:
        raise ConfigError(f"model.heads: channels={m.channels} is not divisible by heads={m.heads}")
    if m.latent_channels is None and m.channels % m.compression:
        raise ConfigError(f"model.compression: {m.compression} does not divide channels={m.channels}; allowed: divisors of it")
    if not 0 <= m.attn_blocks <= m.depth:
        raise ConfigError(f"model.attn_blocks: must be in [0, depth={m.depth}], got {m.attn_blocks}")
    if cfg.teacher.format == "timm-vit" and not cfg.teacher.checkpoint:
        raise ConfigError("teacher.checkpoint: a local checkpoint path is required with teacher.format: timm-vit")
    d = cfg.data
    for name in ("batch_size", "repeats", "max_side"):
        _positive(getattr(d, name), f"data.{name}")
    _positive(d.workers, "data.workers", 0)
    for name in ("scale", "ratio"):
        pair = getattr(d, name)
        if len(pair) != 2 or not 0 < pair[0] <= pair[1]:
            raise ConfigError(f"data.{name}: expected [low, high] with 0 < low <= high, got {pair}")
    if d.scale[1] > 1:
        raise ConfigError(f"data.scale: the area fraction cannot exceed 1, got {d.scale}")
    _positive(cfg.loss.taps_every, "loss.taps_every")
    _positive(cfg.checkpoint.every, "checkpoint.every")
    _positive(cfg.checkpoint.keep, "checkpoint.keep")
    _positive(cfg.log_every, "log_every")
    _positive(cfg.evaluate.images, "evaluate.images")
    _positive(cfg.evaluate.latency_batch, "evaluate.latency_batch")
    if not cfg.stages:
        raise ConfigError("stages: at least one stage is required")
    names = set()
    previous = None
    for i, stage in enumerate(cfg.stages):
        where = f"stages[{i}]"
        if stage.name in names:
            raise ConfigError(f"{where}.name: {stage.name!r} is used twice")
        names.add(stage.name)
        _positive(stage.steps, f"{where}.steps")
        _positive(stage.warmup, f"{where}.warmup", 0)
        if stage.lr <= 0:
            raise ConfigError(f"{where}.lr: must be > 0, got {stage.lr}")
        if not 0 <= stage.min_lr_ratio <= 1:
            raise ConfigError(f"{where}.min_lr_ratio: must be in [0, 1], got {stage.min_lr_ratio}")
        if stage.resolution < m.patch or stage.resolution % m.patch:
            raise ConfigError(f"{where}.resolution: {stage.resolution} px is not a positive multiple of model.patch={m.patch}")
        if stage.kind == "curriculum":
            if previous is None:
                raise ConfigError(f"{where}.kind: a curriculum stage needs a previous stage (its frozen teacher)")
            if stage.resolution <= previous.resolution:
                raise ConfigError(
                    f"{where}.resolution: a curriculum stage must raise the resolution above {previous.resolution} px, "
                    f"got {stage.resolution}"
                )
        if stage.kind == "sublayer" and m.attn_blocks == m.depth:
            raise ConfigError(f"{where}.kind: a sublayer stage needs at least one C-GSPN block (attn_blocks == depth)")
        previous = stage
    from suite.measure import TimingError, TimingSettings

    try:
        TimingSettings.from_dict(cfg.evaluate.timing, where="evaluate.timing")
    except TimingError as err:
        raise ConfigError(str(err)) from None
    for r in cfg.evaluate.latency_resolutions:
        if r < m.patch or r % m.patch:
            raise ConfigError(f"evaluate.latency_resolutions: {r} px is not a positive multiple of model.patch={m.patch}")


def parse_config(data: dict, where: str = "") -> DistillConfig:
    cfg = _build(DistillConfig, data, where)
    _check(cfg)
    return cfg


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``dotted.key=value`` overrides (value parsed as YAML) to the raw config mapping.

    Stage fields are addressed as ``stages.<index>.<field>``.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. model.attn_blocks=3")
        key, raw = item.split("=", 1)
        node: Any = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {key}: {part!r} is not an index below {len(node)}")
                node = node[int(part)]
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"--set {key}: {part!r} holds a value, not a section or list of them")
        last = parts[-1]
        try:
            value = yaml_safe.load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {key}: the value is not valid YAML: {yaml_safe.describe(err)}") from None
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"--set {key}: {last!r} is not an index below {len(node)}")
            node[int(last)] = value
        else:
            node[last] = value
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> DistillConfig:
    """Read, override and validate a config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: no such file: {path}")
    try:
        data = yaml_safe.load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read: {describe(err)}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {yaml_safe.describe(err)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return parse_config(apply_overrides(data, overrides or []))
