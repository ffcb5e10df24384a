"""The C-GSPN image forward (``variant="cuda-image"``, :mod:`kernels.cgspn.cuda_image`) and the planar layer, on CPU.

CI has no GPU and no CuPy: these tests check the selection (why the image kernel does or does not run, what
a workload reports), the fallbacks (planar inputs and the folded biases through the Triton path give the
reference's values and gradients), the planar layer against the channels-last layer with the same weights,
the state-layout conversion the backward relies on, that ``torch.compile`` traces the planar layer without a
graph break, and (where nvcc exists) that the CUDA source compiles for sm_90 without spills.
GPU correctness and timing: ``suite/gpu/cgspn_image_check.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are defined

from kernels.cgspn import cgspn_scan_reference, cuda_image, cuda_scan, head_views  # noqa: E402
from kernels.cgspn import scan as scan_module  # noqa: E402
from kernels.cgspn.cuda_image_source import (  # noqa: E402
    DEFAULT_CONFIG,
    IMAGE_SOURCE,
    ImageConfig,
    expression,
    launch_blocks,
    smem_bytes,
    threads,
)
from kernels.cgspn.layer import CGSPNLayer  # noqa: E402
from suite.tests.helpers import relative_rms  # noqa: E402
from suite.tests.test_cgspn_fast_path import cpu_only, fake_cuda  # noqa: E402

IMAGE = scan_module.IMAGE_VARIANT


def planar_inputs(B, H, W, C, dtype=torch.float32, requires_grad=False):
    """x and head with the planar layer's strides: (C, B, H, W) and (5, C, B, H, W) storage."""
    x = torch.randn(C, B, H, W, dtype=dtype).permute(1, 2, 3, 0)
    head = torch.randn(5, C, B, H, W, dtype=dtype).permute(2, 3, 4, 0, 1)
    if requires_grad:
        x = torch.empty_strided(x.shape, x.stride(), dtype=dtype).copy_(x).requires_grad_(True)
        head = torch.empty_strided(head.shape, head.stride(), dtype=dtype).copy_(head).requires_grad_(True)
    return x, head


def test_planar_detection():
    x, head = planar_inputs(2, 5, 7, 3)
    assert cuda_image.is_planar(x) and cuda_image.is_planar(head)
    assert not cuda_image.is_planar(x.contiguous())
    assert cuda_image.is_planar(torch.zeros(2, 5, 1, 3))  # one column: any stride


def test_resources_of_the_target_grid():
    """147 x 147 (2058 px) fits: bx (fp32), the packed gates, the clamp flags and the edge gates, 225,536 bytes of
    the H100/H200's 232,448 per block, 384 threads, one block per SM; 149 x 149 is the largest square image that
    fits, 150 x 150 is not. Smaller images take three blocks per SM (the launch bound's minimum), 192 threads."""
    assert smem_bytes(147, 147) == 225536 and threads(147, 147) == 384 and launch_blocks(147, 147) == 1
    assert smem_bytes(149, 149) <= 232448 < smem_bytes(150, 150)
    assert (threads(74, 74), launch_blocks(74, 74)) == (192, 3) and (threads(27, 27), launch_blocks(27, 27)) == (192, 3)
    assert expression(1, 147, 147) == "cgspn_image_fwd<1, 384, 1, 147, 147>"


def test_every_grid_has_two_helper_warps():
    """The four scan warps scan while the others combine the previous image: a block of only scan warps would leave
    every image but a block's last without y (the source asserts at least one helper); one helper's combine
    outlasted the scan at 74, two measured faster. No launch bound asks for more than 576 threads per SM (96
    registers), and only where a lane holds at most 3 positions; else 512 (128 registers)."""
    grids = [(h, w) for h in (1, 2, 7, 27, 37, 54, 74, 100, 147, 149) for w in (1, 3, 27, 37, 74, 147, 149)]
    assert all(threads(h, w) >= 128 + 64 and threads(h, w) % 32 == 0 for h, w in grids)
    assert all(threads(h, w) * launch_blocks(h, w) <= (576 if max(h, w) <= 96 else 512) for h, w in grids)
    assert "static_assert(NT >= SCAN + 32" in IMAGE_SOURCE


