// optim_cuda.h: the GPU trainer's optimizer step on one parameter element: the rule of
// lstmcore/optim_rule.h (the CPU's, shared), chosen per step from the trainer's settings.
// update_element runs in the device kernel and, for the tests without a GPU, on the host.
//
// Adam/AdamW are the CPU's (cpp/src/optim_cpu.cpp), SGD the NumPy transcription in
// lstmcore.optim, clipping lstmcore.optim.clip_grad_norm: the scalars are formed in double on
// the host exactly as the CPU forms them and rounded to float once. So from the same gradient,
// norm, parameters and moments, a GPU step gives the CPU's bits, denormals aside (the CPU
// flushes them to zero).
#pragma once

#include <cstdint>
#include <string>

#include "lstmcore/optim.h"
#include "lstmcore/optim_rule.h"

namespace lstmcore::cuda {

enum class UpdateKind : int { kSgd = 0, kAdam = 1 };

// Everything one step needs besides the arrays, already rounded to float where the CPU
// rounds it. Passed to the kernel by value.
struct UpdateRule {
  UpdateKind kind = UpdateKind::kAdam;
  optim::Decay decay = optim::Decay::kNone;
  double clip = 0.0;  // max norm; 0: no clipping (the coefficient is formed in double)
  optim::AdamScalars<float> adam;
  optim::SgdScalars<float> sgd;  // float32(lr), float32(momentum), float32(weight_decay)
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
    r.decay = weight_decay != 0.0 ? optim::Decay::kL2 : optim::Decay::kNone;
    r.sgd.lr = static_cast<float>(lr);
    r.sgd.momentum = static_cast<float>(momentum);
    r.sgd.decay = static_cast<float>(weight_decay);
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
  r.decay = optim::adam_decay(h);
  r.adam = optim::adam_scalars<float>(h);
  return r;
}

// One parameter p with its moments m (Adam's first moment or SGD's momentum buffer) and v
// (Adam's second moment) from its gradient g; `norm` is the global gradient norm (before
// clipping).
LSTMCORE_HD void update_element(float& p, float& m, float& v, float g, double norm,
                                const UpdateRule& r) {
  g = optim::clip_element(g, r.clip, norm);
  if (r.kind == UpdateKind::kSgd) {
    optim::sgd_element(p, m, g, r.sgd, r.decay, r.first);
  } else {
    optim::adam_element(p, m, v, g, r.adam, r.decay);
  }
}

}  // namespace lstmcore::cuda
