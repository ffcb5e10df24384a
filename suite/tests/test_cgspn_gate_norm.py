"""Gate normalization (paper Eq. 2): the fused Triton kernel against eager PyTorch in float64.

Per-axis boundary rule (vertical scans drop l at j=0 and r at j=W-1, horizontal ones at i=0 and
i=H-1), every output written (NaN-poisoned allocations), strided layer views, saturated and
all-equal logits, 1x1 / 1xW / Hx1 grids, and the backward of the fused function.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are defined

from kernels.cgspn import normalize_gates, normalize_gates_eager, normalize_gates_fused  # noqa: E402
from suite.tests.helpers import poison_empty, relative_rms  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {
    torch.float32: 1e-6,
    torch.float16: 2 * torch.finfo(torch.float16).eps,
    torch.bfloat16: 2 * torch.finfo(torch.bfloat16).eps,
}


@pytest.fixture(autouse=True)
def nan_poisoned_empty(monkeypatch):
    poison_empty(monkeypatch)


def raw_gates(shape, dtype=torch.float32, seed=0) -> torch.Tensor:
    B, H, W, C = shape
    return (3 * torch.randn(B, H, W, 3, C, generator=torch.Generator().manual_seed(seed))).to(DEVICE, dtype)


def test_eager_boundary_rule_by_hand():
    """At the boundary of the perpendicular axis the missing neighbour leaves the sum."""
    g = raw_gates((1, 3, 4, 2), torch.float64)
    s = torch.sigmoid(g)
    v = normalize_gates_eager(g, "vertical")
    h = normalize_gates_eager(g, "horizontal")
    # vertical: j=0 sums m+r, j=W-1 sums l+m, inside l+m+r
    torch.testing.assert_close(v[:, :, 0], s[:, :, 0] / (s[:, :, 0, 1] + s[:, :, 0, 2]).unsqueeze(2))
    torch.testing.assert_close(v[:, :, -1], s[:, :, -1] / (s[:, :, -1, 0] + s[:, :, -1, 1]).unsqueeze(2))
    torch.testing.assert_close(v[:, :, 1], s[:, :, 1] / s[:, :, 1].sum(2, keepdim=True))
    # horizontal: the same on i
    torch.testing.assert_close(h[:, 0], s[:, 0] / (s[:, 0, :, 1] + s[:, 0, :, 2]).unsqueeze(2))
    torch.testing.assert_close(h[:, -1], s[:, -1] / (s[:, -1, :, 0] + s[:, -1, :, 1]).unsqueeze(2))


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 1, 6, 3), (1, 5, 1, 3), (3, 5, 7, 40)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("axis", ["vertical", "horizontal"])
def test_fused_matches_eager_float64(shape, axis):
    g = raw_gates(shape)
    out = normalize_gates_fused(g, axis)
    assert out.shape == g.shape and out.dtype == g.dtype
    err = relative_rms(out, normalize_gates_eager(g.double(), axis))
    assert err <= TOLERANCE[torch.float32], f"{axis}: relative RMS {err:.2e}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_fused_both_axes_low_precision(dtype):
    g = raw_gates((2, 4, 6, 24), dtype)
    gv, gh = normalize_gates_fused(g, "both")
    for axis, out in (("vertical", gv), ("horizontal", gh)):
        err = relative_rms(out, normalize_gates_eager(g.double(), axis))
        assert err <= TOLERANCE[dtype], f"{axis}: relative RMS {err:.2e}"


@pytest.mark.parametrize("fill", [30.0, -30.0, 0.0], ids=["saturated-high", "below-clamp", "all-equal"])
def test_fused_adversarial_logits(fill):
    g = torch.full((1, 3, 4, 3, 5), fill, device=DEVICE)
    g[..., 0, 0] = -fill  # mix in the opposite saturation
    gv, gh = normalize_gates_fused(g, "both")
    for axis, out in (("vertical", gv), ("horizontal", gh)):
        err = relative_rms(out, normalize_gates_eager(g.double(), axis))
        assert err <= TOLERANCE[torch.float32], f"{axis}: relative RMS {err:.2e}"


def test_fused_reads_strided_head_view():
    head = torch.randn(2, 3, 5, 5, 7, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    g = head[..., 2:5, :]  # the gates of the C-GSPN layer's fused head output
    err = relative_rms(normalize_gates_fused(g, "horizontal"), normalize_gates_eager(g.double(), "horizontal"))
    assert err <= TOLERANCE[torch.float32]


def test_fused_backward_matches_eager():
    g = raw_gates((1, 4, 3, 5))
    dv, dh = (torch.randn(g.shape, generator=torch.Generator().manual_seed(s)).to(DEVICE) for s in (2, 3))
    ours = g.clone().requires_grad_(True)
    gv, gh = normalize_gates_fused(ours, "both")
    torch.autograd.backward([gv, gh], [dv, dh])
    ref = g.double().requires_grad_(True)
    torch.autograd.backward([normalize_gates_eager(ref, "vertical"), normalize_gates_eager(ref, "horizontal")],
                            [dv.double(), dh.double()])
    err = relative_rms(ours.grad, ref.grad)
    assert err <= TOLERANCE[torch.float32], f"dgates relative RMS {err:.2e}"


def test_gradcheck_eager_float64():
    g = raw_gates((1, 3, 4, 2), torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: normalize_gates_eager(t, "vertical"), (g,))


def test_dispatch_and_errors():
    g = raw_gates((1, 2, 3, 4))
    torch.testing.assert_close(normalize_gates(g, "vertical"), normalize_gates_eager(g, "vertical"))
    with pytest.raises(ValueError, match="axis"):
        normalize_gates_fused(g, "diagonal")
    with pytest.raises(ValueError, match=r"\(B, H, W, 3, C\)"):
        normalize_gates_fused(g[..., :2, :], "vertical")
