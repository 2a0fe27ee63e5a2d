// lstm_cuda.h: the CUDA path. The same algorithm and the same cache layout as the CPU core
// (see cpp/include/lstmcore/lstm.h for the shape legend); every pointer here is device memory.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "lstmcore/lstm.h"

namespace lstmcore::cuda {

// Number of usable devices, or 0 with the reason in `why`.
int device_count(const char** why);

// One cuBLAS handle and one stream, created once per model and reused for every call.
class Context {
 public:
  explicit Context(bool allow_tf32 = false);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  cublasHandle_t blas() const { return handle_; }
  cudaStream_t stream() const { return stream_; }
  void synchronize() const;

 private:
  cublasHandle_t handle_ = nullptr;
  cudaStream_t stream_ = nullptr;
};

// Device memory of `count` elements, freed with its owner; grow() never shrinks.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t count) { grow(count); }
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void grow(std::size_t count);
  T* data() { return ptr_; }
  const T* data() const { return ptr_; }
  std::size_t size() const { return size_; }
  void upload(const T* host, std::size_t count, cudaStream_t stream);
  void download(T* host, std::size_t count, cudaStream_t stream) const;

 private:
  T* ptr_ = nullptr;
  std::size_t size_ = 0;
};

// Row-major C (M, N) = alpha op(A) op(B) + beta C through column-major cuBLAS (operands
// swapped); beta must be 0 or 1, C contiguous (ldc == N) when K == 0.
template <typename S>
void gemm(const Context& ctx, bool trans_a, bool trans_b, std::int64_t M, std::int64_t N,
          std::int64_t K, S alpha, const S* A, std::int64_t lda, const S* B, std::int64_t ldb,
          S beta, S* C, std::int64_t ldc);

template <typename S>
void lstm_forward(const Context& ctx, const LstmCache<S>& cache, const S* x, const S* h0,
                  const S* c0, const S* w_ih, const S* w_hh, const S* bias, const Dims& d);

template <typename S>
void lstm_backward(const Context& ctx, const LstmGrads<S>& grads, S* dgates,
                   const LstmConstCache<S>& cache, const S* x, const S* w_ih, const S* w_hh,
                   const S* dy, const S* dh_n, const S* dc_n, const Dims& d);

// out[c] = sum over rows r (in order) of in[r, c]: deterministic, no atomics
template <typename S>
void column_sum(const Context& ctx, S* out, const S* in, std::int64_t rows, std::int64_t cols);

}  // namespace lstmcore::cuda
