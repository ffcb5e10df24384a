"""Teacher, student, tap adaptors and the per-stage training modules.

Teacher: a :class:`kernels.vit.VisionEncoder` with ``kernels.attention.layer.AttentionLayer``
mixers (weights from ``teacher.checkpoint``, else a seeded random init; a timm ViT checkpoint
loads into it with :mod:`suite.distill.timm_checkpoint`). Student: the same topology with
``kernels.cgspn.layer.CGSPNLayer`` mixers; a hybrid student keeps ``attn_blocks`` attention
blocks at :func:`kernels.vit.attention_positions`. Everything but the C-GSPN mixers is copied
from the teacher (``teacher.init_student``): the MLP half of a block is isomorphic across the
two operators (paper Sec. 4.2), only the token mixer has to be learned.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from kernels.vit import VisionEncoder, attention_positions
from suite.distill.config import DistillConfig, LossConfig
from suite.distill.losses import feature_mse, tap_loss

# ---- building -----------------------------------------------------------------------------------


def resolve_scan(scan: str, device: torch.device) -> str:
    """``auto``: the Triton scan (with its Triton backward) on CUDA, the PyTorch reference on CPU
    (the Triton interpreter is too slow for training steps)."""
    if scan != "auto":
        return scan
    return "fused" if device.type == "cuda" else "reference"


def uses_bf16(cfg: DistillConfig, device: torch.device) -> bool:
    """bf16 autocast: ``precision: bf16``, or ``auto`` on CUDA."""
    return cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")


def resolve_attention_backend(cfg: DistillConfig, device: torch.device) -> str:
    """``auto``: FlashAttention on CUDA under bf16 autocast (it has a backward, for hybrid
    students; it takes half types only), memory-efficient SDPA on CUDA in float32, math on CPU."""
    backend = cfg.model.attention_backend
    if backend != "auto":
        return backend
    if device.type != "cuda":
        return "math"
    return "flash" if uses_bf16(cfg, device) else "mem-efficient"


def _attention_layer(channels: int, heads: int, backend: str) -> nn.Module:
    from kernels.attention.layer import AttentionLayer
    return AttentionLayer(channels, heads, backend)


def _cgspn_layer(cfg: DistillConfig, scan: str) -> nn.Module:
    from kernels.cgspn.layer import CGSPNLayer
    m = cfg.model
    return CGSPNLayer(m.channels, compression=m.compression, latent_channels=m.latent_channels, scan=scan)


def load_state_dict_file(path: str | Path) -> dict:
    """A state dict saved bare or under ``model`` / ``state_dict`` / ``student`` (our checkpoints)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher.checkpoint: no such file: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "student"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            return state[key]
    return state


def build_teacher(cfg: DistillConfig, device: torch.device, saved: Path | None = None) -> nn.Module:
    """The frozen attention teacher, in eval mode on ``device``.

    Weights: ``teacher.checkpoint`` if given; else ``saved`` (this run's own random teacher, so
    a resumed run distills the same teacher); else a random init seeded by ``cfg.seed``.
    """
    m = cfg.model
    backend = resolve_attention_backend(cfg, device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        teacher = VisionEncoder(lambda i: _attention_layer(m.channels, m.heads, backend), m.channels, m.depth,
                                m.mlp_hidden, m.patch)
    if cfg.teacher.format == "timm-vit":
        from suite.distill.timm_checkpoint import load_timm_teacher

        load_timm_teacher(teacher, cfg.teacher.checkpoint, m.channels, m.patch)
    else:
        source = cfg.teacher.checkpoint or (saved if saved is not None and saved.is_file() else None)
        if source is not None:
            teacher.load_state_dict(load_state_dict_file(source))
    teacher.requires_grad_(False)
    return teacher.to(device).eval()


def student_attention_blocks(cfg: DistillConfig) -> list[int]:
    return attention_positions(cfg.model.depth, cfg.model.attn_blocks) if cfg.model.attn_blocks else []


def build_student(cfg: DistillConfig, teacher: nn.Module, device: torch.device) -> VisionEncoder:
    """C-GSPN (or hybrid) student of the teacher's topology; non-mixer weights copied from it."""
    m = cfg.model
    scan = resolve_scan(m.scan, device)
    keep = set(student_attention_blocks(cfg))
    backend = resolve_attention_backend(cfg, device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        student = VisionEncoder(
            lambda i: _attention_layer(m.channels, m.heads, backend) if i in keep else _cgspn_layer(cfg, scan),
            m.channels, m.depth, m.mlp_hidden, m.patch,
        )
    if cfg.teacher.init_student:
        copy_shared_weights(teacher, student, keep)
    return student.to(device)


def copy_shared_weights(teacher: nn.Module, student: VisionEncoder, attention_blocks: set[int]) -> list[str]:
    """Copy every student tensor whose name and shape match the teacher's, except the mixers of
    C-GSPN blocks. Returns the copied names."""
    source = teacher.state_dict()
    target = student.state_dict()
    copied = []
    for name, value in target.items():
        parts = name.split(".")
        if parts[0] == "blocks" and parts[2] == "mixer" and int(parts[1]) not in attention_blocks:
            continue
        if name in source and source[name].shape == value.shape:
            value.copy_(source[name])
            copied.append(name)
    return copied


def cgspn_blocks(cfg: DistillConfig) -> list[int]:
    keep = set(student_attention_blocks(cfg))
    return [i for i in range(cfg.model.depth) if i not in keep]


def supervised_blocks(depth: int, every: int) -> list[int]:
    """Every ``every``-th block counted back from the last (27 blocks, every 9 -> [8, 17, 26])."""
    return [i for i in range(depth) if (depth - 1 - i) % every == 0]


# ---- features --------------------------------------------------------------------------------------


def encoder_taps(model: nn.Module, images: torch.Tensor, upto: int | None = None) -> tuple[torch.Tensor, list[dict]]:
    """Block-0 input and per-block taps ``{"pp", "pb"}`` of a VisionEncoder.

    Runs blocks ``0..upto`` only (default: all) and skips the final norm, which no loss reads
    (an unused parameter would also stall DDP's gradient reduction).
    """
    x = model.embed(images)
    x0, taps = x, []
    last = len(model.blocks) - 1 if upto is None else upto
    for block in model.blocks[: last + 1]:
        tap: dict = {}
        x = block(x, tap)
        taps.append(tap)
    return x0, taps


class TapAdaptor(nn.Module):
    """The paper's lightweight 2-layer MLP adaptor before a tap: ``x + fc2(gelu(fc1(x)))``.

    The residual form with a zero-initialized ``fc2`` starts as the identity, so attaching fresh
    adaptors does not undo what stage 1 (or the previous curriculum stage) already aligned.
    """

    def __init__(self, channels: int, hidden: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden or channels)
        self.fc2 = nn.Linear(hidden or channels, channels)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(x)))


