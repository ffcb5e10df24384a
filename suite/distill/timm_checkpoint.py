"""A timm ``VisionTransformer`` checkpoint as the attention teacher, read from a local file.

timm's plain ViT block is our block: ``x + proj(attn(qkv(norm1(x))))``, ``x + fc2(act(fc1(norm2(x))))``
with the same ``qkv`` layout (output viewed as ``(3, heads, head_dim)``), so its weights load into
a :class:`kernels.vit.VisionEncoder` with :class:`kernels.attention.layer.AttentionLayer` mixers
by renaming keys. timm itself is not needed (nothing is downloaded, no model is built).

What differs, and how it is handled:

* the absolute position embedding: kept, on the teacher only (:class:`PositionalPatchEmbed`),
  bilinearly resampled to the token grid; the C-GSPN student has none (paper Sec. 4.3);
* prefix tokens (class / register tokens): dropped; the teacher attends over patch tokens only;
* the MLP activation: ours is GELU-tanh (SigLIP); erf-GELU checkpoints differ by < 1e-3 per
  activation;
* layer scale, q/k norms, pre-norm (``norm_pre``) and non-affine variants are rejected with the
  key that shows them.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from kernels.vit import PatchEmbed

# timm name fragment -> ours, applied to "blocks.<i>.<rest>" keys
BLOCK_RENAMES = {"attn.qkv.": "mixer.qkv.", "attn.proj.": "mixer.proj."}
UNSUPPORTED = ("ls1.", "ls2.", "attn.q_norm.", "attn.k_norm.", "norm_pre.", "attn.norm.")
IGNORED_PREFIXES = ("head.", "fc_norm.", "attn_pool.", "head_drop.")


class TimmCheckpointError(ValueError):
    """A checkpoint that is not a plain timm ViT of the configured topology; names the key."""


class PositionalPatchEmbed(PatchEmbed):
    """Patch embedding plus a learned absolute position embedding ``(1, g_h, g_w, C)``,
    bilinearly resampled when the token grid differs (timm's ``resample_abs_pos_embed``)."""

    def __init__(self, channels: int, patch: int, grid: tuple[int, int]):
        super().__init__(channels, patch)
        self.pos = nn.Parameter(torch.zeros(1, *grid, channels))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = super().forward(images)
        pos = self.pos
        if pos.shape[1:3] != x.shape[1:3]:
            pos = F.interpolate(pos.permute(0, 3, 1, 2), size=x.shape[1:3], mode="bilinear", align_corners=False)
            pos = pos.permute(0, 2, 3, 1)
        return x + pos.to(x.dtype)


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (bare, or under ``model`` / ``state_dict``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher.checkpoint: no such file: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            return state[key]
    return state


def position_grid(pos_embed: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Split timm's ``pos_embed (1, prefix + g*g, C)`` into the ``(1, g, g, C)`` patch part and
    the prefix count (class token embeddings are dropped with the tokens)."""
    n = pos_embed.shape[1]
    for prefix in range(0, 9):  # timm: 0 (no_embed_class / no class token) up to class + register tokens
        side = math.isqrt(n - prefix)
        if side * side == n - prefix:
            grid = pos_embed[:, prefix:].reshape(1, side, side, pos_embed.shape[-1])
            return grid, prefix
    raise TimmCheckpointError(f"pos_embed: {n} positions are not prefix tokens plus a square grid")


def convert_timm_vit(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ViT keys -> keys of a VisionEncoder whose ``embed`` is a PositionalPatchEmbed."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(IGNORED_PREFIXES) or key in ("cls_token", "reg_token"):
            continue
        bad = next((u for u in UNSUPPORTED if u in key), None)
        if bad is not None:
            raise TimmCheckpointError(f"{key}: {bad.rstrip('.')} is not part of the plain ViT block the teacher implements")
        if key == "pos_embed":
            out["embed.pos"] = position_grid(value)[0]
        elif key.startswith("patch_embed.proj."):
            out["embed.proj." + key.removeprefix("patch_embed.proj.")] = value
        elif key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            for theirs, ours in BLOCK_RENAMES.items():
                if rest.startswith(theirs):
                    rest = ours + rest.removeprefix(theirs)
            out[f"blocks.{index}.{rest}"] = value
        elif key.startswith("norm."):
            out[key] = value
        else:
            raise TimmCheckpointError(f"{key}: not a key of a plain timm VisionTransformer")
    return out


def load_timm_teacher(teacher: nn.Module, path: str | Path, channels: int, patch: int) -> nn.Module:
    """Give ``teacher`` (a VisionEncoder of the configured topology) the checkpoint's weights and,
    when it has one, its position embedding. Shape or name mismatches raise, naming the key."""
    state = convert_timm_vit(read_checkpoint(path))
    if "embed.pos" in state:
        grid = tuple(state["embed.pos"].shape[1:3])
        teacher.embed = PositionalPatchEmbed(channels, patch, grid)
    expected = teacher.state_dict()
    for key, value in state.items():
        if key not in expected:
            raise TimmCheckpointError(f"{key}: the checkpoint has more blocks or parts than model.depth/config says")
        if expected[key].shape != value.shape:
            raise TimmCheckpointError(
                f"{key}: checkpoint shape {tuple(value.shape)} != teacher {tuple(expected[key].shape)} "
                "(set model.channels / heads / mlp_hidden / patch / depth to the checkpoint's)"
            )
    missing = sorted(set(expected) - set(state))
    if missing:
        raise TimmCheckpointError(f"{missing[0]}: missing from the checkpoint ({len(missing)} missing keys)")
    teacher.load_state_dict(state)
    return teacher