def test_launch_configurations():
    """The default instantiation names only the template's leading arguments; the opt-in configurations add
    theirs (the L2 prefetch, the rows in flight), the timed one its flag; a bad field is refused by name before
    anything touches a GPU."""
    assert expression(1, 147, 147, ImageConfig()) == "cgspn_image_fwd<1, 384, 1, 147, 147>"
    assert expression(2, 74, 74, ImageConfig(prefetch=True)) == "cgspn_image_fwd<2, 192, 3, 74, 74, true, -1>"
    assert expression(1, 147, 147, ImageConfig(threads=256, ahead=2)) == "cgspn_image_fwd<1, 256, 1, 147, 147, false, 2>"
    assert expression(1, 147, 147, timed=True) == "cgspn_image_fwd<1, 384, 1, 147, 147, false, -1, true>"
    assert expression(2, 74, 74, ImageConfig(prefetch=True), timed=True) == "cgspn_image_fwd<2, 192, 3, 74, 74, true, -1, true>"
    # explicit blocks per SM where shared memory allows them; one at 147
    assert expression(1, 74, 74, ImageConfig(blocks=2)) == "cgspn_image_fwd<1, 192, 2, 74, 74, false, -1>"
    assert expression(1, 147, 147, ImageConfig(blocks=2)) == "cgspn_image_fwd<1, 384, 1, 147, 147, false, -1>"
    # the default before round 9 at 74: one helper warp, three blocks per SM
    assert expression(1, 74, 74) == "cgspn_image_fwd<1, 192, 3, 74, 74>"
    assert expression(1, 74, 74, ImageConfig(threads=160, blocks=3)) == "cgspn_image_fwd<1, 160, 3, 74, 74, false, -1>"
    x, head = planar_inputs(1, 3, 4, 8)
    multiple = r"is not 0 or a multiple of 32 in"
    for config, message in ((ImageConfig(threads=128), rf"config.threads: 128 {multiple} \[160, 1024\]"),
                            (ImageConfig(threads=200), rf"config.threads: 200 {multiple} \[160, 1024\]"),
                            (ImageConfig(blocks=-1), r"config.blocks: -1 is not in \[0, 32\]"),
                            (ImageConfig(ahead=3), "config.ahead: 3 is not one of -1, 0, 1, 2")):
        with pytest.raises(ValueError, match=message):
            cuda_image.scan_forward(x, *head_views(head), config=config)


@cpu_only
def test_persistent_grid(monkeypatch):
    """One block per image up to what fits the GPU at once, then persistent blocks loop over the images."""
    monkeypatch.setattr(cuda_scan, "sm_count", lambda index: 132)
    assert cuda_image.grid_size(2048, 147, 147, 0) == 132 and cuda_image.grid_size(2048, 74, 74, 0) == 396
    assert cuda_image.grid_size(5, 74, 74, 0) == 5


def test_cpu_falls_back_and_says_why():
    x, head = planar_inputs(1, 3, 4, 8)
    assert cuda_image.unavailable_reason(x, head) == "device cpu is not CUDA"
    backend = scan_module.scan_backend(IMAGE, x, head)
    assert backend == ("triton quad-scratch (fast path not used: device cpu is not CUDA) "
                       "(image kernel not used: device cpu is not CUDA)")


