// launch.h: the launch geometry and the small kernels both .cu files use, written once.
#pragma once

#include <cstdint>

namespace lstmcore::cuda {

// threads per block of the element-wise kernels (one thread per element)
constexpr int kThreads = 256;

inline int blocks_for(std::int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

// out (rows, cols): every row a copy of row (cols), e.g. a bias before a GEMM accumulates
template <typename S>
__global__ void fill_rows_kernel(S* out, const S* row, std::int64_t rows, std::int64_t cols) {
  const std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k < rows * cols) out[k] = row[k % cols];
}

}  // namespace lstmcore::cuda
