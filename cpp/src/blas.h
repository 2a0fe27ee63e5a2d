// blas.h: the one place that calls CBLAS (scipy-openblas32, symbols prefixed scipy_).
// Row-major wrappers; degenerate sizes are handled here so callers need no special cases.
#pragma once

#include <cstdint>
#include <cstring>

#include <cblas.h>

namespace lstmcore::blas {

// How many threads may be inside BLAS at once. OpenBLAS keeps one table of work buffers,
// max(50, 2 * MAX_THREADS) of them (MAX_THREADS is 64 in scipy-openblas32 0.3.34, on x86-64 and
// aarch64). A single-threaded call takes one; bench's sgemm probe, OpenBLAS's own threads, takes
// up to MAX_THREADS. More at once spill into an auxiliary table, with a warning that the
// process "may still crash", and it does: 255 pool threads in the backward's GEMMs died of
// SIGSEGV on aarch64 (qemu). So at most MAX_THREADS callers, read from the build's config
// string once; a build that does not say gets 32, below every MAX_THREADS a wheel has shipped
// with. set_call_limit_for_tests() lowers it, for the tests of the wait.
int max_concurrent_calls();
void set_call_limit_for_tests(int n);  // 0: the build's figure again
int peak_concurrent_calls();           // the most callers inside at once, so far

// One of max_concurrent_calls() places inside BLAS, held while alive; a thread that finds them
// all taken yields, then sleeps, until one is free. The core's own splits never wait
// (schedule::gemm_threads() caps them); this is for what it cannot cap: many Python threads
// calling matmul at once (150 brought the warning above on aarch64). No lock: a place is one
// atomic increment, and a fork child starts with all of them free (blas.cpp).
class CallSlot {
 public:
  CallSlot();
  ~CallSlot();
  CallSlot(const CallSlot&) = delete;
  CallSlot& operator=(const CallSlot&) = delete;
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
