// lstmcore/lstm.h: the public C++ API of the single-layer LSTM core (CPU).
//
// Shape legend (row-major, rightmost dimension fastest):
//   T  time steps            B  batch rows
//   I  input features        H  hidden units (gates: 4H, blocks i, f, g, o as torch.nn.LSTM)
//
//   x      (T, B, I)    input, time-major
//   w_ih   (4H, I)      input-to-gates weights
//   w_hh   (4H, H)      hidden-to-gates weights
//   bias   (4H,)        one bias (torch's b_ih + b_hh folded into one)
//   h0, c0 (B, H)       initial state; null means zeros
//   y      (T, B, H)    hidden state of every step
//
// Direction: forward runs t = 0 .. T-1; `reverse` runs t = T-1 .. 0 over the same x (no copy).
// y[t] is always the state after consuming x[t].
//
// Variable lengths: `batch_sizes` (T,) or null (all B rows every step) gives the number of rows
// active at each time step; it must be non-increasing in t and in [0, B], i.e. the rows are
// sorted by length, longest first, and row b is active at t iff b < batch_sizes[t] (t < its
// length). Only active rows enter the GEMMs and the cell math. A row's state is carried
// unchanged through its inactive steps: forward, it keeps its state after its last step (h_n);
// reverse, it starts at its own last step from h0. y is zero where a row is inactive; dy there
// is never read, and dh_n / dc_n enter at each row's own final state.
//
// Pointers never alias one another unless a comment says so. Every function throws
// std::invalid_argument for bad sizes and never writes through a const pointer.
#pragma once

#include <cstdint>

namespace lstmcore {

struct Dims {
  std::int64_t T = 0, B = 0, I = 0, H = 0;
};

// The arithmetic of the GEMMs inside forward and backward.
//   kNative: the arrays' own dtype throughout (float32 or float64).
//   kBf16 (float32 arrays only): mixed precision. The GEMM operands are rounded to bfloat16
//     (round to nearest even): forward x_t, h_{t-1}, W_ih, W_hh; backward the gate gradients
//     where they enter a GEMM (dh = dgates W_hh, dx = dgates W_ih, dW = dgates^T [x | h_prev])
//     with x, h_prev and the weights rounded as in forward. Products accumulate in float32;
//     the bias, the cell math, c, dh, dc, y, h_n, c_n and the bias gradient (a sum of the
//     unrounded gate gradients) stay float32. lstmcore.reference states the same rule.
//     Emulated on the float32 kernels: rounded operands, float32 FMA (bf16 products are
//     exact in float32, so only the accumulation order differs from a bf16 dot product).
enum class Precision { kNative, kBf16 };

// Throws std::invalid_argument unless every size is >= 0 and every buffer's element count fits
// in the 32-bit integers BLAS takes (checked before anything is allocated).
void check_dims(const Dims& d);

// Which slot of h_all / c_all holds what: forward keeps the initial state in slot 0 and the
// state after x[t] in slot t+1; reverse keeps the state after x[t] in slot t and the initial
// state in slot T. So the final state is slot T (forward) or 0 (reverse).
inline std::int64_t initial_slot(const Dims& d, bool reverse) { return reverse ? d.T : 0; }
inline std::int64_t final_slot(const Dims& d, bool reverse) { return reverse ? 0 : d.T; }

// What forward keeps for backward; the caller owns the memory. Entries of inactive rows (see
// batch_sizes above) are never written in gates and tanh_c; h_all and c_all carry the state.
template <typename S>
struct LstmCache {
  S* gates;   // (T, B, 4H) post-activation i, f, g, o
  S* h_all;   // (T+1, B, H) states, slots as above
  S* c_all;   // (T+1, B, H) cell states, slots as above
  S* tanh_c;  // (T, B, H) tanh(c_t): backward never recomputes it; null: inference (see below)
};

template <typename S>
struct LstmConstCache {
  const S* gates;   // (T, B, 4H)
  const S* h_all;   // (T+1, B, H)
  const S* c_all;   // (T+1, B, H)
  const S* tanh_c;  // (T, B, H)
};

// Throws std::invalid_argument unless batch_sizes (T,) is non-increasing and within [0, B].
void check_batch_sizes(const std::int64_t* batch_sizes, const Dims& d);

// Runs the LSTM over all T steps and fills `cache`; h_n and c_n are in final_slot() of
// cache.h_all and cache.c_all; lstm_collect_y() gathers y. Inference: with cache.tanh_c null,
// only h_all and c_all are written (gates may be null too) and backward must not be called.
template <typename S>
void lstm_forward(const LstmCache<S>& cache,
                  const S* x,     // (T, B, I)
                  const S* h0,    // (B, H) or null
                  const S* c0,    // (B, H) or null
                  const S* w_ih,  // (4H, I)
                  const S* w_hh,  // (4H, H)
                  const S* bias,  // (4H,)
                  const Dims& d, bool reverse = false,
                  const std::int64_t* batch_sizes = nullptr,  // (T,) or null
                  Precision precision = Precision::kNative);  // kBf16: float only

// [W_ih | W_hh] packed for the forward kernels (of the ISA path active when packing, rounded
// to bf16 under Precision::kBf16): the work lstm_forward does at the start of every call, kept
// by a caller that runs many inference calls on unchanged weights. Immutable once made.
template <typename S>
class PackedForward {
 public:
  PackedForward(const S* w_ih,  // (4H, I)
                const S* w_hh,  // (4H, H)
                std::int64_t I, std::int64_t H, Precision precision);
  ~PackedForward();
  PackedForward(const PackedForward&) = delete;
  PackedForward& operator=(const PackedForward&) = delete;