@cpu_only
def test_selection_reasons_on_a_fake_sm90(monkeypatch):
    monkeypatch.setattr(cuda_image, "_smem_limit", lambda index: 232448)
    cuda_image._probe.cache_clear()
    try:
        with fake_cuda(monkeypatch):
            x, head = planar_inputs(2, 3, 4, 8)
            assert cuda_image.unavailable_reason(x.contiguous(), head) == "inputs are not planar (unit stride along W)"
            gpu = torch.device("cuda")
            assert cuda_image.plan_reason(gpu, torch.bfloat16, 32, 147, 147) is None
            assert cuda_image.plan_reason(gpu, torch.float16, 2, 3, 4) is None
            assert cuda_image.plan_reason(gpu, torch.float32, 2, 3, 4).startswith("dtype torch.float32")
            assert cuda_image.plan_reason(gpu, torch.bfloat16, 1, 150, 150) == \
                f"grid 150x150: {smem_bytes(150, 150)} bytes of shared memory > 232448"
            assert cuda_image.plan_reason(gpu, torch.bfloat16, 1, 9, 193) == \
                "grid 9x193: a side above 192 (one warp per direction, 6 positions per lane)"
            assert cuda_image.plan_reason(gpu, torch.bfloat16, 70000, 8, 8) is None  # persistent blocks: any batch
        # only the cuda-image variant takes the image kernel; auto and cuda-fast keep the row design
        monkeypatch.setattr(cuda_image, "unavailable_reason", lambda *tensors: None)
        assert scan_module._image_path("image", x, head)
        assert not scan_module._image_path("auto", x, head) and not scan_module._image_path("cuda", x, head)
    finally:
        cuda_image._probe.cache_clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_planar_inputs_with_biases_through_the_fallback(dtype):
    """cuda-image on CPU: planar inputs copied, the biases added by PyTorch; values and every gradient
    (x, head, both biases) match the reference with the biases added."""
    torch.manual_seed(0)
    B, H, W, C = 2, 5, 6, 8
    x, head = planar_inputs(B, H, W, C, dtype, requires_grad=True)
    bias = torch.randn(5 * C, dtype=dtype, requires_grad=True)
    x_bias = torch.randn(C, dtype=dtype, requires_grad=True)
    dy = torch.randn(B, H, W, C, dtype=dtype)
    y = scan_module.cgspn_scan_head(x, head, variant=IMAGE, bias=bias, x_bias=x_bias)
    ours = [y, *torch.autograd.grad(y, (x, head, bias, x_bias), dy)]
    leaves = [t.detach().double().requires_grad_(True) for t in (x, head, bias, x_bias)]
    ref_y = cgspn_scan_reference(leaves[0] + leaves[3], *head_views(leaves[1] + leaves[2].view(5, C)))
    ref = [ref_y, *torch.autograd.grad(ref_y, leaves, dy.double())]
    tol = 1e-5 if dtype == torch.float32 else 4 * torch.finfo(dtype).eps
    for name, a, r in zip(("y", "dx", "dhead", "dbias", "dx_bias"), ours, ref, strict=True):
        assert relative_rms(a.double(), r) <= tol, name


def test_bias_shape_errors_name_the_field():
    x, head = planar_inputs(1, 3, 4, 8)
    with pytest.raises(ValueError, match=r"bias must be \(40,\)"):
        scan_module.cgspn_scan_head(x, head, variant=IMAGE, bias=torch.zeros(8))
    with pytest.raises(ValueError, match=r"x_bias must be \(8,\)"):
        scan_module.cgspn_scan_head(x, head, variant=IMAGE, x_bias=torch.zeros(8, dtype=torch.float64))


def test_states_back_to_channels_last():
    """hs (4, B, C, H, WP) with padding -> (4, B, H, W, C), the padding cut."""
    B, C, H, W = 2, 3, 4, 5
    image = torch.randn(4, B, C, H, W)
    stored = torch.full((4, B, C, H, 8), float("nan"))
    stored[..., :W] = image
    expected = image.permute(0, 1, 3, 4, 2)
    out = cuda_image.hs_channels_last(stored, W)
    assert out.is_contiguous() and torch.equal(out, expected)


@pytest.mark.parametrize("scan", ["reference", "fused"])
def test_planar_layer_matches_channels_last(scan):
    """The transposed-GEMM layer (biases folded into the scan) is the same function as the Linear one."""
    torch.manual_seed(0)
    a = CGSPNLayer(48, latent_channels=8, scan=scan, layout="channels-last")
    b = CGSPNLayer(48, latent_channels=8, scan=scan, layout="planar")
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 5, 7, 48)
    assert not a.planar(x) and b.planar(x)
    ya, yb = a(x), b(x)
    assert relative_rms(yb, ya) < 1e-6
    ga = torch.autograd.grad(ya.square().sum(), list(a.parameters()))
    gb = torch.autograd.grad(yb.square().sum(), list(b.parameters()))
    for (name, _), g1, g2 in zip(a.named_parameters(), ga, gb, strict=True):
        assert relative_rms(g2, g1) < 1e-5, name


