// optim_cpu.cpp: Adam's update and the sum of squares (see lstmcore/optim.h).
//
// Compiled without -ffp-contract=fast (only the kernels of kernels/ have it): every operation
// rounds as NumPy's does, in the same order, so the update equals the NumPy transcription
// bit for bit (denormals aside).
#include "lstmcore/optim.h"

#include <cmath>
#include <stdexcept>
#include <string>

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

// The scalars as NumPy forms them: in double, then rounded to S where they meet an array.
template <typename S>
struct AdamScalars {
  S beta1, beta2, one_minus_beta1, one_minus_beta2, step_size, bias_correction2_sqrt, eps;
  S decay;  // L2: added to the gradient as decay * p
  S keep;   // decoupled: p scaled by keep = 1 - lr * weight_decay
  explicit AdamScalars(const AdamHyper& h)
      : beta1(static_cast<S>(h.beta1)),
        beta2(static_cast<S>(h.beta2)),
        one_minus_beta1(static_cast<S>(1.0 - h.beta1)),
        one_minus_beta2(static_cast<S>(1.0 - h.beta2)),
        step_size(static_cast<S>(h.lr / (1.0 - std::pow(h.beta1, static_cast<double>(h.step))))),
        bias_correction2_sqrt(
            static_cast<S>(std::sqrt(1.0 - std::pow(h.beta2, static_cast<double>(h.step))))),
        eps(static_cast<S>(h.eps)),
        decay(static_cast<S>(h.weight_decay)),
        keep(static_cast<S>(1.0 - h.lr * h.weight_decay)) {}
};

enum class Decay { kNone, kL2, kDecoupled };

// One pass; the decay mode is a template argument so the loop has no branch and vectorizes.
template <typename S, Decay kDecay>
void adam_pass(S* __restrict p, const S* __restrict g, S* __restrict m, S* __restrict v,
               std::int64_t n, const AdamScalars<S> a) {
  for (std::int64_t k = 0; k < n; ++k) {
    S pk = p[k];
    S gk = g[k];
    if (kDecay == Decay::kDecoupled) pk = pk * a.keep;
    if (kDecay == Decay::kL2) gk = gk + a.decay * pk;
    const S mk = m[k] * a.beta1 + a.one_minus_beta1 * gk;
    const S vk = v[k] * a.beta2 + a.one_minus_beta2 * gk * gk;
    const S denom = std::sqrt(vk) / a.bias_correction2_sqrt + a.eps;
    m[k] = mk;
    v[k] = vk;
    p[k] = pk - a.step_size * (mk / denom);
  }
}

}  // namespace

template <typename S>
void adam_update(S* p, const S* g, S* m, S* v, std::int64_t n, const AdamHyper& h) {
  check_adam(h);
  const pool::DenormalsAreZero daz;
  const AdamScalars<S> a(h);
  if (h.weight_decay == 0.0) {
    adam_pass<S, Decay::kNone>(p, g, m, v, n, a);
  } else if (h.decoupled) {
    adam_pass<S, Decay::kDecoupled>(p, g, m, v, n, a);
  } else {
    adam_pass<S, Decay::kL2>(p, g, m, v, n, a);
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
