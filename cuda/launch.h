// launch.h: the launch geometry and the small kernels both .cu files use, written once.
// The plans below are plain host code (no CUDA types), so the bindings can hand them to tests
// that run without a GPU.
#pragma once

#include <cstdint>

namespace lstmcore::cuda {

// threads per block of the element-wise kernels (one thread per element)
constexpr int kThreads = 256;

inline int blocks_for(std::int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

// The two-level column sum out[c] = sum_r in[r, c] (the bias gradients: rows = T*B, up to
// 100,352 for pixel MNIST, cols = 4H). Level one: the rows are cut into `chunks` of
// `chunk_rows` consecutive rows; a block of kSumCols x kSumRows threads sums one chunk of
// kSumCols columns (thread (x, y) takes the rows y, y + kSumRows, ... of its chunk, then a
// fixed tree over y), giving partial (chunks, cols). Level two: the same kernel over the
// partials as one chunk. The order of every addition depends on (rows, cols) alone: the
// same bits on every run and every GPU, no atomics.
constexpr int kSumCols = 32;         // threads along the columns: coalesced row reads
constexpr int kSumRows = 8;          // threads along the rows of a chunk
constexpr std::int64_t kSumMinChunkRows = 64;  // below this a block has too little to do
constexpr std::int64_t kSumMaxChunks = 512;    // level two reads at most this many rows

struct SumPlan {
  std::int64_t chunk_rows = 0;  // rows per chunk, >= 1
  std::int64_t chunks = 0;      // ceil(rows / chunk_rows); 1: level one writes out directly
};

inline SumPlan column_sum_plan(std::int64_t rows) {
  SumPlan p;
  if (rows <= 0) return p;  // nothing to sum: out is zeroed
  const std::int64_t even = (rows + kSumMaxChunks - 1) / kSumMaxChunks;
  p.chunk_rows = even > kSumMinChunkRows ? even : kSumMinChunkRows;
  p.chunks = (rows + p.chunk_rows - 1) / p.chunk_rows;
  return p;
}

// The trainer's statistics (sum of squared gradients over P parameters, then the batch's
// loss and correct-count): level one gives one double per block of kReduceThreads threads,
// each block summing `chunk` consecutive gradients (strided by thread, then a fixed tree);
// level two, one block, sums the partials and the batch rows the same way.
constexpr int kReduceThreads = 256;
constexpr std::int64_t kReduceMaxBlocks = 256;
constexpr std::int64_t kReduceMinChunk = 4096;

struct ReducePlan {
  std::int64_t chunk = 0;   // gradients per block
  std::int64_t blocks = 0;  // ceil(P / chunk), at least 1 (P = 0 gives one empty block)
};

inline ReducePlan reduce_plan(std::int64_t count) {
  ReducePlan p;
  const std::int64_t even = (count + kReduceMaxBlocks - 1) / kReduceMaxBlocks;
  p.chunk = even > kReduceMinChunk ? even : kReduceMinChunk;
  p.blocks = count > 0 ? (count + p.chunk - 1) / p.chunk : 1;
  return p;
}

#if defined(__CUDACC__)
// out (rows, cols): every row a copy of row (cols), e.g. a bias before a GEMM accumulates
template <typename S>
__global__ void fill_rows_kernel(S* out, const S* row, std::int64_t rows, std::int64_t cols) {
  const std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k < rows * cols) out[k] = row[k % cols];
}
#endif

}  // namespace lstmcore::cuda
