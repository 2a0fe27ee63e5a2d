// check.h: every CUDA runtime and cuBLAS call goes through these; a failure becomes
// std::runtime_error naming the call, the error's name and text, the file and the line
// (RuntimeError in Python).
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

// "cudaErrorMemoryAllocation: out of memory"; host-only lookups, usable without a GPU
inline std::string describe_cuda_error(cudaError_t status) {
  const char* name = cudaGetErrorName(status);
  const char* text = cudaGetErrorString(status);
  return std::string(name != nullptr ? name : "unknown cudaError_t") + " (" +
         std::to_string(static_cast<int>(status)) +
         "): " + (text != nullptr ? text : "no description");
}

// "CUBLAS_STATUS_INVALID_VALUE (7): an invalid value was used as an argument"; cuBLAS's own
// texts (cublasGetStatusName/String are lookups: no handle or GPU needed)
inline std::string describe_cublas_status(cublasStatus_t status) {
  const char* name = cublasGetStatusName(status);
  const char* text = cublasGetStatusString(status);
  return std::string(name != nullptr ? name : "unknown cublasStatus_t") + " (" +
         std::to_string(static_cast<int>(status)) +
         "): " + (text != nullptr ? text : "no description");
}

inline void check_cuda(cudaError_t status, const char* call, const char* file, int line) {
  if (status != cudaSuccess) fail(call, describe_cuda_error(status), file, line);
}

inline void check_cublas(cublasStatus_t status, const char* call, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS) fail(call, describe_cublas_status(status), file, line);
}

}  // namespace lstmcore::cuda

#define CUDA_CHECK(call) ::lstmcore::cuda::check_cuda((call), #call, __FILE__, __LINE__)
#define CUBLAS_CHECK(call) ::lstmcore::cuda::check_cublas((call), #call, __FILE__, __LINE__)
// after every kernel launch: configuration errors surface here, not at the next sync
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
