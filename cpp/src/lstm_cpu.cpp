// lstm_cpu.cpp: CPU forward/backward of the single-layer LSTM.
//
// forward: one GEMM for the input projection of all T steps, then per step one recurrent GEMM
// accumulated into that step's gate rows and one fused pass of cell math.
// backward: per step (in reverse) one fused pass and one GEMM for dh_prev; after the loop one
// GEMM each for dW_ih, dW_hh and dx over all T*B rows, and db as a sequential column sum.
#include "lstmcore/lstm.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>

#include "blas.h"
#include "lstmcore/cell.h"

namespace lstmcore {
namespace {

std::int64_t checked_mul(std::int64_t a, std::int64_t b, const char* what) {
  std::int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r) || r > INT_MAX) {
    throw std::invalid_argument(std::string(what) +
                                ": element count overflows the 32-bit sizes BLAS accepts");
  }
  return r;
}

template <typename S>
void copy_or_zero(S* dst, const S* src, std::int64_t n) {
  if (n == 0) return;
  if (src != nullptr) {
    std::memcpy(dst, src, sizeof(S) * static_cast<std::size_t>(n));
  } else {
    std::memset(dst, 0, sizeof(S) * static_cast<std::size_t>(n));
  }
}

// one step of forward cell math: gates_t holds pre-activations on entry, post-activations on exit
template <typename S>
void forward_cells(S* gates_t, const S* c_prev, S* c_next, S* tanh_c, S* h_next, std::int64_t B,
                   std::int64_t H) {
  const std::int64_t G = 4 * H;
  for (std::int64_t b = 0; b < B; ++b) {
    S* gi = gates_t + b * G;  // row b: [i | f | g | o], H each
    S* gf = gi + H;
    S* gg = gi + 2 * H;
    S* go = gi + 3 * H;
    const std::int64_t r = b * H;
    for (std::int64_t j = 0; j < H; ++j) {
      const CellState<S> s = cell_forward(gi[j], gf[j], gg[j], go[j], c_prev[r + j]);
      gi[j] = s.i;
      gf[j] = s.f;
      gg[j] = s.g;
      go[j] = s.o;
      c_next[r + j] = s.c;
      tanh_c[r + j] = s.tanh_c;
      h_next[r + j] = s.h;
    }
  }
}

// one step of backward cell math; dh holds the gradient from step t+1 (dy_t is added here),
// dc holds dc_t on entry and dc_{t-1} on exit
template <typename S>
void backward_cells(S* dgates_t, const S* gates_t, const S* c_prev, const S* tanh_c,
                    const S* dy_t, const S* dh, S* dc, std::int64_t B, std::int64_t H) {
  const std::int64_t G = 4 * H;
  for (std::int64_t b = 0; b < B; ++b) {
    const S* gi = gates_t + b * G;
    S* di = dgates_t + b * G;
    const std::int64_t r = b * H;
    for (std::int64_t j = 0; j < H; ++j) {
      const S dh_total = dh[r + j] + (dy_t != nullptr ? dy_t[r + j] : S(0));
      const CellGrad<S> d = cell_backward(gi[j], gi[H + j], gi[2 * H + j], gi[3 * H + j],
                                          c_prev[r + j], tanh_c[r + j], dh_total, dc[r + j]);
      di[j] = d.d_pre_i;
      di[H + j] = d.d_pre_f;
      di[2 * H + j] = d.d_pre_g;
      di[3 * H + j] = d.d_pre_o;
      dc[r + j] = d.dc_prev;
    }
  }
}

std::atomic<int> g_threads{0};  // 0: not yet initialised

int default_threads() {
  unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(hc);
}

}  // namespace

void check_dims(const Dims& d) {
  if (d.T < 0 || d.B < 0 || d.I < 0 || d.H < 0) {
    throw std::invalid_argument("dimensions must be >= 0, got T=" + std::to_string(d.T) +
                                " B=" + std::to_string(d.B) + " I=" + std::to_string(d.I) +
                                " H=" + std::to_string(d.H));
  }
  const std::int64_t G = checked_mul(4, d.H, "4*H");
  const std::int64_t TB = checked_mul(d.T, d.B, "T*B");
  checked_mul(TB, G, "gates (T, B, 4H)");
  checked_mul(TB, d.I, "x (T, B, I)");
  checked_mul(checked_mul(d.T + 1, d.B, "(T+1)*B"), d.H, "h_all (T+1, B, H)");
  checked_mul(G, d.I, "w_ih (4H, I)");
  checked_mul(G, d.H, "w_hh (4H, H)");
}

