// lstmcore/optim_rule.h: the optimizer's update of one element, written once for the CPU loop
// (cpp/src/optim_cpu.cpp: Adam, AdamW) and the GPU trainer's update kernel
// (cuda/train_cuda.cu: Adam, AdamW, SGD with momentum, clipping).
//
// The arithmetic is NumPy's, operation by operation, in the parameter's precision S: the
// scalars are formed in double on the host once per step and rounded to S where they meet an
// array (as NumPy rounds a Python float against a float32 array), and every S operation rounds
// once and is never fused into an FMA. The host compilers build this without contraction
// (-ffp-contract=off, CMakeLists.txt) and the device uses the _rn intrinsics, which nvcc never
// contracts. So the CPU update equals the NumPy transcription in lstmcore.optim bit for bit,
// and a GPU step gives the CPU's bits, denormals aside (the CPU flushes them to zero, pool.h).
#pragma once

#include <cmath>
#include <cstdint>

#include "lstmcore/hd.h"
#include "lstmcore/optim.h"

namespace lstmcore::optim {

// S arithmetic (float or double), rounded to nearest once per operation, never fused
template <typename S>
LSTMCORE_HD S add_rn(S a, S b) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(S) == 4) return __fadd_rn(a, b);
  else return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

template <typename S>
LSTMCORE_HD S sub_rn(S a, S b) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(S) == 4) return __fsub_rn(a, b);
  else return __dsub_rn(a, b);
#else
  return a - b;
#endif
}

template <typename S>
LSTMCORE_HD S mul_rn(S a, S b) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(S) == 4) return __fmul_rn(a, b);
  else return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

template <typename S>
LSTMCORE_HD S div_rn(S a, S b) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(S) == 4) return __fdiv_rn(a, b);
  else return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}

template <typename S>
LSTMCORE_HD S sqrt_rn(S a) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(S) == 4) return __fsqrt_rn(a);
  else return __dsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

// weight decay: none, L2 (decay * p added to the gradient), or decoupled (AdamW: p scaled by
// keep = 1 - lr * weight_decay first)
enum class Decay : int { kNone = 0, kL2 = 1, kDecoupled = 2 };

// Adam/AdamW's scalars for one step, each formed in double and rounded to S once.
template <typename S>
struct AdamScalars {
  S beta1 = 0, beta2 = 0, one_minus_beta1 = 0, one_minus_beta2 = 0;
  S step_size = 0;              // lr / (1 - beta1^step)
  S bias_correction2_sqrt = 1;  // sqrt(1 - beta2^step)
  S eps = 0;
  S decay = 0;  // L2: weight_decay
  S keep = 1;   // decoupled: 1 - lr * weight_decay
};

// host only (std::pow); h as check_adam accepts it
template <typename S>
AdamScalars<S> adam_scalars(const AdamHyper& h) {
  const double step = static_cast<double>(h.step);
  AdamScalars<S> a;
  a.beta1 = static_cast<S>(h.beta1);
  a.beta2 = static_cast<S>(h.beta2);
  a.one_minus_beta1 = static_cast<S>(1.0 - h.beta1);
  a.one_minus_beta2 = static_cast<S>(1.0 - h.beta2);
  a.step_size = static_cast<S>(h.lr / (1.0 - std::pow(h.beta1, step)));
  a.bias_correction2_sqrt = static_cast<S>(std::sqrt(1.0 - std::pow(h.beta2, step)));
  a.eps = static_cast<S>(h.eps);
  a.decay = static_cast<S>(h.weight_decay);
  a.keep = static_cast<S>(1.0 - h.lr * h.weight_decay);
  return a;
}

inline Decay adam_decay(const AdamHyper& h) {
  if (h.weight_decay == 0.0) return Decay::kNone;
  return h.decoupled ? Decay::kDecoupled : Decay::kL2;
}

// Adam/AdamW on one element: p and its moments m, v in place from the gradient g. A loop that
// passes `decay` as a constant gets a branch-free body (the CPU loop vectorizes).
template <typename S>
LSTMCORE_HD void adam_element(S& p, S& m, S& v, S g, const AdamScalars<S>& a, Decay decay) {
  S pk = p;
  if (decay == Decay::kDecoupled) pk = mul_rn(pk, a.keep);
  if (decay == Decay::kL2) g = add_rn(g, mul_rn(a.decay, pk));
  const S mk = add_rn(mul_rn(m, a.beta1), mul_rn(a.one_minus_beta1, g));
  const S vk = add_rn(mul_rn(v, a.beta2), mul_rn(mul_rn(a.one_minus_beta2, g), g));
  const S denom = add_rn(div_rn(sqrt_rn(vk), a.bias_correction2_sqrt), a.eps);
  m = mk;
  v = vk;
  p = sub_rn(pk, mul_rn(a.step_size, div_rn(mk, denom)));
}

// SGD's scalars (lstmcore.optim.SGD, no dampening or Nesterov), each rounded to S once.
template <typename S>
struct SgdScalars {
  S lr = 0, momentum = 0, decay = 0;
};

// SGD on one element: g += decay * p (L2); with momentum buf = g on the first step, else
// buf * momentum + g (NumPy's buf *= momentum; buf += 1.0 * g); then p -= lr * buf (or g).
template <typename S>
LSTMCORE_HD void sgd_element(S& p, S& buf, S g, const SgdScalars<S>& a, Decay decay,
                             bool first) {
  if (decay == Decay::kL2) g = add_rn(g, mul_rn(a.decay, p));
  if (a.momentum != S(0)) {
    buf = first ? g : add_rn(mul_rn(buf, a.momentum), g);
    g = buf;
  }
  p = sub_rn(p, mul_rn(a.lr, g));
}

// clip_grad_norm on one element: g scaled by S(max_norm / (norm + 1e-6)) when that is below 1
// (the coefficient in double); max_norm <= 0: no clipping
template <typename S>
LSTMCORE_HD S clip_element(S g, double max_norm, double norm) {
  if (max_norm <= 0.0) return g;
  const double coef = max_norm / (norm + 1e-6);
  return coef < 1.0 ? mul_rn(g, static_cast<S>(coef)) : g;
}

}  // namespace lstmcore::optim
