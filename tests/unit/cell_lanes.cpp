// cell_lanes.cpp: cell.h's cell on the CPU kernels' vectors (kernels/cell_vec.h) against the
// same cell on scalars, lane by lane. test_cell_lanes.py compiles it once per ISA, with that
// kernel file's flags and -DLSTMCORE_VBYTES, and runs it where the CPU can.
//
// usage: cell_lanes SEED. Prints "name value" lines: the largest relative difference of each
// comparison (|a - b| / max(1, |b|) over every output and lane), and the count of failed
// special-value checks; the test holds them to its tolerances.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#define LSTMCORE_CELL_NS celltest
#include "cell_vec.h"

namespace {

using celltest::CellGrad;
using celltest::CellState;
using celltest::vd;
using celltest::vf;

constexpr int kRows = 4096;  // inputs per comparison, a multiple of every lane count

template <typename T>
void fields(const CellState<T>& s, T* out) {  // the 7 outputs of forward
  const T all[7] = {s.i, s.f, s.g, s.o, s.c, s.tanh_c, s.h};
  std::memcpy(out, all, sizeof all);
}
template <typename T>
void fields(const CellGrad<T>& d, T* out) {  // the 5 outputs of backward
  const T all[5] = {d.d_pre_i, d.d_pre_f, d.d_pre_g, d.d_pre_o, d.dc_prev};
  std::memcpy(out, all, sizeof all);
}

double rel(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b) ? 0.0 : 1e300;
  return std::fabs(a - b) / std::fmax(1.0, std::fabs(b));
}

// inputs of one cell: 4 pre-activations and c_prev (forward); the backward's come from it
template <typename S>
struct Inputs {
  std::vector<S> pre[4], c_prev, dh, dc;
};

template <typename S>
Inputs<S> random_inputs(std::mt19937_64& gen) {
  std::normal_distribution<double> normal;
  std::uniform_int_distribution<int> pick(0, 2);
  const double scales[3] = {1.0, 6.0, 40.0};  // the middle, the bends, saturation
  Inputs<S> in;
  for (auto* v : {&in.pre[0], &in.pre[1], &in.pre[2], &in.pre[3], &in.c_prev, &in.dh, &in.dc}) {
    v->resize(kRows);
    for (S& x : *v) x = static_cast<S>(normal(gen) * scales[pick(gen)]);
  }
  return in;
}

// the vector cell over all rows, lane by lane, against the scalar cell of type R on the same
// (type S) inputs; returns the largest relative difference of forward and of backward
template <typename V, typename S, typename R>
void compare(const Inputs<S>& in, double* fwd_err, double* bwd_err) {
  constexpr int L = sizeof(V) / sizeof(S);
  *fwd_err = 0.0;
  *bwd_err = 0.0;
  for (int r = 0; r < kRows; r += L) {
    V x[5], dh, dc;
    for (int k = 0; k < 4; ++k) std::memcpy(&x[k], &in.pre[k][r], sizeof(V));
    std::memcpy(&x[4], &in.c_prev[r], sizeof(V));
    std::memcpy(&dh, &in.dh[r], sizeof(V));
    std::memcpy(&dc, &in.dc[r], sizeof(V));
    const CellState<V> s = celltest::cell_forward(x[0], x[1], x[2], x[3], x[4]);
    const CellGrad<V> d = celltest::cell_backward(s.i, s.f, s.g, s.o, x[4], s.tanh_c, dh, dc);
    V got_f[7], got_b[5];
    fields(s, got_f);
    fields(d, got_b);
    for (int u = 0; u < L; ++u) {
      const auto cast = [](S v) { return static_cast<R>(v); };
      const CellState<R> ws = celltest::cell_forward(cast(in.pre[0][r + u]), cast(in.pre[1][r + u]),
                                                     cast(in.pre[2][r + u]), cast(in.pre[3][r + u]),
                                                     cast(in.c_prev[r + u]));
      // backward from the vector forward's own gates: it compares the backward cell alone
      const CellGrad<R> wd = celltest::cell_backward(
          cast(s.i[u]), cast(s.f[u]), cast(s.g[u]), cast(s.o[u]), cast(in.c_prev[r + u]),
          cast(s.tanh_c[u]), cast(in.dh[r + u]), cast(in.dc[r + u]));
      R want_f[7], want_b[5];
      fields(ws, want_f);
      fields(wd, want_b);
      for (int k = 0; k < 7; ++k) *fwd_err = std::fmax(*fwd_err, rel(got_f[k][u], want_f[k]));
      for (int k = 0; k < 5; ++k) *bwd_err = std::fmax(*bwd_err, rel(got_b[k][u], want_b[k]));
    }
  }
}

// +-inf saturate to within a float ulp of the limits (the rational tanh and the reciprocal
// estimate stop short of exactly 1) with no NaN; a NaN reaches c and h of its own lane only
int special_failures() {
  constexpr int L = sizeof(vf) / sizeof(float);
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float lanes[4] = {inf, -inf, nan, 0.5f};  // repeated over the vector
  vf x{};
  for (int u = 0; u < L; ++u) x[u] = lanes[u % 4];
  const vf sig = celltest::sigmoid(x), th = celltest::CellPrims<vf>::tanh(x);
  const CellState<vf> s = celltest::cell_forward(x, x, x, x, vf{} + 0.25f);
  const float near_one = 1.0f - 1.2e-7f;  // two float ulps below 1
  int failures = 0;
  for (int u = 0; u < L; ++u) {
    const bool finite = std::isfinite(s.c[u]) && std::isfinite(s.h[u]);
    bool ok = false;
    switch (u % 4) {
      case 0: ok = sig[u] >= near_one && sig[u] <= 1.0f && th[u] >= near_one && th[u] <= 1.0f &&
                   finite; break;
      case 1: ok = sig[u] >= 0.0f && sig[u] < 1e-38f && th[u] <= -near_one && th[u] >= -1.0f &&
                   finite; break;
      case 2: ok = std::isnan(s.c[u]) && std::isnan(s.h[u]); break;
      default: ok = finite; break;
    }
    if (!ok) {
      std::printf("special lane %d (x = %g): sigmoid %.9g tanh %.9g c %.9g h %.9g\n", u,
                  static_cast<double>(x[u]), static_cast<double>(sig[u]),
                  static_cast<double>(th[u]), static_cast<double>(s.c[u]),
                  static_cast<double>(s.h[u]));
      ++failures;
    }
  }
  return failures;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s SEED\n", argv[0]);
    return 2;
  }
  std::mt19937_64 gen(std::strtoull(argv[1], nullptr, 10));
  double fwd = 0.0, bwd = 0.0;
  const Inputs<float> f32 = random_inputs<float>(gen);
  compare<vf, float, float>(f32, &fwd, &bwd);
  std::printf("f32_forward_vs_f32 %.3e\nf32_backward_vs_f32 %.3e\n", fwd, bwd);
  compare<vf, float, double>(f32, &fwd, &bwd);
  std::printf("f32_forward_vs_f64 %.3e\n", fwd);
  const Inputs<double> f64 = random_inputs<double>(gen);
  compare<vd, double, double>(f64, &fwd, &bwd);
  std::printf("f64_forward_vs_f64 %.3e\nf64_backward_vs_f64 %.3e\n", fwd, bwd);
  std::printf("special_failures %d\n", special_failures());
  return 0;
}
