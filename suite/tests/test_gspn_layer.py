"""The original GSPN layer: direction frames, the stacked propagation against an independent
per-direction reference, every flag's structure (parameter counts), the defaults being the original
layer, and forward/backward of the layer (every flag) and its block on a non-square grid against a
same-weights reference-scan module.

Tiny shapes (C=12, grid 5x7) so the interpreted Triton scans stay fast on CPU.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first triton import

from kernels.cgspn.reference import AXIS_OF, normalize_gates_eager, propagate_reference  # noqa: E402
from kernels.gspn.layer import (  # noqa: E402
    DIRECTIONS,
    GSPNLayer,
    direction_groups,
    from_frame,
    gspn_propagation,
    normalize_gates_original,
    to_frame,
)
from kernels.vit import Block  # noqa: E402
from suite.tests.helpers import assert_rel_rms  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ALL_ON = {"attention_projections": True, "channel_extension": True, "direction_parameters": True, "inner_residual": True,
          "merge_norm": True}
NONE_ON = dict.fromkeys(ALL_ON, False)
REL_RMS = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2}


def assert_close(out, ref, dtype, what):
    assert_rel_rms(out, ref, REL_RMS[dtype], f"{what} ({dtype})")


def test_frames_round_trip_on_a_non_square_grid():
    t = torch.arange(2 * 3 * 5 * 7.0).view(2, 3, 5, 7)
    for k in DIRECTIONS:
        assert torch.equal(from_frame(to_frame(t, k), k), t)
    assert to_frame(t, "tb").shape[-2:] == (7, 5) and to_frame(t, "rl")[..., 0].equal(t[..., -1])
    assert direction_groups(5, 5) == (DIRECTIONS,) and len(direction_groups(5, 7)) == 2


def test_original_normalization_matches_eq2():
    """Channels-first, neighbours along P: equals the channels-last reference for the horizontal axis."""
    g = torch.randn(3, 2, 4, 6, 5, dtype=torch.float64)
    ours = torch.stack(normalize_gates_original(*g), dim=3)  # (B, C, P, 3, L)
    ref = normalize_gates_eager(g.permute(1, 3, 4, 0, 2), "horizontal")  # (B, P, L, 3, C)
    assert_close(ours.permute(0, 2, 4, 3, 1), ref, torch.float64, "normalized gates")
    single = torch.stack(normalize_gates_original(*g[:, :, :, :1]), dim=0)  # P = 1: only g2 exists
    assert_close(single[1], torch.ones_like(single[1]), torch.float64, "g2 with P=1")


@pytest.mark.parametrize("scan", ["original", "fast"])
@pytest.mark.parametrize("grid", [(5, 7), (6, 6)], ids=["5x7", "6x6"])
def test_propagation_matches_per_direction_reference(scan, grid):
    """Each direction output = u * propagate_reference(image-frame x, its lambda, its normalized gates) + x * D."""
    H, W = grid
    B, d = 2, 3
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, d, H, W, generator=gen)
    lam, u, D = (torch.rand(B, 4 * d, H, W, generator=gen) for _ in range(3))
    gates = torch.randn(B, 12 * d, H, W, generator=gen)
    out = gspn_propagation(*(t.to(DEVICE) for t in (x, lam, u, gates)), D=D.to(DEVICE), scan=scan)

    def last(t):
        return t.double().permute(0, 2, 3, 1)

    for k, direction in enumerate(DIRECTIONS):
        own = slice(k * d, (k + 1) * d)
        raw = torch.stack([last(gates[:, j * 4 * d:(j + 1) * 4 * d][:, own]) for j in range(3)], dim=3)
        h = propagate_reference(last(x), last(lam[:, own]), normalize_gates_eager(raw, AXIS_OF[direction]), direction)
        expected = h * last(u[:, own]) + last(x) * last(D[:, own])
        assert_close(out[:, k].permute(0, 2, 3, 1), expected, torch.float32, f"direction {direction}")


def param_count(C, attention_projections=True, channel_extension=True, inner_residual=True, direction_parameters=True,
                merge_norm=True, d_state=16):
    """The documented structure, counted by hand."""
    d = 2 * C if channel_extension else C
    sets = 4 if direction_parameters else 1  # parameter sets: one per direction or one shared
    n = d * d_state + d_state * 3 * sets * d + 2 * d_state * sets * d + d * C  # down, gates, lambda + u, out_proj
    n += (4 + 2 * d + 2 * d) if merge_norm else 0  # merge conv, LayerNorm, GRN
    n += d_state * sets * d if inner_residual else 0  # D head
    n += (C * 2 * C + 2 * C * 9 + 2 * C) if channel_extension else 0  # in_proj + depthwise 3x3 (bias)
    n += (3 * C * C + 3 * C + C * C + C + C * d_state) if attention_projections else 0  # qkv, to_out, qk_down
    return n


@pytest.mark.parametrize("flags", [
    {},
    {"attention_projections": False},
    {"attention_projections": False, "inner_residual": False},
    {"attention_projections": False, "inner_residual": False, "channel_extension": False},
    {"channel_extension": False},
    {"direction_parameters": False},
    {"merge_norm": False},
    {"direction_parameters": False, "inner_residual": False},
    NONE_ON,
], ids=["all", "no-proj", "no-proj-residual", "no-proj-residual-ext", "no-ext", "shared-params", "sum-merge",
        "shared-params-no-residual", "none"])
def test_flags_change_the_structure(flags):
    layer = GSPNLayer(12, **flags)
    assert sum(p.numel() for p in layer.parameters()) == param_count(12, **flags)
    d = layer.d_inner
    assert d == (12 if flags.get("channel_extension") is False else 24)
    assert hasattr(layer, "qkv") == flags.get("attention_projections", True)
    assert hasattr(layer, "d_conv") == flags.get("inner_residual", True)
    assert layer.w_conv_up.out_channels == (12 * d if flags.get("direction_parameters", True) else 3 * d)
    assert all(hasattr(layer, m) == flags.get("merge_norm", True) for m in ("m_conv", "out_norm", "grn"))
    assert layer.out_proj.in_features == d  # kept with every flag combination


def test_defaults_are_the_original_layer():
    """Defaults = every component on: the parameters are created in the original order with the original
    shapes (so a seeded initialization is unchanged), and a seeded default layer equals one with every
    flag passed explicitly, bit for bit, on a non-square grid."""
    C, d, s = 12, 24, 16
    expected = [("qkv.weight", (3 * C, C)), ("qkv.bias", (3 * C,)), ("qk_down.weight", (s, C)), ("to_out.weight", (C, C)),
                ("to_out.bias", (C,)), ("in_proj.weight", (d, C)), ("dwconv.weight", (d, 1, 3, 3)), ("dwconv.bias", (d,)),
                ("x_conv_down.weight", (s, d, 1, 1)), ("w_conv_up.weight", (12 * d, s, 1, 1)),
                ("l_conv_up.weight", (4 * d, s, 1, 1)), ("u_conv_up.weight", (4 * d, s, 1, 1)),
                ("d_conv.weight", (4 * d, s, 1, 1)),
                ("m_conv.weight", (1, 4, 1, 1)), ("out_norm.weight", (d,)), ("out_norm.bias", (d,)), ("grn.gamma", (d,)),
                ("grn.beta", (d,)), ("out_proj.weight", (C, d))]
    assert [(n, tuple(p.shape)) for n, p in GSPNLayer(C).named_parameters()] == expected
    x = torch.randn(2, 5, 7, C)
    outs = []
    for flags in ({}, ALL_ON):
        torch.manual_seed(0)
        layer = GSPNLayer(C, scan="reference", **flags)
        with torch.no_grad():
            layer.grn.gamma.normal_()
            outs.append(layer(x))
    assert torch.equal(outs[0], outs[1])


def test_shared_parameters_broadcast_to_the_four_directions():
    """One shared set (component 3 off) = the same set repeated for each of the four directions."""
    B, d, H, W = 2, 3, 5, 7
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(B, d, H, W, generator=gen)
    lam, u, D = (torch.rand(B, d, H, W, generator=gen) for _ in range(3))
    gates = torch.randn(B, 3 * d, H, W, generator=gen)
    shared = gspn_propagation(x, lam, u, gates, D=D, scan="reference")
    repeated = gspn_propagation(x, lam.repeat(1, 4, 1, 1), u.repeat(1, 4, 1, 1),
                                gates.view(B, 3, 1, d, H, W).repeat(1, 1, 4, 1, 1, 1).view(B, 12 * d, H, W),
                                D=D.repeat(1, 4, 1, 1), scan="reference")
    assert torch.equal(shared, repeated)
    with pytest.raises(ValueError, match=r"gates: expected"):
        gspn_propagation(x, lam, u, gates[:, :2 * d], scan="reference")


def test_minimal_layer_is_a_summed_propagation():
    """Every component off: ``out_proj(sum_dir u * h_dir)`` with one shared parameter set, no merge
    conv / LayerNorm / GRN, assembled here from the layer's own convolutions."""
    torch.manual_seed(2)
    layer = GSPNLayer(8, scan="reference", **NONE_ON)
    x = torch.randn(2, 5, 7, 8)
    e = x.permute(0, 3, 1, 2)
    p = layer.x_conv_down(e)
    h = gspn_propagation(e, layer.l_conv_up(p), layer.u_conv_up(p), layer.w_conv_up(p), scan="reference")
    expected = layer.out_proj(h.sum(dim=1).permute(0, 2, 3, 1))
    assert_close(layer(x), expected, torch.float32, "minimal layer")


