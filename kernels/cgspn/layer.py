"""The C-GSPN layer (paper Fig. 4 right, Sec. 4.1): a token mixer for a ViT attention slot.

Channels-last in and out, ``(B, H, W, C) -> (B, H, W, C)`` (the token-mixer contract of
:mod:`kernels.vit`). With ``C_c = C // s`` (paper Eq. 3; s in {12, 18, 72}, s=18 gives 64 at
C=1152)::

    x_c          = P_down(x)                       Linear(C, C_c)            Eq. 3
    u, lam, w~   = heads(x_c)                      Linear(C_c, 5 C_c)        Eq. 4 (shared by the 4 directions)
    y_c          = u * sum_dir h_dir(x_c; lam, w)  fused four-direction scan Eq. 5-6, w = norm(w~) (Eq. 2)
    y            = P_up(y_c)                       Linear(C_c, C)            Eq. 6

The three heads are one ``Linear(C_c, 5*C_c)`` whose output is viewed as ``(B, H, W, 5, C_c)``;
u, lambda and the three raw gates are strided views of it (no copies), which the fused scan
accepts because their channel stride is 1. No inner residual, no channel extension and no
attention-template projections: those are the components of the original GSPN layer that
C-GSPN removes (paper Sec. 4.1 "Non-GSPN overhead reduction"; see :mod:`kernels.gspn.layer`).
"""

from __future__ import annotations

import torch
from torch import nn

from kernels.cgspn import cgspn_scan_head, cgspn_scan_reference, cuda_image, head_views, normalize_gates_eager, propagate
from kernels.cgspn.scan import DEFAULT_VARIANT, IMAGE_VARIANT, SCAN_VARIANTS

SCANS = ("fused", "reference")
LAYOUTS = ("auto", "channels-last", "planar")
HEADS = ("u", "lam", "gate_l", "gate_m", "gate_r")  # order of the 5 C_c slices of the fused head output


def latent_width(channels: int, compression: int = 18, latent_channels: int | None = None) -> int:
    """C_c: ``latent_channels`` when given, else ``channels // compression`` (paper Eq. 3)."""
    if latent_channels is not None:
        if latent_channels < 1:
            raise ValueError(f"latent_channels: must be >= 1, got {latent_channels}")
        return latent_channels
    if compression < 1:
        raise ValueError(f"compression: must be >= 1, got {compression}")
    if channels // compression < 1:
        raise ValueError(f"compression: {compression} leaves no latent channel at channels={channels}; allowed: 1..{channels}")
    return channels // compression


