// blas.h: the one place that calls CBLAS (scipy-openblas32, symbols prefixed scipy_).
// Row-major wrappers; degenerate sizes are handled here so callers need no special cases.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include <cblas.h>

namespace lstmcore::blas {

// How many threads may be inside BLAS at once. OpenBLAS keeps one table of work buffers, sized
// from its build's MAX_THREADS (64 in scipy-openblas32 0.3.34, on x86-64 and aarch64); more
// callers at once than the table holds spill into an auxiliary table, with a warning that the
// process "may still crash", and it does: 255 pool threads in the backward's GEMMs died of
// SIGSEGV on aarch64 (qemu). The build's figure is read from its config string, once; a build
// that does not say gets 32, below every MAX_THREADS a wheel has shipped with.
inline int max_concurrent_calls() {
  static const int most = [] {
    const char* config = scipy_openblas_get_config();
    const char* at = config == nullptr ? nullptr : std::strstr(config, "MAX_THREADS=");
    const long n = at == nullptr ? 0 : std::strtol(at + std::strlen("MAX_THREADS="), nullptr, 10);
    return n >= 1 && n <= 4096 ? static_cast<int>(n) : 32;
  }();
  return most;
}

// One of max_concurrent_calls() places inside BLAS, held while alive; a thread that finds them
// all taken waits for one. The core's own splits never wait (schedule::gemm_threads() caps
// them); this is for what it cannot cap: many Python threads calling matmul at once (150 did
// bring the warning above on aarch64). The common case costs two atomic operations.
class CallSlot {
 public:
  CallSlot() {
    if (try_take()) return;
    std::unique_lock<std::mutex> lock(state().mutex);
    ++state().waiting;
    state().freed.wait(lock, [] { return try_take(); });
    --state().waiting;
  }
  ~CallSlot() {
    taken().fetch_sub(1);
    // seq_cst on both sides: a waiter counted itself before it last looked at taken(), so
    // either it saw this release or this release sees it and wakes it
    if (state().waiting.load() > 0) {
      std::lock_guard<std::mutex> lock(state().mutex);
      state().freed.notify_one();
    }
  }
  CallSlot(const CallSlot&) = delete;
  CallSlot& operator=(const CallSlot&) = delete;

 private:
  struct Waiters {
    std::mutex mutex;
    std::condition_variable freed;
    std::atomic<int> waiting{0};
  };
  static std::atomic<int>& taken() {
    static std::atomic<int> n{0};
    return n;
  }
  static Waiters& state() {
    static Waiters w;
    return w;
  }
  static bool try_take() {
    int n = taken().load();
    while (n < max_concurrent_calls()) {
      if (taken().compare_exchange_weak(n, n + 1)) return true;
    }
    return false;
  }
};

// C (M, N) = alpha * op(A) * op(B) + beta * C, all row-major; op(A) is (M, K), op(B) is (K, N).
// Sizes are checked by check_dims() to fit in blasint before we get here.
template <typename S>
void gemm(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N, std::int64_t K, S alpha,
          const S* A, std::int64_t lda, const S* B, std::int64_t ldb, S beta, S* C,
          std::int64_t ldc);

inline int imax1(std::int64_t v) { return v < 1 ? 1 : static_cast<int>(v); }

template <typename S>
void scale_rows(std::int64_t M, std::int64_t N, S beta, S* C, std::int64_t ldc) {
  for (std::int64_t r = 0; r < M; ++r) {
    S* row = C + r * ldc;
    if (beta == S(0)) {
      std::memset(row, 0, sizeof(S) * static_cast<std::size_t>(N));
    } else {
      for (std::int64_t c = 0; c < N; ++c) row[c] *= beta;
    }
  }
}

template <>
inline void gemm<float>(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N,
                        std::int64_t K, float alpha, const float* A, std::int64_t lda,
                        const float* B, std::int64_t ldb, float beta, float* C,
                        std::int64_t ldc) {
  if (M == 0 || N == 0) return;
  // BLAS with K = 0 is legal but some builds read lda; do the beta scaling ourselves.
  if (K == 0) return scale_rows(M, N, beta, C, ldc);
  const CallSlot slot;
  scipy_cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                    trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(M),
                    static_cast<int>(N), static_cast<int>(K), alpha, A, imax1(lda), B,
                    imax1(ldb), beta, C, imax1(ldc));
}

template <>
inline void gemm<double>(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N,
                         std::int64_t K, double alpha, const double* A, std::int64_t lda,
                         const double* B, std::int64_t ldb, double beta, double* C,
                         std::int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) return scale_rows(M, N, beta, C, ldc);
  const CallSlot slot;
  scipy_cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                    trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(M),
                    static_cast<int>(N), static_cast<int>(K), alpha, A, imax1(lda), B,
                    imax1(ldb), beta, C, imax1(ldc));
}

inline void set_threads(int n) { scipy_openblas_set_num_threads(n); }
inline int get_threads() { return scipy_openblas_get_num_threads(); }
inline const char* core_name() { return scipy_openblas_get_corename(); }


}  // namespace lstmcore::blas
