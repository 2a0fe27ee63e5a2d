// lstm_cuda.cu: LSTM forward/backward on the GPU: cuBLAS for the GEMMs, one fused pointwise
// kernel per step calling the same cell math as the CPU (cpp/include/lstmcore/cell.h).
#include <stdexcept>
#include <string>

#include "check.h"
#include "launch.h"
#include "lstm_cuda.h"
#include "lstmcore/cell.h"

namespace lstmcore::cuda {
namespace {

template <typename S>
__global__ void forward_cells_kernel(S* gates_t, const S* c_prev, S* c_next, S* tanh_c,
                                     S* h_next, std::int64_t B, std::int64_t H) {
  const std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= B * H) return;
  const std::int64_t b = k / H, j = k % H;
  S* g = gates_t + b * 4 * H;  // row b: [i | f | g | o]
  const CellState<S> s = cell_forward(g[j], g[H + j], g[2 * H + j], g[3 * H + j], c_prev[k]);
  g[j] = s.i;
  g[H + j] = s.f;
  g[2 * H + j] = s.g;
  g[3 * H + j] = s.o;
  c_next[k] = s.c;
  tanh_c[k] = s.tanh_c;
  h_next[k] = s.h;
}

template <typename S>
__global__ void backward_cells_kernel(S* dgates_t, const S* gates_t, const S* c_prev,
                                      const S* tanh_c, const S* dy_t, const S* dh, S* dc,
                                      std::int64_t B, std::int64_t H) {
  const std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= B * H) return;
  const std::int64_t b = k / H, j = k % H;
  const S* g = gates_t + b * 4 * H;
  S* dg = dgates_t + b * 4 * H;
  const S dh_total = dh[k] + (dy_t != nullptr ? dy_t[k] : S(0));
  const CellGrad<S> d =
      cell_backward(g[j], g[H + j], g[2 * H + j], g[3 * H + j], c_prev[k], tanh_c[k], dh_total,
                    dc[k]);
  dg[j] = d.d_pre_i;
  dg[H + j] = d.d_pre_f;
  dg[2 * H + j] = d.d_pre_g;
  dg[3 * H + j] = d.d_pre_o;
  dc[k] = d.dc_prev;
}

// one chunk of rows of kSumCols columns (see column_sum_plan in launch.h); block
// (kSumCols, kSumRows), grid (column blocks, chunks); out (chunks, cols)
template <typename S>
__global__ void column_sum_kernel(S* out, const S* in, std::int64_t rows, std::int64_t cols,
                                  std::int64_t chunk_rows) {
  __shared__ S part[kSumRows][kSumCols + 1];  // +1: no bank conflicts along y
  const std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * kSumCols + threadIdx.x;
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.y) * chunk_rows;
  const std::int64_t end = first + chunk_rows < rows ? first + chunk_rows : rows;
  S sum = S(0);
  if (c < cols) {
    for (std::int64_t r = first + threadIdx.y; r < end; r += kSumRows) sum += in[r * cols + c];
  }
  part[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  for (int width = kSumRows / 2; width > 0; width /= 2) {  // a fixed tree over y
    if (static_cast<int>(threadIdx.y) < width) {
      part[threadIdx.y][threadIdx.x] += part[threadIdx.y + width][threadIdx.x];
    }
    __syncthreads();
  }
  if (threadIdx.y == 0 && c < cols) {
    out[static_cast<std::int64_t>(blockIdx.y) * cols + c] = part[0][threadIdx.x];
  }
}

template <typename S>
void launch_column_sum(const Context& ctx, S* out, const S* in, std::int64_t rows,
                       std::int64_t cols, std::int64_t chunk_rows, std::int64_t chunks) {
  const dim3 block(kSumCols, kSumRows);
  const dim3 grid(static_cast<unsigned>((cols + kSumCols - 1) / kSumCols),
                  static_cast<unsigned>(chunks));
  column_sum_kernel<S><<<grid, block, 0, ctx.stream()>>>(out, in, rows, cols, chunk_rows);
  CUDA_CHECK_LAUNCH();
}

void copy_or_zero(const Context& ctx, void* dst, const void* src, std::size_t bytes) {
  if (bytes == 0) return;
  if (src != nullptr) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ctx.stream()));
  } else {
    CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, ctx.stream()));
  }
}

