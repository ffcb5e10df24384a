"""Attention layers, blocks and networks, and the MLP half.

The layer is checked against its definition written out with functional ops in float64; blocks
with one set of weights must agree whichever attention backend runs (on CPU: explicit math vs
SDPA's CPU FlashAttention-style kernel through a tile that covers the whole grid; on GPU: math,
FlashAttention, cuDNN and memory-efficient); ``vit-mlp-half`` must be exactly the second half of
``kernels.vit.Block``; the registry entries must match their own references forward and backward.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from kernels import registry
from kernels.attention import AttentionLayer, backend_unavailable, set_variant
from kernels.attention.entries import attention_layer_flops
from kernels.mlp_half import MLPHalf
from kernels.params import Params
from kernels.vit import Block
from kernels.workloads import block_flops
from suite.measure import compare

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="FlashAttention / cuDNN / mem-efficient SDPA backends need a CUDA GPU")
C, HEADS, HIDDEN = 48, 2, 40  # head_dim 24


def manual_attention_layer(layer: AttentionLayer, x: torch.Tensor) -> torch.Tensor:
    """The layer written out: qkv projection, head split, softmax(QK^T/sqrt(d))V, merge, proj."""
    x, wq, bq, wo, bo = (t.double() for t in (x, layer.qkv.weight, layer.qkv.bias, layer.proj.weight, layer.proj.bias))
    b, h, w, c = x.shape
    d = c // layer.heads
    q, k, v = F.linear(x.reshape(b, h * w, c), wq, bq).split(c, dim=-1)
    q, k, v = (t.reshape(b, h * w, layer.heads, d).transpose(1, 2) for t in (q, k, v))
    o = torch.softmax(q @ k.transpose(-2, -1) / d**0.5, dim=-1) @ v
    return F.linear(o.transpose(1, 2).reshape(b, h, w, c), wo, bo)


@pytest.mark.parametrize("grid", [(5, 7), (3, 3)], ids=["5x7", "3x3"])
def test_attention_layer_matches_definition(grid):
    torch.manual_seed(0)
    layer = AttentionLayer(C, HEADS, "math").double()
    x = torch.randn(2, *grid, C, dtype=torch.float64)
    out = layer(x)
    assert out.shape == x.shape
    assert compare(out, manual_attention_layer(layer, x))["rel_rms"] <= 1e-10


def test_attention_layer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="heads=5"):
        AttentionLayer(48, 5)
    with pytest.raises(ValueError, match="allowed: math, flash"):
        AttentionLayer(48, 2, "fast")


def _block(variant: str, tile: int = 27) -> Block:
    torch.manual_seed(0)
    return Block(AttentionLayer(C, HEADS, variant, tile), C, HIDDEN)


def test_cpu_blocks_with_shared_weights_agree_across_backends():
    """Explicit math vs SDPA's CPU flash kernel (tiled-flash with a tile covering the grid is
    full attention): same weights, same input, same output and same gradients."""
    math_block = _block("math", tile=8).double()
    flash_block = set_variant(copy.deepcopy(math_block), "tiled-flash")
    x = torch.randn(2, 5, 7, C, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    out_math, out_flash = math_block(x), flash_block(x2)
    assert compare(out_flash, out_math)["rel_rms"] <= 1e-10
    grad = torch.randn_like(out_math)
    out_math.backward(grad)
    out_flash.backward(grad)
    assert compare(x2.grad, x.grad)["rel_rms"] <= 1e-10
    for (name, p), p2 in zip(math_block.named_parameters(), flash_block.parameters(), strict=True):
        assert compare(p2.grad, p.grad)["rel_rms"] <= 1e-10, name


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_gpu_blocks_with_shared_weights_agree_across_backends(dtype):
    reference = _block("reference").cuda()  # fp32 chunked math attention, same weights
    x = torch.randn(2, 9, 11, C, device="cuda")
    with torch.no_grad():
        expected = reference(x)
    ran = []
    for variant in ("math", "flash", "cudnn", "mem-efficient"):
        if backend_unavailable(variant, dtype, C // HEADS, "cuda"):
            continue
        block = set_variant(copy.deepcopy(reference), variant).to(dtype)
        with torch.no_grad():
            out = block(x.to(dtype))
        tol = registry.TOLERANCE[str(dtype).removeprefix("torch.")]
        assert compare(out, expected)["rel_rms"] <= tol, variant
        ran.append(variant)
    assert len(ran) >= 2, f"only {ran} could run in {dtype}"


def test_mlp_half_is_the_second_half_of_the_block():
    """Block(x) = y + MLPHalf(y)-residual where y = x + mixer(LN(x)), with the block's weights."""
    block = _block("math").double()
    half = MLPHalf(C, HIDDEN).double()
    half.load_state_dict({k: v for k, v in block.state_dict().items() if k.startswith(("norm2.", "mlp."))})
    x = torch.randn(2, 4, 6, C, dtype=torch.float64)
    y = x + block.mixer(block.norm1(x))
    assert compare(half(y), block(x))["rel_rms"] <= 1e-12
    ln = F.layer_norm(y, (C,), half.norm2.weight, half.norm2.bias, eps=1e-6)
    mlp = F.linear(F.gelu(F.linear(ln, half.mlp.fc1.weight, half.mlp.fc1.bias), approximate="tanh"),
                   half.mlp.fc2.weight, half.mlp.fc2.bias)
    assert compare(half(y), y + mlp)["rel_rms"] <= 1e-12