def run_against_reference(module, dtype, shape):
    """Forward + backward of ``module`` vs a same-weights copy on the reference scan (float32)."""
    reference = copy.deepcopy(module).float()
    for m in reference.modules():
        if isinstance(m, GSPNLayer):
            m.scan = "reference"
    module = module.to(DEVICE, dtype)
    reference = reference.to(DEVICE)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=gen).to(DEVICE)
    xa, xr = x.to(dtype).clone().requires_grad_(), x.clone().requires_grad_()
    out, ref = module(xa), reference(xr)
    assert out.shape == shape and torch.isfinite(out).all()
    assert_close(out, ref, dtype, "output")
    grad = torch.randn(shape, generator=gen).to(DEVICE)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    assert_close(xa.grad, xr.grad, dtype, "dx")
    for (name, p), q in zip(module.named_parameters(), reference.parameters(), strict=True):
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: no finite gradient"
        assert_close(p.grad, q.grad, dtype, f"d{name}")


@pytest.mark.parametrize("scan,chunk,dtype", [
    ("original", None, torch.float32),
    ("original", 3, torch.bfloat16),
    ("fast", None, torch.float32),
], ids=["original-fp32", "chunk3-bf16", "fast-fp32"])
def test_layer_forward_backward(scan, chunk, dtype):
    torch.manual_seed(0)
    layer = GSPNLayer(8, scan=scan, chunk=chunk)
    with torch.no_grad():
        layer.grn.gamma.normal_()  # GRN starts as identity; make its gradient path non-trivial
    run_against_reference(layer, dtype, (2, 4, 5, 8))


