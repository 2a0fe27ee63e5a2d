// impl.h: the recurrent kernels, written once with GCC/Clang vector extensions and compiled
// once per ISA. The including file defines, before including this (and nothing of this header's
// own inline code is shared between ISAs, see kernels.h):
//   LSTMCORE_KERNEL_NS   the namespace (avx512, avx2, generic)
//   LSTMCORE_VBYTES      vector width in bytes (64, 32, 16)
//   LSTMCORE_FWD_ROWS    batch rows per forward register tile (4 gates x rows vectors)
//   LSTMCORE_BWD_ROWS    batch rows per backward register tile
//   LSTMCORE_BWD_VECS    vectors per row in a backward tile (panel width P = vecs * lanes)
//
// Every output element is computed by the same sequence of operations whichever thread or tile
// computes it (the K loop always runs in order 0..K-1 on one accumulator lane), so the result
// does not depend on how the work is split.
#include "kernels.h"

// cell.h's cell and its primitives on this ISA's vectors, compiled into this ISA's own namespace
#define LSTMCORE_CELL_NS lstmcore::kern::LSTMCORE_KERNEL_NS::cellmath
#include "cell_vec.h"

#define LSTMCORE_AI inline __attribute__((always_inline))

namespace lstmcore::kern::LSTMCORE_KERNEL_NS {
namespace {

using cellmath::vd;
using cellmath::vf;

template <typename S>
struct VT;
template <>
struct VT<float> {
  using V = vf;
  static constexpr int N = LSTMCORE_VBYTES / 4;
};
template <>
struct VT<double> {
  using V = vd;
  static constexpr int N = LSTMCORE_VBYTES / 8;
};

template <typename V, typename S>
LSTMCORE_AI V loadu(const S* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
template <typename V, typename S>
LSTMCORE_AI void storeu(S* p, V v) {
  __builtin_memcpy(p, &v, sizeof v);
}
// the first n lanes (n < lanes at the right edge of H), the rest 0
template <typename V, typename S>
LSTMCORE_AI V load_n(const S* p, i64 n) {
  S tmp[sizeof(V) / sizeof(S)] = {};
  for (i64 k = 0; k < n; ++k) tmp[k] = p[k];
  return loadu<V>(tmp);
}
template <typename V, typename S>
LSTMCORE_AI void store_n(S* p, V v, i64 n) {
  S tmp[sizeof(V) / sizeof(S)];
  storeu(tmp, v);
  for (i64 k = 0; k < n; ++k) p[k] = tmp[k];
}
template <typename V, typename S>
LSTMCORE_AI V load_m(const S* p, i64 n, bool full) {
  return full ? loadu<V>(p) : load_n<V>(p, n);
}
template <typename V, typename S>
LSTMCORE_AI void store_m(S* p, V v, i64 n, bool full) {
  if (full) {
    storeu(p, v);
  } else {
    store_n(p, v, n);
  }
}
LSTMCORE_AI i64 imin(i64 a, i64 b) { return a < b ? a : b; }

// ---- packing ----
template <typename S>
i64 fwd_packed_size(i64 I, i64 H) {
  constexpr int U = VT<S>::N;
  return (H + U - 1) / U * (I + H) * 4 * U;
}
template <typename S>
i64 bwd_packed_size(i64 H) {
  constexpr int P = VT<S>::N * LSTMCORE_BWD_VECS;
  return (H + P - 1) / P * 4 * H * P;
}
template <typename S>
void pack_fwd(S* packed, const S* w_ih, const S* w_hh, i64 I, i64 H) {
  constexpr int U = VT<S>::N;
  const i64 nblk = (H + U - 1) / U, K = I + H;
  // writes in order (k, gate, unit): the reads walk 4U rows of the weights side by side, a few
  // KB of lines that stay in L1, and the writes are contiguous. (The transposed order, one
  // weight row at a time, wrote with a 4U-element stride: 80 us of a 130 us call at B=1.)
  for (i64 b = 0; b < nblk; ++b) {
    S* dst = packed + b * K * 4 * U;
    const S* rows[4][U];
    for (int g = 0; g < 4; ++g) {
      for (int u = 0; u < U; ++u) {
        const i64 j = b * U + u;  // hidden unit; its weights are row g*H + j of w_ih and w_hh
        rows[g][u] = j < H ? w_ih + (g * H + j) * I : nullptr;
      }
    }
    for (i64 k = 0; k < I; ++k, dst += 4 * U) {
      for (int g = 0; g < 4; ++g) {
        for (int u = 0; u < U; ++u) dst[g * U + u] = rows[g][u] != nullptr ? rows[g][u][k] : S(0);
      }
    }
    for (int g = 0; g < 4; ++g) {
      for (int u = 0; u < U; ++u) {
        const i64 j = b * U + u;
        rows[g][u] = j < H ? w_hh + (g * H + j) * H : nullptr;
      }
    }
    for (i64 k = 0; k < H; ++k, dst += 4 * U) {
      for (int g = 0; g < 4; ++g) {
        for (int u = 0; u < U; ++u) dst[g * U + u] = rows[g][u] != nullptr ? rows[g][u][k] : S(0);
      }
    }
  }
}
template <typename S>
void pack_bwd(S* packed, const S* w_hh, i64 H) {
  constexpr int P = VT<S>::N * LSTMCORE_BWD_VECS;
  const i64 npan = (H + P - 1) / P, G = 4 * H;
  for (i64 p = 0; p < npan; ++p) {
    S* dst = packed + p * G * P;
    for (i64 kk = 0; kk < G; ++kk) {
      for (int u = 0; u < P; ++u) {
        const i64 j = p * P + u;
        dst[kk * P + u] = j < H ? w_hh[kk * H + j] : S(0);
      }
    }
  }
}

// ---- forward ----
// acc[rr][g] += src[rr][k] * P[k][g] for k < K: the four gates of U units, RR rows
template <typename S, typename V, int RR, int U>
LSTMCORE_AI void accumulate(V (&acc)[RR][4], const S* P, const S* src, i64 ld, i64 K) {
  for (i64 k = 0; k < K; ++k) {
    const S* w = P + k * 4 * U;
    const V w0 = loadu<V>(w), w1 = loadu<V>(w + U), w2 = loadu<V>(w + 2 * U),
            w3 = loadu<V>(w + 3 * U);
#pragma GCC unroll 8
    for (int rr = 0; rr < RR; ++rr) {
      const S v = src[rr * ld + k];
      acc[rr][0] += v * w0;
      acc[rr][1] += v * w1;
      acc[rr][2] += v * w2;
      acc[rr][3] += v * w3;
    }
  }
}

// RR rows of one unit block: acc[r][g] = b + x_t W_ih^T + h_prev W_hh^T (K = I + H in one
// register tile, so the input projection never makes a trip through memory), then the cell
template <typename S, int RR>
LSTMCORE_AI void fwd_tile(const FwdStep<S>& a, i64 r, i64 blk) {
  using V = typename VT<S>::V;
  constexpr int U = VT<S>::N;
  const i64 H = a.H, I = a.I, G = 4 * H, j0 = blk * U;
  const i64 nu = imin(U, H - j0);
  const bool full = nu == U;
  const S* P = a.packed + blk * (I + H) * 4 * U;
  V acc[RR][4];
  V b[4];
#pragma GCC unroll 4
  for (int g = 0; g < 4; ++g) b[g] = load_m<V>(a.bias + g * H + j0, nu, full);
#pragma GCC unroll 8
  for (int rr = 0; rr < RR; ++rr) {
#pragma GCC unroll 4
    for (int g = 0; g < 4; ++g) acc[rr][g] = b[g];
  }
  accumulate<S, V, RR, U>(acc, P, a.x + r * I, I, I);
  accumulate<S, V, RR, U>(acc, P + I * 4 * U, a.h_prev + r * H, H, H);
#pragma GCC unroll 8
  for (int rr = 0; rr < RR; ++rr) {
    const i64 row = r + rr, o = row * H + j0;
    const auto s = cellmath::cell_forward(acc[rr][0], acc[rr][1], acc[rr][2], acc[rr][3],
                                          load_m<V>(a.c_prev + o, nu, full));
    store_m(a.c_next + o, s.c, nu, full);
    store_m(a.h_next + o, s.h, nu, full);
    if (a.gates != nullptr) {
      S* gp = a.gates + row * G + j0;
      store_m(gp, s.i, nu, full);
      store_m(gp + H, s.f, nu, full);
      store_m(gp + 2 * H, s.g, nu, full);
      store_m(gp + 3 * H, s.o, nu, full);
    }
    if (a.tanh_c != nullptr) store_m(a.tanh_c + o, s.tanh_c, nu, full);
  }
}

template <typename S>
void fwd_step(const FwdStep<S>& a, i64 r0, i64 r1, i64 k0, i64 k1) {
  constexpr int R = LSTMCORE_FWD_ROWS;
  // unit block outer: its panel (H x 4U) stays in L1 while the rows stream past
  for (i64 blk = k0; blk < k1; ++blk) {
    i64 r = r0;
    for (; r + R <= r1; r += R) fwd_tile<S, R>(a, r, blk);
    switch (r1 - r) {
      case 0: break;
#if LSTMCORE_FWD_ROWS > 4
      case 5: fwd_tile<S, 5>(a, r, blk); break;
      case 4: fwd_tile<S, 4>(a, r, blk); break;
#endif
#if LSTMCORE_FWD_ROWS > 3
      case 3: fwd_tile<S, 3>(a, r, blk); break;
#endif
#if LSTMCORE_FWD_ROWS > 2
      case 2: fwd_tile<S, 2>(a, r, blk); break;
#endif
      default: fwd_tile<S, 1>(a, r, blk); break;
    }
  }
}

// ---- backward ----
// dh of one vector of units (row, units j .. j+nu) completed with dh_in and dy, then the cell's
// backward: dgates and dc out (or dh to dh_out). FULL (nu = lanes) is its own instantiation, so
// the common case tests nothing per load and store (callgrind: 0.8% fewer instructions on avx2
// than one copy for both; forward keeps one copy, where the split cost generic 2%).
template <bool FULL, bool GEMM, typename S, typename V>
LSTMCORE_AI void bwd_cell(const BwdStep<S>& a, V dh, i64 row, i64 j, i64 nu) {
  const i64 H = a.H, G = 4 * H, o = row * H + j;
  if (!GEMM && a.dh_in != nullptr) dh += load_m<V>(a.dh_in + o, nu, FULL);
  if (a.dy != nullptr) dh += load_m<V>(a.dy + o, nu, FULL);
  if (a.gates == nullptr) {
    store_m(a.dh_out + o, dh, nu, FULL);
    return;
  }
  const S* gp = a.gates + row * G + j;
  const V i = load_m<V>(gp, nu, FULL), f = load_m<V>(gp + H, nu, FULL),
          g = load_m<V>(gp + 2 * H, nu, FULL), og = load_m<V>(gp + 3 * H, nu, FULL);
  const V tc = load_m<V>(a.tanh_c + o, nu, FULL);
  const V cp = load_m<V>(a.c_prev + o, nu, FULL);
  const V dc = load_m<V>(a.dc + o, nu, FULL);
  const auto d = cellmath::cell_backward(i, f, g, og, cp, tc, dh, dc);
  S* dgp = a.dgates + row * G + j;
  store_m(dgp, d.d_pre_i, nu, FULL);
  store_m(dgp + H, d.d_pre_f, nu, FULL);
  store_m(dgp + 2 * H, d.d_pre_g, nu, FULL);
  store_m(dgp + 3 * H, d.d_pre_o, nu, FULL);
  store_m(a.dc + o, d.dc_prev, nu, FULL);
}

template <typename S, int RR, bool GEMM>
LSTMCORE_AI void bwd_tile(const BwdStep<S>& a, i64 r, i64 pan) {
  using V = typename VT<S>::V;
  constexpr int U = VT<S>::N;
  constexpr int NV = LSTMCORE_BWD_VECS;
  constexpr int P = U * NV;
  const i64 H = a.H, G = 4 * H;
  V acc[RR][NV];
#pragma GCC unroll 8
  for (int rr = 0; rr < RR; ++rr) {
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[rr][v] = V{};
  }
  if constexpr (GEMM) {
    const S* W = a.packed + pan * G * P;
    const S* dg = a.dg_prev + r * G;
    for (i64 kk = 0; kk < G; ++kk) {
      V w[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) w[v] = loadu<V>(W + kk * P + v * U);
#pragma GCC unroll 8
      for (int rr = 0; rr < RR; ++rr) {
        const S d = dg[rr * G + kk];
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[rr][v] += d * w[v];
      }
    }
  }
#pragma GCC unroll 8
  for (int rr = 0; rr < RR; ++rr) {
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      const i64 j = pan * P + v * U;
      if (j >= H) break;
      const i64 nu = imin(U, H - j);
      if (nu == U) {
        bwd_cell<true, GEMM>(a, acc[rr][v], r + rr, j, nu);
      } else {
        bwd_cell<false, GEMM>(a, acc[rr][v], r + rr, j, nu);
      }
    }
  }
}

template <typename S, bool GEMM>
void bwd_rows(const BwdStep<S>& a, i64 r0, i64 r1, i64 p0, i64 p1) {
  constexpr int R = LSTMCORE_BWD_ROWS;
  for (i64 pan = p0; pan < p1; ++pan) {
    i64 r = r0;
    for (; r + R <= r1; r += R) bwd_tile<S, R, GEMM>(a, r, pan);
    switch (r1 - r) {
      case 0: break;
#if LSTMCORE_BWD_ROWS > 3
      case 3: bwd_tile<S, 3, GEMM>(a, r, pan); break;
#endif
#if LSTMCORE_BWD_ROWS > 2
      case 2: bwd_tile<S, 2, GEMM>(a, r, pan); break;
#endif
      default: bwd_tile<S, 1, GEMM>(a, r, pan); break;
    }
  }
}

template <typename S>
void bwd_step(const BwdStep<S>& a, i64 r0, i64 r1, i64 p0, i64 p1) {
  const i64 split = a.dg_prev == nullptr ? r0 : (a.n_gemm < r0 ? r0 : imin(a.n_gemm, r1));
  if (split > r0) bwd_rows<S, true>(a, r0, split, p0, p1);
  if (r1 > split) bwd_rows<S, false>(a, split, r1, p0, p1);
}

template <typename S>
constexpr Ops<S> ops() {
  return Ops<S>{VT<S>::N,           VT<S>::N * LSTMCORE_BWD_VECS,
                &fwd_packed_size<S>, &bwd_packed_size<S>,
                &pack_fwd<S>,       &pack_bwd<S>,
                &fwd_step<S>,       &bwd_step<S>};
}

}  // namespace

const Table& table() {
  static const Table t{LSTMCORE_ISA_NAME, ops<float>(), ops<double>()};
  return t;
}

}  // namespace lstmcore::kern::LSTMCORE_KERNEL_NS
