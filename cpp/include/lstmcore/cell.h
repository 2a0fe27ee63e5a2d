// lstmcore/cell.h: the one copy of the LSTM cell math (sigmoid, the forward cell, the backward
// cell), shared by the CPU kernels and the CUDA kernels. Every function is a template over the
// element type T: a scalar (float or double: one hidden unit of one batch row; the CUDA
// kernels) or one of the CPU kernels' vectors (one unit per lane; kernels/cell_vec.h).
//
// Gate order is torch.nn.LSTM's: i, f, g, o. "pre" values are pre-activation sums, the rest are
// post-activation; backward takes post-activation values so it never recomputes exp.
#pragma once

#include <cmath>

#include "lstmcore/hd.h"

// LSTMCORE_CELL_NS: the namespace of this math. The CPU kernels compile it once per ISA, each
// inside its own namespace (kernels/impl.h), so the linker can never merge an AVX-512 copy of
// an inline function into the generic path.
#ifndef LSTMCORE_CELL_NS
#define LSTMCORE_CELL_NS lstmcore
#endif

namespace LSTMCORE_CELL_NS {

// The primitives the cell is built from, the only part that differs per element type: Elem is
// the element (the type of a constant to combine with T), exp, tanh and recip (1/x) act on
// every element. On scalars they are the device's libm (float on CUDA; double everywhere, where
// the tests ask for 1e-10) and a division. kernels/cell_vec.h specialises this for the CPU
// kernels' vectors.
template <typename T>
struct CellPrims {
  using Elem = T;
  static LSTMCORE_HD T exp(T x) { return std::exp(x); }
  static LSTMCORE_HD T tanh(T x) { return std::tanh(x); }
  static LSTMCORE_HD T recip(T x) { return T(1) / x; }
};

// exp(-x) = +inf for very negative x gives exactly 0: no NaN, no special case.
template <typename T>
LSTMCORE_HD T sigmoid(T x) {
  using P = CellPrims<T>;
  return P::recip(typename P::Elem(1) + P::exp(-x));
}

// post-activation gates and cell outputs of one unit at one step
template <typename T>
struct CellState {
  T i, f, g, o;  // gates
  T c;           // new cell state
  T tanh_c;      // tanh(c), kept so backward needs no tanh
  T h;           // new hidden state
};

template <typename T>
LSTMCORE_HD CellState<T> cell_forward(T pre_i, T pre_f, T pre_g, T pre_o, T c_prev) {
  using P = CellPrims<T>;
  CellState<T> s;
  s.i = sigmoid(pre_i);
  s.f = sigmoid(pre_f);
  s.g = P::tanh(pre_g);
  s.o = sigmoid(pre_o);
  s.c = s.f * c_prev + s.i * s.g;
  s.tanh_c = P::tanh(s.c);
  s.h = s.o * s.tanh_c;
  return s;
}

// gradients w.r.t. the four pre-activation gates and the previous cell state
template <typename T>
struct CellGrad {
  T d_pre_i, d_pre_f, d_pre_g, d_pre_o;
  T dc_prev;
};

// dh: total gradient reaching h_t (from y_t and from step t+1);
// dc_next: gradient reaching c_t from step t+1 (or dc_n at the last step).
template <typename T>
LSTMCORE_HD CellGrad<T> cell_backward(T i, T f, T g, T o, T c_prev, T tanh_c, T dh, T dc_next) {
  using E = typename CellPrims<T>::Elem;
  const T dc = dc_next + dh * o * (E(1) - tanh_c * tanh_c);
  CellGrad<T> d;
  d.d_pre_i = dc * g * i * (E(1) - i);
  d.d_pre_f = dc * c_prev * f * (E(1) - f);
  d.d_pre_g = dc * i * (E(1) - g * g);
  d.d_pre_o = dh * tanh_c * o * (E(1) - o);
  d.dc_prev = dc * f;
  return d;
}

}  // namespace LSTMCORE_CELL_NS
