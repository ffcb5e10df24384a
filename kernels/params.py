"""The shape vocabulary shared by scenarios, the registry and the results.

Every sweep axis of a scenario is one field of :class:`Params`; an implementation declares the
fields it reads (``Implementation.params``) so a case's identity only depends on those.
Defaults are the paper's SigLIP-SO400M-like reference shapes (docs/design.md "Terms").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields


class ParamError(ValueError):
    """A parameter value that cannot describe a real case; the message names the field."""


@dataclass(frozen=True)
class Params:
    """One point of a sweep. Grid size comes from ``grid_h/grid_w``, else ``grid``, else
    ``resolution // patch``."""

    batch: int = 32
    channels: int = 1152  # model width C
    heads: int = 16  # attention heads (head_dim = channels // heads)
    resolution: int | None = None  # image side in pixels
    grid: int | None = None  # token grid side (square)
    grid_h: int | None = None  # token grid height (non-square grids)
    grid_w: int | None = None  # token grid width
    patch: int = 14  # patch size of the embedding
    compression: int = 18  # C-GSPN compression s: C_c = channels // s
    latent_channels: int | None = None  # C_c given directly (sublayer sweeps); overrides s
    mlp_hidden: int = 4304  # MLP hidden width (SO400M)
    depth: int = 27  # blocks in a network
    attn_blocks: int = 0  # attention blocks kept in a hybrid network (evenly spaced)
    tile: int = 27  # tiled FlashAttention tile side, in tokens
    chunk: int | None = None  # original GSPN items_each_chunk (None: global propagation)

    # ---- derived -------------------------------------------------------------------------
    @property
    def H(self) -> int:
        if self.grid_h is not None:
            return self.grid_h
        if self.grid is not None:
            return self.grid
        if self.resolution is not None:
            return self.resolution // self.patch
        raise ParamError("params: one of grid_h/grid_w, grid or resolution is required")

    @property
    def W(self) -> int:
        if self.grid_w is not None:
            return self.grid_w
        return self.H if self.grid_h is None else self.grid_h

    @property
    def tokens(self) -> int:
        return self.H * self.W

    @property
    def head_dim(self) -> int:
        return self.channels // self.heads

    @property
    def c_latent(self) -> int:
        """C_c = floor(C / s) (paper Eq. 3), or ``latent_channels`` when given."""
        if self.latent_channels is not None:
            return self.latent_channels
        return self.channels // self.compression

    @property
    def image_side(self) -> tuple[int, int]:
        """Input image size in pixels for network-level cases."""
        return self.H * self.patch, self.W * self.patch

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, values: dict, where: str = "params") -> Params:
        """Build and validate; errors name ``where.<field>`` and the allowed values."""
        allowed = cls.names()
        for key, value in values.items():
            if key not in allowed:
                raise ParamError(f"{where}.{key}: unknown parameter; allowed: {', '.join(allowed)}")
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ParamError(f"{where}.{key}: expected an integer, got {value!r} ({type(value).__name__})")
            minimum = 0 if key == "attn_blocks" else 1
            if value < minimum:
                raise ParamError(f"{where}.{key}: must be >= {minimum}, got {value}")
        params = cls(**values)
        params.check(where)
        return params

    def check(self, where: str = "params") -> None:
        """Cross-field rules that hold for every implementation."""
        if self.grid_h is not None and self.grid is not None:
            raise ParamError(f"{where}: give either grid or grid_h/grid_w, not both")
        if (self.grid_h is None) != (self.grid_w is None):
            raise ParamError(f"{where}.grid_h/grid_w: give both or neither")
        if self.resolution is not None and self.resolution < self.patch:
            raise ParamError(f"{where}.resolution: {self.resolution} px is smaller than one patch ({self.patch} px)")
        if self.channels % self.heads:
            raise ParamError(f"{where}.heads: channels={self.channels} is not divisible by heads={self.heads}")
        if self.attn_blocks > self.depth:
            raise ParamError(f"{where}.attn_blocks: {self.attn_blocks} exceeds depth={self.depth}")

    def check_compression(self, where: str = "params") -> None:
        """C-GSPN rule: the compression must divide the width (C_c = C / s exactly)."""
        if self.latent_channels is None and self.channels % self.compression:
            raise ParamError(
                f"{where}.compression: {self.compression} does not divide channels={self.channels}; "
                f"allowed: divisors of {self.channels}"
            )

    def subset(self, names: tuple[str, ...]) -> dict:
        """The values of ``names`` (the fields one implementation reads), for ids and rows."""
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def replace(self, **changes) -> Params:
        return dataclasses.replace(self, **changes)
