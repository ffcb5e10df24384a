"""CUDA C++ source of the C-GSPN *image* forward: planar inputs, one image per block, inputs read once.

Why a second design: the row design (:mod:`kernels.cgspn.cuda_scan_source`) runs each direction in its own
block, so every direction re-reads x, lam and the three gates: 40 of its 60 bytes per (b, pixel, channel)
(NOTES.md Round 5). Here one block owns one (batch element, channel) image, loads it once into shared
memory and runs the four directions *concurrently* on it, so the inputs cross DRAM once (10 bytes), the
states are written once (8 bytes) and the combine re-reads them from L2 in the same block (+ u, y: 4 bytes).

Layout it needs: planar (channel-major) inputs, i.e. unit stride along W -- element (b, i, j, c) at
``b*sb + c*sc + i*sh + j`` (gate k: ``+ k*sk``). A channels-last tensor would give a block one 2-byte
element of every 32-byte sector; the C-GSPN layer produces planar heads directly from its GEMMs instead
(:mod:`kernels.cgspn.layer`, ``layout="planar"``).

Kernel ``cgspn_image_fwd<DT>``, grid (C, B), 2 x round32(W) + 2 x round32(H) threads (tb, bt, lr, rl lanes):

1. load: every pixel of the image: ``bx = lam * x`` (fp32) and the gates normalized for an interior pixel,
   ``g_k = sigmoid(raw_k) / max(s_l + s_m + s_r, eps)``: l and r stored as fp16 (in [0, 1]; a tiny g only
   loses absolute precision ~6e-8), m taken as ``1 - l - r`` of the rounded values so the weights sum to
   exactly 1 (below the clamp, where they do not, m is stored with its sign bit set). Pixels on an edge of a
   scan's state axis (j = 0 / W-1 for the vertical scans, i = 0 / H-1 for the horizontal ones) have Eq. 2's
   edge rule: their three normalized gates are kept in fp32 per side (rescaling an fp16 interior value would
   lose them when the dropped gate dominates).
2. scan: ``max(H, W)`` steps, one ``__syncthreads`` each; lane p of direction d reads its pixel's bx and
   gates from shared memory and its neighbours' fp32 state from a double-buffered, zero-padded row.
   States are stored in x's dtype to ``hs (4, B, C, H, WP)`` (WP = W rounded up to 8): vertical lanes
   store one element per step (a warp stores 64 contiguous bytes); horizontal lanes collect 8 steps in
   registers and store 16 bytes, with rl stored in scan order (its columns reversed).
3. combine: ``y = (u + bias_u) * sum_d h_d`` from the block's own states (L2), y planar (each image
   contiguous; batch and channel strides given, so ``(B, C, H, W)`` or ``(C, B, H, W)``).
Optional per-channel biases, added on load: the head's ``(5 C,)`` in [u, lam, l, m, r] order and x's ``(C,)``
(the layer folds its GEMM biases here instead of a pass over the planar GEMM outputs).
"""

from kernels.cgspn.cuda_scan_source import HELPERS, PREAMBLE

