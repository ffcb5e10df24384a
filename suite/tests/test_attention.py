"""Attention sublayers: every backend against math attention, tiled attention against math run
tile by tile, the chunked reference, the registry entries and the reasons a backend cannot run.

Shapes are tiny and not powers of two (N = 35, 37, 40; head_dim 24) so CPU CI stays fast and
masked/edge paths are exercised; GPU-only backends skip on CPU with the reason. Errors are the
relative RMS of :func:`suite.measure.compare` (NaN fails) and, for bf16, also elementwise
``|out - ref| <= atol + rtol * |ref|`` with rtol 1e-2 / atol 2e-2.
"""

from __future__ import annotations

import pytest
import torch

from kernels import registry
from kernels.attention import (
    attention_flops,
    backend_unavailable,
    fastest_backend,
    grid_attention,
    math_attention,
    reference_attention,
    resolve,
    tiled_attention,
    tiled_flops,
)
from kernels.attention.tiled import bands, tile_shapes
from kernels.params import Params
from suite.measure import compare

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="FlashAttention / cuDNN / mem-efficient SDPA backends need a CUDA GPU")
REL_RMS = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}
BF16_RTOL, BF16_ATOL = 1e-2, 2e-2


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "output") -> None:
    """Relative RMS within the dtype's tolerance (fails on NaN); bf16 also elementwise."""
    err = compare(out, ref)["rel_rms"]
    assert err <= REL_RMS[dtype], f"{what}: relative RMS error {err:.3g} > {REL_RMS[dtype]:.1g} ({dtype})"
    if dtype == torch.bfloat16:
        o, r = out.detach().double(), ref.detach().double().to(out.device)
        bad = ((o - r).abs() > BF16_ATOL + BF16_RTOL * r.abs()).sum().item()
        assert bad == 0, f"{what}: {bad} elements outside rtol={BF16_RTOL}, atol={BF16_ATOL}"


def rand_qkv(shape, dtype, device="cpu", seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype) for _ in range(3)]


def exact_attention(q, k, v):
    """softmax(QK^T / sqrt(d)) V in float64 straight from the definition (differentiable)."""
    q, k, v = (t.double() for t in (q, k, v))
    return torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1) @ v


def per_tile_attention(q, k, v, grid, tile):
    """Math attention on each tile separately, by slicing the grid in a Python loop: the
    independent ground truth of the batched, stitched tiled attention."""
    b, heads, n, d = q.shape
    h, w = grid
    q5, k5, v5 = (t.reshape(b, heads, h, w, d) for t in (q, k, v))
    out = torch.zeros(b, heads, h, w, d, dtype=torch.float64, device=q.device)
    for r0 in range(0, h, tile):
        for c0 in range(0, w, tile):
            sl = (slice(None), slice(None), slice(r0, r0 + tile), slice(c0, c0 + tile))
            th, tw = q5[sl].shape[2:4]
            flat = [t[sl].reshape(b, heads, th * tw, d) for t in (q5, k5, v5)]
            out[sl] = exact_attention(*flat).reshape(b, heads, th, tw, d)
    return out.reshape(b, heads, n, d)


