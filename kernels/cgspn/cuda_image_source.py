"""CUDA C++ source of the C-GSPN *image* forward: planar inputs, one image per block, inputs read once.

Why a second design: the row design (:mod:`kernels.cgspn.cuda_scan_source`) runs each direction in its own
block, so every direction re-reads x, lam and the three gates: 40 of its 60 bytes per (b, pixel, channel)
(NOTES.md Round 5). Here one block owns one (batch element, channel) image, copies it once into shared
memory and runs the four directions *concurrently* on it: the inputs cross DRAM once (10 bytes), the states
are written once (8 bytes) and the combine re-reads them from L2 in the same block (+ u, y: 4 bytes).

Layout it needs: planar (channel-major) inputs, i.e. unit stride along W -- element (b, i, j, c) at
``b*sb + c*sc + i*sh + j`` (gate k: ``+ k*sk``). A channels-last tensor would give a block one 2-byte
element of every 32-byte sector; the C-GSPN layer produces planar heads directly from its GEMMs instead
(:mod:`kernels.cgspn.layer`, ``layout="planar"``).

Kernel ``cgspn_image_fwd<DT, KV, KH, NT>``, grid (C, B), NT threads (NOTES.md Round 8 for the measurements):

1. copy: the five planes (x, lam, l, m, r logits) as they are, by ``cp.async`` of aligned 16-byte words (an
   image whose rows are contiguous; a plane keeps its address's phase mod 16 in shared memory, the partial
   words at both ends go element by element; other row strides element by element).
2. gates, in place: Eq. 2 for an interior pixel from three ex2 and one reciprocal (the sigmoid ratios as
   products of 1 + e^-g), l and r stored as fp16 over their logits, m taken as ``1 - l - r`` of the rounded
   values so the weights sum to exactly 1; below the clamp (they do not) m is stored with its sign bit set,
   else its slot holds 0. Pixels on an edge of a scan's state axis (j = 0 / W-1 for the vertical scans,
   i = 0 / H-1 for the horizontal ones) get Eq. 2's edge rule in fp32 (a float4 per side and step).
3. scan: warp d runs direction d (tb, bt, lr, rl) alone -- no block barrier per step. Lane q holds the fp32
   states of positions q, q + 32, ... (KV = ceil(W / 32) positions for the vertical warps, KH = ceil(H / 32)
   for the horizontal ones), so a warp's shared-memory reads of a row are 64 contiguous bytes; the neighbours
   h[p-1], h[p+1] arrive by two rotating shuffles per position. The next step's inputs are read while the
   current one computes. States go to ``hs (4, B, C, H, WP)`` in image order (WP = W rounded up to 8):
   vertical warps store each step's row, horizontal ones gather eight columns per position in registers and
   store 16 bytes.
4. combine: every thread, ``y = (u + bias_u) * sum_d h_d`` from the block's states (L2; 16-byte reads),
   y planar (each image contiguous; batch and channel strides given, so ``(B, C, H, W)`` or ``(C, B, H, W)``).
Optional per-channel biases, added in fp32 where the values are used: the head's ``(5 C,)`` in
[u, lam, l, m, r] order and x's ``(C,)`` (the layer folds its GEMM biases here instead of a pass over the
planar GEMM outputs).
"""

from kernels.cgspn.cuda_scan_source import HELPERS, PREAMBLE

#: the most positions a lane holds (both grid sides <= 32 * MAX_LANE_POSITIONS)
MAX_LANE_POSITIONS = 6

