// optim_cuda.h: the GPU trainer's optimizer step on one parameter, written once for the
// device kernel and for a host copy the tests compare with the CPU without a GPU.
//
// The CPU's rules, operation by operation (cpp/src/optim_cpu.cpp for Adam/AdamW, the NumPy
// transcription in lstmcore.optim for SGD, lstmcore.optim.clip_grad_norm for clipping): the
// scalars are formed in double on the host exactly as the CPU forms them and rounded to float
// once; every float operation rounds once and none is contracted into an FMA (the CPU build
// has no contraction there): __fmul_rn and friends on the device, plain operators on the
// host (compiled with -ffp-contract=off). So from the same gradient, norm, parameters and
// moments, a GPU step gives the CPU's bits, denormals aside (the CPU flushes them to zero).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "lstmcore/optim.h"

#if defined(__CUDACC__)
#define LSTMCORE_OPT_HD __host__ __device__ __forceinline__
#else
#define LSTMCORE_OPT_HD inline
#endif

namespace lstmcore::cuda {

// float arithmetic, rounded to nearest once per operation, never fused
LSTMCORE_OPT_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
LSTMCORE_OPT_HD float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
LSTMCORE_OPT_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
LSTMCORE_OPT_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
LSTMCORE_OPT_HD float sqrt_rn(float a) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

enum class UpdateKind : int { kSgd = 0, kAdam = 1 };
enum class Decay : int { kNone = 0, kL2 = 1, kDecoupled = 2 };  // as in optim_cpu.cpp

// Everything one step needs besides the arrays, already rounded to float where the CPU
// rounds it. Passed to the kernel by value.
struct UpdateRule {
  UpdateKind kind = UpdateKind::kAdam;
  Decay decay_mode = Decay::kNone;
  double clip = 0.0;  // max norm; 0: no clipping (the coefficient is formed in double)
  // Adam/AdamW (AdamScalars of optim_cpu.cpp)
  float beta1 = 0, beta2 = 0, one_minus_beta1 = 0, one_minus_beta2 = 0, step_size = 0;
  float bias_correction2_sqrt = 1, eps = 0, decay = 0, keep = 1;
  // SGD (lstmcore.optim.SGD: float32(lr), float32(weight_decay), float32(momentum))
  float lr = 0, momentum = 0;
  bool first = false;  // SGD with momentum: no buffer yet, the first step sets it to g
};

// The rule for step `step` (counting from 1) at learning rate `lr`. optimizer: "adam",
// "adamw" or "sgd"; `first`: SGD has no momentum buffer yet.
inline UpdateRule make_update_rule(const std::string& optimizer, double lr, double momentum,
                                   double weight_decay, double beta1, double beta2, double eps,
                                   double clip, std::int64_t step, bool first) {
  UpdateRule r;
  r.clip = clip;
  if (optimizer == "sgd") {
    r.kind = UpdateKind::kSgd;
    r.decay_mode = weight_decay != 0.0 ? Decay::kL2 : Decay::kNone;
    r.decay = static_cast<float>(weight_decay);
    r.lr = static_cast<float>(lr);
    r.momentum = static_cast<float>(momentum);
    r.first = first;
    return r;
  }
  AdamHyper h;
  h.lr = lr;
  h.beta1 = beta1;
  h.beta2 = beta2;
  h.eps = eps;
  h.weight_decay = weight_decay;
  h.decoupled = optimizer == "adamw";
  h.step = step;
  check_adam(h);  // the CPU's checks: step >= 1, finite hyperparameters
  r.kind = UpdateKind::kAdam;
  r.decay_mode = h.weight_decay == 0.0 ? Decay::kNone
                                       : (h.decoupled ? Decay::kDecoupled : Decay::kL2);
  // optim_cpu.cpp's AdamScalars, expression for expression
  r.beta1 = static_cast<float>(h.beta1);
  r.beta2 = static_cast<float>(h.beta2);
  r.one_minus_beta1 = static_cast<float>(1.0 - h.beta1);
  r.one_minus_beta2 = static_cast<float>(1.0 - h.beta2);
  r.step_size = static_cast<float>(h.lr / (1.0 - std::pow(h.beta1, static_cast<double>(h.step))));
  r.bias_correction2_sqrt =
      static_cast<float>(std::sqrt(1.0 - std::pow(h.beta2, static_cast<double>(h.step))));
  r.eps = static_cast<float>(h.eps);
  r.decay = static_cast<float>(h.weight_decay);
  r.keep = static_cast<float>(1.0 - h.lr * h.weight_decay);
  return r;
}

// One parameter p with its moments m (Adam's first moment or SGD's momentum buffer) and v
// (Adam's second moment) from its gradient g; `norm` is the global gradient norm (before
// clipping). clip_grad_norm: g *= float(clip / (norm + 1e-6)) when that is below 1.
LSTMCORE_OPT_HD void update_element(float& p, float& m, float& v, float g, double norm,
                                    const UpdateRule& r) {
  if (r.clip > 0.0) {
    const double coef = r.clip / (norm + 1e-6);
    if (coef < 1.0) g = mul_rn(g, static_cast<float>(coef));
  }
  if (r.kind == UpdateKind::kSgd) {
    // g = g + wd * p; buf = g (first) or buf * momentum + 1.0 * g; p -= lr * buf
    if (r.decay_mode == Decay::kL2) g = add_rn(g, mul_rn(r.decay, p));
    if (r.momentum != 0.0f) {
      m = r.first ? g : add_rn(mul_rn(m, r.momentum), g);
      g = m;
    }
    p = sub_rn(p, mul_rn(r.lr, g));
    return;
  }
  float pk = p;
  float gk = g;
  if (r.decay_mode == Decay::kDecoupled) pk = mul_rn(pk, r.keep);
  if (r.decay_mode == Decay::kL2) gk = add_rn(gk, mul_rn(r.decay, pk));
  const float mk = add_rn(mul_rn(m, r.beta1), mul_rn(r.one_minus_beta1, gk));
  const float vk = add_rn(mul_rn(v, r.beta2), mul_rn(mul_rn(r.one_minus_beta2, gk), gk));
  const float denom = add_rn(div_rn(sqrt_rn(vk), r.bias_correction2_sqrt), r.eps);
  m = mk;
  v = vk;
  p = sub_rn(pk, mul_rn(r.step_size, div_rn(mk, denom)));
}

}  // namespace lstmcore::cuda
