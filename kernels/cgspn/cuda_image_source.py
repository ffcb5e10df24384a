"""CUDA C++ source of the C-GSPN *image* forward: planar inputs, one image at a time per block, inputs read once.

Why a second design: the row design (:mod:`kernels.cgspn.cuda_scan_source`) runs each direction in its own
block, so every direction re-reads x, lam and the three gates: 40 of its 60 bytes per (b, pixel, channel)
(NOTES.md Round 5). Here a block holds one (batch element, channel) image in shared memory and runs the four
directions *concurrently* on it: the inputs cross DRAM once (10 bytes), the states are written once (8 bytes)
and the combine re-reads them from L2 (+ u, y: 4 bytes).

Layout it needs: planar (channel-major) inputs, i.e. unit stride along W -- element (b, i, j, c) at
``b*sb + c*sc + i*sh + j`` (gate k: ``+ k*sk``). A channels-last tensor would give a block one 2-byte
element of every 32-byte sector; the C-GSPN layer produces planar heads directly from its GEMMs instead
(:mod:`kernels.cgspn.layer`, ``layout="planar"``).

Kernel ``cgspn_image_fwd<DT, NT, MINB, H, W, PREFETCH, AHEAD, TIMED>`` (NOTES.md Rounds 8-11 for the design's
measurements): persistent blocks (the grid fills the GPU, image ``c B + b`` after image), NT threads (launch bound:
MINB blocks per SM); H and W are template arguments, so every shared-memory offset is an immediate. Warps 0-3 scan,
the others help. Per image:

1. load (every warp): the five planes' pixels (x, lam, l, m, r logits) from global memory straight into the
   scan's form in shared memory: ``bx = (lam + bias) (x + bias)`` in fp32, the interior gates of Eq. 2 packed
   as fp16 (l, r) -- from three ex2 and one reciprocal (the sigmoid ratios as products of 1 + e^-g) --, m
   taken as ``1 - l - r`` of the rounded values so the weights sum to exactly 1 (below the clamp they do not:
   m is then kept with its sign bit set in a third array), and for pixels on an edge of a scan's state axis
   (j = 0 / W-1 for the vertical scans, i = 0 / H-1 for the horizontal ones) Eq. 2's edge rule in fp32.
   Warp w converts rows w, w + NT/32, ..., lane q columns q, q + 32, ... (2-byte loads, any row strides; AHEAD
   rows' loads in flight during the conversion: by default one where one block fills an SM). (The design before
   round 10, 16-byte words of the five planes per thread, was slower at every grid and was removed in round 11;
   ``suite/gpu/probes/image_source_ab.py.txt`` compares against any earlier commit's source.)
2. scan (warps 0-3): warp d runs direction d (tb, bt, lr, rl) alone -- no block barrier per step. Lane q
   holds the fp32 states of positions q, q + 32, ... (ceil(P / 32) positions), so a warp's shared-memory
   reads of a row or column hit 32 distinct banks; the neighbours h[p-1], h[p+1] arrive by two rotating
   shuffles per position (issued first: they are the step's critical path); the next step's inputs are read
   while the current one computes. States go to ``hs (4, B, C, H, WP)`` in image order (WP = W rounded up to 8):
   vertical warps store each step's row, horizontal ones shift eight columns per position into a 16-byte
   register and store it every eighth step.
   Meanwhile the other warps combine the previous image: ``y = (u + bias_u) * sum_d h_d`` from its states
   (L2, 16-byte reads), y planar (each image contiguous; batch and channel strides given).
3. after the last image, every warp combines it.
Opt-in launch configuration (:class:`ImageConfig`, NOTES.md Rounds 9-11): PREFETCH has a helper thread ask L2 for
the next image's planes while the current one is scanned (faster at 27 and 37 only). Two warps per direction (a
barrier per step; ghost positions exchanged every 8 steps) and a blocked layout of a lane's positions were
measured slower and removed (NOTES.md Round 10), so was a compact 5-byte-per-pixel form for two images per SM
(Round 11).
Optional per-channel biases, added in fp32: the head's ``(5 C,)`` in [u, lam, l, m, r] order and x's ``(C,)``
(the layer folds its GEMM biases here instead of a pass over the planar GEMM outputs). Optional ``timing``
(int64, ``TIMING_SLOTS`` per block; a separate TIMED instantiation, so that the timestamps -- which keep memory
operations on their side -- are not in the kernel that runs otherwise): clock cycles per phase summed over the
block's images (load, scan, combine beside the scan, the scan phase's barrier-to-barrier time, the last combine,
images; then the block's start and end, its load and scan phases summed, the first image's start and the loop's end,
on the GPU's global nanosecond timer; then the gaps between one image's end and the next one's start summed, in ns
and in ticks), for ``suite/gpu`` probes.
"""

from typing import NamedTuple