_IMAGE_KERNEL = r"""
template <int DT> __device__ __forceinline__ float ld_f(const u16* p) {
    const u32 v = (u32)__ldg(p);
    return DT == 1 ? __uint_as_float(v << 16) : f16_to_f32(v);
}
__device__ __forceinline__ float sig(float r) { return sigmoid_exact(r); }

// The three normalized gates of a pixel whose state-axis neighbours exist as has_l / has_r (Eq. 2).
__device__ __forceinline__ void edge_gates(float sl, float sm, float sr, bool has_l, bool has_r, float* out) {
    const float den = sm + (has_l ? sl : 0.0f) + (has_r ? sr : 0.0f);
    const float inv = rcp_approx(fmaxf(den, CGSPN_GATE_EPS));
    out[0] = has_l ? sl * inv : 0.0f;
    out[1] = sm * inv;
    out[2] = has_r ? sr * inv : 0.0f;
}

// shared memory (bytes): float bx[H*PP] | float edge_v[2][H][3] | float edge_h[2][W][3] | float hb[2][4][S] |
//                        u16 g[3][H*PP]   with PP = W | 1 (odd pitch: conflict-free column reads), S = max(H, W) + 2
template <int DT>
__global__ void __launch_bounds__(1024)
cgspn_image_fwd(const u16* __restrict__ x, const u16* __restrict__ lam, const u16* __restrict__ u,
                const u16* __restrict__ g, const u16* __restrict__ bias, const u16* __restrict__ xbias,
                u16* __restrict__ hs, u16* __restrict__ y, int H, int W, int C, int WP,
                i64 sxb, i64 sxc, i64 sxh, i64 slb, i64 slc, i64 slh, i64 sub, i64 suc, i64 suh,
                i64 sgb, i64 sgk, i64 sgc, i64 sgh, i64 syb, i64 syc) {
    extern __shared__ float smem[];
    const int PP = W | 1, S = max(H, W) + 2, HPP = H * PP;
    float* bxs = smem;
    float* edge_v = bxs + HPP;
    float* edge_h = edge_v + 6 * H;
    float* hb = edge_h + 6 * W;
    u16* g16 = reinterpret_cast<u16*>(hb + 8 * S);
    const int c = blockIdx.x;
    const i64 b = blockIdx.y;
    const int tid = threadIdx.x, NT = blockDim.x;
    float bias_u = 0.f, bias_l = 0.f, bias_gl = 0.f, bias_gm = 0.f, bias_gr = 0.f;  // head order u, lam, l, m, r
    if (bias != nullptr) {
        bias_u = ld_f<DT>(bias + c); bias_l = ld_f<DT>(bias + C + c); bias_gl = ld_f<DT>(bias + 2 * C + c);
        bias_gm = ld_f<DT>(bias + 3 * C + c); bias_gr = ld_f<DT>(bias + 4 * C + c);
    }
    const float bias_x = xbias != nullptr ? ld_f<DT>(xbias + c) : 0.f;
    const u16* xb = x + b * sxb + (i64)c * sxc;
    const u16* lb = lam + b * slb + (i64)c * slc;
    const u16* gb = g + b * sgb + (i64)c * sgc;
    for (int k = tid; k < 8 * S; k += NT) hb[k] = 0.0f;
    // 1. load: four pixels per thread in flight
    const int HW = H * W;
    for (int base = tid; base < HW; base += 4 * NT) {
        float vx[4], vl[4], rl[4], rm[4], rr[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const int idx = base + q * NT;
            if (idx < HW) {
                const int i = idx / W, j = idx - i * W;
                const i64 oh = (i64)i * sxh + j;
                vx[q] = ld_f<DT>(xb + oh);
                vl[q] = ld_f<DT>(lb + (i64)i * slh + j);
                const i64 og = (i64)i * sgh + j;
                rl[q] = ld_f<DT>(gb + og); rm[q] = ld_f<DT>(gb + og + sgk); rr[q] = ld_f<DT>(gb + og + 2 * sgk);
            }
        }
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const int idx = base + q * NT;
            if (idx < HW) {
                const int i = idx / W, j = idx - i * W;
                const int o = i * PP + j;
                bxs[o] = (vl[q] + bias_l) * (vx[q] + bias_x);
                const float sl = sig(rl[q] + bias_gl), sm = sig(rm[q] + bias_gm), sr = sig(rr[q] + bias_gr);
                const float inv = rcp_approx(fmaxf(sl + sm + sr, CGSPN_GATE_EPS));
                const u16 gl16 = pack1(sl * inv, 2), gr16 = pack1(sr * inv, 2);
                g16[o] = gl16;
                g16[2 * HPP + o] = gr16;
                // m as 1 - l - r of the *rounded* l and r, so the weights sum to exactly 1 (no mass lost per
                // step: an fp16 m of its own lost 3.5% over 147 steps of all-equal gates); below the clamp the
                // sum is not 1 and m is stored with the sign bit set
                g16[HPP + o] = sl + sm + sr >= CGSPN_GATE_EPS ? (u16)0 : pack1(-sm * inv, 2);
                if (j == 0) edge_gates(sl, sm, sr, false, W > 1, edge_v + 3 * i);
                if (j == W - 1) edge_gates(sl, sm, sr, W > 1, false, edge_v + 3 * (H + i));
                if (i == 0) edge_gates(sl, sm, sr, false, H > 1, edge_h + 3 * j);
                if (i == H - 1) edge_gates(sl, sm, sr, H > 1, false, edge_h + 3 * (W + j));
            }
        }
    }
    __syncthreads();
    // 2. scan: lanes [0, NTV) tb, [NTV, 2 NTV) bt, then NTH lanes each for lr and rl
    const int NTV = (W + 31) / 32 * 32, NTH = (H + 31) / 32 * 32;
    int d, p;
    if (tid < 2 * NTV) { d = tid / NTV; p = tid - d * NTV; }
    else { d = 2 + (tid - 2 * NTV) / NTH; p = tid - 2 * NTV - (d - 2) * NTH; }
    const bool vertical = d < 2, reverse = (d & 1) != 0;
    const int L = vertical ? H : W, P = vertical ? W : H;
    const bool lane = p < P;
    const float* edge = (vertical ? edge_v : edge_h) + (p == 0 ? 0 : 3 * L);
    const bool on_edge = p == 0 || p == P - 1;
    const int pix_step = vertical ? PP : 1, pix_lane = vertical ? 1 : PP;
    u16* hplane = hs + (((i64)d * gridDim.y + b) * C + c) * (i64)H * WP;
    const int Lmax = max(H, W);
    for (int t0 = 0; t0 < Lmax; t0 += 8) {
        u32 chunk[4] = {0u, 0u, 0u, 0u};
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const int t = t0 + k;
            if (t >= Lmax) break;  // uniform over the block
            if (lane && t < L) {
                const int r = reverse ? L - 1 - t : t;
                const int o = r * pix_step + p * pix_lane;
                const float* hin = hb + ((t & 1) * 4 + d) * S + p;  // hin[0], [1], [2] = h[p-1], h[p], h[p+1]
                float gl, gm, gr;
                if (on_edge) { gl = edge[3 * r]; gm = edge[3 * r + 1]; gr = edge[3 * r + 2]; }
                else {
                    gl = f16_to_f32(g16[o]); gr = f16_to_f32(g16[2 * HPP + o]);
                    const u32 mb = g16[HPP + o];  // sign bit set: clamped, |m| stored (a -0 underflow included)
                    gm = (mb & 0x8000u) ? f16_to_f32(mb & 0x7fffu) : 1.0f - gl - gr;
                }
                const float h = fmaf(gl, hin[0], fmaf(gm, hin[1], fmaf(gr, hin[2], bxs[o])));
                hb[(((t + 1) & 1) * 4 + d) * S + p + 1] = h;
                const u32 hv = (u32)pack1(h, DT);
                if (vertical) hplane[(i64)r * WP + p] = (u16)hv;
                else chunk[k / 2] |= hv << (16 * (k & 1));
            }
            __syncthreads();
        }
        if (!vertical && lane && t0 < L)  // columns t0..t0+7 in scan order (rl: reversed), padded row of WP
            *reinterpret_cast<uint4*>(hplane + (i64)p * WP + t0) = make_uint4(chunk[0], chunk[1], chunk[2], chunk[3]);
    }
    __syncthreads();  // every state of this image is stored (and visible to the block)
    // 3. combine from L2: y = (u + bias_u) * (tb + bt + lr + rl)
    const i64 plane = (i64)gridDim.y * C * H * WP;
    const u16* h0 = hs + (b * C + c) * (i64)H * WP;
    const u16* ub = u + b * sub + (i64)c * suc;
    u16* yb = y + b * syb + (i64)c * syc;
    for (int base = tid; base < HW; base += 4 * NT) {  // four pixels per thread in flight
        float acc[4], uu[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const int idx = min(base + q * NT, HW - 1);
            const int i = idx / W, j = idx - i * W;
            const i64 o = (i64)i * WP;
            acc[q] = ld_f_cg<DT>(h0 + o + j) + ld_f_cg<DT>(h0 + plane + o + j) + ld_f_cg<DT>(h0 + 2 * plane + o + j)
                     + ld_f_cg<DT>(h0 + 3 * plane + o + (W - 1 - j));
            uu[q] = ld_f<DT>(ub + (i64)i * suh + j);
        }
#pragma unroll
        for (int q = 0; q < 4; ++q)
            if (base + q * NT < HW) yb[base + q * NT] = pack1((uu[q] + bias_u) * acc[q], DT);
    }
}
"""

_CG_LOAD = r"""
// a load that bypasses L1: the states were stored by other threads of this block during the scan
template <int DT> __device__ __forceinline__ float ld_f_cg(const u16* p) {
    u16 v; asm("ld.global.cg.u16 %0, [%1];" : "=h"(v) : "l"(p));  // not volatile: the four may be issued together
    return DT == 1 ? __uint_as_float(((u32)v) << 16) : f16_to_f32((u32)v);
}
"""

IMAGE_SOURCE = PREAMBLE + HELPERS + _CG_LOAD + _IMAGE_KERNEL


def smem_bytes(H: int, W: int) -> int:
    """Dynamic shared memory of ``cgspn_image_fwd`` at an H x W image (the layout in the kernel's comment)."""
    pitch, state = W | 1, max(H, W) + 2
    return 4 * (H * pitch + 6 * H + 6 * W + 8 * state) + 2 * 3 * H * pitch


def threads(H: int, W: int) -> int:
    """Threads per block: one warp-padded lane group per direction (2 along W, 2 along H)."""
    return 2 * (-(-W // 32) * 32) + 2 * (-(-H // 32) * 32)
