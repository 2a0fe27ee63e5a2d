// lstmcore/cell.h: the one copy of the LSTM cell math, shared by the CPU loop and the CUDA
// kernels. Every function works on one hidden unit of one batch row, on scalars.
//
// Gate order is torch.nn.LSTM's: i, f, g, o. "pre" values are pre-activation sums, the rest are
// post-activation; backward takes post-activation values so it never recomputes exp.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define LSTMCORE_HD __host__ __device__ __forceinline__
#else
#define LSTMCORE_HD inline
#endif

namespace lstmcore {

// exp(-x) overflows to +inf for very negative x, giving exactly 0: no NaN, no special case.
template <typename S>
LSTMCORE_HD S sigmoid(S x) {
  using std::exp;
  return S(1) / (S(1) + exp(-x));
}

template <typename S>
LSTMCORE_HD S tanh_act(S x) {
  using std::tanh;
  return tanh(x);
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

}  // namespace lstmcore