ENTRY = Params(batch=1, channels=C, heads=HEADS, grid_h=5, grid_w=6, tile=4, depth=2, mlp_hidden=HIDDEN)
ENTRY_CASES = [
    pytest.param("attention-math", "layer", "float64", id="math-layer-fp64"),
    pytest.param("attention-math", "block", "bfloat16", id="math-block-bf16"),
    pytest.param("attention-math", "network", "float32", id="math-network-fp32"),
    pytest.param("attention-tiled-flash", "layer", "float32", id="tiled-layer-fp32"),
    pytest.param("attention-tiled-flash", "block", "float64", id="tiled-block-fp64"),
    pytest.param("attention-tiled-flash", "network", "bfloat16", id="tiled-network-bf16"),
    pytest.param("attention-flash", "block", "bfloat16", marks=needs_cuda, id="flash-block-bf16"),
    pytest.param("attention-cudnn", "network", "bfloat16", marks=needs_cuda, id="cudnn-network-bf16"),
    pytest.param("attention-mem-efficient", "block", "float32", marks=needs_cuda, id="mem-efficient-block-fp32"),
    pytest.param("vit-mlp-half", "block", "float32", id="mlp-half-fp32"),
]


@pytest.mark.parametrize("name, level, dtype", ENTRY_CASES)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_module_entries_match_their_references(name, level, dtype, mode):
    device = "cuda" if CUDA else "cpu"
    impl = registry.get(name, level)
    why = impl.unavailable(ENTRY, dtype, device, mode)
    if why:
        pytest.skip(why)
    work = impl.build(ENTRY, registry.DTYPES[dtype], torch.device(device), mode)
    out = work.fn()
    assert out.shape == (1, 5, 6, C) and out.dtype == registry.DTYPES[dtype]
    err = compare(out, work.reference())["rel_rms"]
    assert err <= registry.TOLERANCE[dtype], f"relative RMS {err:.3g}"
    if mode == "fwd+bwd":
        out.float().sum().backward()
        assert work.parameters and all(p.grad is not None and torch.isfinite(p.grad).all() for p in work.parameters)


def test_block_flops_count_projections_attention_and_mlp():
    p = Params(batch=2, channels=C, heads=HEADS, grid=5, mlp_hidden=HIDDEN)
    tokens = 2 * 25
    attention = 4 * 2 * HEADS * 25 * 25 * (C // HEADS)
    projections = 2 * tokens * C * 4 * C
    assert attention_layer_flops("math", p) == projections + attention
    work = registry.get("attention-math", "block").build(p, torch.float32, torch.device("cpu"), "fwd")
    assert work.flops == block_flops(p, projections + attention) == projections + attention + 4 * tokens * C * HIDDEN