from kernels.cgspn.cuda_scan_source import HELPERS, PREAMBLE

#: the most positions a lane holds (both grid sides <= 32 * MAX_LANE_POSITIONS)
MAX_LANE_POSITIONS = 6
#: int64 counters per block in the optional timing buffer
TIMING_SLOTS = 14

_IMAGE_KERNEL = r"""
// L2 eviction priorities (sm_80+): the states stay in L2 until the combine reads them (evict_last), the combine's
// reads let them go (evict_first); y is written once (evict_first). Measured in round 11: 1.02x at 147 (the combine
// beside the scan 37k -> 33k cycles per image), bit for bit the same outputs; hints on the inputs changed nothing.
__device__ __forceinline__ unsigned long long l2_evict_first() {
    unsigned long long p; asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(p)); return p;
}
__device__ __forceinline__ unsigned long long l2_evict_last() {
    unsigned long long p; asm("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(p)); return p;
}
__device__ __forceinline__ void st_u16_hint(u16* a, u16 v, unsigned long long policy) {
    asm volatile("st.global.L2::cache_hint.u16 [%0], %1, %2;" :: "l"(a), "h"(v), "l"(policy) : "memory");
}
__device__ __forceinline__ void st_v4_hint(void* a, uint4 v, unsigned long long policy) {
    asm volatile("st.global.L2::cache_hint.v4.u32 [%0], {%1, %2, %3, %4}, %5;"
                 :: "l"(a), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w), "l"(policy) : "memory");
}

template <int DT> __device__ __forceinline__ float raw_f(u32 v) {
    return DT == 1 ? __uint_as_float(v << 16) : f16_to_f32(v);
}
template <int DT> __device__ __forceinline__ float ld_f(const u16* p) { return raw_f<DT>((u32)__ldg(p)); }
__device__ __forceinline__ float ex2_approx(float v) { float y; asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(v)); return y; }

// The three normalized gates of a pixel whose state-axis neighbours exist as has_l / has_r (Eq. 2).
__device__ __forceinline__ float4 edge_gates(float sl, float sm, float sr, bool has_l, bool has_r) {
    const float den = sm + (has_l ? sl : 0.0f) + (has_r ? sr : 0.0f);
    const float inv = rcp_approx(fmaxf(den, CGSPN_GATE_EPS));
    return make_float4(has_l ? sl * inv : 0.0f, sm * inv, has_r ? sr * inv : 0.0f, 0.0f);
}

// Eq. 2 for an interior pixel given a_k = 1 + exp(-g_k) of the biased logits (s_k = 1 / a_k). While every
// a_k < 1e6 (every s_k > 1e-6: the sum is above the clamp, the products finite) the ratios are products:
// s_l / (s_l + s_m + s_r) = a_m a_r / (a_m a_r + a_l a_r + a_l a_m), one reciprocal for the three. Otherwise
// (saturated logits) the sigmoids one by one and the clamp. Returns whether the clamp applied. The products'
// condition is voted over the warp's active lanes so that the saturated arithmetic is a branch the warp skips
// (computed beside the products and selected, it doubled the reciprocals of the load).
__device__ __forceinline__ bool interior_gates(float a, float b, float c, float& gl, float& gm, float& gr) {
    const auto ratios = [&] {
        const float bc = b * c, ac = a * c, ab = a * b;
        const float inv = rcp_approx(bc + ac + ab);
        gl = bc * inv; gm = ac * inv; gr = ab * inv;
        return false;
    };
    const bool products = fmaxf(a, fmaxf(b, c)) < 1e6f;
    if (__all_sync(__activemask(), products)) return ratios();
    if (products) return ratios();
    const float sl = rcp_approx(a), sm = rcp_approx(b), sr = rcp_approx(c);
    const float den = sl + sm + sr;
    const float inv = rcp_approx(fmaxf(den, CGSPN_GATE_EPS));
    gl = sl * inv; gm = sm * inv; gr = sr * inv;
    return den < CGSPN_GATE_EPS;
}

// One image in shared memory, in the scan's form (byte offsets from the dynamic shared memory's start):
// float bx[HW] | u32 lr[HW] (fp16 l | fp16 r << 16) | u16 mf[HW] (0, or the clamped m with its sign bit set)
// | float4 edge_v[2][H] (j = 0, j = W-1) | float4 edge_h[2][W] (i = 0, i = H-1)
template <int H, int W> struct ImageLayout {
    static constexpr int HW = H * W, BX = 0, LR = (4 * HW + 15) / 16 * 16, MF = 2 * LR;
    static constexpr int EDGE = MF + (2 * HW + 15) / 16 * 16, BYTES = EDGE + 32 * (H + W);
};

// One channel's biases; the gates' as their exponent's addend, -log2(e) times the bias (e^-(g + z) = 2^(g nl + z nl):
// one FFMA per gate)
struct Biases { float u, lam, l, m, r, x; };
#define NEG_LOG2E (-1.4426950408889634f)

template <int DT> __device__ __forceinline__ Biases biases_of(const u16* bias, const u16* xbias, int c, int C) {
    Biases z{0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (bias != nullptr) {
        z.u = ld_f<DT>(bias + c); z.lam = ld_f<DT>(bias + C + c); z.l = NEG_LOG2E * ld_f<DT>(bias + 2 * C + c);
        z.m = NEG_LOG2E * ld_f<DT>(bias + 3 * C + c); z.r = NEG_LOG2E * ld_f<DT>(bias + 4 * C + c);
    }
    if (xbias != nullptr) z.x = ld_f<DT>(xbias + c);
    return z;
}

// Pixel k = (i, j) of the raw planes (2-byte values) into the scan's form; returns whether Eq. 2's clamp applied.
template <int DT, int H, int W>
__device__ __forceinline__ bool convert_pixel(char* smem, int i, int j, u32 rx, u32 rlam, u32 rgl, u32 rgm, u32 rgr,
                                              const Biases& z) {
    typedef ImageLayout<H, W> Lay;
    const int k = i * W + j;
    reinterpret_cast<float*>(smem + Lay::BX)[k] = (raw_f<DT>(rx) + z.x) * (raw_f<DT>(rlam) + z.lam);
    const float a = 1.0f + ex2_approx(fmaf(raw_f<DT>(rgl), NEG_LOG2E, z.l));
    const float b = 1.0f + ex2_approx(fmaf(raw_f<DT>(rgm), NEG_LOG2E, z.m));
    const float c = 1.0f + ex2_approx(fmaf(raw_f<DT>(rgr), NEG_LOG2E, z.r));
    float gl, gm, gr;
    const bool clamped = interior_gates(a, b, c, gl, gm, gr);
    reinterpret_cast<u32*>(smem + Lay::LR)[k] = pack2(gl, gr, 2);
    // m as 1 - l - r of the *rounded* l and r, so the weights sum to exactly 1 (no mass lost per step: an fp16
    // m of its own lost 3.5% over 147 steps of all-equal gates); below the clamp the sum is not 1 and m is kept
    // with the sign bit set (a -0 underflow included)
    reinterpret_cast<u16*>(smem + Lay::MF)[k] = clamped ? (u16)(pack1(gm, 2) | 0x8000u) : (u16)0;
    if (j == 0 || j == W - 1 || i == 0 || i == H - 1) {
        float4* edge_v = reinterpret_cast<float4*>(smem + Lay::EDGE);
        float4* edge_h = edge_v + 2 * H;
        const float sl = rcp_approx(a), sm = rcp_approx(b), sr = rcp_approx(c);
        if (j == 0) edge_v[i] = edge_gates(sl, sm, sr, false, W > 1);
        if (j == W - 1) edge_v[H + i] = edge_gates(sl, sm, sr, W > 1, false);
        if (i == 0) edge_h[j] = edge_gates(sl, sm, sr, false, H > 1);
        if (i == H - 1) edge_h[W + j] = edge_gates(sl, sm, sr, H > 1, false);
    }
    return clamped;
}

// Load one image by rows: warp w of n converts rows w, w + n, ...; lane q columns q, q + 32, ... (2-byte
// loads, a warp's 64 contiguous bytes per plane and k; any row strides); AHEAD rows' 5 K values loaded while the
// current one converts (1 at one block per SM, the default; 0 with several, where the other blocks cover the
// latency and the registers are short; 2 a ring of three rows, the loop unrolled three times). No index division,
// the edge rule's rows warp-uniform; shared-memory stores of consecutive lanes are consecutive words
// (conflict-free). Returns whether a pixel of this warp's was clamped.
template <int DT, int H, int W, int AHEAD>
__device__ __forceinline__ bool load_rows(char* smem, const u16* const (&src)[5], const i64 (&rows)[5], const Biases& z,
                                          int w, int n) {
    constexpr int KW = (W + 31) / 32;
    const int lane = threadIdx.x & 31;
    const bool tail = lane + 32 * (KW - 1) < W;
    bool clamped = false;
    auto fetch = [&](int i, u32 (&v)[KW][5]) {
#pragma unroll
        for (int q = 0; q < 5; ++q) {
            const u16* row = src[q] + i * rows[q] + lane;
#pragma unroll
            for (int k = 0; k < KW; ++k)
                if (k < KW - 1 || tail) v[k][q] = (u32)__ldg(row + 32 * k);
        }
    };
    auto convert = [&](int i, const u32 (&v)[KW][5]) {
#pragma unroll
        for (int k = 0; k < KW; ++k)
            if (k < KW - 1 || tail)
                clamped |= convert_pixel<DT, H, W>(smem, i, lane + 32 * k, v[k][0], v[k][1], v[k][2], v[k][3], v[k][4], z);
    };
    if constexpr (AHEAD >= 2) {
        u32 ring[AHEAD + 1][KW][5];
#pragma unroll
        for (int d = 0; d < AHEAD; ++d)
            if (w + d * n < H) fetch(w + d * n, ring[d]);
#pragma unroll 1
        for (int i0 = w; i0 < H; i0 += (AHEAD + 1) * n) {
#pragma unroll
            for (int u = 0; u <= AHEAD; ++u) {
                const int i = i0 + u * n;
                if (i < H) {
                    if (i + AHEAD * n < H) fetch(i + AHEAD * n, ring[(u + AHEAD) % (AHEAD + 1)]);
                    convert(i, ring[u]);
                }
            }
        }
        return clamped;
    }
    constexpr bool PIPE = AHEAD == 1;
    u32 cur[KW][5], nxt[KW][5];
    if (PIPE && w < H) fetch(w, cur);
#pragma unroll 1
    for (int i = w; i < H; i += n) {
        if (!PIPE) fetch(i, cur);
        else if (i + n < H) fetch(i + n, nxt);
        convert(i, cur);
        if (PIPE) {
#pragma unroll
            for (int k = 0; k < KW; ++k)
#pragma unroll
                for (int q = 0; q < 5; ++q) cur[k][q] = nxt[k][q];
        }
    }
    return clamped;
}

template <int N> struct Int { static constexpr int value = N; };

// One direction on the image in shared memory (element (step row s, position p) is pixel VERT ? s W + p :
// p W + s), run by one warp: lane q holds positions q + 32 k (k < K = ceil(P / 32)), so its shared-memory reads
// of a row or column hit 32 distinct banks. CLAMPED: some pixel of the image is below Eq. 2's clamp, so m is
// read where flagged, else m = 1 - l - r. The step loop is unrolled twice only (two input buffers by parity): an
// eight-fold unroll made each direction's loop ~16 KB of code, past the instruction cache a warp scheduler keeps
// (NOTES.md Round 8).
template <int DT, int H, int W, bool VERT, bool REV, bool CLAMPED>
__device__ __forceinline__ void scan_direction(const char* smem, u16* hplane) {
    typedef ImageLayout<H, W> Lay;
    constexpr int L = VERT ? H : W, P = VERT ? W : H, K = (P + 31) / 32, WP = (W + 7) / 8 * 8;
    constexpr int K_OFF = VERT ? 32 : 32 * W, STEP = VERT ? W : 1, CHUNKS = (L + 7) / 8;  // in pixels
    constexpr int K_LAST = K - 1, LAST_LANE = (P - 1) & 31;  // position P - 1
    const int lane = threadIdx.x & 31;
    const bool tail = lane + 32 * (K - 1) < P;  // the last k holds a position (k < K - 1 always does)
    auto on = [&](int k) { return k < K - 1 || tail; };
    const float* bx = reinterpret_cast<const float*>(smem + Lay::BX) + (VERT ? lane : lane * W);
    const u32* lr = reinterpret_cast<const u32*>(smem + Lay::LR) + (VERT ? lane : lane * W);
    const u16* mf = reinterpret_cast<const u16*>(smem + Lay::MF) + (VERT ? lane : lane * W);
    const float4* edge = reinterpret_cast<const float4*>(smem + Lay::EDGE) + (VERT ? 0 : 2 * H);
    // vertical scans: this lane's first position in the states' row of the current step (advanced by a step's rows,
    // not recomputed from s: the 64-bit address was 8 SASS per step)
    u16* hrow = hplane + lane + (REV ? (L - 1) * WP : 0);
    struct In { float bx; u32 lr, m; };
    auto load = [&](int s, In (&v)[K], float4& e0, float4& e1) {
        const int o = s * STEP;
#pragma unroll
        for (int k = 0; k < K; ++k) {
            if (on(k)) {
                v[k].bx = bx[o + k * K_OFF];
                v[k].lr = lr[o + k * K_OFF];
                if (CLAMPED) v[k].m = mf[o + k * K_OFF];
            }
        }
        if (lane == 0) e0 = edge[s];
        if (lane == LAST_LANE) e1 = edge[L + s];
    };
    float h[K];
    In buf[2][K];
    float4 e[2][2];
    u32 pk[K][4];  // horizontal scans: eight steps' states per position, a 16-byte shift register
#pragma unroll
    for (int k = 0; k < K; ++k) {
        h[k] = 0.0f;
        buf[0][k] = buf[1][k] = In{0.0f, 0u, 0u};
        pk[k][0] = pk[k][1] = pk[k][2] = pk[k][3] = 0u;
    }
    e[0][0] = e[0][1] = e[1][0] = e[1][1] = make_float4(0.f, 0.f, 0.f, 0.f);
    // step s of the scan, inputs in buf[PAR], the next step's loaded into buf[PAR ^ 1]
    auto step = [&](auto parity, int s) {
        constexpr int PAR = decltype(parity)::value;
        // horizontal scans run in chunks of eight steps: only the last chunk in image order has dead steps
        const bool live = VERT || L % 8 == 0 || s < L;
        const int sn = REV ? s - 1 : s + 1;
        // the neighbours first: the shuffles are the step's critical path, and they would queue behind the next
        // step's shared-memory loads (one pipe)
        float up[K], dn[K];
#pragma unroll
        for (int k = 0; k < K; ++k) {
            up[k] = __shfl_sync(0xffffffffu, h[k], (lane + 31) & 31);
            dn[k] = __shfl_sync(0xffffffffu, h[k], (lane + 1) & 31);
        }
        // the next step's inputs while this one computes; also at a dead step, so that a reverse scan's first
        // live step (after dead ones) finds its row in the buffer of its parity
        if (sn >= 0 && sn < L) load(sn, buf[PAR ^ 1], e[PAR ^ 1][0], e[PAR ^ 1][1]);
        const In (&cur)[K] = buf[PAR];
        const float4 e0 = e[PAR][0], e1 = e[PAR][1];
#pragma unroll
        for (int k = 0; k < K; ++k) {
            // lane 0 at k = 0 and lane 31 at k = K - 1 wrap around to positions the edge rule weights by 0 (or
            // past P, held at 0)
            const float hl = lane == 0 ? (k > 0 ? up[k - 1] : 0.0f) : up[k];
            const float hr = lane == 31 ? (k < K - 1 ? dn[k + 1] : 0.0f) : dn[k];
            float gl = f16_to_f32(cur[k].lr & 0xffffu), gr = f16_to_f32(cur[k].lr >> 16), gm = 1.0f - gl - gr;
            if (CLAMPED && (cur[k].m & 0x8000u)) gm = f16_to_f32(cur[k].m & 0x7fffu);
            if (k == K_LAST && lane == LAST_LANE) { gl = e1.x; gm = e1.y; gr = e1.z; }
            if (k == 0 && lane == 0) { gl = e0.x; gm = e0.y; gr = e0.z; }
            // the own state's term first: only the last two FFMAs wait on the shuffles
            const float hn = fmaf(gl, hl, fmaf(gr, hr, fmaf(gm, h[k], cur[k].bx)));
            if (live) h[k] = on(k) ? hn : 0.0f;
            const u32 hv = live ? (u32)pack1(h[k], DT) : 0u;
            if (VERT) {
                if (on(k)) st_u16_hint(hrow + 32 * k, (u16)hv, l2_evict_last());
            } else if (REV) {  // columns descending: shift up, the new one at the bottom (the first ends at the top)
                pk[k][3] = __funnelshift_l(pk[k][2], pk[k][3], 16); pk[k][2] = __funnelshift_l(pk[k][1], pk[k][2], 16);
                pk[k][1] = __funnelshift_l(pk[k][0], pk[k][1], 16); pk[k][0] = (pk[k][0] << 16) | hv;
            } else {  // columns ascending: shift down, the new one at the top
                pk[k][0] = __funnelshift_r(pk[k][0], pk[k][1], 16); pk[k][1] = __funnelshift_r(pk[k][1], pk[k][2], 16);
                pk[k][2] = __funnelshift_r(pk[k][2], pk[k][3], 16); pk[k][3] = (pk[k][3] >> 16) | (hv << 16);
            }
        }
        if (VERT) hrow += REV ? -WP : WP;
    };
    load(REV ? L - 1 : 0, buf[0], e[0][0], e[0][1]);
    if constexpr (VERT) {  // every step's row stored as it is computed: no chunks, no dead steps
#pragma unroll 1
        for (int t = 0; t + 1 < L; t += 2) {
            step(Int<0>(), REV ? L - 1 - t : t);
            step(Int<1>(), REV ? L - 2 - t : t + 1);
        }
        if (L % 2) step(Int<0>(), REV ? 0 : L - 1);
    } else {  // horizontal: eight columns of states packed per position, stored every eighth step
#pragma unroll 1
        for (int ci = 0; ci < CHUNKS; ++ci) {
            const int c8 = REV ? CHUNKS - 1 - ci : ci;  // steps 8 c8 .. 8 c8 + 7 in image order
#pragma unroll 1
            for (int t = 0; t < 8; t += 2) {
                step(Int<0>(), REV ? 8 * c8 + 7 - t : 8 * c8 + t);
                step(Int<1>(), REV ? 8 * c8 + 6 - t : 8 * c8 + t + 1);
            }
#pragma unroll
            for (int k = 0; k < K; ++k)
                if (on(k))
                    st_v4_hint(hplane + (lane + 32 * k) * WP + 8 * c8, make_uint4(pk[k][0], pk[k][1], pk[k][2], pk[k][3]),
                               l2_evict_last());
        }
    }
}

// Scan warp `warp` (0-3) runs direction `warp` (tb, bt, lr, rl).
template <int DT, int H, int W, bool CLAMPED>
__device__ __forceinline__ void scan_warp(int warp, const char* smem, u16* hplane) {
    if (warp == 0) scan_direction<DT, H, W, true, false, CLAMPED>(smem, hplane);
    else if (warp == 1) scan_direction<DT, H, W, true, true, CLAMPED>(smem, hplane);
    else if (warp == 2) scan_direction<DT, H, W, false, false, CLAMPED>(smem, hplane);
    else scan_direction<DT, H, W, false, true, CLAMPED>(smem, hplane);
}

// Ask L2 for the interior 16-byte words of an image's plane (nothing outside the image; rows contiguous).
__device__ __forceinline__ void prefetch_plane_l2(const u16* src, i64 row_stride, int H, int W) {
    if (row_stride != W && H != 1) return;
    const unsigned long long a = reinterpret_cast<unsigned long long>(src), e = a + 2ull * H * W;
    const unsigned long long lo = (a + 15ull) & ~15ull, hi = e & ~15ull;
    if (hi > lo) asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" :: "l"(lo), "r"((u32)(hi - lo)) : "memory");
}

// y = (u + bias_u) * (tb + bt + lr + rl) of one image from its stored states (L2), eight pixels of a row per item,
// two items per thread in flight; threads [t, t + n) of the block
template <int DT, int H, int W>
__device__ __forceinline__ void combine_image(const u16* h0, i64 pstride, const u16* ub, i64 suh, u16* yb, float bias_u,
                                              int t, int n) {
    constexpr int WP = (W + 7) / 8 * 8, PER_ROW = WP / 8, ITEMS = H * PER_ROW;
    for (int it0 = t; it0 < ITEMS; it0 += 2 * n) {
        uint4 v[2][4];
        float uu[2][8];
#pragma unroll
        for (int s = 0; s < 2; ++s) {
            const int it = min(it0 + s * n, ITEMS - 1), i = it / PER_ROW, j0 = (it - i * PER_ROW) * 8;
#pragma unroll
            for (int d = 0; d < 4; ++d)
                asm("ld.global.cg.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;" : "=r"(v[s][d].x), "=r"(v[s][d].y),
                    "=r"(v[s][d].z), "=r"(v[s][d].w) : "l"(h0 + d * pstride + i * WP + j0), "l"(l2_evict_first()));
#pragma unroll
            for (int e = 0; e < 8; ++e) uu[s][e] = j0 + e < W ? ld_f<DT>(ub + i * suh + j0 + e) : 0.0f;
        }
#pragma unroll
        for (int s = 0; s < 2; ++s) {
            const int it = it0 + s * n;
            if (it >= ITEMS) break;
            const int i = it / PER_ROW, j0 = (it - i * PER_ROW) * 8;
            float acc[8], f[8];
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[e] = 0.0f;
#pragma unroll
            for (int d = 0; d < 4; ++d) {
                unpack<DT>(v[s][d], f);
#pragma unroll
                for (int e = 0; e < 8; ++e) acc[e] += f[e];
            }
#pragma unroll
            for (int e = 0; e < 8; ++e)
                if (j0 + e < W) st_u16_hint(yb + i * W + j0 + e, pack1((uu[s][e] + bias_u) * acc[e], DT), l2_evict_first());
        }
    }
}

// Timestamps of a TIMED kernel: SM clock ticks and the global nanosecond timer. The memory clobber keeps the compiler
// from moving loads and stores across them, so a phase's timestamps bracket its memory operations (round 11: the
// ~8 us per image between one image's end and the next one's start stayed the same with and without it).
template <bool TIMED> struct Stamp {  // (clock ticks, global ns); zeros and no instruction unless TIMED
    long long tick = 0, ns = 0;
    __device__ __forceinline__ static Stamp now() {
        Stamp s;
        if constexpr (TIMED) {
            asm volatile("mov.u64 %0, %%clock64;" : "=l"(s.tick) :: "memory");
            asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(s.ns) :: "memory");
        }
        return s;
    }
};

template <int DT, int NT, int MINB, int H, int W, bool PREFETCH = false, int AHEAD = -1, bool TIMED = false>
__global__ void __launch_bounds__(NT, MINB)
cgspn_image_fwd(const u16* __restrict__ x, const u16* __restrict__ lam, const u16* __restrict__ u,
                const u16* __restrict__ g, const u16* __restrict__ bias, const u16* __restrict__ xbias,
                u16* __restrict__ hs, u16* __restrict__ y, long long* __restrict__ timing, int B, int C,
                i64 sxb, i64 sxc, i64 sxh, i64 slb, i64 slc, i64 slh, i64 sub, i64 suc, i64 suh,
                i64 sgb, i64 sgk, i64 sgc, i64 sgh, i64 syb, i64 syc) {
    constexpr int WP = (W + 7) / 8 * 8;
    constexpr int SCAN = 128;  // threads of the four scan warps; the others help
    static_assert(NT >= SCAN + 32, "warps past the scan warps combine the previous image: at least one helper warp");
    extern __shared__ __align__(16) char smem[];
    const int tid = threadIdx.x, warp = tid >> 5, images = B * C;
    const i64 pstride = (i64)B * C * (H * WP);  // one direction's states
    typedef Stamp<TIMED> St;
    // TIMED: clock ticks of the load, of warp 0's scan, of the first helper's combine, of the scan phase, of the last
    // combine, images; the load's and the scan phase's global ns
    long long tsum[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const St start = St::now();
    long long first_ns = -1, gap_ns = 0, gap_ticks = 0;  // TIMED: the gaps between one image's end and the next one's start
    St last = start;
    int prev = -1;  // the image whose states the helper warps combine during the next scan
    // image img = c B + b: its planes x, lam, l, m, r (element (i, j) at src[q] + i rows[q] + j)
    const i64 rows[5] = {sxh, slh, sgh, sgh, sgh};
    auto planes = [&](int img, const u16* (&src)[5]) {
        const int c = img / B;
        const i64 b = img - c * B;
        const u16* gb = g + b * sgb + (i64)c * sgc;
        src[0] = x + b * sxb + (i64)c * sxc; src[1] = lam + b * slb + (i64)c * slc;
        src[2] = gb; src[3] = gb + sgk; src[4] = gb + 2 * sgk;
    };
    auto combine = [&](int img, int t, int n) {
        const int c = img / B;
        const i64 b = img - c * B;
        combine_image<DT, H, W>(hs + (b * C + c) * (i64)(H * WP), pstride, u + b * sub + (i64)c * suc, suh,
                                y + b * syb + (i64)c * syc, biases_of<DT>(bias, xbias, c, C).u, t, n);
    };
    for (int img = blockIdx.x; img < images; img += gridDim.x) {
        const int c = img / B;
        const i64 b = img - c * B;
        const St t0 = St::now();
        if constexpr (TIMED) {
            if (first_ns < 0) first_ns = t0.ns;
            else { gap_ns += t0.ns - last.ns; gap_ticks += t0.tick - last.tick; }
        }
        // 1. load (the previous scan finished at the barrier closing the last iteration)
        const u16* src[5];
        planes(img, src);
        const Biases z = biases_of<DT>(bias, xbias, c, C);
        constexpr int AH = AHEAD < 0 ? MINB == 1 : AHEAD;
        const bool clamped = __syncthreads_or(load_rows<DT, H, W, AH>(smem, src, rows, z, warp, NT / 32));
        const St t1 = St::now();
        // 2. scan (warps 0-3); the others combine the previous image (and ask L2 for the next one's planes)
        if (warp < 4) {
            u16* hplane = hs + (((i64)warp * B + b) * C + c) * (i64)(H * WP);
            if (clamped) scan_warp<DT, H, W, true>(warp, smem, hplane);
            else scan_warp<DT, H, W, false>(warp, smem, hplane);
            if (tid == 0) tsum[1] += St::now().tick - t1.tick;
        } else {
            if constexpr (PREFETCH) {
                const int next = img + gridDim.x;
                if (tid == SCAN && next < images) {
                    const u16* nsrc[5];
                    planes(next, nsrc);
#pragma unroll
                    for (int q = 0; q < 5; ++q) prefetch_plane_l2(nsrc[q], rows[q], H, W);
                }
            }
            if (prev >= 0) {
                combine(prev, tid - SCAN, NT - SCAN);
                if (tid == SCAN) tsum[2] += St::now().tick - t1.tick;
            }
        }
        __syncthreads();  // the image's states are stored (and visible to the block); shared memory is free again
        const St t2 = St::now();
        tsum[0] += t1.tick - t0.tick; tsum[3] += t2.tick - t1.tick; tsum[6] += t1.ns - t0.ns; tsum[7] += t2.ns - t1.ns;
        tsum[5] += 1;
        prev = img;
        last = t2;
    }
    const St t4 = St::now();
    if (prev >= 0) combine(prev, tid, NT);  // 3. the last image, every warp
    if constexpr (TIMED) {
        const St t5 = St::now();
        tsum[4] = t5.tick - t4.tick;
        __syncthreads();
        long long* out = timing + TIMING_SLOTS * (i64)blockIdx.x;
        if (tid == 0) {
            out[0] = tsum[0]; out[1] = tsum[1]; out[3] = tsum[3]; out[4] = tsum[4]; out[5] = tsum[5];
            out[6] = start.ns; out[7] = t5.ns; out[8] = tsum[6]; out[9] = tsum[7]; out[10] = first_ns; out[11] = t4.ns;
            out[12] = gap_ns; out[13] = gap_ticks;
        }
        if (tid == SCAN) out[2] = tsum[2];
    }
}
"""

