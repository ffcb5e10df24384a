"""CUDA C++ source of the C-GSPN fast path, forward and backward (compiled at first use by :mod:`kernels.cgspn.cuda_scan`).

Kept as a string so the package needs no data files; ``cuda_scan.write_source(path)`` writes it out with
explicit instantiations for ``nvcc -arch=sm_90 -Xptxas -v``. No headers: bf16/fp16 conversions are inline PTX,
so NVRTC needs no include path.

Forward (``cgspn_rows<..., ADJ=false>``, the default): one block per (NV 16-byte channel vectors, batch element, direction)
-- grid x, y, z. NV=2 makes a block read whole 32-byte sectors (16 bf16 / 8 fp32 channels per pixel and
input); with one vector per block the neighbouring block on another SM read the other half of each sector
and the forward took twice as long (NOTES.md Round 5). Thread tid owns channel vector tid % NV and PPT
consecutive state positions (the row perpendicular to the scan), padded to a whole warp, not a power of
two. The fp32 state lives in registers; the neighbour terms h[p-1], h[p+1] come from the thread itself or,
at its first and last position, from the thread NV away through a double-buffered shared-memory edge
array (one ``__syncthreads`` per step, no global scratch). The inputs of the next DEPTH rows are copied by
``cp.async.cg`` into a per-thread ring in shared memory (no registers held by loads in flight; each thread
reads only its own slots, so no barrier guards the ring). Eq. 2 is folded in: sigmoid by ex2 + rcp (or
tanh.approx with FASTSIG), one reciprocal of the boundary-aware sum, the update written as
inv * (s_l h[p-1] + s_m h + s_r h[p+1]) + lam x. Every direction stores its h in the input dtype;
``cgspn_combine`` writes y = u * sum_d h_d (fp32 sum). Offsets are int64 (batch, row and position terms).
``cgspn_fwd_regs`` is the first version (one vector per block, the ring in registers), kept for the A/B.

Backward: ``cgspn_rows<..., ADJ=true>`` is the same skeleton run in the opposite row order on (dy, u, gates):
the adjoint a = u dy + c_m[p] + c_r[p-1] + c_l[p+1] with c = w a of the row after (the neighbours' products
through the same edge array), stored per direction as ``adj (4, B, H, W, C)`` in the input dtype; two blocks
per SM (launch bounds 320 threads, 96 registers). ``cgspn_bwd_epilogue`` then forms every input gradient in
one pass: dx, dlam from sum_d a_d, du from sum_d h_d, and the raw-gate gradient from a_d times the previous
row's h at p-1, p, p+1 (read from ``hs``), per direction pair through Eq. 2. The adjoint never reads ``hs``
and stores one value per element, not four: 12 + 2 bytes per element and direction against the Triton quad
backward's 26 (NOTES.md Round 7).
"""

from kernels.cgspn.reference import GATE_EPS

