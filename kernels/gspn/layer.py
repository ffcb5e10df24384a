"""The original GSPN layer (GSPN v1, CVPR 2025) in a ViT attention slot, its components behind flags.

Token-mixer contract: ``forward(x: (B, H, W, C)) -> (B, H, W, C)``. Inside, the propagation runs
channels-first ``(B, d, H, W)`` like the original (``d = d_inner``). The pieces (docs/design.md
"The layers"; the flag that removes each, and what replaces it):

1. attention-template projections, ``attention_projections``: ``q, k, v = Linear(C, 3C)(x)``; the
   propagated signal is ``x + v``, u is generated from ``x + q`` and lambda from ``x + k`` (the
   original ``GSPNmodule`` wiring) through a shared ``Linear(C, d_state)`` down projection; a
   ``Linear(C, C)`` output projection closes the layer. Off: identity (signal = x, u and lambda
   from the same proxy as the gates, no output projection).
2. channel extension, ``channel_extension``: ``Linear(C, 2C)`` (d_inner = 2C) then a depthwise
   3x3 conv. Off: identity, d_inner = C (only the layout change to channels-first remains).
3. raw-space parameter generation with one parameter set per direction, ``direction_parameters``:
   a 1x1 conv down to ``d_state=16``, then 1x1 convs up to ``12 d`` gates (3 gates x 4
   directions), ``4 d`` lambda, ``4 d`` u and ``4 d`` D - four direction-stacked sets at full
   width. Off: the same ``d_state`` bottleneck, but the up convs emit *one* set per pixel
   (``3 d`` gates, ``d`` lambda, ``d`` u, ``d`` D) shared by the four directions, as C-GSPN's
   heads do (paper Eq. 4). :func:`gspn_propagation` broadcasts a shared set to the four
   directions before stacking, so the scan still sees ``4 d`` channels and the shapes stay those
   of the original; each direction still normalizes the shared logits in its own frame (which
   neighbours exist depends on the scan axis). Only the up convs shrink (4x fewer outputs).
4. the four directions stacked on channels (no flag: it is the original's execution structure,
   tied to the scan switch): x, x^T, flip(x), flip(x^T) (the original order: lr, tb, rl, bt),
   every per-direction parameter map moved into its direction's frame, the gates normalized in
   eager PyTorch (sigmoid, sum, boundary fix, clamp, divide), and *one* scan over ``4 d``
   channels (square grids; a non-square grid needs two scans of ``2 d`` channels, one per frame
   shape). ``scan`` picks the kernel: ``"original"`` (one launch per step,
   :mod:`kernels.gspn.original_scan`), ``"fast"`` (the C-GSPN single-direction Triton scan on
   pre-normalized gates: same layer, other kernel) or ``"reference"`` (PyTorch loop).
5. inner residual ``out * u + x * D``, ``inner_residual``; off: ``out * u`` (no D head).
   Then the direction merge, ``merge_norm``: a learned 1x1 conv over the 4 directions (after
   undoing each direction's flip/transpose, which the original forgets), LayerNorm and GRN. Off:
   the four direction outputs are summed (C-GSPN's ``sum_dir``, Eq. 6), no LayerNorm, no GRN.
   The ``Linear(d, C)`` out projection stays in both cases: it is what brings d_inner back to
   the model width C (C-GSPN's P_up plays the same role), so the flags stay independent.

Fig. 3 right of the paper removes 1, then 5's residual, then 2 (cumulatively); the defaults (every
flag True) are the original layer.
"""

from __future__ import annotations

import torch
from torch import nn

from kernels.cgspn.reference import GATE_EPS  # the one Eq. 2 epsilon of the project
from kernels.gspn.original_scan import chunk_length, original_scan, original_scan_reference

DIRECTIONS = ("lr", "tb", "rl", "bt")  # the original's stacking order: x, x^T, flip(x), flip(x^T)
SCANS = ("original", "fast", "reference")
D_STATE = 16


# ---- directions ---------------------------------------------------------------------------------
def to_frame(t: torch.Tensor, direction: str) -> torch.Tensor:
    """Image frame ``(..., H, W)`` -> the direction's scan frame ``(..., P, L)``, scanning along L forward."""
    if direction in ("tb", "bt"):
        t = t.transpose(-1, -2)
    if direction in ("rl", "bt"):
        t = t.flip(-1)
    return t


