// lstmcore/cell.h: the one copy of the LSTM cell math, shared by the CPU loop and the CUDA
// kernels. Every function works on one hidden unit of one batch row, on scalars.
//
// Gate order is torch.nn.LSTM's: i, f, g, o. "pre" values are pre-activation sums, the rest are
// post-activation; backward takes post-activation values so it never recomputes exp.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define LSTMCORE_HD __host__ __device__ __forceinline__
#else
#define LSTMCORE_HD inline
#endif

// LSTMCORE_CELL_NS: the namespace of this math. The CPU kernels compile it once per ISA, each
// inside its own namespace (kernels/impl.h), so the linker can never merge an AVX-512 copy of
// an inline function into the generic path.
#ifndef LSTMCORE_CELL_NS
#define LSTMCORE_CELL_NS lstmcore
#endif

namespace LSTMCORE_CELL_NS {

// The activations. Generic versions call the device's libm (float on CUDA, and double
// everywhere, where the tests demand 1e-10). On the CPU, float gets versions without libm calls
// so the cell loops vectorize; they are accurate to a few float ulps.
template <typename S>
LSTMCORE_HD S exp_act(S x) {
  using std::exp;
  return exp(x);
}

template <typename S>
LSTMCORE_HD S tanh_act(S x) {
  using std::tanh;
  return tanh(x);
}

#if !defined(__CUDA_ARCH__)
// Range reduction x = n*ln2 + r (|r| <= ln2/2, ln2 split in two so n*ln2 is exact), a degree-7
// Taylor polynomial for e^r (truncation < 6e-9 relative), then 2^n built in the exponent bits.
// x is clamped to [-87, 88] so 2^n stays a normal float: exp(-100) gives 1.6e-38, not 3.7e-44,
// an absolute difference far below float resolution; sigmoid and tanh stay exact at +-inf.
template <>
inline float exp_act<float>(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  const float n = (x * 1.44269504088896341f + shifter) - shifter;
  const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723212e-6f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const float n_defined = n == n ? n : 0.0f;  // NaN in: keep the int conversion defined
  const std::int32_t bits = (static_cast<std::int32_t>(n_defined) + 127) * (1 << 23);
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// tanh(x) = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|); near 0 that difference cancels, so
// |x| < 0.3125 uses the odd Taylor series to x^11 (next term < 3e-9 relative there).
// NaN propagates through both branches.
template <>
inline float tanh_act<float>(float x) {
  const float ax = std::fabs(x);
  const float e = exp_act(-2.0f * ax);
  const float big = (1.0f - e) / (1.0f + e);
  const float x2 = x * x;
  float p = -1382.0f / 155925.0f;
  p = p * x2 + 62.0f / 2835.0f;
  p = p * x2 + -17.0f / 315.0f;
  p = p * x2 + 2.0f / 15.0f;
  p = p * x2 + -1.0f / 3.0f;
  const float small = ax + ax * x2 * p;
  const float mag = ax < 0.3125f ? small : big;
  return std::copysign(mag, x);
}
#endif

// exp(-x) = +inf for very negative x gives exactly 0: no NaN, no special case.
template <typename S>
LSTMCORE_HD S sigmoid(S x) {
  return S(1) / (S(1) + exp_act(-x));
}

// post-activation gates and cell outputs of one unit at one step
template <typename S>
struct CellState {
  S i, f, g, o;  // gates
  S c;           // new cell state
  S tanh_c;      // tanh(c), kept so backward needs no tanh
  S h;           // new hidden state
};

template <typename S>
LSTMCORE_HD CellState<S> cell_forward(S pre_i, S pre_f, S pre_g, S pre_o, S c_prev) {
  CellState<S> s;
  s.i = sigmoid(pre_i);
  s.f = sigmoid(pre_f);
  s.g = tanh_act(pre_g);
  s.o = sigmoid(pre_o);
  s.c = s.f * c_prev + s.i * s.g;
  s.tanh_c = tanh_act(s.c);
  s.h = s.o * s.tanh_c;
  return s;
}

// gradients w.r.t. the four pre-activation gates and the previous cell state
template <typename S>
struct CellGrad {
  S d_pre_i, d_pre_f, d_pre_g, d_pre_o;
  S dc_prev;
};

// dh: total gradient reaching h_t (from y_t and from step t+1);
// dc_next: gradient reaching c_t from step t+1 (or dc_n at the last step).
template <typename S>
LSTMCORE_HD CellGrad<S> cell_backward(S i, S f, S g, S o, S c_prev, S tanh_c, S dh, S dc_next) {
  const S dc = dc_next + dh * o * (S(1) - tanh_c * tanh_c);
  CellGrad<S> d;
  d.d_pre_i = dc * g * i * (S(1) - i);
  d.d_pre_f = dc * c_prev * f * (S(1) - f);
  d.d_pre_g = dc * i * (S(1) - g * g);
  d.d_pre_o = dh * tanh_c * o * (S(1) - o);
  d.dc_prev = dc * f;
  return d;
}

}  // namespace LSTMCORE_CELL_NS