  // false once lstmcore::set_isa switched to another path: pack again
  bool current() const;
  std::int64_t I() const { return I_; }
  std::int64_t H() const { return H_; }
  Precision precision() const { return precision_; }
  const S* data() const { return data_; }
  const void* table() const { return table_; }

 private:
  const void* table_;  // the kernel table whose layout data_ holds
  std::int64_t I_, H_;
  Precision precision_;
  S* data_;  // 64-byte aligned
};

// lstm_forward with weights packed beforehand (w.I() == d.I, w.H() == d.H, w.current());
// the precision is the packing's.
template <typename S>
void lstm_forward(const LstmCache<S>& cache, const S* x, const S* h0, const S* c0,
                  const PackedForward<S>& w, const S* bias, const Dims& d, bool reverse = false,
                  const std::int64_t* batch_sizes = nullptr);

// y (T, B, H) from the states of a forward pass: zero where a row is inactive.
template <typename S>
void lstm_collect_y(S* y, const S* h_all, const Dims& d, bool reverse,
                    const std::int64_t* batch_sizes);

template <typename S>
struct LstmGrads {
  S* dx;     // (T, B, I) or null: then the dx GEMM is skipped
  S* dh0;    // (B, H)
  S* dc0;    // (B, H)
  S* dw_ih;  // (4H, I)
  S* dw_hh;  // (4H, H)
  S* dbias;  // (4H,)
};

// Backpropagation through time. `dgates` is scratch of (T, B, 4H) elements; dy, dh_n and dc_n
// may be null (zeros). Weight gradients are overwritten, not accumulated. `precision` must be
// the forward pass's.
template <typename S>
void lstm_backward(const LstmGrads<S>& grads,
                   S* dgates,  // (T, B, 4H) workspace
                   const LstmConstCache<S>& cache,
                   const S* x,     // (T, B, I)
                   const S* w_ih,  // (4H, I)
                   const S* w_hh,  // (4H, H)
                   const S* dy,    // (T, B, H) or null
                   const S* dh_n,  // (B, H) or null
                   const S* dc_n,  // (B, H) or null
                   const Dims& d, bool reverse = false,
                   const std::int64_t* batch_sizes = nullptr,  // as in the forward pass
                   Precision precision = Precision::kNative);

// C (M, N) = op(A) op(B), row-major, in the calling thread (A is (M, K) or, transposed, (K, M)
// with leading dimension lda; likewise B). For the small GEMMs around the LSTM.
template <typename S>
void matmul(S* c, const S* a, const S* b, std::int64_t M, std::int64_t N, std::int64_t K,
            std::int64_t lda, std::int64_t ldb, bool trans_a, bool trans_b);

// Throws std::invalid_argument unless an (M, K) x (K, N) product fits the 32-bit BLAS sizes.
void check_matmul(std::int64_t M, std::int64_t N, std::int64_t K);

// Threads used by the core: BLAS and its own loops. n >= 1.
void set_num_threads(int n);
int get_num_threads();

// Name of the BLAS kernel set chosen at run time (e.g. "SkylakeX", "Haswell").
const char* blas_core_name();

// The most threads let into BLAS at once (the BLAS build's MAX_THREADS: it holds work buffers
// for so many callers); for its tests, a lower limit (0: the build's figure again), and the
// most threads that were inside at once since the process started.
int blas_call_limit();
void set_blas_call_limit_for_tests(int n);
int blas_peak_calls();

// The recurrent kernels' instruction set: "avx512", "avx2" or "generic", chosen once from cpuid
// (the widest this CPU runs) unless the environment variable LSTMCORE_ISA names one. isa()
// throws std::invalid_argument when LSTMCORE_ISA names an unknown path or one this CPU lacks.
const char* isa();
// Switches the path for later calls (tests run every supported path); throws
// std::invalid_argument for an unknown name or a path this CPU cannot run.
void set_isa(const char* name);
// Whether this CPU runs the named path; if not and reason is not null, *reason says why.
bool isa_supported(const char* name, const char** reason);

}  // namespace lstmcore

namespace lstmcore {

// Seconds one float32 (n, n) x (n, n) GEMM takes through the core's BLAS (median of `repeats`
// after one warm-up, using the core's thread count): the benchmark's ceiling measurement.
double time_sgemm(int n, int repeats);

}  // namespace lstmcore
