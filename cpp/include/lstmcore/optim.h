// lstmcore/optim.h: the optimizer's element-wise update and the gradient norm, one pass each.
//
// Adam in NumPy took about ten passes over every parameter (a temporary per operation) and,
// with the gradient norm, a sixth of a training step of the MNIST model on 2 cores; here each
// is one pass. The arithmetic is NumPy's, operation by operation, in the parameter's precision
// (the scalars rounded to it first), so results equal lstmcore.optim's NumPy transcription
// bit for bit, except that denormal results are flushed to zero as everywhere in the core
// (pool.h, DenormalsAreZero). The update of one element is lstmcore/optim_rule.h's, which the
// GPU trainer's update kernel runs too.
#pragma once

#include <cstdint>

namespace lstmcore {

// torch.optim.Adam (amsgrad off): weight_decay adds weight_decay * p to the gradient, or with
// `decoupled` (AdamW) scales p by 1 - lr * weight_decay first. `step` counts from 1 and sets
// the bias corrections.
struct AdamHyper {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  bool decoupled = false;
  std::int64_t step = 1;
};

// Throws std::invalid_argument unless step >= 1 and every hyperparameter is finite.
void check_adam(const AdamHyper& h);

// p, m and v (the first and second moments) are updated in place from g; n elements each.
template <typename S>
void adam_update(S* p, const S* g, S* m, S* v, std::int64_t n, const AdamHyper& h);

// The sum of x[i]^2, accumulated in double whatever S is.
template <typename S>
double sum_of_squares(const S* x, std::int64_t n);

}  // namespace lstmcore
