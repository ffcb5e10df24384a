"""The hybrid network (paper Sec. 5.3): which blocks are attention, and a tiny forward/backward
against its reference (same weights: math attention and the C-GSPN PyTorch scan)."""

from __future__ import annotations

import importlib
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # C-GSPN Triton kernels on CPU; must precede their import

from kernels import registry  # noqa: E402
from kernels.attention import AttentionLayer  # noqa: E402
from kernels.hybrid import CGSPN_LAYER_MODULE, hybrid_layout, hybrid_network  # noqa: E402
from kernels.params import Params  # noqa: E402
from kernels.vit import attention_positions  # noqa: E402
from suite.measure import compare  # noqa: E402

try:
    CGSPNLayer = importlib.import_module(CGSPN_LAYER_MODULE).CGSPNLayer
    MISSING = None
except (ImportError, AttributeError) as err:
    CGSPNLayer, MISSING = None, f"{CGSPN_LAYER_MODULE}.CGSPNLayer cannot be imported yet: {err}"
needs_cgspn = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
TINY = Params(batch=1, channels=36, heads=3, grid_h=4, grid_w=5, depth=3, attn_blocks=1, mlp_hidden=40, compression=6)


@pytest.mark.parametrize("depth, attn_blocks, expected", [
    (27, 3, [8, 17, 26]),
    (27, 1, [26]),
    (5, 2, [1, 4]),
    (4, 4, [0, 1, 2, 3]),
    (6, 0, []),
])
def test_layout_places_attention_blocks_evenly(depth, attn_blocks, expected):
    layout = hybrid_layout(depth, attn_blocks)
    assert len(layout) == depth
    assert [i for i, kind in enumerate(layout) if kind == "attention"] == expected == attention_positions(depth, attn_blocks)
    assert layout.count("cgspn") == depth - attn_blocks


def test_layout_rejects_more_attention_blocks_than_depth():
    with pytest.raises(ValueError, match="attn_blocks"):
        hybrid_layout(3, 4)


@needs_cgspn
def test_network_holds_attention_at_the_layout_positions():
    net = hybrid_network(TINY, "math")
    kinds = ["attention" if isinstance(b.mixer, AttentionLayer) else "cgspn" for b in net.blocks]
    assert kinds == hybrid_layout(3, 1) == ["cgspn", "cgspn", "attention"]
    assert all(isinstance(b.mixer, CGSPNLayer) for b, k in zip(net.blocks, kinds, strict=True) if k == "cgspn")
    assert {b.mixer.latent for b, k in zip(net.blocks, kinds, strict=True) if k == "cgspn"} == {36 // 6}


@needs_cgspn
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_hybrid_entry_matches_reference(mode):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    impl = registry.get("hybrid", "network")
    why = impl.unavailable(TINY, "float32", device, mode)
    assert why is None, why
    work = impl.build(TINY, torch.float32, torch.device(device), mode)
    out = work.fn()
    assert out.shape == (1, 4, 5, 36)
    assert compare(out, work.reference())["rel_rms"] <= registry.TOLERANCE["float32"]
    assert "attention blocks [2] of 3" in work.backend_detail
    if device == "cpu":
        assert "attention-math" in work.backend_detail
    if mode == "fwd+bwd":
        out.sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in work.parameters)


def test_hybrid_requires_names_a_bad_compression():
    impl = registry.get("hybrid", "network")
    why = impl.unavailable(TINY.replace(compression=7), "float32", "cpu", "fwd")
    assert why is not None and ("compression" in why or CGSPN_LAYER_MODULE in why)