def test_auto_layout_is_planar_only_where_the_image_kernel_runs():
    x = torch.randn(1, 4, 4, 48)
    assert not CGSPNLayer(48, latent_channels=8, variant=IMAGE).planar(x)  # CPU: the kernel cannot run
    assert not CGSPNLayer(48, latent_channels=8).planar(x)
    with pytest.raises(ValueError, match="layout: 'rows' is not one of auto, channels-last, planar"):
        CGSPNLayer(48, latent_channels=8, layout="rows")


def test_compiled_planar_layer_has_no_graph_break():
    """fullgraph tracing through the layout decision (a constant for dynamo: it takes a lock)."""
    torch.manual_seed(0)
    layer = CGSPNLayer(48, latent_channels=8, variant=IMAGE, layout="planar")
    x = torch.randn(1, 5, 6, 48)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    assert relative_rms(compiled(x), layer(x)) < 1e-6


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (CUDA toolkit) to compile the image kernel's source")
def test_image_source_compiles_for_sm90_without_spills(tmp_path):
    """The benchmark grids' instantiations (bf16 and fp16 at 147, bf16 at 74, 37 and 27, two blocks of 256 at
    100, 9 x 190, the largest image 149 x 149), the opt-in configurations at 147, 74 and 20 x 73 and the timed
    instantiations, through ptxas for sm_90: no spills within their launch bounds (147: 384 threads, one block per
    SM; 27-74: 192 threads, three blocks)."""
    args = "(const u16*, const u16*, const u16*, const u16*, const u16*, const u16*, u16*, u16*, long long*, int, int" \
           + ", i64" * 15 + ")"
    path = tmp_path / "image.cu"
    grids = ((1, 147, 147), (2, 147, 147), (1, 74, 74), (2, 74, 74), (1, 37, 37), (1, 27, 27), (1, 100, 100), (1, 9, 190),
             (1, 149, 149), (1, 147, 147, ImageConfig(prefetch=True)), (1, 74, 74, ImageConfig(threads=160, blocks=3)),
             (1, 20, 73, ImageConfig(prefetch=True)), (1, 147, 147, ImageConfig(threads=256, ahead=2)),
             (1, 147, 147, DEFAULT_CONFIG, True), (2, 74, 74, DEFAULT_CONFIG, True))
    path.write_text(IMAGE_SOURCE + "".join(f"\ntemplate __global__ void {expression(*g)}{args};" for g in grids))
    proc = subprocess.run(["nvcc", "-arch=sm_90", "-std=c++17", "-Xptxas", "-v", "-c", str(path), "-o", str(tmp_path / "i.o")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    spills = re.findall(r"(\d+) bytes spill stores", proc.stderr)
    assert len(spills) == len(grids) and all(int(n) == 0 for n in spills), proc.stderr[-3000:]


@pytest.mark.parametrize("layout", ["planar-bc", "planar-cb"])
def test_outputs_are_allocated_as_the_op_declares(layout):
    """The image op's real outputs and its fake (for torch.compile) come from ``empty_outputs``: y is stored
    (C, B, H, W) when x's channels are outermost, else (B, C, H, W); hs is (4, B, C, H, W rounded up to 8)."""
    B, H, W, C = 2, 3, 5, 4
    if layout == "planar-cb":
        x, _ = planar_inputs(B, H, W, C)
        storage = (C, B, H, W)
    else:
        x = torch.randn(B, C, H, W).permute(0, 2, 3, 1)
        storage = (B, C, H, W)
    y, hs = cuda_image.empty_outputs(x)
    assert y.shape == (B, H, W, C) and hs.shape == (4, B, C, H, 8) and hs.is_contiguous()
    order = (3, 0, 1, 2) if layout == "planar-cb" else (0, 3, 1, 2)
    assert y.permute(*order).shape == storage and y.permute(*order).is_contiguous()
