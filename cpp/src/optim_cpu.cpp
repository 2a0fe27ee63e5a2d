// optim_cpu.cpp: Adam's update and the sum of squares (see lstmcore/optim.h).
//
// The element rule is lstmcore/optim_rule.h's, shared with the GPU trainer. Compiled with
// -ffp-contract=off (only the kernels of kernels/ fuse): every operation rounds as NumPy's
// does, in the same order, so the update equals the NumPy transcription bit for bit
// (denormals aside).
#include "lstmcore/optim.h"

#include <cmath>
#include <stdexcept>
#include <string>

#include "lstmcore/optim_rule.h"
#include "pool.h"

namespace lstmcore {

void check_adam(const AdamHyper& h) {
  if (h.step < 1) throw std::invalid_argument("adam: step must be >= 1, got " + std::to_string(h.step));
  const double values[] = {h.lr, h.beta1, h.beta2, h.eps, h.weight_decay};
  for (double x : values) {
    if (!std::isfinite(x)) throw std::invalid_argument("adam: hyperparameters must be finite");
  }
}

namespace {

using optim::Decay;

// One pass; the decay mode is a template argument so the loop has no branch and vectorizes.
// The element works on locals: references into the arrays would hide __restrict from GCC,
// which then checks for overlap at run time and keeps a scalar copy of the loop. (Stored in
// the rule's order, m, v, p: GCC then schedules the loop as tightly as the inline original.)
template <typename S, Decay kDecay>
void adam_pass(S* __restrict p, const S* __restrict g, S* __restrict m, S* __restrict v,
               std::int64_t n, const optim::AdamScalars<S> a) {
  for (std::int64_t k = 0; k < n; ++k) {
    S pk = p[k], mk = m[k], vk = v[k];
    optim::adam_element(pk, mk, vk, g[k], a, kDecay);
    m[k] = mk;
    v[k] = vk;
    p[k] = pk;
  }
}

}  // namespace

template <typename S>
void adam_update(S* p, const S* g, S* m, S* v, std::int64_t n, const AdamHyper& h) {
  check_adam(h);
  const pool::DenormalsAreZero daz;
  const auto a = optim::adam_scalars<S>(h);
  switch (optim::adam_decay(h)) {
    case Decay::kNone:
      adam_pass<S, Decay::kNone>(p, g, m, v, n, a);
      break;
    case Decay::kL2:
      adam_pass<S, Decay::kL2>(p, g, m, v, n, a);
      break;
    case Decay::kDecoupled:
      adam_pass<S, Decay::kDecoupled>(p, g, m, v, n, a);
      break;
  }
}

template <typename S>
double sum_of_squares(const S* x, std::int64_t n) {
  // four partial sums: independent chains the compiler can keep in registers
  double acc[4] = {0.0, 0.0, 0.0, 0.0};
  std::int64_t k = 0;
  for (; k + 4 <= n; k += 4) {
    for (int j = 0; j < 4; ++j) {
      const double e = static_cast<double>(x[k + j]);
      acc[j] += e * e;
    }
  }
  for (; k < n; ++k) {
    const double e = static_cast<double>(x[k]);
    acc[0] += e * e;
  }
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

template void adam_update<float>(float*, const float*, float*, float*, std::int64_t,
                                 const AdamHyper&);
template void adam_update<double>(double*, const double*, double*, double*, std::int64_t,
                                  const AdamHyper&);
template double sum_of_squares<float>(const float*, std::int64_t);
template double sum_of_squares<double>(const double*, std::int64_t);

}  // namespace lstmcore