cublasStatus_t gemm_call(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                         int n, int k, const float* alpha, const float* A, int lda,
                         const float* B, int ldb, const float* beta, float* C, int ldc) {
  return cublasSgemm(h, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

cublasStatus_t gemm_call(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                         int n, int k, const double* alpha, const double* A, int lda,
                         const double* B, int ldb, const double* beta, double* C, int ldc) {
  return cublasDgemm(h, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

int at_least_1(std::int64_t v) { return v < 1 ? 1 : static_cast<int>(v); }

}  // namespace

std::string unusable_reason(cudaError_t status, int driver_version, int runtime_version) {
  const auto version = [](int v) {
    return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
  };
  if (status == cudaErrorInsufficientDriver) {
    if (driver_version == 0) {
      return "no NVIDIA driver is loaded in this process (libcuda.so.1 was not found or did "
             "not load): " + describe_cuda_error(status);
    }
    return "the NVIDIA driver supports CUDA " + version(driver_version) + ", older than the CUDA " +
           version(runtime_version) + " runtime this module was built with: update the driver (" +
           describe_cuda_error(status) + ")";
  }
  if (status == cudaErrorNoDevice) {
    return "the NVIDIA driver (CUDA " + version(driver_version) + ") sees no CUDA device: " +
           describe_cuda_error(status);
  }
  return "cudaGetDeviceCount failed: " + describe_cuda_error(status);
}

int device_count(std::string* why) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    int driver = 0;
    if (cudaDriverGetVersion(&driver) != cudaSuccess) driver = 0;
    *why = unusable_reason(status, driver, CUDART_VERSION);
    cudaGetLastError();  // clear the error so later calls start clean
    return 0;
  }
  if (count == 0) *why = "no CUDA device is visible (CUDA_VISIBLE_DEVICES?)";
  return count;
}

Context::Context(bool allow_tf32) {
  cudaStream_t stream = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  stream_.reset(stream);
  cublasHandle_t handle = nullptr;
  CUBLAS_CHECK(cublasCreate(&handle));
  handle_.reset(handle);
  CUBLAS_CHECK(cublasSetStream(handle, stream));
  // TF32 off by default: float32 results must match the reference to 1e-5
  CUBLAS_CHECK(cublasSetMathMode(handle, allow_tf32 ? CUBLAS_TF32_TENSOR_OP_MATH
                                                    : CUBLAS_PEDANTIC_MATH));
}

void Context::synchronize() const { CUDA_CHECK(cudaStreamSynchronize(stream_.get())); }

void* Context::scratch(std::size_t bytes) const {
  if (bytes > scratch_.size()) {
    // the old scratch may still be read by queued work: cudaFree waits for the device
    scratch_.grow(bytes);
  }
  return scratch_.data();
}

template <typename T>
DeviceBuffer<T>::~DeviceBuffer() {
  if (ptr_ != nullptr) cudaFree(ptr_);
}

template <typename T>
void DeviceBuffer<T>::grow(std::size_t count) {
  if (count <= size_) return;
  if (count > static_cast<std::size_t>(-1) / sizeof(T)) {
    throw std::length_error("DeviceBuffer: " + std::to_string(count) + " elements overflow");
  }
  // forget the old block before freeing it: if cudaFree throws, the destructor never frees
  // it a second time
  T* old = ptr_;
  ptr_ = nullptr;
  size_ = 0;
  if (old != nullptr) CUDA_CHECK(cudaFree(old));
  T* fresh = nullptr;
  CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&fresh), count * sizeof(T)));
  ptr_ = fresh;
  size_ = count;
}

template <typename T>
void DeviceBuffer<T>::upload(const T* host, std::size_t count, cudaStream_t stream) {
  grow(count);
  if (count > 0) {
    CUDA_CHECK(cudaMemcpyAsync(ptr_, host, count * sizeof(T), cudaMemcpyHostToDevice, stream));
  }
}

template <typename T>
void DeviceBuffer<T>::download(T* host, std::size_t count, cudaStream_t stream) const {
  if (count > size_) throw std::invalid_argument("download: more elements than the buffer has");
  if (count > 0) {
    CUDA_CHECK(cudaMemcpyAsync(host, ptr_, count * sizeof(T), cudaMemcpyDeviceToHost, stream));
  }
}

template <typename S>
void gemm(const Context& ctx, bool trans_a, bool trans_b, std::int64_t M, std::int64_t N,
          std::int64_t K, S alpha, const S* A, std::int64_t lda, const S* B, std::int64_t ldb,
          S beta, S* C, std::int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (beta == S(0)) {
      CUDA_CHECK(cudaMemsetAsync(C, 0, static_cast<std::size_t>(M * ldc) * sizeof(S),
                                 ctx.stream()));
    }
    return;
  }
  // row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T
  CUBLAS_CHECK(gemm_call(ctx.blas(), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                         trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(N),
                         static_cast<int>(M), static_cast<int>(K), &alpha, B, at_least_1(ldb), A,
                         at_least_1(lda), &beta, C, at_least_1(ldc)));
}

template <typename S>
void column_sum(const Context& ctx, S* out, const S* in, std::int64_t rows, std::int64_t cols) {
  if (cols == 0) return;
  const SumPlan plan = column_sum_plan(rows);
  if (plan.chunks == 0) {  // no rows: the sums are zero
    CUDA_CHECK(cudaMemsetAsync(out, 0, static_cast<std::size_t>(cols) * sizeof(S),
                               ctx.stream()));
    return;
  }
  if (plan.chunks == 1) {
    launch_column_sum<S>(ctx, out, in, rows, cols, plan.chunk_rows, 1);
    return;
  }
  S* partial = static_cast<S*>(
      ctx.scratch(static_cast<std::size_t>(plan.chunks * cols) * sizeof(S)));  // (chunks, cols)
  launch_column_sum<S>(ctx, partial, in, rows, cols, plan.chunk_rows, plan.chunks);
  launch_column_sum<S>(ctx, out, partial, plan.chunks, cols, plan.chunks, 1);
}