def build_adaptors(channels: int, blocks: list[int]) -> nn.ModuleDict:
    """One adaptor per tap: keys ``"<block>-pp"`` and ``"<block>-pb"``."""
    return nn.ModuleDict({f"{b}-{tap}": TapAdaptor(channels) for b in blocks for tap in ("pp", "pb")})


# ---- stage modules (what DDP wraps) ----------------------------------------------------------------


class SublayerStage(nn.Module):
    """Stage 1 (paper Eq. 7-9): each C-GSPN block's ``mixer(norm1(h_t))`` is regressed onto the
    teacher's attention output for the same teacher block input ``h_t``. Inputs are detached, so
    the blocks train independently, with no gradient across blocks."""

    def __init__(self, student: VisionEncoder, blocks: list[int]):
        super().__init__()
        self.student = student
        self.blocks = blocks

    def trainable(self) -> list[nn.Parameter]:
        params = []
        for i in self.blocks:
            block = self.student.blocks[i]
            params += list(block.norm1.parameters()) + list(block.mixer.parameters())
        return params

    def forward(self, block_inputs: list[torch.Tensor], targets: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        per_block = []
        for i, x, target in zip(self.blocks, block_inputs, targets, strict=True):
            block = self.student.blocks[i]
            per_block.append(feature_mse(block.mixer(block.norm1(x.detach())), target))
        stacked = torch.stack(per_block)
        return {"loss": stacked.mean(), "pp": stacked.mean(), "per_block": stacked.detach()}


class TapStage(nn.Module):
    """Stage 2 / curriculum (paper Eq. 11-14): end-to-end student forward, adaptors at the PP and
    PB taps of the supervised blocks, ``alpha * L_PP + beta * L_PB`` averaged over those blocks."""

    def __init__(self, student: VisionEncoder, adaptors: nn.ModuleDict | None, blocks: list[int], loss: LossConfig):
        super().__init__()
        self.student = student
        self.adaptors = adaptors
        self.blocks = blocks
        self.loss = loss

    def trainable(self) -> list[nn.Parameter]:
        # The final norm is read by no tap, so it stays as it is.
        params = [p for n, p in self.student.named_parameters() if not n.startswith("norm.")]
        return params + (list(self.adaptors.parameters()) if self.adaptors is not None else [])

    def adapt(self, block: int, tap: str, x: torch.Tensor) -> torch.Tensor:
        return self.adaptors[f"{block}-{tap}"](x) if self.adaptors is not None else x

    def forward(self, images: torch.Tensor, targets: dict[int, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        _, taps = encoder_taps(self.student, images, upto=max(self.blocks))
        c = self.loss
        terms = {k: [] for k in ("pp", "pb", "pp_mse", "pp_kl", "pb_mse", "pb_kl")}
        for b in self.blocks:
            for tap, kl_weight in (("pp", c.lambda_pp), ("pb", c.lambda_pb)):
                loss, mse, kl = tap_loss(self.adapt(b, tap, taps[b][tap]), targets[b][tap], kl_weight)
                terms[tap].append(loss)
                terms[f"{tap}_mse"].append(mse)
                terms[f"{tap}_kl"].append(kl)
        out = {k: torch.stack(v).mean() for k, v in terms.items()}
        out["loss"] = c.alpha * out["pp"] + c.beta * out["pb"]
        out["per_block"] = torch.stack(terms["pp"]).detach()
        return out