template <typename S>
void lstm_forward(const LstmCache<S>& cache, const S* x, const S* h0, const S* c0, const S* w_ih,
                  const S* w_hh, const S* bias, const Dims& d) {
  check_dims(d);
  const std::int64_t B = d.B, H = d.H, G = 4 * H, TB = d.T * d.B, BH = d.B * d.H;

  // input projection of all steps at once: gates (TB, G) = bias + x (TB, I) w_ih^T
  for (std::int64_t r = 0; r < TB; ++r) {
    std::copy(bias, bias + G, cache.gates + r * G);
  }
  blas::gemm<S>(false, true, TB, G, d.I, S(1), x, d.I, w_ih, d.I, S(1), cache.gates, G);

  copy_or_zero(cache.h_all, h0, BH);
  copy_or_zero(cache.c_all, c0, BH);
  for (std::int64_t t = 0; t < d.T; ++t) {
    S* gates_t = cache.gates + t * B * G;
    const S* h_prev = cache.h_all + t * BH;
    blas::gemm<S>(false, true, B, G, H, S(1), h_prev, H, w_hh, H, S(1), gates_t, G);
    forward_cells(gates_t, cache.c_all + t * BH, cache.c_all + (t + 1) * BH,
                  cache.tanh_c + t * BH, cache.h_all + (t + 1) * BH, B, H);
  }
}

template <typename S>
void lstm_backward(const LstmGrads<S>& grads, S* dgates, const LstmConstCache<S>& cache,
                   const S* x, const S* w_ih, const S* w_hh, const S* dy, const S* dh_n,
                   const S* dc_n, const Dims& d) {
  check_dims(d);
  const std::int64_t B = d.B, H = d.H, G = 4 * H, TB = d.T * d.B, BH = d.B * d.H;

  // grads.dh0 / grads.dc0 double as the running dh_t / dc_t of the reverse loop
  S* dh = grads.dh0;
  S* dc = grads.dc0;
  copy_or_zero(dh, dh_n, BH);
  copy_or_zero(dc, dc_n, BH);
  for (std::int64_t t = d.T - 1; t >= 0; --t) {
    S* dgates_t = dgates + t * B * G;
    backward_cells(dgates_t, cache.gates + t * B * G, cache.c_all + t * BH,
                   cache.tanh_c + t * BH, dy != nullptr ? dy + t * BH : nullptr, dh, dc, B, H);
    // dh_{t-1} = dgates_t (B, G) w_hh (G, H)
    blas::gemm<S>(false, false, B, H, G, S(1), dgates_t, G, w_hh, H, S(0), dh, H);
  }

  // weight gradients over all T*B rows at once
  blas::gemm<S>(true, false, G, d.I, TB, S(1), dgates, G, x, d.I, S(0), grads.dw_ih, d.I);
  blas::gemm<S>(true, false, G, H, TB, S(1), dgates, G, cache.h_all, H, S(0), grads.dw_hh, H);
  if (grads.dx != nullptr) {
    blas::gemm<S>(false, false, TB, d.I, G, S(1), dgates, G, w_ih, d.I, S(0), grads.dx, d.I);
  }
  // db: rows summed in order, so the result never depends on the thread count
  std::fill(grads.dbias, grads.dbias + G, S(0));
  for (std::int64_t r = 0; r < TB; ++r) {
    const S* row = dgates + r * G;
    for (std::int64_t k = 0; k < G; ++k) grads.dbias[k] += row[k];
  }
}

void set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument("set_num_threads: n must be >= 1, got " + std::to_string(n));
  g_threads.store(n);
  blas::set_threads(n);
}

int get_num_threads() {
  int n = g_threads.load();
  return n > 0 ? n : default_threads();
}

const char* blas_core_name() { return blas::core_name(); }

template void lstm_forward<float>(const LstmCache<float>&, const float*, const float*,
                                  const float*, const float*, const float*, const float*,
                                  const Dims&);
template void lstm_forward<double>(const LstmCache<double>&, const double*, const double*,
                                   const double*, const double*, const double*, const double*,
                                   const Dims&);
template void lstm_backward<float>(const LstmGrads<float>&, float*, const LstmConstCache<float>&,
                                   const float*, const float*, const float*, const float*,
                                   const float*, const float*, const Dims&);
template void lstm_backward<double>(const LstmGrads<double>&, double*,
                                    const LstmConstCache<double>&, const double*, const double*,
                                    const double*, const double*, const double*, const double*,
                                    const Dims&);

}  // namespace lstmcore