template <typename S>
void lstm_forward(const Context& ctx, const LstmCache<S>& cache, const S* x, const S* h0,
                  const S* c0, const S* w_ih, const S* w_hh, const S* bias, const Dims& d) {
  check_dims(d);
  const std::int64_t B = d.B, H = d.H, G = 4 * H, TB = d.T * d.B, BH = d.B * d.H;
  if (TB * G > 0) {
    fill_rows_kernel<S><<<blocks_for(TB * G), kThreads, 0, ctx.stream()>>>(cache.gates, bias,
                                                                            TB, G);
    CUDA_CHECK_LAUNCH();
  }
  gemm<S>(ctx, false, true, TB, G, d.I, S(1), x, d.I, w_ih, d.I, S(1), cache.gates, G);
  copy_or_zero(ctx, cache.h_all, h0, sizeof(S) * static_cast<std::size_t>(BH));
  copy_or_zero(ctx, cache.c_all, c0, sizeof(S) * static_cast<std::size_t>(BH));
  for (std::int64_t t = 0; t < d.T; ++t) {
    S* gates_t = cache.gates + t * B * G;
    gemm<S>(ctx, false, true, B, G, H, S(1), cache.h_all + t * BH, H, w_hh, H, S(1), gates_t, G);
    if (BH > 0) {
      forward_cells_kernel<S><<<blocks_for(BH), kThreads, 0, ctx.stream()>>>(
          gates_t, cache.c_all + t * BH, cache.c_all + (t + 1) * BH, cache.tanh_c + t * BH,
          cache.h_all + (t + 1) * BH, B, H);
      CUDA_CHECK_LAUNCH();
    }
  }
}

template <typename S>
void lstm_backward(const Context& ctx, const LstmGrads<S>& grads, S* dgates,
                   const LstmConstCache<S>& cache, const S* x, const S* w_ih, const S* w_hh,
                   const S* dy, const S* dh_n, const S* dc_n, const Dims& d) {
  check_dims(d);
  const std::int64_t B = d.B, H = d.H, G = 4 * H, TB = d.T * d.B, BH = d.B * d.H;
  copy_or_zero(ctx, grads.dh0, dh_n, sizeof(S) * static_cast<std::size_t>(BH));
  copy_or_zero(ctx, grads.dc0, dc_n, sizeof(S) * static_cast<std::size_t>(BH));
  for (std::int64_t t = d.T - 1; t >= 0; --t) {
    S* dgates_t = dgates + t * B * G;
    if (BH > 0) {
      backward_cells_kernel<S><<<blocks_for(BH), kThreads, 0, ctx.stream()>>>(
          dgates_t, cache.gates + t * B * G, cache.c_all + t * BH, cache.tanh_c + t * BH,
          dy != nullptr ? dy + t * BH : nullptr, grads.dh0, grads.dc0, B, H);
      CUDA_CHECK_LAUNCH();
    }
    gemm<S>(ctx, false, false, B, H, G, S(1), dgates_t, G, w_hh, H, S(0), grads.dh0, H);
  }
  gemm<S>(ctx, true, false, G, d.I, TB, S(1), dgates, G, x, d.I, S(0), grads.dw_ih, d.I);
  gemm<S>(ctx, true, false, G, H, TB, S(1), dgates, G, cache.h_all, H, S(0), grads.dw_hh, H);
  if (grads.dx != nullptr) {
    gemm<S>(ctx, false, false, TB, d.I, G, S(1), dgates, G, w_ih, d.I, S(0), grads.dx, d.I);
  }
  column_sum<S>(ctx, grads.dbias, dgates, TB, G);
}

template class DeviceBuffer<float>;
template class DeviceBuffer<double>;
template class DeviceBuffer<int>;
template class DeviceBuffer<unsigned char>;
#define LSTMCORE_INSTANTIATE(S)                                                                \
  template void gemm<S>(const Context&, bool, bool, std::int64_t, std::int64_t, std::int64_t, \
                        S, const S*, std::int64_t, const S*, std::int64_t, S, S*,              \
                        std::int64_t);                                                         \
  template void column_sum<S>(const Context&, S*, const S*, std::int64_t, std::int64_t);      \
  template void lstm_forward<S>(const Context&, const LstmCache<S>&, const S*, const S*,      \
                                const S*, const S*, const S*, const S*, const Dims&);         \
  template void lstm_backward<S>(const Context&, const LstmGrads<S>&, S*,                     \
                                 const LstmConstCache<S>&, const S*, const S*, const S*,      \
                                 const S*, const S*, const S*, const Dims&);
LSTMCORE_INSTANTIATE(float)
LSTMCORE_INSTANTIATE(double)
#undef LSTMCORE_INSTANTIATE

}  // namespace lstmcore::cuda
