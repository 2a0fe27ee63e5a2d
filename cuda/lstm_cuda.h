// lstm_cuda.h: the CUDA path. The same algorithm and the same cache layout as the CPU core
// (see cpp/include/lstmcore/lstm.h for the shape legend); every pointer here is device memory.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "lstmcore/lstm.h"

namespace lstmcore::cuda {

// Number of usable devices, or 0 with the reason in `why`.
int device_count(std::string* why);

// Why no device can be used, from cudaGetDeviceCount's status, the driver's CUDA version
// (cudaDriverGetVersion: 0 when no driver is loaded) and this module's runtime version
// (CUDART_VERSION), e.g. "the NVIDIA driver supports CUDA 12.4, older than the CUDA 13.0
// runtime this module was built with: update the driver". Host-only, for tests as well.
std::string unusable_reason(cudaError_t status, int driver_version, int runtime_version);

// Device memory of `count` elements, freed with its owner; grow() never shrinks and keeps
// nothing of the old contents. Neither copyable nor movable: owners hold it by value.
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
  // host -> device (grows first); pageable host memory: the call returns once `host` was read
  void upload(const T* host, std::size_t count, cudaStream_t stream);
  // device -> host; pageable host memory: the call returns once `host` is written
  void download(T* host, std::size_t count, cudaStream_t stream) const;

 private:
  T* ptr_ = nullptr;
  std::size_t size_ = 0;
};

// One cuBLAS handle, one stream and a scratch buffer, created once per model and reused for
// every call; one call at a time (the owners serialise their calls). Every member is owned
// by RAII: a constructor that throws half way frees what it had made.
class Context {
 public:
  explicit Context(bool allow_tf32 = false);
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  cublasHandle_t blas() const { return handle_.get(); }
  cudaStream_t stream() const { return stream_.get(); }
  void synchronize() const;
  // device scratch of at least `bytes` (grown, never shrunk; contents undefined), e.g. the
  // column sums' partials; valid until the next scratch() call
  void* scratch(std::size_t bytes) const;

 private:
  struct StreamDeleter {
    void operator()(cudaStream_t s) const noexcept { cudaStreamDestroy(s); }
  };
  struct HandleDeleter {
    void operator()(cublasHandle_t h) const noexcept { cublasDestroy(h); }
  };
  // declared before the handle: destroyed after it
  std::unique_ptr<CUstream_st, StreamDeleter> stream_;
  std::unique_ptr<cublasContext, HandleDeleter> handle_;
  mutable DeviceBuffer<unsigned char> scratch_;
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

// out (cols) = the column sums of in (rows, cols): the deterministic two-level sum of
// launch.h (column_sum_plan), no atomics; uses ctx.scratch() for the partials
template <typename S>
void column_sum(const Context& ctx, S* out, const S* in, std::int64_t rows, std::int64_t cols);

}  // namespace lstmcore::cuda
