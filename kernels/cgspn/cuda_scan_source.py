"""CUDA C++ source of the C-GSPN fast-path forward (compiled at first use by :mod:`kernels.cgspn.cuda_scan`).

Kept as a string so the package needs no data files; ``cuda_scan.write_source(path)`` writes it out with
explicit instantiations for ``nvcc -arch=sm_90 -Xptxas -v``. No headers: bf16/fp16 conversions are inline PTX,
so NVRTC needs no include path.

Design (``cgspn_fwd``, the default): one block per (NV 16-byte channel vectors, batch element, direction)
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

template <int DT> __device__ __forceinline__ void unpack(const uint4 v, float* out) {
    const u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        if (DT == 0) out[i] = __uint_as_float(w[i]);
        else if (DT == 1) { out[2 * i] = __uint_as_float(w[i] << 16); out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u); }
        else { out[2 * i] = f16_to_f32(w[i] & 0xffffu); out[2 * i + 1] = f16_to_f32(w[i] >> 16); }
    }
}

template <int DT> __device__ __forceinline__ uint4 pack(const float* v) {
    uint4 r;
    if (DT == 0) {
        r.x = __float_as_uint(v[0]); r.y = __float_as_uint(v[1]); r.z = __float_as_uint(v[2]); r.w = __float_as_uint(v[3]);
    }
    else { r.x = pack2(v[0], v[1], DT); r.y = pack2(v[2], v[3], DT); r.z = pack2(v[4], v[5], DT); r.w = pack2(v[6], v[7], DT); }
    return r;
}

// one 16-byte channel vector at element offset off; VEC: aligned vector load, else element loads of
// the first n channels (the rest zero)
template <int DT, bool VEC> __device__ __forceinline__ uint4 load_vec(const void* base, i64 off, int n) {
    if (VEC) return __ldg(reinterpret_cast<const uint4*>(reinterpret_cast<const char*>(base) + off * Cfg<DT>::ESZ));
    uint4 r = make_uint4(0u, 0u, 0u, 0u);
    u32 w[4] = {0u, 0u, 0u, 0u};
    if (DT == 0) {
        const u32* p = reinterpret_cast<const u32*>(base) + off;
#pragma unroll
        for (int i = 0; i < 4; ++i) if (i < n) w[i] = __ldg(p + i);
    } else {
        const u16* p = reinterpret_cast<const u16*>(base) + off;
#pragma unroll
        for (int i = 0; i < 8; ++i) if (i < n) w[i / 2] |= ((u32)__ldg(p + i)) << (16 * (i % 2));
    }
    r.x = w[0]; r.y = w[1]; r.z = w[2]; r.w = w[3];
    return r;
}

template <int DT, bool VEC> __device__ __forceinline__ void store_vec(void* base, i64 off, int n, const float* v) {
    if (VEC) { *reinterpret_cast<uint4*>(reinterpret_cast<char*>(base) + off * Cfg<DT>::ESZ) = pack<DT>(v); return; }
    if (DT == 0) {
        float* p = reinterpret_cast<float*>(base) + off;
#pragma unroll
        for (int i = 0; i < 4; ++i) if (i < n) p[i] = v[i];
    } else {
        u16* p = reinterpret_cast<u16*>(base) + off;
#pragma unroll
        for (int i = 0; i < 8; ++i) if (i < n) p[i] = pack1(v[i], DT);
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
// The neighbour exchange of one step, through buf (a parity half of the edge array): every thread publishes its
// first position's state (and, with PPT > 1, its last one's), one barrier, then reads the last state of the
// thread NV before it (nl) and the first state of the thread NV after it (nr); zeros beyond the block's ends.
template <int CPT, int PPT>
__device__ __forceinline__ void exchange(float4* buf, const float (&h)[PPT][CPT], int tid, int NT, int NV,
                                         float (&nl)[CPT], float (&nr)[CPT]) {
    constexpr int NV4 = CPT / 4;
    constexpr int KINDS = PPT > 1 ? 2 : 1;
#pragma unroll
    for (int w = 0; w < NV4; ++w) {
        buf[w * NT + tid] = make_float4(h[0][4 * w], h[0][4 * w + 1], h[0][4 * w + 2], h[0][4 * w + 3]);
        if (KINDS > 1)
            buf[(NV4 + w) * NT + tid] = make_float4(h[PPT - 1][4 * w], h[PPT - 1][4 * w + 1], h[PPT - 1][4 * w + 2],
                                                    h[PPT - 1][4 * w + 3]);
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
            const float sl = FASTSIG ? sigmoid_tanh(gl[e]) : sigmoid_exact(gl[e]);
            const float sm = FASTSIG ? sigmoid_tanh(gm[e]) : sigmoid_exact(gm[e]);
            const float sr = FASTSIG ? sigmoid_tanh(gr[e]) : sigmoid_exact(gr[e]);
            const float den = fmaf(has_r[k], sr, fmaf(has_l[k], sl, sm));
            const float inv = live[k] * rcp_approx(fmaxf(den, CGSPN_GATE_EPS));
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
            exchange<CPT, PPT>(edges + (i64)parity * 2 * NV4 * NT, h, tid, NT, 1, nl, nr);
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

// The fast-path forward: NV channel vectors per block (NV=2: a 32-byte sector per pixel and input), the input
// ring DEPTH rows deep in shared memory, filled by cp.async (no registers held by loads in flight).
// Thread tid: channel vector v = tid % NV, positions p0 = (tid / NV) * PPT .. + PPT-1; neighbours tid -+ NV.
// Shared memory: edges [2 parity][KINDS][NV4][NT] float4, then ring [DEPTH][5][PPT][NT] uint4 (own slots only).
template <int DT, int NV, int PPT, int DEPTH, bool VEC, bool FASTSIG>
__global__ void __launch_bounds__(PPT > 1 ? 256 : 512)
cgspn_fwd(const void* __restrict__ x, const void* __restrict__ lam, const void* __restrict__ g, void* __restrict__ hs,
          int H, int W, int C, i64 sxb, i64 sxh, i64 sxw, i64 slb, i64 slh, i64 slw, i64 sgb, i64 sgh, i64 sgw, i64 sgk,
          i64 shd, i64 shb, i64 shh, i64 shw) {
    constexpr int CPT = Cfg<DT>::CPT;
    constexpr int NV4 = CPT / 4;
    constexpr int KINDS = PPT > 1 ? 2 : 1;  // first and last position's state (one when they coincide)
    extern __shared__ float4 smem[];
    const int NT = blockDim.x;
    float4* edges = smem;
    uint4* ring = reinterpret_cast<uint4*>(smem + 2 * KINDS * NV4 * NT);
    const int d = blockIdx.z;
    const bool vertical = d < 2, reverse = (d & 1) != 0;
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
    const char* xb = reinterpret_cast<const char*>(x);
    const char* lb = reinterpret_cast<const char*>(lam);
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
                dst[0] = on ? load_vec<DT, false>(x, ox, nc) : z;
                dst[stride] = on ? load_vec<DT, false>(lam, ol, nc) : z;
                dst[2 * stride] = on ? load_vec<DT, false>(g, og, nc) : z;
                dst[3 * stride] = on ? load_vec<DT, false>(g, og + sgk, nc) : z;
                dst[4 * stride] = on ? load_vec<DT, false>(g, og + 2 * sgk, nc) : z;
            }
        }
        cp_async_commit();
    };
#pragma unroll
    for (int s = 0; s < DEPTH; ++s) issue_row(s, s);
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
            cp_async_wait<DEPTH - 1>();  // this thread's copies of row t have landed (rows t+1.. may be in flight)
            uint4 cur[PPT][5];
#pragma unroll
            for (int k = 0; k < PPT; ++k)
#pragma unroll
                for (int q = 0; q < 5; ++q) cur[k][q] = ring[((i64)(s * 5 + q) * PPT + k) * NT + tid];
            float nl[CPT], nr[CPT];
            exchange<CPT, PPT>(edges + (i64)parity * KINDS * NV4 * NT, h, tid, NT, NV, nl, nr);
            parity ^= 1;
            const i64 r = reverse ? (i64)(L - 1 - t) : (i64)t;
            row_update<DT, PPT, FASTSIG>(cur, nl, nr, has_l, has_r, live, h);
#pragma unroll
            for (int k = 0; k < PPT; ++k)
                if (p0 + k < P && nc > 0) store_vec<DT, VEC>(hs, bh + r * hs_ + k * hp, nc, h[k]);
            issue_row(t + DEPTH, s);  // the slot just read (its values are in registers and consumed)
        }
    }
    cp_async_wait<0>();
}

// y = u * (h_tb + h_bt + h_lr + h_rl): hs contiguous (4, B, H, W, C), y contiguous, u strided (unit C)
template <int DT, bool VEC>
__global__ void cgspn_combine(const void* __restrict__ hs, const void* __restrict__ u, void* __restrict__ y,
                              int npix, int H, int W, int C, i64 shd, i64 sub, i64 suh, i64 suw) {
    constexpr int CPT = Cfg<DT>::CPT;
    const int nv = (C + CPT - 1) / CPT;
    const int HW = H * W;
    const long long total = (long long)npix * nv;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += step) {
        const int pix = (int)(idx / nv);
        const int c0 = (int)(idx - (long long)pix * nv) * CPT;
        const int nc = min(CPT, C - c0);
        const int bi = pix / HW, rem = pix - bi * HW, i = rem / W, j = rem - i * W;
        const i64 o = (i64)pix * C + c0;
        float acc[CPT], tmp[CPT], uu[CPT];
        unpack<DT>(load_vec<DT, VEC>(hs, o, nc), acc);
#pragma unroll
        for (int q = 1; q < 4; ++q) {
            unpack<DT>(load_vec<DT, VEC>(hs, o + q * shd, nc), tmp);
#pragma unroll
            for (int e = 0; e < CPT; ++e) acc[e] += tmp[e];
        }
        unpack<DT>(load_vec<DT, VEC>(u, (i64)bi * sub + (i64)i * suh + (i64)j * suw + c0, nc), uu);
#pragma unroll
        for (int e = 0; e < CPT; ++e) acc[e] *= uu[e];
        store_vec<DT, VEC>(y, o, nc, acc);
    }
}
"""

# the gate epsilon of Eq. 2 is reference.GATE_EPS, defined once (repr gives e.g. 1e-07: the same fp32 literal)
PREAMBLE = f"#define CGSPN_GATE_EPS {GATE_EPS!r}f\n"
SOURCE = PREAMBLE + HELPERS + _ROW_KERNELS