# ---- backends against the definition ---------------------------------------------------------
SHAPES = [(2, 3, 37, 24), (1, 2, 40, 72)]
BACKEND_CASES = [
    pytest.param("math", torch.float64, id="math-fp64"),
    pytest.param("math", torch.float32, id="math-fp32"),
    pytest.param("math", torch.bfloat16, id="math-bf16"),
    pytest.param("flash", torch.bfloat16, marks=needs_cuda, id="flash-bf16"),
    pytest.param("flash", torch.float16, marks=needs_cuda, id="flash-fp16"),
    pytest.param("cudnn", torch.bfloat16, marks=needs_cuda, id="cudnn-bf16"),
    pytest.param("mem-efficient", torch.float32, marks=needs_cuda, id="mem-efficient-fp32"),
    pytest.param("mem-efficient", torch.bfloat16, marks=needs_cuda, id="mem-efficient-bf16"),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend, dtype", BACKEND_CASES)
def test_backend_forward_and_backward_match_definition(backend, dtype, shape):
    device = "cuda" if backend != "math" else ("cuda" if CUDA else "cpu")
    why = backend_unavailable(backend, dtype, shape[-1], device)
    if why:
        pytest.skip(why)
    q, k, v = (t.requires_grad_(True) for t in rand_qkv(shape, dtype, device))
    out = resolve(backend, device).fn(q, k, v)
    assert out.dtype == dtype and out.shape == q.shape
    q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    ref = exact_attention(q64, k64, v64)
    assert_close(out, ref, dtype, f"{backend} forward")
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    for name, t, t64 in (("dq", q, q64), ("dk", k, k64), ("dv", v, v64)):
        assert_close(t.grad, t64.grad, dtype, f"{backend} {name}")


@pytest.mark.parametrize("max_scores", [10**9, 37 * 5, 1], ids=["one-chunk", "row-chunks", "one-row"])
def test_reference_attention_chunking_is_exact(max_scores):
    """The chunked fp64 reference equals the unchunked definition whatever the chunking."""
    q, k, v = rand_qkv((2, 3, 37, 24), torch.float32)
    out = reference_attention(q, k, v, max_scores=max_scores)
    assert out.dtype == torch.float64
    assert_close(out, exact_attention(q, k, v), torch.float64, "chunked reference")


# ---- tiled attention --------------------------------------------------------------------------
TILED_CASES = [  # (grid H, W, tile)
    pytest.param((6, 9), 3, id="6x9-tile3-divisible"),
    pytest.param((7, 5), 3, id="7x5-tile3-ragged-nonsquare"),
    pytest.param((4, 4), 5, id="4x4-tile5-larger-than-grid"),
    pytest.param((8, 3), 4, id="8x3-tile4-ragged-width"),
]


@pytest.mark.parametrize("inner", ["math", "flash-cpu"])
@pytest.mark.parametrize("grid, tile", TILED_CASES)
def test_tiled_matches_math_per_tile(grid, tile, inner):
    """Forward and all input gradients of the batched/stitched tiled path equal math attention
    run tile by tile, including ragged edge tiles and non-square grids."""
    kernel = math_attention if inner == "math" else resolve("flash", "cpu").fn  # CPU FlashAttention-style SDPA
    shape = (2, 3, grid[0] * grid[1], 24)
    q, k, v = (t.requires_grad_(True) for t in rand_qkv(shape, torch.float64))
    out = tiled_attention(q, k, v, grid, tile, kernel)
    q64, k64, v64 = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    ref = per_tile_attention(q64, k64, v64, grid, tile)
    assert_close(out, ref, torch.float64, "tiled forward")
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out.backward(grad)
    ref.backward(grad)
    for name, t, t64 in (("dq", q, q64), ("dk", k, k64), ("dv", v, v64)):
        assert_close(t.grad, t64.grad, torch.float64, f"tiled {name}")


def test_tiled_differs_from_full_attention_when_grid_exceeds_tile():
    """Tiling is a real restriction: tokens in different tiles do not see each other."""
    q, k, v = rand_qkv((1, 2, 36, 8), torch.float64)
    tiled = tiled_attention(q, k, v, (6, 6), 3, math_attention)
    assert compare(tiled, exact_attention(q, k, v))["rel_rms"] > 1e-3


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_tiled_flash_on_gpu_matches_math_per_tile(dtype):
    grid, tile = (29, 31), 27  # ragged on both axes at the paper's tile size
    why = backend_unavailable("flash", dtype, 72, "cuda")
    if why:
        pytest.skip(why)
    q, k, v = rand_qkv((2, 2, grid[0] * grid[1], 72), dtype, "cuda")
    out = grid_attention("tiled-flash", "cuda", tile).fn(q, k, v, grid)
    assert_close(out, per_tile_attention(q, k, v, grid, tile), dtype, "tiled flash (GPU)")


def test_bands_and_tile_shapes():
    assert bands(7, 3) == [(0, 6, 3), (6, 7, 1)]
    assert bands(6, 3) == [(0, 6, 3)]
    assert bands(2, 5) == [(0, 2, 2)]
    # 7x5 grid, tile 3: 2x1 full tiles, 2 right-edge 3x2, 1 bottom 1x3, 1 corner 1x2
    assert tile_shapes((7, 5), 3) == [(2, 3, 3), (2, 3, 2), (1, 1, 3), (1, 1, 2)]
    with pytest.raises(ValueError, match="tile"):
        bands(5, 0)


@pytest.mark.parametrize("grid, tile", [((7, 5), 3), ((147, 147), 27), ((27, 27), 27)])
def test_tiled_flops_sum_over_tiles(grid, tile):
    b, heads, d = 2, 16, 72
    by_loop = sum(attention_flops(b, heads, min(tile, grid[0] - r) * min(tile, grid[1] - c), d)
                  for r in range(0, grid[0], tile) for c in range(0, grid[1], tile))
    assert tiled_flops(b, heads, d, grid, tile) == by_loop
    if grid[0] <= tile and grid[1] <= tile:
        assert tiled_flops(b, heads, d, grid, tile) == attention_flops(b, heads, grid[0] * grid[1], d)


def test_tiled_rejects_wrong_grid():
    q, k, v = rand_qkv((1, 1, 12, 8), torch.float32)
    with pytest.raises(ValueError, match="grid 3x5"):
        tiled_attention(q, k, v, (3, 5), 2, math_attention)


# ---- availability -----------------------------------------------------------------------------
@pytest.mark.skipif(CUDA, reason="checks the reasons given on a machine without CUDA")
@pytest.mark.parametrize("backend", ["flash", "cudnn", "mem-efficient"])
def test_gpu_backends_say_why_on_cpu(backend):
    why = backend_unavailable(backend, torch.bfloat16, 72, "cpu")
    assert why is not None and "CUDA" in why and backend in why
    impl = registry.get(f"attention-{backend}", "sublayer")
    assert "CUDA" in impl.unavailable(Params(grid=5), "bfloat16", "cpu", "fwd")
    assert fastest_backend("cpu", torch.float32, 72) == "math"


@needs_cuda
def test_flash_and_cudnn_refuse_float32_with_reason():
    for backend in ("flash", "cudnn"):
        why = backend_unavailable(backend, torch.float32, 72, "cuda")
        assert why is not None and "float32" in why


def test_unknown_backend_names_allowed_values():
    with pytest.raises(ValueError, match="allowed: math, flash, cudnn, mem-efficient"):
        resolve("flashy", "cpu")
    with pytest.raises(ValueError, match="q, k, v shapes differ"):
        reference_attention(torch.ones(1, 1, 3, 4), torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 4))