IMAGE_SOURCE = PREAMBLE + HELPERS + f"#define TIMING_SLOTS {TIMING_SLOTS}\n" + _IMAGE_KERNEL


def smem_bytes(H: int, W: int) -> int:
    """Dynamic shared memory of ``cgspn_image_fwd`` at an H x W image (``ImageLayout`` in the source)."""
    r16 = lambda n: (n + 15) // 16 * 16  # noqa: E731
    return 2 * r16(4 * H * W) + r16(2 * H * W) + 32 * (H + W)


def _smem_blocks(H: int, W: int, smem_per_sm: int = 233472, reserved: int = 1024) -> int:
    """Images that fit one SM's shared memory (sm_90: 228 KB, 1 KB reserved per block), at most 4."""
    return max(1, min(4, smem_per_sm // (smem_bytes(H, W) + reserved)))


class ImageConfig(NamedTuple):
    """Launch choices of the image forward (the default is the fastest measured; the others are kept for A/B,
    ``suite/gpu/cgspn_image_check.py --variants``; NOTES.md Rounds 9-10): ``prefetch`` (a helper thread asks L2 for
    the next image's planes by ``cp.async.bulk.prefetch`` while the current one is scanned), ``threads`` per block
    (0: :func:`threads`; more helper warps combine faster beside the scan), ``blocks`` (0: the launch bound's
    blocks per SM as :func:`launch_blocks` chooses them; else that many where shared memory allows, fewer
    registers), ``ahead`` (rows whose loads are in flight while a warp converts one: 0-2; -1: one where one block
    fills an SM, else none)."""

    prefetch: bool = False
    threads: int = 0
    blocks: int = 0
    ahead: int = -1


DEFAULT_CONFIG = ImageConfig()


def register_threads(H: int, W: int) -> int:
    """Threads per SM the launch bound keeps: 576 where a lane holds at most 3 positions (sides <= 96; 18 warps per
    SM leave 96 registers per thread, enough for the scan's buffers there), else 512 (128 registers; the buffers
    grow with the positions per lane: at 147 one block of 384 threads gets 168, the load by rows uses 167)."""
    return 576 if max(H, W) <= 96 else 512


def threads(H: int, W: int) -> int:
    """Threads per block: the 4 scan warps plus at least two helper warps for the loads and the combine (the helpers
    combine the previous image while the scan warps scan: one helper warp took longer than the scan at 74 and 37,
    two measured 1.15x / 1.32x faster there, results/h200/2026-11-30-image-v4), more where the blocks shared
    memory allows share 512 threads per SM: 192-384."""
    return max(192, min(384, 512 // _smem_blocks(H, W) // 32 * 32))


def check_config(config: ImageConfig) -> None:
    """A clear error for a configuration the kernel cannot take (the field and the allowed values)."""
    if config.threads and not (160 <= config.threads <= 1024 and config.threads % 32 == 0):
        raise ValueError(f"config.threads: {config.threads} is not 0 or a multiple of 32 in [160, 1024]")
    if not 0 <= config.blocks <= 32:
        raise ValueError(f"config.blocks: {config.blocks} is not in [0, 32]")
    if config.ahead not in (-1, 0, 1, 2):
        raise ValueError(f"config.ahead: {config.ahead} is not one of -1, 0, 1, 2")


def launch_threads(H: int, W: int, config: ImageConfig = DEFAULT_CONFIG) -> int:
    """Threads per block under ``config``."""
    return config.threads or threads(H, W)


def launch_blocks(H: int, W: int, config: ImageConfig = DEFAULT_CONFIG) -> int:
    """The launch bound's blocks per SM under ``config``: ``config.blocks``, else as many as fit
    :func:`register_threads` at :func:`launch_threads`; no more than shared memory allows, at least one."""
    cap = config.blocks or register_threads(H, W) // launch_threads(H, W, config)
    return max(1, min(cap, _smem_blocks(H, W)))


def expression(dt: int, H: int, W: int, config: ImageConfig = DEFAULT_CONFIG, timed: bool = False) -> str:
    """The kernel instantiation for storage type ``dt`` (1 bf16, 2 fp16) at an H x W image; ``timed``: the one that
    fills the per-phase timing buffer (the others have no timestamp in their code)."""
    flag = lambda b: "true" if b else "false"  # noqa: E731
    tail = "" if config == DEFAULT_CONFIG and not timed else f", {flag(config.prefetch)}, {config.ahead}"
    if timed:
        tail += ", true"
    return f"cgspn_image_fwd<{dt}, {launch_threads(H, W, config)}, {launch_blocks(H, W, config)}, {H}, {W}{tail}>"