# types, bf16/fp16 conversions, vector loads/stores, sigmoid: shared with the image design (cuda_image_source)
HELPERS = r"""
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;

// DT: 0 = float32, 1 = bfloat16, 2 = float16 (storage); CPT channels per 16-byte vector
template <int DT> struct Cfg { static constexpr int ESZ = DT == 0 ? 4 : 2; static constexpr int CPT = 16 / ESZ; };

__device__ __forceinline__ float f16_to_f32(u32 h) {
    float f; u16 s = (u16)h; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(s)); return f;
}
__device__ __forceinline__ u32 pack2(float lo, float hi, int dt) {
    u32 r;
    if (dt == 1) asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    else asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
__device__ __forceinline__ u16 pack1(float v, int dt) {
    u16 r;
    if (dt == 1) asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(v));
    else asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(v));
    return r;
}

// Channel vectors of NW 32-bit words: NW = 4 (16 bytes, CPT channels: the default) or 2 (8 bytes, CPT / 2)
template <int NW> struct Vec;
template <> struct Vec<4> {
    typedef uint4 T;
    static __device__ __forceinline__ void words(const uint4 v, u32 (&w)[4]) { w[0] = v.x; w[1] = v.y; w[2] = v.z; w[3] = v.w; }
    static __device__ __forceinline__ uint4 make(const u32 (&w)[4]) { return make_uint4(w[0], w[1], w[2], w[3]); }
};
template <> struct Vec<2> {
    typedef uint2 T;
    static __device__ __forceinline__ void words(const uint2 v, u32 (&w)[2]) { w[0] = v.x; w[1] = v.y; }
    static __device__ __forceinline__ uint2 make(const u32 (&w)[2]) { return make_uint2(w[0], w[1]); }
};

template <int DT, int NW = 4> __device__ __forceinline__ void unpack(const typename Vec<NW>::T v, float* out) {
    u32 w[NW];
    Vec<NW>::words(v, w);
#pragma unroll
    for (int i = 0; i < NW; ++i) {
        if (DT == 0) out[i] = __uint_as_float(w[i]);
        else if (DT == 1) { out[2 * i] = __uint_as_float(w[i] << 16); out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u); }
        else { out[2 * i] = f16_to_f32(w[i] & 0xffffu); out[2 * i + 1] = f16_to_f32(w[i] >> 16); }
    }
}

template <int DT, int NW = 4> __device__ __forceinline__ typename Vec<NW>::T pack(const float* v) {
    u32 w[NW];
#pragma unroll
    for (int i = 0; i < NW; ++i) w[i] = DT == 0 ? __float_as_uint(v[i]) : pack2(v[2 * i], v[2 * i + 1], DT);
    return Vec<NW>::make(w);
}

// one channel vector (NW words) at element offset off; VEC: aligned vector load, else element loads of the
// first n channels (the rest zero)
template <int DT, bool VEC, int NW = 4>
__device__ __forceinline__ typename Vec<NW>::T load_vec(const void* base, i64 off, int n) {
    typedef typename Vec<NW>::T T;
    if constexpr (VEC) {
        return __ldg(reinterpret_cast<const T*>(reinterpret_cast<const char*>(base) + off * Cfg<DT>::ESZ));
    } else {
        u32 w[NW];
#pragma unroll
        for (int i = 0; i < NW; ++i) w[i] = 0u;
        if (DT == 0) {
            const u32* p = reinterpret_cast<const u32*>(base) + off;
#pragma unroll
            for (int i = 0; i < NW; ++i) if (i < n) w[i] = __ldg(p + i);
        } else {
            const u16* p = reinterpret_cast<const u16*>(base) + off;
#pragma unroll
            for (int i = 0; i < 2 * NW; ++i) if (i < n) w[i / 2] |= ((u32)__ldg(p + i)) << (16 * (i % 2));
        }
        return Vec<NW>::make(w);
    }
}

template <int DT, bool VEC, int NW = 4>
__device__ __forceinline__ void store_vec(void* base, i64 off, int n, const float* v) {
    typedef typename Vec<NW>::T T;
    if constexpr (VEC) {
        *reinterpret_cast<T*>(reinterpret_cast<char*>(base) + off * Cfg<DT>::ESZ) = pack<DT, NW>(v);
    } else if (DT == 0) {
        float* p = reinterpret_cast<float*>(base) + off;
#pragma unroll
        for (int i = 0; i < NW; ++i) if (i < n) p[i] = v[i];
    } else {
        u16* p = reinterpret_cast<u16*>(base) + off;
#pragma unroll
        for (int i = 0; i < 2 * NW; ++i) if (i < n) p[i] = pack1(v[i], DT);
    }
}

__device__ __forceinline__ float sigmoid_exact(float r) {
    float e, y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(-1.4426950408889634f * r));
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(1.0f + e));
    return y;
}
__device__ __forceinline__ float sigmoid_tanh(float r) {
    float t; asm("tanh.approx.f32 %0, %1;" : "=f"(t) : "f"(0.5f * r)); return fmaf(0.5f, t, 0.5f);
}
__device__ __forceinline__ float rcp_approx(float v) { float y; asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(v)); return y; }

"""