_IMAGE_KERNEL = r"""
template <int DT> __device__ __forceinline__ float raw_f(u32 v) {
    return DT == 1 ? __uint_as_float(v << 16) : f16_to_f32(v);
}
template <int DT> __device__ __forceinline__ float ld_f(const u16* p) { return raw_f<DT>((u32)__ldg(p)); }
__device__ __forceinline__ float ex2_approx(float v) { float y; asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(v)); return y; }
__device__ __forceinline__ u32 lds16(const char* p) { return (u32)*reinterpret_cast<const u16*>(p); }

// The three normalized gates of a pixel whose state-axis neighbours exist as has_l / has_r (Eq. 2).
__device__ __forceinline__ float4 edge_gates(float sl, float sm, float sr, bool has_l, bool has_r) {
    const float den = sm + (has_l ? sl : 0.0f) + (has_r ? sr : 0.0f);
    const float inv = rcp_approx(fmaxf(den, CGSPN_GATE_EPS));
    return make_float4(has_l ? sl * inv : 0.0f, sm * inv, has_r ? sr * inv : 0.0f, 0.0f);
}

// Eq. 2 for an interior pixel given a_k = 1 + exp(-g_k) of the biased logits (s_k = 1 / a_k). While every
// a_k < 1e6 (every s_k > 1e-6: the sum is above the clamp, the products finite) the ratios are products:
// s_l / (s_l + s_m + s_r) = a_m a_r / (a_m a_r + a_l a_r + a_l a_m), one reciprocal for the three. Otherwise
// (saturated logits) the sigmoids one by one and the clamp. Returns whether the clamp applied.
__device__ __forceinline__ bool interior_gates(float a, float b, float c, float& gl, float& gm, float& gr) {
    if (fmaxf(a, fmaxf(b, c)) < 1e6f) {
        const float bc = b * c, ac = a * c, ab = a * b;
        const float inv = rcp_approx(bc + ac + ab);
        gl = bc * inv; gm = ac * inv; gr = ab * inv;
        return false;
    }
    const float sl = rcp_approx(a), sm = rcp_approx(b), sr = rcp_approx(c);
    const float den = sl + sm + sr;
    const float inv = rcp_approx(fmaxf(den, CGSPN_GATE_EPS));
    gl = sl * inv; gm = sm * inv; gr = sr * inv;
    return den < CGSPN_GATE_EPS;
}

// 16-byte word m of the aligned window around an image occupying window bytes [phase, end): one vector load
// when the word lies inside the image, else its bytes inside the image one element at a time (zeros elsewhere),
// so nothing outside the image is read.
__device__ __forceinline__ uint4 window_word(const char* al, int m, int phase, int end) {
    const int lo = m << 4;
    if (lo >= phase && lo + 16 <= end) return __ldg(reinterpret_cast<const uint4*>(al + lo));
    u32 w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
    for (int e = 0; e < 8; ++e)
        if (lo + 2 * e >= phase && lo + 2 * e < end)
            w[e >> 1] |= (u32)__ldg(reinterpret_cast<const u16*>(al + lo + 2 * e)) << (16 * (e & 1));
    return make_uint4(w[0], w[1], w[2], w[3]);
}

// Copy one plane's H x W image (2-byte elements) to dst (16-byte aligned), element k at byte 2k, so every
// plane sits at a fixed offset and the scan's addresses are immediates. Contiguous rows: output word n is the
// window's bytes [16 n + phase, 16 n + phase + 16), i.e. window words n and n + 1 shifted by the phase (a
// uniform select per 8 / 4 / 2 bytes). Other row strides: element by element.
template <int H, int W, int NT>
__device__ __forceinline__ void copy_plane(char* dst, const u16* src, i64 row_stride, int tid) {
    constexpr int HW = H * W, NO = (2 * HW + 15) / 16;
    if (row_stride == W || H == 1) {
        const unsigned long long a = reinterpret_cast<unsigned long long>(src);
        const int phase = (int)(a & 15ull), end = phase + 2 * HW;
        const char* al = reinterpret_cast<const char*>(a - (unsigned long long)phase);
        for (int n = tid; n < NO; n += NT) {
            const uint4 w0 = window_word(al, n, phase, end);
            const uint4 w1 = phase != 0 ? window_word(al, n + 1, phase, end) : make_uint4(0u, 0u, 0u, 0u);
            u32 v[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
            if (phase & 8) {
#pragma unroll
                for (int i = 0; i < 6; ++i) v[i] = v[i + 2];
            }
            if (phase & 4) {
#pragma unroll
                for (int i = 0; i < 5; ++i) v[i] = v[i + 1];
            }
            if (phase & 2) {
#pragma unroll
                for (int i = 0; i < 4; ++i) v[i] = __funnelshift_r(v[i], v[i + 1], 16);
            }
            *reinterpret_cast<uint4*>(dst + 16 * n) = make_uint4(v[0], v[1], v[2], v[3]);
        }
        return;
    }
    for (int k = tid; k < HW; k += NT) {
        const int i = k / W;
        *reinterpret_cast<u16*>(dst + 2 * k) = __ldg(src + i * row_stride + (k - i * W));
    }
}

// One direction on the image in shared memory (plane q at byte q PL; element (step row s, position p) at byte
// 2 (VERT ? s W + p : p W + s)). Lane q owns positions q + 32 k, k < K (P <= 32 K). CLAMPED: some pixel of the
// image is below Eq. 2's clamp, so m is read from its slot where flagged, else m = 1 - l - r.
template <int DT, int H, int W, int PL, bool VERT, bool REV, bool CLAMPED>
__device__ __forceinline__ void scan_direction(const char* planes, const float4* edge, u16* hplane, float bias_x, float bias_l) {
    constexpr int L = VERT ? H : W, P = VERT ? W : H, K = (P + 31) / 32, WP = (W + 7) / 8 * 8;
    constexpr int K_OFF = VERT ? 64 : 64 * W, STEP = VERT ? 2 * W : 2, CHUNKS = (L + 7) / 8;
    const int lane = threadIdx.x & 31;
    constexpr int LAST_LANE = (P - 1) & 31;  // position P - 1 is lane LAST_LANE's k = K - 1
    const bool tail = lane + 32 * (K - 1) < P;  // the last k holds a position (k < K - 1 always does)
    const char* base = planes + (VERT ? 2 * lane : 2 * lane * W);
    struct Raw { u32 x, lam, l, r, m; };
    auto load = [&](int s, Raw (&v)[K], float4& e0, float4& e1) {
        const char* o = base + s * STEP;
#pragma unroll
        for (int k = 0; k < K; ++k) {
            if (k < K - 1 || tail) {
                v[k].x = lds16(o + k * K_OFF); v[k].lam = lds16(o + PL + k * K_OFF);
                v[k].l = lds16(o + 2 * PL + k * K_OFF); v[k].r = lds16(o + 4 * PL + k * K_OFF);
                if (CLAMPED) v[k].m = lds16(o + 3 * PL + k * K_OFF);
            }
        }
        if (lane == 0) e0 = edge[s];
        if (lane == LAST_LANE) e1 = edge[L + s];
    };
    float h[K];
    Raw buf[2][K];
    float4 e[2][2];
#pragma unroll
    for (int k = 0; k < K; ++k) {
        h[k] = 0.0f;
        buf[0][k] = buf[1][k] = Raw{0u, 0u, 0u, 0u, 0u};
    }
    e[0][0] = e[0][1] = e[1][0] = e[1][1] = make_float4(0.f, 0.f, 0.f, 0.f);
    load(REV ? L - 1 : 0, buf[0], e[0][0], e[0][1]);
#pragma unroll 1
    for (int ci = 0; ci < CHUNKS; ++ci) {
        const int c8 = REV ? CHUNKS - 1 - ci : ci;  // steps 8 c8 .. 8 c8 + 7 in image order
        u32 pk[K][4];
#pragma unroll
        for (int k = 0; k < K; ++k) pk[k][0] = pk[k][1] = pk[k][2] = pk[k][3] = 0u;
#pragma unroll
        for (int t = 0; t < 8; ++t) {  // t even reads buf[0] and fills buf[1], t odd the other way round
            const int q = REV ? 7 - t : t, s = 8 * c8 + q;
            const bool live = L % 8 == 0 || s < L;  // only the last chunk in image order has dead steps
            const int sn = REV ? s - 1 : s + 1;
            // the next step's inputs while this one computes; also at a dead step, so that a reverse scan's
            // first live step (after dead ones) finds its row in the buffer of its parity
            if (sn >= 0 && sn < L) load(sn, buf[(t + 1) & 1], e[(t + 1) & 1][0], e[(t + 1) & 1][1]);
            const Raw (&cur)[K] = buf[t & 1];
            const float4 e0 = e[t & 1][0], e1 = e[t & 1][1];
            float up[K], dn[K];
#pragma unroll
            for (int k = 0; k < K; ++k) {
                up[k] = __shfl_sync(0xffffffffu, h[k], (lane + 31) & 31);
                dn[k] = __shfl_sync(0xffffffffu, h[k], (lane + 1) & 31);
            }
#pragma unroll
            for (int k = 0; k < K; ++k) {
                const float hl = lane == 0 ? (k > 0 ? up[k - 1] : 0.0f) : up[k];
                const float hr = lane == 31 ? (k < K - 1 ? dn[k + 1] : 0.0f) : dn[k];
                float gl = f16_to_f32(cur[k].l), gr = f16_to_f32(cur[k].r), gm = 1.0f - gl - gr;
                if (CLAMPED && (cur[k].m & 0x8000u)) gm = f16_to_f32(cur[k].m & 0x7fffu);
                if (k == K - 1 && lane == LAST_LANE) { gl = e1.x; gm = e1.y; gr = e1.z; }
                if (k == 0 && lane == 0) { gl = e0.x; gm = e0.y; gr = e0.z; }
                const float bx = (raw_f<DT>(cur[k].x) + bias_x) * (raw_f<DT>(cur[k].lam) + bias_l);
                const float hn = fmaf(gl, hl, fmaf(gm, h[k], fmaf(gr, hr, bx)));
                const bool on = k < K - 1 || tail;
                if (live) h[k] = on ? hn : 0.0f;
                const u32 hv = (u32)pack1(h[k], DT);
                if (VERT) { if (live && on) hplane[s * WP + lane + 32 * k] = (u16)hv; }
                else pk[k][q >> 1] |= (live ? hv : 0u) << (16 * (q & 1));
            }
        }
        if (!VERT) {
#pragma unroll
            for (int k = 0; k < K; ++k)
                if (k < K - 1 || tail)
                    *reinterpret_cast<uint4*>(hplane + (lane + 32 * k) * WP + 8 * c8) =
                        make_uint4(pk[k][0], pk[k][1], pk[k][2], pk[k][3]);
        }
    }
}

template <int DT, int H, int W, int PL, bool CLAMPED>
__device__ __forceinline__ void scan_warp(int d, const char* planes, const float4* edge_v, const float4* edge_h,
                                          u16* hplane, float bias_x, float bias_l) {
    if (d == 0) scan_direction<DT, H, W, PL, true, false, CLAMPED>(planes, edge_v, hplane, bias_x, bias_l);
    else if (d == 1) scan_direction<DT, H, W, PL, true, true, CLAMPED>(planes, edge_v, hplane, bias_x, bias_l);
    else if (d == 2) scan_direction<DT, H, W, PL, false, false, CLAMPED>(planes, edge_h, hplane, bias_x, bias_l);
    else scan_direction<DT, H, W, PL, false, true, CLAMPED>(planes, edge_h, hplane, bias_x, bias_l);
}

// shared memory (bytes): 5 planes of PL = round16(2 H W) (x, lam, l, m, r: the raw images, the gates then
// normalized in place) | float4 edge_v[2][H] (j = 0, j = W-1) | float4 edge_h[2][W] (i = 0, i = H-1)
template <int DT, int H, int W, int NT, int MINB>
__global__ void __launch_bounds__(NT, MINB)
cgspn_image_fwd(const u16* __restrict__ x, const u16* __restrict__ lam, const u16* __restrict__ u,
                const u16* __restrict__ g, const u16* __restrict__ bias, const u16* __restrict__ xbias,
                u16* __restrict__ hs, u16* __restrict__ y, int C,
                i64 sxb, i64 sxc, i64 sxh, i64 slb, i64 slc, i64 slh, i64 sub, i64 suc, i64 suh,
                i64 sgb, i64 sgk, i64 sgc, i64 sgh, i64 syb, i64 syc) {
    constexpr int HW = H * W, PL = (2 * HW + 15) / 16 * 16, WP = (W + 7) / 8 * 8;
    extern __shared__ __align__(16) char smem[];
    float4* edge_v = reinterpret_cast<float4*>(smem + 5 * PL);
    float4* edge_h = edge_v + 2 * H;
    const int c = blockIdx.x, tid = threadIdx.x;
    const i64 b = blockIdx.y;
    float bias_u = 0.f, bias_l = 0.f, bias_gl = 0.f, bias_gm = 0.f, bias_gr = 0.f;  // head order u, lam, l, m, r
    if (bias != nullptr) {
        bias_u = ld_f<DT>(bias + c); bias_l = ld_f<DT>(bias + C + c); bias_gl = ld_f<DT>(bias + 2 * C + c);
        bias_gm = ld_f<DT>(bias + 3 * C + c); bias_gr = ld_f<DT>(bias + 4 * C + c);
    }
    const float bias_x = xbias != nullptr ? ld_f<DT>(xbias + c) : 0.f;
    // 1. copy the five planes
    const u16* gb = g + b * sgb + (i64)c * sgc;
    copy_plane<H, W, NT>(smem, x + b * sxb + (i64)c * sxc, sxh, tid);
    copy_plane<H, W, NT>(smem + PL, lam + b * slb + (i64)c * slc, slh, tid);
    copy_plane<H, W, NT>(smem + 2 * PL, gb, sgh, tid);
    copy_plane<H, W, NT>(smem + 3 * PL, gb + sgk, sgh, tid);
    copy_plane<H, W, NT>(smem + 4 * PL, gb + 2 * sgk, sgh, tid);
    __syncthreads();
    // 2. the gates, normalized in place
    bool clamped = false;
    u16* gl16 = reinterpret_cast<u16*>(smem + 2 * PL);
    for (int k = tid; k < HW; k += NT) {
        const int i = k / W, j = k - i * W;
        const float nl2e = -1.4426950408889634f;
        const float a = 1.0f + ex2_approx(nl2e * (raw_f<DT>(gl16[k]) + bias_gl));
        const float bm = 1.0f + ex2_approx(nl2e * (raw_f<DT>(gl16[PL / 2 + k]) + bias_gm));
        const float cr = 1.0f + ex2_approx(nl2e * (raw_f<DT>(gl16[PL + k]) + bias_gr));
        float gl, gm, gr;
        const bool cl = interior_gates(a, bm, cr, gl, gm, gr);
        gl16[k] = pack1(gl, 2);
        gl16[PL + k] = pack1(gr, 2);
        // m as 1 - l - r of the *rounded* l and r, so the weights sum to exactly 1 (no mass lost per step: an
        // fp16 m of its own lost 3.5% over 147 steps of all-equal gates); below the clamp the sum is not 1 and
        // m is stored with the sign bit set
        gl16[PL / 2 + k] = cl ? (u16)(pack1(gm, 2) | 0x8000u) : (u16)0;
        clamped |= cl;
        if (j == 0 || j == W - 1 || i == 0 || i == H - 1) {
            const float sl = rcp_approx(a), sm = rcp_approx(bm), sr = rcp_approx(cr);
            if (j == 0) edge_v[i] = edge_gates(sl, sm, sr, false, W > 1);
            if (j == W - 1) edge_v[H + i] = edge_gates(sl, sm, sr, W > 1, false);
            if (i == 0) edge_h[j] = edge_gates(sl, sm, sr, false, H > 1);
            if (i == H - 1) edge_h[W + j] = edge_gates(sl, sm, sr, H > 1, false);
        }
    }
    clamped = __syncthreads_or(clamped);
    // 3. scan: warp d runs direction d (tb, bt, lr, rl)
    if (tid < 128) {
        const int d = tid >> 5;
        u16* hplane = hs + (((i64)d * gridDim.y + b) * C + c) * (i64)(H * WP);
        if (clamped) scan_warp<DT, H, W, PL, true>(d, smem, edge_v, edge_h, hplane, bias_x, bias_l);
        else scan_warp<DT, H, W, PL, false>(d, smem, edge_v, edge_h, hplane, bias_x, bias_l);
    }
    __syncthreads();  // every state of this image is stored (and visible to the block)
    // 4. combine from L2: y = (u + bias_u) * (tb + bt + lr + rl), eight pixels of a row per item
    const i64 pstride = (i64)gridDim.y * C * (H * WP);
    const u16* h0 = hs + (b * C + c) * (i64)(H * WP);
    const u16* ub = u + b * sub + (i64)c * suc;
    u16* yb = y + b * syb + (i64)c * syc;
    constexpr int PER_ROW = WP / 8;
    for (int it = tid; it < H * PER_ROW; it += NT) {
        const int i = it / PER_ROW, j0 = (it - i * PER_ROW) * 8;
        const i64 o = (i64)i * WP + j0;
        float acc[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[e] = 0.0f;
#pragma unroll
        for (int d = 0; d < 4; ++d) {
            uint4 v;
            asm("ld.global.cg.v4.u32 {%0, %1, %2, %3}, [%4];"
                : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(h0 + d * pstride + o));
            float f[8];
            unpack<DT>(v, f);
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[e] += f[e];
        }
#pragma unroll
        for (int e = 0; e < 8; ++e)
            if (j0 + e < W) yb[(i64)i * W + j0 + e] = pack1((ld_f<DT>(ub + (i64)i * suh + j0 + e) + bias_u) * acc[e], DT);
    }
}
"""