class CGSPNLayer(nn.Module):
    """C-GSPN token mixer; ``forward(x: (B, H, W, C)) -> (B, H, W, C)``, any dtype the scan takes.

    Args:
        channels: model width C.
        compression: s, so that ``C_c = channels // s`` (ignored when ``latent_channels`` is given).
        latent_channels: C_c directly.
        scan: ``"fused"`` (the Triton four-direction scan, ``kernels.cgspn.cgspn_scan_head``) or
            ``"reference"`` (the PyTorch loop ``cgspn_scan_reference``, float32 math: the ground
            truth the fused layer is checked against, with the same weights).
        fused_norm: with ``scan="fused"``, True folds the gate normalization (Eq. 2) into the scan;
            False runs it as eager PyTorch (materialized normalized gates per scan axis) followed
            by four single-direction fast scans on the pre-normalized gates, so a benchmark can
            isolate what the fused normalization buys (paper Sec. 4.1, 2.15x).
        variant: the fused scan's variant (``kernels.cgspn.scan.SCAN_VARIANTS``; default ``"auto"``), so
            registered layer/block variants compare scan designs inside the layer.
        layout: where the latent tensors live. ``"channels-last"``: x_c ``(B, H, W, C_c)`` and the head
            ``(B, H, W, 5 C_c)`` from ``Linear`` (the Triton and row CUDA scans read them in place).
            ``"planar"``: x_c ``(C_c, B*H*W)`` and the head ``(5 C_c, B*H*W)`` from the same GEMMs in transposed
            form (no copies; the P_down and head biases added inside the scan), P_up on the transposed planar
            y: the layout the CUDA image scan reads
            (:mod:`kernels.cgspn.cuda_image`: inputs cross DRAM once). ``"auto"`` (default): planar when the
            image scan runs for this input (fused scan and normalization, ``variant="cuda-image"``, 16-bit,
            sm_90 with CuPy, the image fits a block), else channels-last. Measured on an H200 (NOTES.md
            "Round 6"), the planar layer is slower at B=32 (by what its image scan costs over the row scan), hence opt-in.
    """

    def __init__(self, channels: int, compression: int = 18, latent_channels: int | None = None,
                 scan: str = "fused", fused_norm: bool = True, variant: str = DEFAULT_VARIANT, layout: str = "auto"):
        super().__init__()
        if scan not in SCANS:
            raise ValueError(f"scan: {scan!r} is not one of {', '.join(SCANS)}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout: {layout!r} is not one of {', '.join(LAYOUTS)}")
        self.layout = layout
        if variant not in SCAN_VARIANTS:
            raise ValueError(f"variant: {variant!r} is not one of {', '.join(SCAN_VARIANTS)}")
        self.variant = variant
        self.channels = channels
        self.latent = latent_width(channels, compression, latent_channels)
        self.scan = scan
        self.fused_norm = fused_norm
        self.down = nn.Linear(channels, self.latent)  # P_down, Eq. 3
        self.heads = nn.Linear(self.latent, len(HEADS) * self.latent)  # L_u, L_lambda, L_w fused, Eq. 4
        self.up = nn.Linear(self.latent, channels)  # P_up, Eq. 6

    def head_output(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_c, head)``: the compressed input ``(B, H, W, C_c)`` and the fused head output viewed as
        ``(B, H, W, 5, C_c)`` in :data:`HEADS` order."""
        x_c = self.down(x)
        return x_c, self.heads(x_c).unflatten(-1, (len(HEADS), self.latent))

    def propagation_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_c, lam, u, raw gates)`` for the scan: ``(B, H, W, C_c)`` x3 and ``(B, H, W, 3, C_c)``,
        all but x_c strided views of one head output."""
        x_c, head = self.head_output(x)
        return (x_c, *head_views(head))

    def propagate(self, x_c: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        """``y_c = u * sum over the four directions of h`` (Eq. 5-6) with the selected scan, from the
        fused head output (see :meth:`head_output`)."""
        if self.scan == "fused" and self.fused_norm:
            return cgspn_scan_head(x_c, head, variant=self.variant)  # the head's gradient as one tensor
        lam, u, gates = head_views(head)
        if self.scan == "reference":
            return cgspn_scan_reference(x_c, lam, u, gates)
        total = None
        for axis, pair in (("vertical", ("tb", "bt")), ("horizontal", ("lr", "rl"))):
            normalized = normalize_gates_eager(gates, axis)  # eager PyTorch, materialized (Sec. 4.1 baseline)
            for direction in pair:
                h = propagate(x_c, lam, normalized, direction, normalize=False)
                total = h if total is None else total + h
        return u * total

    def planar(self, x: torch.Tensor) -> bool:
        """Whether :meth:`forward` runs the planar layout on ``x`` (see ``layout``)."""
        if self.layout != "auto":
            return self.layout == "planar"
        if self.scan != "fused" or not self.fused_norm or self.variant != IMAGE_VARIANT:
            return False
        B, H, W, _ = x.shape
        return cuda_image.plan_reason(x.device, x.dtype, B, H, W) is None

    def _forward_planar(self, x: torch.Tensor) -> torch.Tensor:
        """The three projections as whole-batch GEMMs in transposed form -- x_c = W_down X^T ``(C_c, B*N)``,
        head = W_heads x_c ``(5 C_c, B*N)``, out = Y^T W_up^T + b_up -- so the latent tensors are planar with
        channels outermost and no tensor is copied or transposed; the P_down and head biases are added inside
        the scan (head bias W_heads b_down + b_heads, x bias b_down), P_up's by the GEMM."""
        B, H, W, C = x.shape
        N, C_c = H * W, self.latent
        x_c = torch.mm(self.down.weight, x.reshape(B * N, C).t())  # (C_c, B*N)
        head = torch.mm(self.heads.weight, x_c)  # (5 C_c, B*N)
        x_v = x_c.view(C_c, B, H, W).permute(1, 2, 3, 0)  # (B, H, W, C_c) views of planar storage
        head_v = head.view(len(HEADS), C_c, B, H, W).permute(2, 3, 4, 0, 1)
        head_bias = torch.addmv(self.heads.bias, self.heads.weight, self.down.bias)
        if self.scan == "fused" and self.fused_norm:
            y = cgspn_scan_head(x_v, head_v, variant=self.variant, bias=head_bias, x_bias=self.down.bias)
        else:
            y = self.propagate(x_v + self.down.bias, head_v + head_bias.view(len(HEADS), C_c))
        y_t = y.permute(3, 0, 1, 2).reshape(C_c, B * N)  # a view when y is planar with channels outermost
        return torch.addmm(self.up.bias, y_t.t(), self.up.weight.t()).view(B, H, W, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] != self.channels:
            raise ValueError(f"x: expected (B, H, W, {self.channels}), got {tuple(x.shape)}")
        if self.planar(x):
            return self._forward_planar(x)
        return self.up(self.propagate(*self.head_output(x)))

    def extra_repr(self) -> str:
        variant = f", variant={self.variant}" if self.variant != DEFAULT_VARIANT else ""
        layout = f", layout={self.layout}" if self.layout != "auto" else ""
        return f"channels={self.channels}, latent={self.latent}, scan={self.scan}, fused_norm={self.fused_norm}{variant}{layout}"


def cgspn_layer_flops(tokens: int, channels: int, latent: int) -> float:
    """Forward FLOPs: the three projections (P_down, heads, P_up) plus the scan's ~4 x 8 per
    latent element (3 gate products, lambda*x, the sum and the u product, per direction)."""
    gemms = 2.0 * tokens * (channels * latent + latent * len(HEADS) * latent + latent * channels)
    return gemms + 4 * 8.0 * tokens * latent
