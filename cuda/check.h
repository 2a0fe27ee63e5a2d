// check.h: every CUDA runtime and cuBLAS call goes through these; a failure becomes
// std::runtime_error naming the call, the file and the line (RuntimeError in Python).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace lstmcore::cuda {

[[noreturn]] inline void fail(const char* call, const std::string& what, const char* file,
                              int line) {
  throw std::runtime_error(std::string(call) + " failed: " + what + " (" + file + ":" +
                           std::to_string(line) + ")");
}

inline void check_cuda(cudaError_t status, const char* call, const char* file, int line) {
  if (status != cudaSuccess) {
    fail(call, std::string(cudaGetErrorName(status)) + ": " + cudaGetErrorString(status), file,
         line);
  }
}

inline void check_cublas(cublasStatus_t status, const char* call, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    fail(call, std::string("cuBLAS status ") + std::to_string(static_cast<int>(status)), file,
         line);
  }
}

}  // namespace lstmcore::cuda

#define CUDA_CHECK(call) ::lstmcore::cuda::check_cuda((call), #call, __FILE__, __LINE__)
#define CUBLAS_CHECK(call) ::lstmcore::cuda::check_cublas((call), #call, __FILE__, __LINE__)
// after every kernel launch: configuration errors surface here, not at the next sync
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