@pytest.mark.parametrize("scan,flags", [
    ("original", {"direction_parameters": False}),
    ("original", {"merge_norm": False}),
    ("original", NONE_ON),
    ("fast", NONE_ON),
], ids=["shared-params", "sum-merge", "none", "fast-none"])
def test_new_flags_forward_backward(scan, flags):
    """Components 3 and 5 off, alone and with everything else off, on a 5x7 grid."""
    torch.manual_seed(5)
    layer = GSPNLayer(8, scan=scan, **flags)
    if layer.merge_norm:
        with torch.no_grad():
            layer.grn.gamma.normal_()
    run_against_reference(layer, torch.float32, (2, 5, 7, 8))


def test_ablated_block_forward_backward():
    torch.manual_seed(1)
    layer = GSPNLayer(8, attention_projections=False, inner_residual=False, channel_extension=False)
    run_against_reference(Block(layer, 8, 20), torch.float32, (2, 4, 5, 8))


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="scan"):
        GSPNLayer(12, scan="cuda")
    with pytest.raises(ValueError, match="chunk"):
        GSPNLayer(12, chunk=0)
    with pytest.raises(ValueError, match="chunk: the fast scan"):
        GSPNLayer(8, scan="fast", chunk=2)(torch.randn(1, 4, 4, 8, device=DEVICE))
    with pytest.raises(ValueError, match=r"x: expected \(B, H, W, 12\)"):
        GSPNLayer(12)(torch.randn(1, 4, 4, 8))


def test_registry_entries():
    """Every variant at its levels; the sublayer and an ablated layer build, run and pass their own check."""
    from kernels import registry
    from kernels.gspn.entries import VARIANTS
    from kernels.params import Params
    from suite.measure import check_correctness

    for name, (_, _, levels) in VARIANTS.items():
        assert registry.levels_of(name) == list(levels)
    measured = {"gspn-original": {}, "gspn-original-no-proj": {"attention_projections": False}}  # committed results
    for name, off in measured.items():
        for scan_name in (name, name.replace("gspn-original", "gspn-original-fast")):
            flags = VARIANTS[scan_name][1]
            assert {k: v for k, v in flags.items() if not v} == off and "merge_norm" not in flags, scan_name
    params = Params(batch=2, channels=8, grid_h=4, grid_w=5)
    for name, level in (("gspn-original", "sublayer"), ("gspn-original-no-proj-residual-ext", "layer"),
                        ("gspn-original-no-proj-residual-ext-dirparams-merge", "layer")):
        impl = registry.get(name, level)
        assert impl.unavailable(params, "float32", DEVICE, "fwd") is None
        result = check_correctness(impl.build(params, torch.float32, torch.device(DEVICE), "fwd"), "float32")
        assert result["passed"], result
    fast = registry.get("gspn-original-fast", "layer")
    assert "chunk" in fast.unavailable(params.replace(chunk=2), "float32", DEVICE, "fwd")
