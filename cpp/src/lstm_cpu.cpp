// lstm_cpu.cpp: CPU forward/backward of the single-layer LSTM.
//
// forward: one GEMM for the input projection of all T steps, then per step one recurrent GEMM
// accumulated into that step's gate rows and one fused pass of cell math.
// backward: per step (in reverse) one fused pass and one GEMM for dh_prev; after the loop one
// GEMM each for dW_ih, dW_hh and dx over all T*B rows, and db as a sequential column sum.
//
// Threads: batch row b of every step depends only on row b of the step before (forward and
// backward alike), so each thread takes a contiguous block of batch rows through the whole
// recurrence with no synchronisation; the weight gradients are split by their output rows.
// BLAS itself runs single-threaded inside each block. Each output element is computed by the
// same sequence of operations whatever the thread count, up to the BLAS kernel's own blocking.
#include "lstmcore/lstm.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstring>
#include <stdexcept>
#include <string>
#include <exception>
#include <thread>
#include <vector>

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
void forward_cells(S* __restrict__ gates_t, const S* __restrict__ c_prev, S* __restrict__ c_next,
                   S* __restrict__ tanh_c, S* __restrict__ h_next, std::int64_t B,
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

// one step of backward cell math; dh holds the whole gradient reaching h_t (dy_t included),
// dc holds dc_t on entry and dc_{t-1} on exit
template <typename S>
void backward_cells(S* __restrict__ dgates_t, const S* __restrict__ gates_t,
                    const S* __restrict__ c_prev, const S* __restrict__ tanh_c,
                    const S* __restrict__ dh, S* __restrict__ dc, std::int64_t B,
                    std::int64_t H) {
  const std::int64_t G = 4 * H;
  for (std::int64_t b = 0; b < B; ++b) {
    const S* gi = gates_t + b * G;
    S* di = dgates_t + b * G;
    const std::int64_t r = b * H;
    for (std::int64_t j = 0; j < H; ++j) {
      const CellGrad<S> d = cell_backward(gi[j], gi[H + j], gi[2 * H + j], gi[3 * H + j],
                                          c_prev[r + j], tanh_c[r + j], dh[r + j], dc[r + j]);
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

// Calls fn(begin, end) on contiguous blocks of [0, n), at most one block per thread and none
// smaller than min_block; the calling thread takes the first block. Exceptions are rethrown.
template <typename Fn>
void parallel_blocks(std::int64_t n, std::int64_t min_block, const Fn& fn) {
  const std::int64_t most = std::max<std::int64_t>(1, n / std::max<std::int64_t>(1, min_block));
  const std::int64_t parts = std::min<std::int64_t>(get_num_threads(), most);
  if (parts <= 1) {
    fn(std::int64_t{0}, n);
    return;
  }
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(parts));
  auto run = [&](std::int64_t k) {
    try {
      fn(n * k / parts, n * (k + 1) / parts);
    } catch (...) {
      errors[static_cast<std::size_t>(k)] = std::current_exception();
    }
  };
  std::vector<std::thread> workers;
  workers.reserve(static_cast<std::size_t>(parts - 1));
  for (std::int64_t k = 1; k < parts; ++k) workers.emplace_back(run, k);
  run(0);
  for (auto& w : workers) w.join();
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

constexpr std::int64_t kMinRows = 8;  // below this a thread costs more than it saves

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

namespace {

// Rows that run at time t: all B, or the first batch_sizes[t] (rows are sorted by length).
std::int64_t active_rows(const std::int64_t* batch_sizes, const Dims& d, std::int64_t t) {
  return batch_sizes != nullptr ? batch_sizes[t] : d.B;
}

// The time step processed `s`-th: forward 0, 1, ..; reverse T-1, T-2, ..
std::int64_t time_at(std::int64_t s, const Dims& d, bool reverse) {
  return reverse ? d.T - 1 - s : s;
}

// The slots of h_all / c_all read (prev) and written (next) at time t (see lstm.h).
std::int64_t prev_slot(std::int64_t t, bool reverse) { return reverse ? t + 1 : t; }
std::int64_t next_slot(std::int64_t t, bool reverse) { return reverse ? t : t + 1; }

// Active rows of the batch block [b0, b1) at time t.
std::int64_t active_in_block(const std::int64_t* batch_sizes, const Dims& d, std::int64_t t,
                             std::int64_t b0, std::int64_t b1) {
  const std::int64_t n = std::min(b1, active_rows(batch_sizes, d, t)) - b0;
  return std::max<std::int64_t>(0, n);
}

template <typename S>
void copy_rows(S* dst, const S* src, std::int64_t n) {
  if (n > 0) std::memcpy(dst, src, sizeof(S) * static_cast<std::size_t>(n));
}

// gates (TB, G) = bias + x (TB, I) w_ih^T for every active row
template <typename S>
void input_projection(S* gates, const S* x, const S* w_ih, const S* bias, const Dims& d,
                      const std::int64_t* batch_sizes) {
  const std::int64_t G = 4 * d.H;
  auto project = [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) std::copy(bias, bias + G, gates + r * G);
    blas::gemm<S>(false, true, r1 - r0, G, d.I, S(1), x + r0 * d.I, d.I, w_ih, d.I, S(1),
                  gates + r0 * G, G);
  };
  if (batch_sizes == nullptr) {
    // one big GEMM (split by rows) runs far closer to peak than T thin ones with K = I
    parallel_blocks(d.T * d.B, kMinRows, project);
    return;
  }
  parallel_blocks(d.T, 1, [&](std::int64_t t0, std::int64_t t1) {
    for (std::int64_t t = t0; t < t1; ++t) project(t * d.B, t * d.B + batch_sizes[t]);
  });
}

}  // namespace

void check_batch_sizes(const std::int64_t* batch_sizes, const Dims& d) {
  if (batch_sizes == nullptr) return;
  for (std::int64_t t = 0; t < d.T; ++t) {
    const std::int64_t n = batch_sizes[t];
    if (n < 0 || n > d.B || (t > 0 && n > batch_sizes[t - 1])) {
      throw std::invalid_argument(
          "batch_sizes: expected non-increasing values in [0, B=" + std::to_string(d.B) +
          "], got " + std::to_string(n) + " at step " + std::to_string(t));
    }
  }
}

template <typename S>
void lstm_forward(const LstmCache<S>& cache, const S* x, const S* h0, const S* c0, const S* w_ih,
                  const S* w_hh, const S* bias, const Dims& d, bool reverse,
                  const std::int64_t* batch_sizes) {
  check_dims(d);
  check_batch_sizes(batch_sizes, d);
  const std::int64_t B = d.B, H = d.H, G = 4 * H, BH = d.B * d.H;
  input_projection(cache.gates, x, w_ih, bias, d, batch_sizes);

  const std::int64_t first = initial_slot(d, reverse) * BH;
  copy_or_zero(cache.h_all + first, h0, BH);
  copy_or_zero(cache.c_all + first, c0, BH);
  parallel_blocks(B, kMinRows, [&](std::int64_t b0, std::int64_t b1) {
    const std::int64_t nb = b1 - b0;
    for (std::int64_t s = 0; s < d.T; ++s) {
      const std::int64_t t = time_at(s, d, reverse);
      const std::int64_t n = active_in_block(batch_sizes, d, t, b0, b1);
      S* gates_t = cache.gates + (t * B + b0) * G;  // (n, G)
      const std::int64_t prev = (prev_slot(t, reverse) * B + b0) * H;
      const std::int64_t next = (next_slot(t, reverse) * B + b0) * H;
      blas::gemm<S>(false, true, n, G, H, S(1), cache.h_all + prev, H, w_hh, H, S(1), gates_t, G);
      forward_cells(gates_t, cache.c_all + prev, cache.c_all + next,
                    cache.tanh_c + (t * B + b0) * H, cache.h_all + next, n, H);
      // rows past their end (or not yet started, in reverse) carry their state unchanged
      copy_rows(cache.h_all + next + n * H, cache.h_all + prev + n * H, (nb - n) * H);
      copy_rows(cache.c_all + next + n * H, cache.c_all + prev + n * H, (nb - n) * H);
    }
  });
}

template <typename S>
void lstm_collect_y(S* y, const S* h_all, const Dims& d, bool reverse,
                    const std::int64_t* batch_sizes) {
  const std::int64_t BH = d.B * d.H;
  for (std::int64_t t = 0; t < d.T; ++t) {
    const std::int64_t n = active_rows(batch_sizes, d, t) * d.H;
    S* y_t = y + t * BH;
    copy_rows(y_t, h_all + next_slot(t, reverse) * BH, n);
    if (BH > n) std::memset(y_t + n, 0, sizeof(S) * static_cast<std::size_t>(BH - n));
  }
}

namespace {

// dW_ih (G, I), dW_hh (G, H) and db (G,) from dgates over every active row; h_prev_all (TB, H)
// holds the state each row's step read. Split by the gradients' rows (gate units).
template <typename S>
void weight_gradients(const LstmGrads<S>& grads, const S* dgates, const S* x,
                      const S* h_prev_all, const Dims& d, const std::int64_t* batch_sizes) {
  const std::int64_t H = d.H, G = 4 * H, TB = d.T * d.B;
  parallel_blocks(G, kMinRows, [&](std::int64_t g0, std::int64_t g1) {
    const std::int64_t ng = g1 - g0;
    S* db = grads.dbias;
    std::fill(db + g0, db + g1, S(0));
    if (batch_sizes == nullptr || d.T == 0) {
      blas::gemm<S>(true, false, ng, d.I, TB, S(1), dgates + g0, G, x, d.I, S(0),
                    grads.dw_ih + g0 * d.I, d.I);
      blas::gemm<S>(true, false, ng, H, TB, S(1), dgates + g0, G, h_prev_all, H, S(0),
                    grads.dw_hh + g0 * H, H);
      // db: rows summed in order, so the result never depends on the thread count
      for (std::int64_t r = 0; r < TB; ++r) {
        const S* row = dgates + r * G;
        for (std::int64_t k = g0; k < g1; ++k) db[k] += row[k];
      }
      return;
    }
    // only the active rows of each step: a GEMM per step, accumulated in time order
    for (std::int64_t t = 0; t < d.T; ++t) {
      const std::int64_t r0 = t * d.B, n = batch_sizes[t];
      const S beta = t == 0 ? S(0) : S(1);
      blas::gemm<S>(true, false, ng, d.I, n, S(1), dgates + r0 * G + g0, G, x + r0 * d.I, d.I,
                    beta, grads.dw_ih + g0 * d.I, d.I);
      blas::gemm<S>(true, false, ng, H, n, S(1), dgates + r0 * G + g0, G, h_prev_all + r0 * H,
                    H, beta, grads.dw_hh + g0 * H, H);
      for (std::int64_t r = r0; r < r0 + n; ++r) {
        const S* row = dgates + r * G;
        for (std::int64_t k = g0; k < g1; ++k) db[k] += row[k];
      }
    }
  });
}

// dx (T, B, I) = dgates w_ih for active rows, zero elsewhere
template <typename S>
void input_gradient(S* dx, const S* dgates, const S* w_ih, const Dims& d,
                    const std::int64_t* batch_sizes) {
  const std::int64_t G = 4 * d.H;
  auto rows = [&](std::int64_t r0, std::int64_t r1) {
    blas::gemm<S>(false, false, r1 - r0, d.I, G, S(1), dgates + r0 * G, G, w_ih, d.I, S(0),
                  dx + r0 * d.I, d.I);
  };
  if (batch_sizes == nullptr) {
    parallel_blocks(d.T * d.B, kMinRows, rows);
    return;
  }
  parallel_blocks(d.T, 1, [&](std::int64_t t0, std::int64_t t1) {
    for (std::int64_t t = t0; t < t1; ++t) {
      const std::int64_t r0 = t * d.B, n = batch_sizes[t];
      rows(r0, r0 + n);
      const std::int64_t rest = (d.B - n) * d.I;
      if (rest > 0) std::memset(dx + (r0 + n) * d.I, 0, sizeof(S) * static_cast<std::size_t>(rest));
    }
  });
}

}  // namespace

template <typename S>
void lstm_backward(const LstmGrads<S>& grads, S* dgates, const LstmConstCache<S>& cache,
                   const S* x, const S* w_ih, const S* w_hh, const S* dy, const S* dh_n,
                   const S* dc_n, const Dims& d, bool reverse, const std::int64_t* batch_sizes) {
  check_dims(d);
  check_batch_sizes(batch_sizes, d);
  const std::int64_t B = d.B, H = d.H, G = 4 * H, BH = d.B * d.H;

  // grads.dh0 / grads.dc0 double as the running dh_t / dc_t of the reverse loop; rows that are
  // inactive at a step keep theirs unchanged, so dh_n / dc_n enter at each row's final state
  copy_or_zero(grads.dh0, dh_n, BH);
  copy_or_zero(grads.dc0, dc_n, BH);
  parallel_blocks(B, kMinRows, [&](std::int64_t b0, std::int64_t b1) {
    S* dh = grads.dh0 + b0 * H;
    S* dc = grads.dc0 + b0 * H;
    for (std::int64_t s = d.T - 1; s >= 0; --s) {  // the forward pass's steps, last first
      const std::int64_t t = time_at(s, d, reverse);
      const std::int64_t n = active_in_block(batch_sizes, d, t, b0, b1);
      const std::int64_t row = t * B + b0;
      S* dgates_t = dgates + row * G;  // (n, G)
      if (dy != nullptr) {
        const S* dy_t = dy + row * H;
        for (std::int64_t k = 0; k < n * H; ++k) dh[k] += dy_t[k];
      }
      backward_cells(dgates_t, cache.gates + row * G,
                     cache.c_all + (prev_slot(t, reverse) * B + b0) * H, cache.tanh_c + row * H,
                     dh, dc, n, H);
      // dh_{t-1} = dgates_t (n, G) w_hh (G, H)
      blas::gemm<S>(false, false, n, H, G, S(1), dgates_t, G, w_hh, H, S(0), dh, H);
    }
  });

  // the state each step read: slot t (forward) or t+1 (reverse), so rows line up with dgates
  const S* h_prev_all = cache.h_all + (reverse ? BH : 0);
  weight_gradients(grads, dgates, x, h_prev_all, d, batch_sizes);
  if (grads.dx != nullptr) input_gradient(grads.dx, dgates, w_ih, d, batch_sizes);
}

void check_matmul(std::int64_t M, std::int64_t N, std::int64_t K) {
  if (M < 0 || N < 0 || K < 0) throw std::invalid_argument("matmul: negative size");
  checked_mul(M, K, "a");
  checked_mul(K, N, "b");
  checked_mul(M, N, "the product");
}

template <typename S>
void matmul(S* c, const S* a, const S* b, std::int64_t M, std::int64_t N, std::int64_t K,
            std::int64_t lda, std::int64_t ldb, bool trans_a, bool trans_b) {
  check_matmul(M, N, K);
  blas::gemm<S>(trans_a, trans_b, M, N, K, S(1), a, lda, b, ldb, S(0), c, N);
}

void set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument("set_num_threads: n must be >= 1, got " + std::to_string(n));
  g_threads.store(n);
  // BLAS runs single-threaded inside each of our blocks; its own pool would fight ours
  blas::set_threads(1);
}

int get_num_threads() {
  int n = g_threads.load();
  return n > 0 ? n : default_threads();
}

const char* blas_core_name() { return blas::core_name(); }

template void matmul<float>(float*, const float*, const float*, std::int64_t, std::int64_t,
                            std::int64_t, std::int64_t, std::int64_t, bool, bool);
template void matmul<double>(double*, const double*, const double*, std::int64_t, std::int64_t,
                             std::int64_t, std::int64_t, std::int64_t, bool, bool);
template void lstm_forward<float>(const LstmCache<float>&, const float*, const float*,
                                  const float*, const float*, const float*, const float*,
                                  const Dims&, bool, const std::int64_t*);
template void lstm_forward<double>(const LstmCache<double>&, const double*, const double*,
                                   const double*, const double*, const double*, const double*,
                                   const Dims&, bool, const std::int64_t*);
template void lstm_collect_y<float>(float*, const float*, const Dims&, bool,
                                    const std::int64_t*);
template void lstm_collect_y<double>(double*, const double*, const Dims&, bool,
                                     const std::int64_t*);
template void lstm_backward<float>(const LstmGrads<float>&, float*, const LstmConstCache<float>&,
                                   const float*, const float*, const float*, const float*,
                                   const float*, const float*, const Dims&, bool,
                                   const std::int64_t*);
template void lstm_backward<double>(const LstmGrads<double>&, double*,
                                    const LstmConstCache<double>&, const double*, const double*,
                                    const double*, const double*, const double*, const double*,
                                    const Dims&, bool, const std::int64_t*);

}  // namespace lstmcore