IMAGE_SOURCE = PREAMBLE + HELPERS + _IMAGE_KERNEL


def smem_bytes(H: int, W: int) -> int:
    """Dynamic shared memory of ``cgspn_image_fwd`` at an H x W image (the layout in the kernel's comment)."""
    return 5 * ((2 * H * W + 15) // 16 * 16) + 32 * (H + W)


def blocks_per_sm(H: int, W: int, smem_per_sm: int = 233472, reserved: int = 1024) -> int:
    """Blocks per SM the launch bound asks for: as many as shared memory allows (sm_90: 228 KB per SM, 1 KB
    reserved per block), at most 4 (16 scan warps; the threads below then keep 128 registers per thread)."""
    return max(1, min(4, smem_per_sm // (smem_bytes(H, W) + reserved)))


def threads(H: int, W: int) -> int:
    """Threads per block: the four scan warps plus helpers for the copy and the combine, as many as keep 128
    registers per thread at :func:`blocks_per_sm` blocks (the scan's buffers need ~100-150 at 147), 128-384."""
    return max(128, min(384, 512 // blocks_per_sm(H, W) // 32 * 32))


def expression(dt: int, H: int, W: int) -> str:
    """The kernel instantiation for storage type ``dt`` (1 bf16, 2 fp16) at an H x W image."""
    return f"cgspn_image_fwd<{dt}, {H}, {W}, {threads(H, W)}, {blocks_per_sm(H, W)}>"