# ---- registry entries -------------------------------------------------------------------------
ENTRY_PARAMS = Params(batch=2, channels=48, heads=2, grid_h=5, grid_w=7, tile=3)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("variant", ["math", "tiled-flash", "flash", "cudnn", "mem-efficient"])
def test_sublayer_entry_matches_its_reference(variant, mode):
    device = "cuda" if CUDA else "cpu"
    dtype = "bfloat16" if CUDA else "float32"
    impl = registry.get(f"attention-{variant}", "sublayer")
    why = impl.unavailable(ENTRY_PARAMS, dtype, device, mode)
    if why:
        pytest.skip(why)
    work = impl.build(ENTRY_PARAMS, registry.DTYPES[dtype], torch.device(device), mode)
    out = work.fn()
    assert out.shape == (2, 2, 35, 24)
    assert compare(out, work.reference())["rel_rms"] <= registry.TOLERANCE[dtype]
    assert work.backend_detail
    expected = (tiled_flops(2, 2, 24, (5, 7), 3) if variant == "tiled-flash" else attention_flops(2, 2, 35, 24))
    assert work.flops == expected
    assert len(work.inputs) == (3 if mode == "fwd+bwd" else 0)
    if mode == "fwd+bwd":
        out.float().sum().backward()
        assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in work.inputs)


def test_every_variant_registered_at_every_level():
    for variant in ("math", "flash", "cudnn", "mem-efficient", "tiled-flash"):
        assert registry.levels_of(f"attention-{variant}") == list(registry.LEVELS)
    assert "tile" in registry.get("attention-tiled-flash", "block").params
    assert "tile" not in registry.get("attention-flash", "block").params


class FakeFlashRegistry:
    """torch.nn.attention's FlashAttention registry, faked: which implementations are registered,
    which one is active, and whether activating one fails (its package missing)."""

    def __init__(self, registered: list[str], fails: bool = False):
        self.registered, self.fails, self.current = registered, fails, None

    def install(self, monkeypatch) -> None:
        import torch.nn.attention as attention

        monkeypatch.setattr(attention, "list_flash_attention_impls", lambda: list(self.registered))
        monkeypatch.setattr(attention, "current_flash_attention_impl", lambda: self.current)
        monkeypatch.setattr(attention, "activate_flash_attention_impl", self.activate)

    def activate(self, name: str) -> None:
        if self.fails:
            raise ModuleNotFoundError("No module named 'flash_attn'")
        self.current = name


def test_sdpa_flash_implementation_is_activated_and_recorded(monkeypatch):
    from kernels.attention.sublayer import activate_sdpa_flash_impl, resolve

    fake = FakeFlashRegistry(["FA3", "FA4"])
    fake.install(monkeypatch)
    assert resolve("flash", "cuda").detail.startswith(("sdpa-flash FA2 (bundled)", "flash-attn"))
    assert activate_sdpa_flash_impl("FA4") == "FA4"
    kernel = resolve("flash", "cuda")  # asked for explicitly: SDPA's FA4 even where a flash-attn package is installed
    assert kernel.detail.startswith("sdpa-flash FA4") and kernel.backend == "flash"


def test_sdpa_flash_implementation_errors_name_what_is_allowed(monkeypatch):
    from kernels.attention.sublayer import activate_sdpa_flash_impl

    FakeFlashRegistry(["FA3", "FA4"], fails=True).install(monkeypatch)
    with pytest.raises(ValueError, match=r"FA4 could not be activated \(ModuleNotFoundError"):
        activate_sdpa_flash_impl("FA4")
    with pytest.raises(ValueError, match="'FA9' is not registered .*; allowed: FA3, FA4"):
        activate_sdpa_flash_impl("FA9")


def test_run_option_refuses_an_unknown_sdpa_flash_implementation(tmp_path, capsys):
    from suite import cli

    code = cli.main(["run", "scenarios/smoke-cpu.yaml", "--out", str(tmp_path / "run"), "--device", "cpu",
                     "--sdpa-flash-impl", "FA9"])
    assert code == 2 and "--sdpa-flash-impl FA9" in capsys.readouterr().err
    assert not (tmp_path / "run" / "rows.jsonl").exists()