def from_frame(t: torch.Tensor, direction: str) -> torch.Tensor:
    """Inverse of :func:`to_frame`."""
    if direction in ("rl", "bt"):
        t = t.flip(-1)
    if direction in ("tb", "bt"):
        t = t.transpose(-1, -2)
    return t


def direction_groups(height: int, width: int) -> tuple[tuple[str, ...], ...]:
    """Directions whose frames share a shape and so can be stacked into one scan."""
    if height == width:
        return (DIRECTIONS,)
    return (("lr", "rl"), ("tb", "bt"))


def normalize_gates_original(g1: torch.Tensor, g2: torch.Tensor, g3: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Paper Eq. 2 the way the original layer runs it: eager PyTorch in the gates' dtype, in the scan
    frame ``(B, C, P, L)`` where the neighbours lie along P: ``sigmoid(g) / max(sum, GATE_EPS)`` with the
    missing neighbour dropped from the sum at p=0 (no g1) and p=P-1 (no g3). Unlike the original, a
    single row (P=1) keeps only g2 in the sum."""
    s1, s2, s3 = torch.sigmoid(g1), torch.sigmoid(g2), torch.sigmoid(g3)
    total = s1 + s2 + s3
    if total.shape[2] == 1:
        total = s2.clone()
    else:
        total[:, :, 0] = s2[:, :, 0] + s3[:, :, 0]
        total[:, :, -1] = s1[:, :, -1] + s2[:, :, -1]
    total = total.clamp(min=GATE_EPS)
    return s1 / total, s2 / total, s3 / total


def scan_frames(x, lam, g1, g2, g3, chunk: int | None, scan: str) -> torch.Tensor:
    """The hidden state of the stacked scan, ``(B, C, P, L)`` in, same out, with the chosen kernel."""
    if scan == "original":
        return original_scan(x, lam, g1, g2, g3, chunk=chunk)
    if scan == "reference":
        return original_scan_reference(x, lam, g1, g2, g3, chunk=chunk)
    if chunk is not None and chunk < x.shape[-1]:
        raise ValueError(f"chunk: the fast scan propagates globally (chunk=None); got chunk={chunk} < {x.shape[-1]} steps; "
                         "use scan='original' for chunked propagation")
    from kernels.cgspn import propagate  # the C-GSPN engineer's single-direction scan

    def last(t):
        return t.permute(0, 2, 3, 1)  # (B, P, L, C): the frame's "lr" scan, channels-last

    gates = torch.stack([last(g) for g in (g1, g2, g3)], dim=3)  # (B, P, L, 3, C)
    h = propagate(last(x).contiguous(), last(lam).contiguous(), gates, "lr", normalize=False)
    return h.permute(0, 3, 1, 2)


def per_direction(t: torch.Tensor, maps: int, d: int) -> torch.Tensor:
    """``(B, maps*4*d, H, W)`` (one set per direction) or ``(B, maps*d, H, W)`` (one set shared by the
    four directions, broadcast without a copy) -> ``(B, maps, 4, d, H, W)``, direction-major."""
    B, _, H, W = t.shape
    if t.shape[1] == maps * 4 * d:
        return t.view(B, maps, 4, d, H, W)
    return t.view(B, maps, 1, d, H, W).expand(B, maps, 4, d, H, W)


def gspn_propagation(x: torch.Tensor, lam: torch.Tensor, u: torch.Tensor, gates: torch.Tensor, *,
                     D: torch.Tensor | None = None, chunk: int | None = None, scan: str = "original") -> torch.Tensor:
    """The original GSPN propagation sublayer (components 4 and 5's residual), in the original's layout.

    x: ``(B, d, H, W)``; lam, u, D: ``(B, 4d, H, W)``, direction-major in :data:`DIRECTIONS` order;
    gates: raw logits ``(B, 12d, H, W)`` = ``[g1 | g2 | g3]``, each ``4d`` direction-major (the
    original's ``w_conv_up`` output split in three). A parameter map may instead hold one set
    shared by the four directions (lam, u, D ``(B, d, H, W)``, gates ``(B, 3d, H, W)``; component
    3 off). All in the image frame. Stacks the directions, normalizes the gates eagerly, scans,
    applies ``h * u (+ x * D)`` and returns the four direction outputs back in the image frame,
    ``(B, 4, d, H, W)``.
    """
    if scan not in SCANS:
        raise ValueError(f"scan: {scan!r} is not one of {', '.join(SCANS)}")
    B, d, H, W = x.shape
    for name, t, maps in (("lam", lam, 1), ("u", u, 1), ("gates", gates, 3), ("D", D, 1)):
        if t is not None and tuple(t.shape) not in ((B, maps * 4 * d, H, W), (B, maps * d, H, W)):
            raise ValueError(f"{name}: expected {(B, maps * 4 * d, H, W)} (per direction) or {(B, maps * d, H, W)} (shared) "
                             f"for x of shape {tuple(x.shape)}, got {tuple(t.shape)}")
    per_dir = {name: per_direction(t, 1, d)[:, 0] for name, t in (("lam", lam), ("u", u), ("D", D)) if t is not None}
    g_per_dir = per_direction(gates, 3, d)
    outs: dict[str, torch.Tensor] = {}
    for group in direction_groups(H, W):
        index = [DIRECTIONS.index(k) for k in group]

        def stack(t5: torch.Tensor, index=index, group=group) -> torch.Tensor:
            return torch.cat([to_frame(t5[:, i], k) for i, k in zip(index, group, strict=True)], dim=1)

        xs = torch.cat([to_frame(x, k) for k in group], dim=1)  # (B, n*d, P, L)
        g1, g2, g3 = normalize_gates_original(*(stack(g_per_dir[:, j]) for j in range(3)))
        h = scan_frames(xs, stack(per_dir["lam"]), g1, g2, g3, chunk, scan)
        del g1, g2, g3
        out = h * stack(per_dir["u"])
        if D is not None:
            out = out + xs * stack(per_dir["D"])  # inner residual
        for pos, k in enumerate(group):
            outs[k] = from_frame(out[:, pos * d:(pos + 1) * d], k)
    return torch.stack([outs[k] for k in DIRECTIONS], dim=1)


# ---- the layer ----------------------------------------------------------------------------------
class GRN(nn.Module):
    """Global response normalization (ConvNeXt V2), channels-last ``(B, H, W, d)``:
    ``gamma * (x * N(x)) + beta + x`` with ``N = ||x||_HW / mean_d ||x||_HW``."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class GSPNLayer(nn.Module):
    """Original GSPN token mixer; see the module docstring for the pieces and their flags.

    Args:
        channels: model width C.
        attention_projections, channel_extension: components 1 and 2.
        direction_parameters: component 3 (False: one parameter set shared by the four directions).
        inner_residual, merge_norm: component 5 (the ``x * D`` residual; the merge conv, LayerNorm
            and GRN - False: directions summed). The out projection is always there.
        chunk: the original's ``items_each_chunk`` (None: global propagation).
        scan: ``"original"``, ``"fast"`` or ``"reference"``.
        d_state: width of the parameter-generation bottleneck (16 in the original).
    """

    def __init__(self, channels: int, *, attention_projections: bool = True, channel_extension: bool = True,
                 inner_residual: bool = True, direction_parameters: bool = True, merge_norm: bool = True,
                 chunk: int | None = None, scan: str = "original", d_state: int = D_STATE):
        super().__init__()
        if scan not in SCANS:
            raise ValueError(f"scan: {scan!r} is not one of {', '.join(SCANS)}")
        if chunk is not None:
            chunk_length(1, chunk)  # validates
        self.channels, self.chunk, self.scan = channels, chunk, scan
        self.attention_projections = attention_projections
        self.channel_extension = channel_extension
        self.inner_residual = inner_residual
        self.direction_parameters = direction_parameters
        self.merge_norm = merge_norm
        d = self.d_inner = 2 * channels if channel_extension else channels
        if attention_projections:
            self.qkv = nn.Linear(channels, 3 * channels)
            self.qk_down = nn.Linear(channels, d_state, bias=False)  # proxies of x+q (u) and x+k (lambda)
            self.to_out = nn.Linear(channels, channels)
        if channel_extension:
            self.in_proj = nn.Linear(channels, d, bias=False)
            self.dwconv = nn.Conv2d(d, d, kernel_size=3, padding=1, groups=d)
        self.x_conv_down = nn.Conv2d(d, d_state, 1, bias=False)
        sets = 4 if direction_parameters else 1  # parameter sets: one per direction, or one shared
        self.w_conv_up = nn.Conv2d(d_state, 3 * sets * d, 1, bias=False)  # 3 gates x sets
        self.l_conv_up = nn.Conv2d(d_state, sets * d, 1, bias=False)
        self.u_conv_up = nn.Conv2d(d_state, sets * d, 1, bias=False)
        if inner_residual:
            self.d_conv = nn.Conv2d(d_state, sets * d, 1, bias=False)
        if merge_norm:
            self.m_conv = nn.Conv2d(4, 1, 1, bias=False)  # direction merge
            self.out_norm = nn.LayerNorm(d)
            self.grn = GRN(d)
        self.out_proj = nn.Linear(d, channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] != self.channels:
            raise ValueError(f"x: expected (B, H, W, {self.channels}), got {tuple(x.shape)}")
        B, H, W, _ = x.shape
        signal = x
        if self.attention_projections:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            signal = x + v
        if self.channel_extension:
            e = self.dwconv(self.in_proj(signal).permute(0, 3, 1, 2).contiguous())
        else:
            e = signal.permute(0, 3, 1, 2).contiguous()
        proxy = self.x_conv_down(e)  # (B, d_state, H, W)
        if self.attention_projections:
            u_proxy = self.qk_down(x + q).permute(0, 3, 1, 2)
            l_proxy = self.qk_down(x + k).permute(0, 3, 1, 2)
        else:
            u_proxy = l_proxy = proxy
        outs = gspn_propagation(
            e, self.l_conv_up(l_proxy), self.u_conv_up(u_proxy), self.w_conv_up(proxy),
            D=self.d_conv(proxy) if self.inner_residual else None, chunk=self.chunk, scan=self.scan,
        )
        d = self.d_inner
        if self.merge_norm:
            merged = self.m_conv(outs.view(B, 4, d * H, W)).view(B, d, H, W)
            y = self.out_proj(self.grn(self.out_norm(merged.permute(0, 2, 3, 1))))
        else:
            y = self.out_proj(outs.sum(dim=1).permute(0, 2, 3, 1))
        return self.to_out(y) if self.attention_projections else y

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, d_inner={self.d_inner}, attention_projections={self.attention_projections}, "
                f"channel_extension={self.channel_extension}, direction_parameters={self.direction_parameters}, "
                f"inner_residual={self.inner_residual}, merge_norm={self.merge_norm}, "
                f"chunk={self.chunk}, scan={self.scan}")


def gspn_layer_flops(tokens: int, channels: int, *, attention_projections: bool = True, channel_extension: bool = True,
                     inner_residual: bool = True, direction_parameters: bool = True, merge_norm: bool = True,
                     d_state: int = D_STATE) -> float:
    """Forward FLOPs counted from the shapes: GEMMs/convs at 2 per MAC, the scan at ~8 per stacked
    element (3 gate products, lambda*x, adds), the eager normalization at ~9 per gate triple (per
    stacked element also with shared parameters: each direction normalizes in its own frame), the
    u/D products and the 4-way merge (2 per stacked element for the merge conv, 1 for a plain sum)."""
    C, d = channels, (2 * channels if channel_extension else channels)
    sets = 4 if direction_parameters else 1
    macs = d * d_state + d_state * (3 + 1 + 1 + (1 if inner_residual else 0)) * sets * d + d * C
    if attention_projections:
        macs += 3 * C * C + C * C + 2 * C * d_state
    if channel_extension:
        macs += C * d + 9 * d
    elementwise = 4 * d * (8 + 9 + (3 if inner_residual else 1) + (2 if merge_norm else 1))
    return tokens * (2.0 * macs + elementwise)


__all__ = ["DIRECTIONS", "GRN", "GSPNLayer", "direction_groups", "from_frame", "gspn_layer_flops", "gspn_propagation",
           "normalize_gates_original", "per_direction", "to_frame"]