_ROW_KERNELS = r"""
// The neighbour exchange of one step, through buf (a parity half of the edge array): every thread publishes
// `first` (its first position's value) and, with KINDS == 2, `last` (its last position's), one barrier, then
// reads the `last` of the thread NV before it (nl) and the `first` of the thread NV after it (nr); zeros beyond
// the block's ends. Forward: first/last = the state at the first/last position (one kind when they coincide);
// adjoint: first = the first position's l-product (it flows to p-1), last = the last one's r-product (to p+1).
template <int CPT, int KINDS>
__device__ __forceinline__ void exchange(float4* buf, const float (&first)[CPT], const float (&last)[CPT], int tid,
                                         int NT, int NV, float (&nl)[CPT], float (&nr)[CPT]) {
    constexpr int NV4 = CPT / 4;
#pragma unroll
    for (int w = 0; w < NV4; ++w) {
        buf[w * NT + tid] = make_float4(first[4 * w], first[4 * w + 1], first[4 * w + 2], first[4 * w + 3]);
        if (KINDS > 1)
            buf[(NV4 + w) * NT + tid] = make_float4(last[4 * w], last[4 * w + 1], last[4 * w + 2], last[4 * w + 3]);
    }
    __syncthreads();
    const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int w = 0; w < NV4; ++w) {
        const float4 a = tid >= NV ? buf[((KINDS - 1) * NV4 + w) * NT + tid - NV] : zero;
        const float4 c = tid + NV < NT ? buf[w * NT + tid + NV] : zero;
        nl[4 * w] = a.x; nl[4 * w + 1] = a.y; nl[4 * w + 2] = a.z; nl[4 * w + 3] = a.w;
        nr[4 * w] = c.x; nr[4 * w + 1] = c.y; nr[4 * w + 2] = c.z; nr[4 * w + 3] = c.w;
    }
}

// Eq. 2 at one element: the sigmoids of the three raw gates and live / max(the boundary-aware sum, eps), whose
// products are the normalized weights (live 0: a padded position, zero weights)
template <bool FASTSIG>
__device__ __forceinline__ void gate_weights(float rl, float rm, float rr, float has_l, float has_r, float live, float& sl,
                                             float& sm, float& sr, float& inv) {
    sl = FASTSIG ? sigmoid_tanh(rl) : sigmoid_exact(rl);
    sm = FASTSIG ? sigmoid_tanh(rm) : sigmoid_exact(rm);
    sr = FASTSIG ? sigmoid_tanh(rr) : sigmoid_exact(rr);
    const float den = fmaf(has_r, sr, fmaf(has_l, sl, sm));
    inv = live * rcp_approx(fmaxf(den, CGSPN_GATE_EPS));
}

// One step of Eq. 1-2 for a thread's PPT positions x CPT channels, in place on h: the raw inputs cur
// (x, lam, l, m, r per position), the neighbours' states nl / nr at the first / last position, Eq. 2's
// boundary masks has_l / has_r and live (0 for padded positions, which keep a zero state).
template <int DT, int PPT, bool FASTSIG>
__device__ __forceinline__ void row_update(const uint4 (&cur)[PPT][5], const float (&nl)[Cfg<DT>::CPT],
                                           const float (&nr)[Cfg<DT>::CPT], const float (&has_l)[PPT],
                                           const float (&has_r)[PPT], const float (&live)[PPT], float (&h)[PPT][Cfg<DT>::CPT]) {
    constexpr int CPT = Cfg<DT>::CPT;
    float hn[PPT][CPT];
#pragma unroll
    for (int k = 0; k < PPT; ++k) {
        float vx[CPT], vl[CPT], gl[CPT], gm[CPT], gr[CPT];
        unpack<DT>(cur[k][0], vx); unpack<DT>(cur[k][1], vl);
        unpack<DT>(cur[k][2], gl); unpack<DT>(cur[k][3], gm); unpack<DT>(cur[k][4], gr);
#pragma unroll
        for (int e = 0; e < CPT; ++e) {
            float sl, sm, sr, inv;
            gate_weights<FASTSIG>(gl[e], gm[e], gr[e], has_l[k], has_r[k], live[k], sl, sm, sr, inv);
            const float left = k > 0 ? h[k - 1][e] : nl[e];
            const float right = k + 1 < PPT ? h[k + 1][e] : nr[e];
            const float acc = fmaf(sr, right, fmaf(sm, h[k][e], sl * left));
            hn[k][e] = fmaf(acc, inv, vl[e] * vx[e]);
        }
    }
#pragma unroll
    for (int k = 0; k < PPT; ++k)
#pragma unroll
        for (int e = 0; e < CPT; ++e) h[k][e] = hn[k][e];
}

// round-5 first version: the input ring in registers, one 16-byte channel vector per block (kept for the A/B)
template <int DT, int PPT, int DEPTH, bool VEC, bool FASTSIG>
__global__ void cgspn_fwd_regs(const void* __restrict__ x, const void* __restrict__ lam, const void* __restrict__ g,
                          void* __restrict__ hs, int H, int W, int C,
                          i64 sxb, i64 sxh, i64 sxw, i64 slb, i64 slh, i64 slw, i64 sgb, i64 sgh, i64 sgw, i64 sgk,
                          i64 shd, i64 shb, i64 shh, i64 shw) {
    constexpr int CPT = Cfg<DT>::CPT;
    constexpr int NV4 = CPT / 4;  // float4s per channel vector of fp32 state
    extern __shared__ float4 edges[];  // [parity][first|last][NV4][NT]
    const int NT = blockDim.x;
    const int d = blockIdx.z;
    const bool vertical = d < 2, reverse = (d & 1) != 0;
    const int L = vertical ? H : W, P = vertical ? W : H;
    const i64 b = blockIdx.y;
    const int c0 = blockIdx.x * CPT;
    const int nc = min(CPT, C - c0);
    const i64 xs = vertical ? sxh : sxw, xp = vertical ? sxw : sxh;
    const i64 ls = vertical ? slh : slw, lp = vertical ? slw : slh;
    const i64 gs = vertical ? sgh : sgw, gp = vertical ? sgw : sgh;
    const i64 hs_ = vertical ? shh : shw, hp = vertical ? shw : shh;
    const int tid = threadIdx.x;
    const int p0 = tid * PPT;
    // int64 base offsets of position p0, row 0
    const i64 bx = b * sxb + (i64)p0 * xp + c0, bl = b * slb + (i64)p0 * lp + c0, bg = b * sgb + (i64)p0 * gp + c0;
    const i64 bh = (i64)d * shd + b * shb + (i64)p0 * hp + c0;
    float has_l[PPT], has_r[PPT], live[PPT];
#pragma unroll
    for (int k = 0; k < PPT; ++k) {
        const int p = p0 + k;
        live[k] = p < P ? 1.0f : 0.0f;  // padded positions keep a zero state (zero weights, no input)
        has_l[k] = p > 0 ? 1.0f : 0.0f;
        has_r[k] = p < P - 1 ? 1.0f : 0.0f;
    }
    uint4 ring[DEPTH][PPT][5];
    auto load_row = [&](int t, uint4 (&dst)[PPT][5]) {
        const i64 r = reverse ? (i64)(L - 1 - t) : (i64)t;
#pragma unroll
        for (int k = 0; k < PPT; ++k) {
            if (t < L && p0 + k < P) {
                dst[k][0] = load_vec<DT, VEC>(x, bx + r * xs + k * xp, nc);
                dst[k][1] = load_vec<DT, VEC>(lam, bl + r * ls + k * lp, nc);
                const i64 og = bg + r * gs + k * gp;
                dst[k][2] = load_vec<DT, VEC>(g, og, nc);
                dst[k][3] = load_vec<DT, VEC>(g, og + sgk, nc);
                dst[k][4] = load_vec<DT, VEC>(g, og + 2 * sgk, nc);
            } else {
#pragma unroll
                for (int q = 0; q < 5; ++q) dst[k][q] = make_uint4(0u, 0u, 0u, 0u);
            }
        }
    };
#pragma unroll
    for (int s = 0; s < DEPTH; ++s) load_row(s, ring[s]);
    float h[PPT][CPT];
#pragma unroll
    for (int k = 0; k < PPT; ++k)
#pragma unroll
        for (int e = 0; e < CPT; ++e) h[k][e] = 0.0f;
    int parity = 0;
    for (int t0 = 0; t0 < L; t0 += DEPTH) {
#pragma unroll
        for (int s = 0; s < DEPTH; ++s) {
            const int t = t0 + s;
            if (t >= L) break;  // uniform over the block
            uint4 cur[PPT][5];
#pragma unroll
            for (int k = 0; k < PPT; ++k)
#pragma unroll
                for (int q = 0; q < 5; ++q) cur[k][q] = ring[s][k][q];
            load_row(t + DEPTH, ring[s]);  // in flight during the DEPTH steps before its use
            float nl[CPT], nr[CPT];
            exchange<CPT, (PPT > 1 ? 2 : 1)>(edges + (i64)parity * 2 * NV4 * NT, h[0], h[PPT - 1], tid, NT, 1, nl, nr);
            parity ^= 1;
            const i64 r = reverse ? (i64)(L - 1 - t) : (i64)t;
            row_update<DT, PPT, FASTSIG>(cur, nl, nr, has_l, has_r, live, h);
#pragma unroll
            for (int k = 0; k < PPT; ++k)
                if (p0 + k < P) store_vec<DT, VEC>(hs, bh + r * hs_ + k * hp, nc, h[k]);
        }
    }
}

__device__ __forceinline__ unsigned smem_u32(const void* p) {
    unsigned long long a;
    asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(p));
    return (unsigned)a;
}
// 16 bytes global -> shared, asynchronous, L2 only (cg); zero-filled when !pred (no bytes read)
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool pred) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(smem_u32(dst)), "l"(src), "r"(pred ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory");
}

// One step of the adjoint (the forward's recurrence transposed) for a thread's PPT positions: with the products
// c_k = w_k(s+1, p) a_{s+1}(p) of the row after this one in scan order, a_s(p) = dh(p) + c_m(p) + c_r(p-1)
// + c_l(p+1) (the neighbours' c_r / c_l at the first / last position arrive as nl / nr), dh = u dy from the raw
// inputs cur[k][0..1] (dy, u); then this row's weights (Eq. 2, from the raw gates cur[k][2..4]) give the next
// products. a is left in `a` for the store; padded positions get zero weights (their products stay 0).
template <int DT, int PPT, bool FASTSIG>
__device__ __forceinline__ void adjoint_update(const uint4 (&cur)[PPT][5], const float (&nl)[Cfg<DT>::CPT],
                                               const float (&nr)[Cfg<DT>::CPT], const float (&has_l)[PPT],
                                               const float (&has_r)[PPT], const float (&live)[PPT],
                                               float (&cl)[PPT][Cfg<DT>::CPT], float (&cm)[PPT][Cfg<DT>::CPT],
                                               float (&cr)[PPT][Cfg<DT>::CPT], float (&a)[PPT][Cfg<DT>::CPT]) {
    constexpr int CPT = Cfg<DT>::CPT;
#pragma unroll
    for (int k = 0; k < PPT; ++k) {
        float vd[CPT], vu[CPT];
        unpack<DT>(cur[k][0], vd); unpack<DT>(cur[k][1], vu);
#pragma unroll
        for (int e = 0; e < CPT; ++e) {
            const float from_left = k > 0 ? cr[k - 1][e] : nl[e];
            const float from_right = k + 1 < PPT ? cl[k + 1][e] : nr[e];
            a[k][e] = fmaf(vu[e], vd[e], cm[k][e] + from_left + from_right);
        }
    }
#pragma unroll
    for (int k = 0; k < PPT; ++k) {
        float gl[CPT], gm[CPT], gr[CPT];
        unpack<DT>(cur[k][2], gl); unpack<DT>(cur[k][3], gm); unpack<DT>(cur[k][4], gr);
#pragma unroll
        for (int e = 0; e < CPT; ++e) {
            float sl, sm, sr, inv;
            gate_weights<FASTSIG>(gl[e], gm[e], gr[e], has_l[k], has_r[k], live[k], sl, sm, sr, inv);
            const float ia = inv * a[k][e];
            cl[k][e] = has_l[k] * sl * ia;
            cm[k][e] = sm * ia;
            cr[k][e] = has_r[k] * sr * ia;
        }
    }
}

// The row-scan skeleton of the fast path, forward (ADJ false) or adjoint (ADJ true): NV channel vectors per block
// (NV=2: a 32-byte sector per pixel and input), the input ring DEPTH rows deep in shared memory, filled by cp.async
// (no registers held by loads in flight). Thread tid: channel vector v = tid % NV, positions p0 = (tid / NV) * PPT
// .. + PPT-1; neighbours tid -+ NV. Shared memory: edges [2 parity][KINDS][NV4][NT] float4, then ring
// [DEPTH][5][PPT][NT] uint4 (own slots only). Inputs in0, in1, g: forward x, lam and the raw gates, storing each
// row's h to out (hs); adjoint dy, u and the raw gates, stepping the rows in the opposite order and storing each
// row's adjoint a to out (adj).
template <int DT, int NV, int PPT, int DEPTH, bool VEC, bool FASTSIG, bool ADJ>
__global__ void __launch_bounds__(PPT > 1 ? 256 : (ADJ ? 320 : 512), (ADJ && PPT == 1 && VEC) ? 2 : 0)
cgspn_rows(const void* __restrict__ in0, const void* __restrict__ in1, const void* __restrict__ g, void* __restrict__ out,
           int H, int W, int C, i64 sxb, i64 sxh, i64 sxw, i64 slb, i64 slh, i64 slw, i64 sgb, i64 sgh, i64 sgw, i64 sgk,
           i64 shd, i64 shb, i64 shh, i64 shw) {
    constexpr int CPT = Cfg<DT>::CPT;
    constexpr int NV4 = CPT / 4;
    // values published per step: the forward's first and last state (one when they coincide); the adjoint's
    // first l-product and last r-product
    constexpr int KINDS = (PPT > 1 || ADJ) ? 2 : 1;
    extern __shared__ float4 smem[];
    const int NT = blockDim.x;
    float4* edges = smem;
    uint4* ring = reinterpret_cast<uint4*>(smem + 2 * KINDS * NV4 * NT);
    const int d = blockIdx.z;
    const bool vertical = d < 2, reverse = ((d & 1) != 0) != ADJ;  // the adjoint walks the scan backwards
    const int L = vertical ? H : W, P = vertical ? W : H;
    const i64 b = blockIdx.y;
    const int tid = threadIdx.x;
    const int v = tid % NV;
    const int p0 = (tid / NV) * PPT;
    const int c0 = (blockIdx.x * NV + v) * CPT;
    const int nc = min(CPT, C - c0);  // <= 0: a channel vector past C (its lanes only relay zeros)
    const i64 xs = vertical ? sxh : sxw, xp = vertical ? sxw : sxh;
    const i64 ls = vertical ? slh : slw, lp = vertical ? slw : slh;
    const i64 gs = vertical ? sgh : sgw, gp = vertical ? sgw : sgh;
    const i64 hs_ = vertical ? shh : shw, hp = vertical ? shw : shh;
    const i64 bx = b * sxb + (i64)p0 * xp + c0, bl = b * slb + (i64)p0 * lp + c0, bg = b * sgb + (i64)p0 * gp + c0;
    const i64 bh = (i64)d * shd + b * shb + (i64)p0 * hp + c0;
    float has_l[PPT], has_r[PPT], live[PPT];
#pragma unroll
    for (int k = 0; k < PPT; ++k) {
        const int p = p0 + k;
        live[k] = (p < P && nc > 0) ? 1.0f : 0.0f;  // padded positions keep a zero state
        has_l[k] = p > 0 ? 1.0f : 0.0f;
        has_r[k] = p < P - 1 ? 1.0f : 0.0f;
    }
    const char* xb = reinterpret_cast<const char*>(in0);
    const char* lb = reinterpret_cast<const char*>(in1);
    const char* gb = reinterpret_cast<const char*>(g);
    constexpr int ESZ = Cfg<DT>::ESZ;
    auto issue_row = [&](int t, int slot) {  // row t (scan order) into ring slot, then commit one group
        const i64 r = reverse ? (i64)(L - 1 - t) : (i64)t;
#pragma unroll
        for (int k = 0; k < PPT; ++k) {
            const bool on = t < L && p0 + k < P && nc > 0;
            uint4* dst = ring + ((i64)(slot * 5) * PPT + k) * NT + tid;
            const i64 ox = bx + r * xs + k * xp, ol = bl + r * ls + k * lp, og = bg + r * gs + k * gp;
            if (VEC) {
                const i64 stride = (i64)PPT * NT;
                cp_async16(dst, on ? xb + ox * ESZ : xb, on);
                cp_async16(dst + stride, on ? lb + ol * ESZ : lb, on);
                cp_async16(dst + 2 * stride, on ? gb + og * ESZ : gb, on);
                cp_async16(dst + 3 * stride, on ? gb + (og + sgk) * ESZ : gb, on);
                cp_async16(dst + 4 * stride, on ? gb + (og + 2 * sgk) * ESZ : gb, on);
            } else {  // element loads (channel tail or unaligned views): synchronous, into the same slots
                const i64 stride = (i64)PPT * NT;
                const uint4 z = make_uint4(0u, 0u, 0u, 0u);
                dst[0] = on ? load_vec<DT, false>(in0, ox, nc) : z;
                dst[stride] = on ? load_vec<DT, false>(in1, ol, nc) : z;
                dst[2 * stride] = on ? load_vec<DT, false>(g, og, nc) : z;
                dst[3 * stride] = on ? load_vec<DT, false>(g, og + sgk, nc) : z;
                dst[4 * stride] = on ? load_vec<DT, false>(g, og + 2 * sgk, nc) : z;
            }
        }
        cp_async_commit();
    };
#pragma unroll
    for (int s = 0; s < DEPTH; ++s) issue_row(s, s);
    // forward: the state h; adjoint: the products c_l, c_m, c_r of the row before (in the adjoint's order)
    float h[PPT][CPT], cl[PPT][CPT], cr[PPT][CPT];
#pragma unroll
    for (int k = 0; k < PPT; ++k)
#pragma unroll
        for (int e = 0; e < CPT; ++e) {
            h[k][e] = 0.0f;
            if constexpr (ADJ) { cl[k][e] = 0.0f; cr[k][e] = 0.0f; }
        }
    int parity = 0;
    for (int t0 = 0; t0 < L; t0 += DEPTH) {
#pragma unroll
        for (int s = 0; s < DEPTH; ++s) {
            const int t = t0 + s;
            if (t >= L) break;  // uniform over the block
            cp_async_wait<DEPTH - 1>();  // this thread's copies of row t have landed (rows t+1.. may be in flight)
            uint4 cur[PPT][5];
#pragma unroll
            for (int k = 0; k < PPT; ++k)
#pragma unroll
                for (int q = 0; q < 5; ++q) cur[k][q] = ring[((i64)(s * 5 + q) * PPT + k) * NT + tid];
            float nl[CPT], nr[CPT];
            float4* buf = edges + (i64)parity * KINDS * NV4 * NT;
            float a[PPT][CPT];  // the adjoint's new a (the forward's new state is h)
            if constexpr (ADJ) {  // h holds the products c_m between steps
                exchange<CPT, KINDS>(buf, cl[0], cr[PPT - 1], tid, NT, NV, nl, nr);
                adjoint_update<DT, PPT, FASTSIG>(cur, nl, nr, has_l, has_r, live, cl, h, cr, a);
            } else {
                exchange<CPT, KINDS>(buf, h[0], h[PPT - 1], tid, NT, NV, nl, nr);
                row_update<DT, PPT, FASTSIG>(cur, nl, nr, has_l, has_r, live, h);
            }
            parity ^= 1;
            const i64 orow = bh + (reverse ? (i64)(L - 1 - t) : (i64)t) * hs_;
#pragma unroll
            for (int k = 0; k < PPT; ++k)
                if (p0 + k < P && nc > 0) store_vec<DT, VEC>(out, orow + k * hp, nc, ADJ ? a[k] : h[k]);
            issue_row(t + DEPTH, s);  // the slot just read (its values are in registers and consumed)
        }
    }
    cp_async_wait<0>();
}

// One thread's element of a (pixel, CPT channels) pass over B*H*W pixels: channels c0..c0+nc-1 of pixel (bi, i, j),
// element offset o in a contiguous (B, H, W, C) tensor; idx runs over npix x nv (nv channel groups per pixel).
struct PixelChannels { int c0, nc, bi, i, j; i64 o; };
template <int CPT>
__device__ __forceinline__ PixelChannels pixel_channels(long long idx, int nv, int HW, int W, int C) {
    PixelChannels q;
    const int pix = (int)(idx / nv);
    q.c0 = (int)(idx - (long long)pix * nv) * CPT;
    q.nc = min(CPT, C - q.c0);
    q.bi = pix / HW;
    const int rem = pix - q.bi * HW;
    q.i = rem / W;
    q.j = rem - q.i * W;
    q.o = (i64)pix * C + q.c0;
    return q;
}

// The grid-stride loop of a (pixel, CPT channels) pass: body(q) for every q of npix pixels x ceil(C / CPT) groups
template <int CPT, typename Body>
__device__ __forceinline__ void for_pixel_channels(int npix, int H, int W, int C, Body body) {
    const int nv = (C + CPT - 1) / CPT;
    const long long total = (long long)npix * nv;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += step)
        body(pixel_channels<CPT>(idx, nv, H * W, W, C));
}

// sum over the four directions of a contiguous (4, B, H, W, C) tensor (plane stride spl) at element offset o
template <int DT, bool VEC, int NW>
__device__ __forceinline__ void direction_sum(const void* t, i64 o, i64 spl, int nc, float* acc) {
    float tmp[NW * (DT == 0 ? 1 : 2)];
    unpack<DT, NW>(load_vec<DT, VEC, NW>(t, o, nc), acc);
#pragma unroll
    for (int d = 1; d < 4; ++d) {
        unpack<DT, NW>(load_vec<DT, VEC, NW>(t, o + d * spl, nc), tmp);
#pragma unroll
        for (int e = 0; e < NW * (DT == 0 ? 1 : 2); ++e) acc[e] += tmp[e];
    }
}

// y = u * (h_tb + h_bt + h_lr + h_rl): hs contiguous (4, B, H, W, C), y contiguous, u strided (unit C)
template <int DT, bool VEC>
__global__ void cgspn_combine(const void* __restrict__ hs, const void* __restrict__ u, void* __restrict__ y,
                              int npix, int H, int W, int C, i64 shd, i64 sub, i64 suh, i64 suw) {
    constexpr int CPT = Cfg<DT>::CPT;
    for_pixel_channels<CPT>(npix, H, W, C, [&](const PixelChannels& q) {
        const int c0 = q.c0, nc = q.nc, bi = q.bi, i = q.i, j = q.j;
        const i64 o = q.o;
        float acc[CPT], uu[CPT];
        direction_sum<DT, VEC, 4>(hs, o, shd, nc, acc);
        unpack<DT>(load_vec<DT, VEC>(u, (i64)bi * sub + (i64)i * suh + (i64)j * suw + c0, nc), uu);
#pragma unroll
        for (int e = 0; e < CPT; ++e) acc[e] *= uu[e];
        store_vec<DT, VEC>(y, o, nc, acc);
    });
}

// Eq. 2 backward for one direction pair at one pixel (the pair's edge rule has_l / has_r): the raw-gate gradient
// from the gradient (dl, dm, dr) of the normalized weights, added to gl, gm, gr. As scan_common._raw_gate_grads:
// d sigma_k = inv (d_k - [k counted] [D > eps] sum_j d_j w_j), d raw_k = d sigma_k s_k (1 - s_k); m's term written
// with 1 - w_m = (l + r counted) / D so it is exactly 0 when m is alone.
__device__ __forceinline__ void add_raw_gate_grads(float dl, float dm, float dr, float sl, float sm, float sr, bool has_l,
                                                   bool has_r, float& gl, float& gm, float& gr) {
    const float ml = has_l ? sl : 0.0f, mr = has_r ? sr : 0.0f;
    const float den = fmaf(has_r ? 1.0f : 0.0f, sr, fmaf(has_l ? 1.0f : 0.0f, sl, sm));
    const float inv = rcp_approx(fmaxf(den, CGSPN_GATE_EPS));
    const float wl = sl * inv, wm = sm * inv, wr = sr * inv;
    const bool live = den > CGSPN_GATE_EPS;  // below the clamp D is constant
    const float dot = live ? fmaf(dl, wl, fmaf(dm, wm, dr * wr)) : 0.0f;
    const float dm_net = live ? dm * ((ml + mr) * inv) - dl * wl - dr * wr : dm;
    gl = fmaf((dl - (has_l ? dot : 0.0f)) * inv, sl * (1.0f - sl), gl);
    gm = fmaf(dm_net * inv, sm * (1.0f - sm), gm);
    gr = fmaf((dr - (has_r ? dot : 0.0f)) * inv, sr * (1.0f - sr), gr);
}

// The fast-path backward's elementwise pass, one thread per (pixel, half channel vector: 8 bytes, so
// that ~80 live values per channel fit the registers of 3 blocks of 256 threads), after cgspn_adj:
// a = sum_d adj_d gives dx = lam a and dlam = x a; du = dy sum_d h_d; the gradient of each direction's normalized
// weights at this pixel is a_d times its h of the previous row in scan order at p-1, p, p+1 (tb: row i-1, bt: i+1,
// lr: column j-1, rl: j+1, neighbours off the grid 0), summed per pair (the pair shares Eq. 2's edge rule) and taken
// through Eq. 2 to the raw gates. adj and hs contiguous (4, B, H, W, C) (plane stride spl); the rest strided with
// unit C: g / dg (b, h, w, gate), x, lam, dy, dx, dlam, du (b, h, w).
template <int DT, bool VEC>
__global__ void __launch_bounds__(256, VEC ? 3 : 2)
cgspn_bwd_epilogue(const void* __restrict__ adj, const void* __restrict__ hs, const void* __restrict__ g,
                   const void* __restrict__ x, const void* __restrict__ lam, const void* __restrict__ dy,
                   void* __restrict__ dx, void* __restrict__ dlam, void* __restrict__ du,
                   void* __restrict__ dg, int npix, int H, int W, int C, i64 spl,
                   i64 sgb, i64 sgh, i64 sgw, i64 sgk, i64 sxb, i64 sxh, i64 sxw, i64 slb, i64 slh,
                   i64 slw, i64 syb, i64 syh, i64 syw, i64 sob, i64 soh, i64 sow, i64 smb, i64 smh,
                   i64 smw, i64 sub, i64 suh, i64 suw, i64 sqb, i64 sqh, i64 sqw, i64 sqk) {
    constexpr int CPT = Cfg<DT>::CPT / 2;  // channels per thread: a half vector
    const int nv = (C + CPT - 1) / CPT;
    const long long total = (long long)npix * nv;
    const long long step = (long long)gridDim.x * blockDim.x;
    // an explicit loop, not for_pixel_channels: the lambda form costs this kernel register spills (ptxas, sm_90)
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += step) {
        const PixelChannels q = pixel_channels<CPT>(idx, nv, H * W, W, C);
        const int c0 = q.c0, nc = q.nc, bi = q.bi, i = q.i, j = q.j;
        const i64 o = q.o;
        float a[4][CPT], hsum[CPT];
#pragma unroll
        for (int d = 0; d < 4; ++d) unpack<DT, 2>(load_vec<DT, VEC, 2>(adj, o + d * spl, nc), a[d]);
        direction_sum<DT, VEC, 2>(hs, o, spl, nc, hsum);
        const i64 pb = (i64)bi, ph = (i64)i, pw = (i64)j;
        float sl[CPT], sm[CPT], sr[CPT], ql[CPT], qm[CPT], qr[CPT];
        const i64 og = pb * sgb + ph * sgh + pw * sgw + c0;
        unpack<DT, 2>(load_vec<DT, VEC, 2>(g, og, nc), sl);
        unpack<DT, 2>(load_vec<DT, VEC, 2>(g, og + sgk, nc), sm);
        unpack<DT, 2>(load_vec<DT, VEC, 2>(g, og + 2 * sgk, nc), sr);
#pragma unroll
        for (int e = 0; e < CPT; ++e) {
            sl[e] = sigmoid_exact(sl[e]); sm[e] = sigmoid_exact(sm[e]); sr[e] = sigmoid_exact(sr[e]);
            ql[e] = 0.0f; qm[e] = 0.0f; qr[e] = 0.0f;
        }
        // the previous row's h of direction d at pixel (i + di, j + dj), 0 off the grid
        auto h_at = [&](int d, int di, int dj, float* out) {
            const bool on = i + di >= 0 && i + di < H && j + dj >= 0 && j + dj < W;
            const uint2 z = make_uint2(0u, 0u);
            unpack<DT, 2>(on ? load_vec<DT, VEC, 2>(hs, o + d * spl + ((i64)di * W + dj) * C, nc) : z, out);
        };
        // one pair at a time: d(l, m, r) of its normalized weights, then Eq. 2 backward with its edge rule
#pragma unroll
        for (int pair = 0; pair < 2; ++pair) {
            float dw[3][CPT], hp[CPT], hq[CPT];
#pragma unroll
            for (int k = 0; k < 3; ++k) {
                if (pair == 0) { h_at(0, -1, k - 1, hp); h_at(1, 1, k - 1, hq); }  // tb: row i-1, bt: i+1; state axis j
                else { h_at(2, k - 1, -1, hp); h_at(3, k - 1, 1, hq); }            // lr: column j-1, rl: j+1; axis i
#pragma unroll
                for (int e = 0; e < CPT; ++e) dw[k][e] = fmaf(a[2 * pair][e], hp[e], a[2 * pair + 1][e] * hq[e]);
            }
            const bool has_l = pair == 0 ? j > 0 : i > 0, has_r = pair == 0 ? j < W - 1 : i < H - 1;
#pragma unroll
            for (int e = 0; e < CPT; ++e)
                add_raw_gate_grads(dw[0][e], dw[1][e], dw[2][e], sl[e], sm[e], sr[e], has_l, has_r, ql[e], qm[e], qr[e]);
        }
        float vx[CPT], vl[CPT], vd[CPT], ox[CPT], ol[CPT], ou[CPT];
        unpack<DT, 2>(load_vec<DT, VEC, 2>(x, pb * sxb + ph * sxh + pw * sxw + c0, nc), vx);
        unpack<DT, 2>(load_vec<DT, VEC, 2>(lam, pb * slb + ph * slh + pw * slw + c0, nc), vl);
        unpack<DT, 2>(load_vec<DT, VEC, 2>(dy, pb * syb + ph * syh + pw * syw + c0, nc), vd);
#pragma unroll
        for (int e = 0; e < CPT; ++e) {
            const float asum = (a[0][e] + a[1][e]) + (a[2][e] + a[3][e]);
            ox[e] = vl[e] * asum;
            ol[e] = vx[e] * asum;
            ou[e] = vd[e] * hsum[e];
        }
        store_vec<DT, VEC, 2>(dx, pb * sob + ph * soh + pw * sow + c0, nc, ox);
        store_vec<DT, VEC, 2>(dlam, pb * smb + ph * smh + pw * smw + c0, nc, ol);
        store_vec<DT, VEC, 2>(du, pb * sub + ph * suh + pw * suw + c0, nc, ou);
        const i64 oq = pb * sqb + ph * sqh + pw * sqw + c0;
        store_vec<DT, VEC, 2>(dg, oq, nc, ql);
        store_vec<DT, VEC, 2>(dg, oq + sqk, nc, qm);
        store_vec<DT, VEC, 2>(dg, oq + 2 * sqk, nc, qr);
    }
}
"""

# the gate epsilon of Eq. 2 is reference.GATE_EPS, defined once (repr gives e.g. 1e-07: the same fp32 literal)
PREAMBLE = f"#define CGSPN_GATE_EPS {GATE_EPS!r}f\n"
SOURCE = PREAMBLE + HELPERS + _ROW_KERNELS
