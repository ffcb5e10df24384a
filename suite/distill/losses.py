"""Distillation losses of the paper (Sec. 4.2-4.3, Appendix C.3).

Features are channels-last ``(B, H, W, C)`` and are compared in float32 whatever the autocast
dtype, so bf16 rounding does not leak into the KL term's log-probabilities.

* Stage 1 (Eq. 9): ``MSE(F_s, F_t)`` per student propagation sublayer.
* Stage 2 (Eq. 11-12): ``L = alpha * L_PP + beta * L_PB`` with
  ``L_X = MSE(V_hat_s, V_t) + lambda_X * KL(P(V_hat_s) || P(V_t))``, ``P`` the token-wise softmax:
  every token's C-vector becomes a distribution over channels. KL is taken in the direction the
  paper writes (student first), averaged over tokens.
* Curriculum (Eq. 13-14): the same objective against the previous stage's features,
  bilinearly upsampled to the new token grid.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def feature_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements, in float32."""
    return F.mse_loss(student.float(), teacher.float())


def tokenwise_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``KL(P(s) || P(t))`` with ``P`` the softmax over channels of each token, mean over tokens."""
    log_ps = F.log_softmax(student.float(), dim=-1)
    log_pt = F.log_softmax(teacher.float(), dim=-1)
    return (log_ps.exp() * (log_ps - log_pt)).sum(-1).mean()


def tap_loss(student: torch.Tensor, teacher: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``MSE + kl_weight * KL`` at one tap; returns (loss, mse, kl)."""
    mse = feature_mse(student, teacher)
    kl = tokenwise_kl(student, teacher)
    return mse + kl_weight * kl, mse, kl


def upsample_tokens(features: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of a ``(B, h, w, C)`` token grid to ``(B, height, width, C)`` (paper Eq. 13)."""
    if features.shape[1:3] == (height, width):
        return features
    x = features.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1)


def token_cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of the cosine similarity of the C-vectors (evaluation metric)."""
    return F.cosine_similarity(student.float(), teacher.float(), dim=-1).mean()
