// lstm_cpu.cpp: CPU forward/backward of the single-layer LSTM (the driver; the per-step math
// lives in the ISA kernels of kernels/, the threads in pool.cpp).
//
// forward: [W_ih | W_hh] packed once per call into gate-interleaved panels; per step one fused
// kernel call that accumulates b + x_t W_ih^T + h_{t-1} W_hh^T in registers and applies the
// cell on the tile, so neither the input projection nor the (B, 4H) pre-activations make a
// round trip through memory (inference writes only h and c).
// backward: W_hh packed into column panels; per step (last first) one fused kernel call that
// computes dh_t = dgates_{t+1} W_hh + dy_t tile by tile and applies the cell backward on it,
// writing dgates_t; after the loop dW_ih, dW_hh and dx as GEMMs over all rows (OpenBLAS, split
// by output rows over the pool) and db as an ordered column sum.
//
// Threads: schedule.h decides how each recurrence is shared out (rows or unit blocks); the
// sequence loops here run whatever tile they are given. Every output element is computed by
// the same operations in the same order whatever the split, so results are bit-identical
// across thread counts for the recurrence (the OpenBLAS GEMMs keep their own blocking).
#include "lstmcore/lstm.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "bf16.h"
#include "blas.h"
#include "kernels/kernels.h"
#include "pool.h"
#include "schedule.h"

namespace lstmcore {
namespace {

using i64 = std::int64_t;

i64 checked_mul(i64 a, i64 b, const char* what) {
  i64 r = 0;
  if (__builtin_mul_overflow(a, b, &r) || r > INT_MAX) {
    throw std::invalid_argument(std::string(what) +
                                ": element count overflows the 32-bit sizes BLAS accepts");
  }
  return r;
}

template <typename S>
void copy_or_zero(S* dst, const S* src, i64 n) {
  if (n <= 0) return;
  if (src != nullptr) {
    std::memcpy(dst, src, sizeof(S) * static_cast<std::size_t>(n));
  } else {
    std::memset(dst, 0, sizeof(S) * static_cast<std::size_t>(n));
  }
}

template <typename S>
void copy_rows(S* dst, const S* src, i64 n) {
  if (n > 0) std::memcpy(dst, src, sizeof(S) * static_cast<std::size_t>(n));
}

constexpr i64 kMinRows = 8;  // below this a thread costs more than it saves (BLAS work)

// bf16 rounding passes: steps per thread so that each rounds at least ~64K elements (a pool
// dispatch costs microseconds; rounding 64K floats takes tens of them)
i64 min_steps_to_round(i64 elements_per_step) {
  constexpr i64 kMinElements = 1 << 16;
  return std::max<i64>(1, kMinElements / std::max<i64>(1, elements_per_step));
}

template <typename S>
const kern::Ops<S>& ops_of(const kern::Table& t);
template <>
const kern::Ops<float>& ops_of<float>(const kern::Table& t) { return t.f32; }
template <>
const kern::Ops<double>& ops_of<double>(const kern::Table& t) { return t.f64; }

// 64-byte aligned scratch for the packed weights, kept per calling thread and grown when a
// call needs more (never inside the step loop): a fresh buffer per call cost its page faults
// every call (clear_page was 6% of a training step at H=512, 8 MB of packed weights)
class Scratch {
 public:
  void* get(std::size_t bytes) {
    if (bytes > size_) {
      buf_.reset(static_cast<unsigned char*>(::operator new[](bytes, std::align_val_t(64))));
      size_ = bytes;
    }
    return buf_.get();
  }

 private:
  struct Free {
    void operator()(unsigned char* p) const { ::operator delete[](p, std::align_val_t(64)); }
  };
  std::unique_ptr<unsigned char[], Free> buf_;
  std::size_t size_ = 0;
};

// what each scratch slot holds (a call's own thread's buffers; the pool's threads read them)
enum ScratchSlot : int {
  kFwdPacked,   // forward's packed [W_ih | W_hh]
  kBwdPacked,   // backward's packed W_hh
  kRoundedX,    // bf16: x rounded (T, B, I)
  kRoundedPair, // bf16: forward's two (B, H) rounded h, backward's two (B, 4H) rounded dgates
  kRoundedH,    // bf16: backward's rounded h_prev (T, B, H)
  kRoundedWih,  // bf16: backward's rounded W_ih (4H, I)
  kInputsAndStates,  // backward's [x_t | h_prev] (T, B, I + H), the weight gradients' operand
  kWeightGradients,  // backward's [dW_ih | dW_hh] (4H, I + H) before they are split
  kScratchSlots
};

template <typename S>
S* scratch(int which, i64 elements) {
  thread_local Scratch buffers[kScratchSlots];
  const std::size_t bytes = sizeof(S) * static_cast<std::size_t>(std::max<i64>(elements, 1));
  return static_cast<S*>(buffers[which].get(bytes));
}

// Whether a call runs the bf16 rule (see lstm.h); bf16 rounds float32 operands only.
template <typename S>
bool wants_bf16(Precision p) {
  if (p == Precision::kNative) return false;
  if constexpr (!std::is_same_v<S, float>) {
    throw std::invalid_argument("precision: bf16 runs on float32 arrays, got float64");
  }
  return true;
}

// bf16::round_n for float; never reached for double (wants_bf16 throws first)
template <typename S>
void round_n([[maybe_unused]] S* dst, [[maybe_unused]] const S* src, [[maybe_unused]] i64 n) {
  if constexpr (std::is_same_v<S, float>) bf16::round_n(dst, src, n);
}

// rows [r0, r1) of the (rows, 4H) gate arrays, units [u0, u1) of each of the four gates
template <typename S>
void round_gate_units([[maybe_unused]] S* dst, [[maybe_unused]] const S* src,
                      [[maybe_unused]] i64 H, [[maybe_unused]] i64 r0, [[maybe_unused]] i64 r1,
                      [[maybe_unused]] i64 u0, [[maybe_unused]] i64 u1) {
  if constexpr (std::is_same_v<S, float>) {
    for (i64 g = 0; g < 4; ++g) bf16::round_block(dst, src, 4 * H, r0, r1, g * H + u0, g * H + u1);
  }
}

// rows [r0, r1) of (rows, H) states, units [u0, u1)
template <typename S>
void round_units([[maybe_unused]] S* dst, [[maybe_unused]] const S* src, [[maybe_unused]] i64 H,
                 [[maybe_unused]] i64 r0, [[maybe_unused]] i64 r1, [[maybe_unused]] i64 u0,
                 [[maybe_unused]] i64 u1) {
  if constexpr (std::is_same_v<S, float>) bf16::round_block(dst, src, H, r0, r1, u0, u1);
}

// Rows that run at time t: all B, or the first batch_sizes[t] (rows are sorted by length).
i64 active_rows(const i64* batch_sizes, const Dims& d, i64 t) {
  return batch_sizes != nullptr ? batch_sizes[t] : d.B;
}

// The time step processed `s`-th: forward 0, 1, ..; reverse T-1, T-2, ..
i64 time_at(i64 s, const Dims& d, bool reverse) { return reverse ? d.T - 1 - s : s; }

// The slots of h_all / c_all read (prev) and written (next) at time t (see lstm.h).
i64 prev_slot(i64 t, bool reverse) { return reverse ? t + 1 : t; }
i64 next_slot(i64 t, bool reverse) { return reverse ? t : t + 1; }

}  // namespace

void check_dims(const Dims& d) {
  if (d.T < 0 || d.B < 0 || d.I < 0 || d.H < 0) {
    throw std::invalid_argument("dimensions must be >= 0, got T=" + std::to_string(d.T) +
                                " B=" + std::to_string(d.B) + " I=" + std::to_string(d.I) +
                                " H=" + std::to_string(d.H));
  }
  const i64 G = checked_mul(4, d.H, "4*H");
  const i64 TB = checked_mul(d.T, d.B, "T*B");
  checked_mul(TB, G, "gates (T, B, 4H)");
  checked_mul(TB, d.I, "x (T, B, I)");
  checked_mul(checked_mul(d.T + 1, d.B, "(T+1)*B"), d.H, "h_all (T+1, B, H)");
  checked_mul(G, d.I, "w_ih (4H, I)");
  checked_mul(G, d.H, "w_hh (4H, H)");
}

void check_batch_sizes(const i64* batch_sizes, const Dims& d) {
  if (batch_sizes == nullptr) return;
  for (i64 t = 0; t < d.T; ++t) {
    const i64 n = batch_sizes[t];
    if (n < 0 || n > d.B || (t > 0 && n > batch_sizes[t - 1])) {
      throw std::invalid_argument(
          "batch_sizes: expected non-increasing values in [0, B=" + std::to_string(d.B) +
          "], got " + std::to_string(n) + " at step " + std::to_string(t));
    }
  }
}

namespace {

// [W_ih | W_hh] into the forward kernels' panels; bf16: rounded there (packing only moves
// weights and pads with zeros, so rounding the panels rounds W_ih and W_hh)
template <typename S>
void pack_forward(S* packed, const kern::Ops<S>& K, const S* w_ih, const S* w_hh, i64 I, i64 H,
                  bool bf16) {
  K.pack_fwd(packed, w_ih, w_hh, I, H);
  if (bf16) round_n(packed, packed, K.fwd_packed_size(I, H));
}

template <typename S>
void forward_packed(const LstmCache<S>& cache, const S* x, const S* h0, const S* c0,
                    const S* packed, const kern::Ops<S>& K, bool bf16, const S* bias,
                    const Dims& d, bool reverse, const i64* batch_sizes);

}  // namespace

template <typename S>
void lstm_forward(const LstmCache<S>& cache, const S* x, const S* h0, const S* c0, const S* w_ih,
                  const S* w_hh, const S* bias, const Dims& d, bool reverse,
                  const i64* batch_sizes, Precision precision) {
  check_dims(d);
  check_batch_sizes(batch_sizes, d);
  const bool bf16 = wants_bf16<S>(precision);
  const pool::DenormalsAreZero daz;  // the calling thread's share (BLAS, packing); see pool.h
  const kern::Ops<S>& K = ops_of<S>(kern::active());
  // [W_ih | W_hh] packed per call (tens of microseconds; it can never go stale): the kernel
  // computes b + x_t W_ih^T + h_{t-1} W_hh^T in one register tile, so there is no separate
  // input-projection GEMM and no (T, B, 4H) pre-activation buffer to write and read back
  S* packed = nullptr;
  if (d.T > 0 && d.B * d.H > 0) {
    packed = scratch<S>(kFwdPacked, K.fwd_packed_size(d.I, d.H));
    pack_forward(packed, K, w_ih, w_hh, d.I, d.H, bf16);
  }
  forward_packed(cache, x, h0, c0, packed, K, bf16, bias, d, reverse, batch_sizes);
}

template <typename S>
PackedForward<S>::PackedForward(const S* w_ih, const S* w_hh, i64 I, i64 H, Precision precision)
    : table_(&kern::active()), I_(I), H_(H), precision_(precision), data_(nullptr) {
  check_dims(Dims{1, 1, I, H});
  const bool bf16 = wants_bf16<S>(precision);
  const kern::Ops<S>& K = ops_of<S>(kern::active());
  const std::size_t n = static_cast<std::size_t>(std::max<i64>(K.fwd_packed_size(I, H), 1));
  data_ = static_cast<S*>(::operator new[](sizeof(S) * n, std::align_val_t(64)));
  const pool::DenormalsAreZero daz;
  pack_forward(data_, K, w_ih, w_hh, I, H, bf16);
}

template <typename S>
PackedForward<S>::~PackedForward() {
  ::operator delete[](data_, std::align_val_t(64));
}

template <typename S>
bool PackedForward<S>::current() const {
  return table_ == &kern::active();
}

template <typename S>
void lstm_forward(const LstmCache<S>& cache, const S* x, const S* h0, const S* c0,
                  const PackedForward<S>& w, const S* bias, const Dims& d, bool reverse,
                  const i64* batch_sizes) {
  check_dims(d);
  check_batch_sizes(batch_sizes, d);
  if (w.I() != d.I || w.H() != d.H) {
    throw std::invalid_argument("packed weights: made for I=" + std::to_string(w.I()) +
                                " H=" + std::to_string(w.H()) + ", called with I=" +
                                std::to_string(d.I) + " H=" + std::to_string(d.H));
  }
  if (!w.current()) {
    throw std::invalid_argument("packed weights: made for another ISA path; pack them again");
  }
  const bool bf16 = wants_bf16<S>(w.precision());
  const pool::DenormalsAreZero daz;
  const auto* table = static_cast<const kern::Table*>(w.table());
  forward_packed(cache, x, h0, c0, w.data(), ops_of<S>(*table), bf16, bias, d, reverse,
                 batch_sizes);
}

namespace {

template <typename S>
void forward_packed(const LstmCache<S>& cache, const S* x, const S* h0, const S* c0,
                    const S* packed, const kern::Ops<S>& K, bool bf16, const S* bias,
                    const Dims& d, bool reverse, const i64* batch_sizes) {
  const i64 B = d.B, H = d.H, G = 4 * H, BH = d.B * d.H;
  const i64 first = initial_slot(d, reverse) * BH;
  copy_or_zero(cache.h_all + first, h0, BH);
  copy_or_zero(cache.c_all + first, c0, BH);
  if (d.T == 0 || BH == 0) return;
  const i64 nblk = (H + K.fwd_units - 1) / K.fwd_units;

  // bf16: the kernels read rounded operands (the weights were rounded when packed): x is
  // rounded into a copy; each step rounds the h it writes into one of two (B, H) buffers (by
  // slot parity) that the next step reads, while h_all keeps the float32 states (y, h_n and
  // backward read those)
  const S* xs = x;
  S* h_rounded = nullptr;
  if (bf16) {
    S* x_rounded = scratch<S>(kRoundedX, d.T * B * d.I);
    schedule::blocks(d.T, min_steps_to_round(B * d.I), [&](i64 t0, i64 t1) {
      round_n(x_rounded + t0 * B * d.I, x + t0 * B * d.I, (t1 - t0) * B * d.I);
    });
    xs = x_rounded;
    h_rounded = scratch<S>(kRoundedPair, 2 * BH);
    round_n(h_rounded + (initial_slot(d, reverse) % 2) * BH, cache.h_all + first, BH);
  }
  // the h a step reads for its GEMM from slot `slot`, and where a step writes its rounding
  auto h_operand = [&](i64 slot) -> S* {
    return bf16 ? h_rounded + (slot % 2) * BH : cache.h_all + slot * BH;
  };
  const i64 U = K.fwd_units;

  // step s over the tile's rows and unit blocks; rows past the step's active count carry their
  // state (in the units split only the tile of unit block 0 copies them)
  auto step = [&](i64 s, const schedule::Tile& w) {
    const i64 r0 = w.r0, r1 = w.r1, k0 = w.k0, k1 = w.k1;
    const i64 t = time_at(s, d, reverse);
    const i64 n = std::min(r1, active_rows(batch_sizes, d, t));
    const i64 prev_s = prev_slot(t, reverse), next_s = next_slot(t, reverse);
    const i64 prev = prev_s * BH, next = next_s * BH;
    if (n > r0) {
      const bool train = cache.tanh_c != nullptr;
      const kern::FwdStep<S> a{packed,
                               xs + t * B * d.I,
                               h_operand(prev_s),
                               cache.c_all + prev,
                               bias,
                               train ? cache.gates + t * B * G : nullptr,
                               cache.c_all + next,
                               cache.h_all + next,
                               train ? cache.tanh_c + t * BH : nullptr,
                               d.I,
                               H};
      K.fwd_step(a, r0, n, k0, k1);
      if (bf16) {
        round_units(h_operand(next_s), cache.h_all + next, H, r0, n, std::min(H, k0 * U),
                    std::min(H, k1 * U));
      }
    }
    if (k0 == 0) {
      const i64 c0r = std::max(r0, n);
      copy_rows(cache.h_all + next + c0r * H, cache.h_all + prev + c0r * H, (r1 - c0r) * H);
      copy_rows(cache.c_all + next + c0r * H, cache.c_all + prev + c0r * H, (r1 - c0r) * H);
      if (bf16) {
        copy_rows(h_operand(next_s) + c0r * H, h_operand(prev_s) + c0r * H, (r1 - c0r) * H);
      }
    }
  };

  const schedule::Recurrence rec{
      cache.tanh_c != nullptr ? schedule::Pass::kTrainForward : schedule::Pass::kInferForward,
      static_cast<int>(sizeof(S)), B, d.I, H, 4, nblk,
      8.0 * static_cast<double>(B * H * (H + d.I)), d.T};
  schedule::run(rec, [&](const schedule::Tile& w, const schedule::StepSync& after_step) {
    for (i64 s = 0; s < d.T; ++s) {
      step(s, w);
      after_step();  // step s+1 reads every unit of h written here
    }
  });
}

}  // namespace

template <typename S>
void lstm_collect_y(S* y, const S* h_all, const Dims& d, bool reverse, const i64* batch_sizes) {
  const i64 BH = d.B * d.H;
  for (i64 t = 0; t < d.T; ++t) {
    const i64 n = active_rows(batch_sizes, d, t) * d.H;
    S* y_t = y + t * BH;
    copy_rows(y_t, h_all + next_slot(t, reverse) * BH, n);
    if (BH > n) std::memset(y_t + n, 0, sizeof(S) * static_cast<std::size_t>(BH - n));
  }
}

namespace {

// acc[k] += src[k], k < n (acc and src never overlap): db's row sums and dW's slab sums
template <typename S>
void add_rows(S* __restrict acc, const S* __restrict src, i64 n) {
  for (i64 k = 0; k < n; ++k) acc[k] += src[k];
}

// db (G,) from dgates over every active row, the rows summed in order: the result never
// depends on the thread count. Split by gate columns.
template <typename S>
void bias_gradient(S* db, const S* dgates, const Dims& d, const i64* batch_sizes) {
  const i64 G = 4 * d.H;
  schedule::blocks(G, kMinRows, [&](i64 g0, i64 g1) {
    std::fill(db + g0, db + g1, S(0));
    for (i64 t = 0; t < d.T; ++t) {
      const i64 r0 = t * d.B, n = active_rows(batch_sizes, d, t);
      for (i64 r = r0; r < r0 + n; ++r) add_rows(db + g0, dgates + r * G + g0, g1 - g0);
    }
  });
}

// [x_t | h_prev] (T*B, I + H), the one operand of the weight gradients' GEMM: with dW_ih and
// dW_hh as one product (dgates^T [x | h_prev]) BLAS packs dgates, the largest operand, once
// instead of twice (the copy costs 1/(8H) of the GEMM's flops). Split by rows.
template <typename S>
const S* concat_inputs(const S* x, const S* h_prev_all, const Dims& d) {
  const i64 TB = d.T * d.B, IH = d.I + d.H;
  S* xh = scratch<S>(kInputsAndStates, TB * IH);
  schedule::blocks(TB, kMinRows * 16, [&](i64 r0, i64 r1) {
    for (i64 r = r0; r < r1; ++r) {
      copy_rows(xh + r * IH, x + r * d.I, d.I);
      copy_rows(xh + r * IH + d.I, h_prev_all + r * d.H, d.H);
    }
  });
  return xh;
}

// [dW_ih | dW_hh] (G, I + H) split back into dW_ih (G, I) and dW_hh (G, H), rows [g0, g1)
template <typename S>
void scatter_weight_gradients(const LstmGrads<S>& grads, const S* dw, const Dims& d, i64 g0,
                              i64 g1) {
  const i64 IH = d.I + d.H;
  for (i64 g = g0; g < g1; ++g) {
    copy_rows(grads.dw_ih + g * d.I, dw + g * IH, d.I);
    copy_rows(grads.dw_hh + g * d.H, dw + g * IH + d.I, d.H);
  }
}

// The weight gradients' GEMM: rows of dgates below which a thread's share of its K costs
// more in packing and summing than it saves, and the gate rows (G = 4H) up to which the
// threads split its K rather than its output rows.
constexpr i64 kMinGemmRows = 256;
constexpr i64 kMaxGatesSplitByRows = 1024;
// the slabs' scratch, kept per calling thread: no more slabs than fit in this
constexpr i64 kMaxSlabBytes = i64{32} << 20;

// how many threads split the K of the weight gradients' GEMM (1: none; split by output rows)
template <typename S>
int weight_gradient_parts(i64 G, i64 IH, i64 TB) {
  if (G > kMaxGatesSplitByRows) return 1;
  const i64 slab_bytes = std::max<i64>(1, G * IH * static_cast<i64>(sizeof(S)));
  const i64 most =
      std::min<i64>(schedule::gemm_threads(), std::max<i64>(1, kMaxSlabBytes / slab_bytes));
  return static_cast<int>(std::clamp<i64>(TB / kMinGemmRows, 1, most));
}

// [dW_ih | dW_hh] over all T*B rows by `parts` threads, each over its share of the rows into a
// slab of its own; the slabs summed in thread order into slab 0 and scattered
template <typename S>
void weight_gradients_split_rows(const LstmGrads<S>& grads, const S* dgates, const S* xh,
                                 const Dims& d, int parts) {
  const i64 G = 4 * d.H, TB = d.T * d.B, IH = d.I + d.H;
  S* slabs = scratch<S>(kWeightGradients, parts * G * IH);
  pool::parallel(parts, [&](int tid, pool::Team& team) {
    // every slab, also when a nested call runs the team as one thread
    for (int k = tid; k < parts; k += team.size()) {
      const i64 r0 = TB * k / parts, r1 = TB * (k + 1) / parts;
      blas::gemm<S>(true, false, G, IH, r1 - r0, S(1), dgates + r0 * G, G, xh + r0 * IH, IH,
                    S(0), slabs + k * G * IH, IH);
    }
  });
  schedule::blocks(G, kMinRows, [&](i64 g0, i64 g1) {
    for (int k = 1; k < parts; ++k) {
      add_rows(slabs + g0 * IH, slabs + k * G * IH + g0 * IH, (g1 - g0) * IH);
    }
    scatter_weight_gradients(grads, slabs, d, g0, g1);
  });
}

// dW_ih (G, I) and dW_hh (G, H) from dgates over every active row; h_prev_all (TB, H) holds
// the state each row's step read. One GEMM into [dW_ih | dW_hh] (G, I + H), scattered into the
// two, split by its output rows (gate units). Split so, every thread packs all of
// [x | h_prev], and with few gate rows that copy is a large share of a thread's work: there the
// threads split the GEMM's K (the T*B rows) instead (2 threads, Zen 3, this GEMM alone,
// alternated: 4.6-5.3 ms against 5.3-7.1 at T=28, B=128, H=128; 10.5-11.5 against 11.5-12.4
// at T=100, B=256, H=64; no gain at H=512, where it stays split by rows), as many slabs as
// fit in kMaxSlabBytes. dW is then bit-identical for the same thread count, not across counts.
// With lengths, one GEMM per step accumulated in time order.
template <typename S>
void weight_gradients(const LstmGrads<S>& grads, const S* dgates, const S* x,
                      const S* h_prev_all, const Dims& d, const i64* batch_sizes) {
  const i64 H = d.H, G = 4 * H, TB = d.T * d.B, IH = d.I + H;
  const S* xh = concat_inputs(x, h_prev_all, d);
  const bool dense = batch_sizes == nullptr || d.T == 0;
  const int parts = dense ? weight_gradient_parts<S>(G, IH, TB) : 1;
  if (parts > 1) {
    weight_gradients_split_rows(grads, dgates, xh, d, parts);
    return;
  }
  S* dw = scratch<S>(kWeightGradients, G * IH);
  schedule::gemm_blocks(G, kMinRows, [&](i64 g0, i64 g1) {
    const i64 ng = g1 - g0;
    if (dense) {
      blas::gemm<S>(true, false, ng, IH, TB, S(1), dgates + g0, G, xh, IH, S(0), dw + g0 * IH,
                    IH);
    } else {
      // only the active rows of each step: a GEMM per step, accumulated in time order
      for (i64 t = 0; t < d.T; ++t) {
        const i64 r0 = t * d.B;
        blas::gemm<S>(true, false, ng, IH, batch_sizes[t], S(1), dgates + r0 * G + g0, G,
                      xh + r0 * IH, IH, t == 0 ? S(0) : S(1), dw + g0 * IH, IH);
      }
    }
    scatter_weight_gradients(grads, dw, d, g0, g1);
  });
}

// bf16: the operands of backward's GEMMs after the loop, rounded (see lstm.h); the active
// rows of dgates in place (the bias gradient has summed them already), the rest into copies
template <typename S>
struct RoundedOperands {
  const S* x;
  const S* h_prev_all;
  const S* w_ih;
};

template <typename S>
RoundedOperands<S> round_backward_operands(S* dgates, const S* x, const S* h_prev_all,
                                           const S* w_ih, const Dims& d, const i64* batch_sizes,
                                           bool need_w_ih) {
  const i64 G = 4 * d.H, B = d.B;
  S* xr = scratch<S>(kRoundedX, d.T * B * d.I);
  S* hr = scratch<S>(kRoundedH, d.T * B * d.H);
  schedule::blocks(d.T, min_steps_to_round(B * (G + d.I + d.H)), [&](i64 t0, i64 t1) {
    for (i64 t = t0; t < t1; ++t) {
      round_n(dgates + t * B * G, dgates + t * B * G, active_rows(batch_sizes, d, t) * G);
    }
    round_n(xr + t0 * B * d.I, x + t0 * B * d.I, (t1 - t0) * B * d.I);
    round_n(hr + t0 * B * d.H, h_prev_all + t0 * B * d.H, (t1 - t0) * B * d.H);
  });
  S* wr = nullptr;
  if (need_w_ih) {
    wr = scratch<S>(kRoundedWih, G * d.I);
    round_n(wr, w_ih, G * d.I);
  }
  return {xr, hr, wr};
}

// dx (T, B, I) = dgates w_ih for active rows, zero elsewhere
template <typename S>
void input_gradient(S* dx, const S* dgates, const S* w_ih, const Dims& d, const i64* batch_sizes) {
  const i64 G = 4 * d.H;
  auto rows = [&](i64 r0, i64 r1) {
    blas::gemm<S>(false, false, r1 - r0, d.I, G, S(1), dgates + r0 * G, G, w_ih, d.I, S(0),
                  dx + r0 * d.I, d.I);
  };
  if (batch_sizes == nullptr) {
    schedule::gemm_blocks(d.T * d.B, kMinRows, rows);
    return;
  }
  schedule::gemm_blocks(d.T, 1, [&](i64 t0, i64 t1) {
    for (i64 t = t0; t < t1; ++t) {
      const i64 r0 = t * d.B, n = batch_sizes[t];
      rows(r0, r0 + n);
      const i64 rest = (d.B - n) * d.I;
      if (rest > 0) std::memset(dx + (r0 + n) * d.I, 0, sizeof(S) * static_cast<std::size_t>(rest));
    }
  });
}

}  // namespace

template <typename S>
void lstm_backward(const LstmGrads<S>& grads, S* dgates, const LstmConstCache<S>& cache,
                   const S* x, const S* w_ih, const S* w_hh, const S* dy, const S* dh_n,
                   const S* dc_n, const Dims& d, bool reverse, const i64* batch_sizes,
                   Precision precision) {
  check_dims(d);
  check_batch_sizes(batch_sizes, d);
  const bool bf16 = wants_bf16<S>(precision);
  const pool::DenormalsAreZero daz;  // the calling thread's share (BLAS, packing); see pool.h
  const i64 B = d.B, H = d.H, G = 4 * H, BH = d.B * d.H;
  const kern::Ops<S>& K = ops_of<S>(kern::active());

  // grads.dc0 is the running dc of the loop (rows untouched while inactive, so dc_n enters at
  // each row's final state); grads.dh0 starts as dh_n (rows that never run keep it) and each
  // row's dh0 is written once, when the loop passes the row's first step
  copy_or_zero(grads.dh0, dh_n, BH);
  copy_or_zero(grads.dc0, dc_n, BH);
  if (d.T > 0 && BH > 0) {
    S* const packed = scratch<S>(kBwdPacked, K.bwd_packed_size(H));
    K.pack_bwd(packed, w_hh, H);
    const i64 npan = (H + K.bwd_units - 1) / K.bwd_units;
    // bf16: the panels rounded (W_hh), and each step rounds the dgates it writes into one of
    // two (B, 4H) buffers (by step parity) that the next step's dh GEMM reads; dgates itself
    // keeps float32 for the bias gradient
    S* dg_rounded = nullptr;
    if (bf16) {
      round_n(packed, packed, K.bwd_packed_size(H));
      dg_rounded = scratch<S>(kRoundedPair, 2 * B * G);
    }
    // the dgates of backward step q (at time t) as the dh GEMM reads them
    auto dg_operand = [&](i64 q, i64 t) -> const S* {
      return bf16 ? dg_rounded + (q % 2) * B * G : dgates + t * B * G;
    };
    const i64 P = K.bwd_units;
    // backward step q (q = 0 is the forward pass's last step) over rows [r0, r1), panels
    // [p0, p1): rows active at the step before in this order take dgates_prev W_hh, rows that
    // start here take dh_n; rows that were active at the step before and are not now (reverse
    // with lengths) have reached their first step: their dh0 is dgates_prev W_hh
    auto step = [&](i64 q, const schedule::Tile& w) {
      const i64 r0 = w.r0, r1 = w.r1, p0 = w.k0, p1 = w.k1;
      const i64 s = d.T - 1 - q;
      const i64 t = time_at(s, d, reverse);
      const i64 n = std::min(r1, active_rows(batch_sizes, d, t));
      const S* dg_prev = nullptr;
      i64 n_prev = 0;
      if (q > 0) {
        const i64 tp = time_at(s + 1, d, reverse);
        dg_prev = dg_operand(q - 1, tp);
        n_prev = std::min(r1, active_rows(batch_sizes, d, tp));
      }
      if (n > r0) {
        const kern::BwdStep<S> a{packed,
                                 dg_prev,
                                 n_prev,
                                 dh_n,
                                 dy != nullptr ? dy + t * BH : nullptr,
                                 cache.gates + t * B * G,
                                 cache.c_all + prev_slot(t, reverse) * BH,
                                 cache.tanh_c + t * BH,
                                 grads.dc0,
                                 dgates + t * B * G,
                                 nullptr,
                                 H};
        K.bwd_step(a, r0, n, p0, p1);
        if (bf16) {
          round_gate_units(dg_rounded + (q % 2) * B * G, dgates + t * B * G, H, r0, n,
                           std::min(H, p0 * P), std::min(H, p1 * P));
        }
      }
      // rows whose first step was the previous one in this order (or, after the last step,
      // every row still active): dh0 = dgates_prev W_hh
      auto flush = [&](const S* dg, i64 f0, i64 f1) {
        if (f1 <= f0) return;
        const kern::BwdStep<S> a{packed, dg,      f1,     nullptr, nullptr, nullptr,
                                 nullptr,      nullptr, nullptr, nullptr, grads.dh0, H};
        K.bwd_step(a, f0, f1, p0, p1);
      };
      if (dg_prev != nullptr) flush(dg_prev, std::max(r0, n), n_prev);
    };
    // after the last step: dh0 of every row active there (reads all of that step's dgates)
    auto flush_last = [&](const schedule::Tile& w) {
      const i64 r0 = w.r0, r1 = w.r1, p0 = w.k0, p1 = w.k1;
      const i64 t = time_at(0, d, reverse);
      const i64 n = std::min(r1, active_rows(batch_sizes, d, t));
      if (n <= r0) return;
      const kern::BwdStep<S> a{packed, dg_operand(d.T - 1, t), n, nullptr, nullptr, nullptr,
                               nullptr, nullptr, nullptr, nullptr, grads.dh0, H};
      K.bwd_step(a, r0, n, p0, p1);
    };

    const schedule::Recurrence rec{schedule::Pass::kBackward, static_cast<int>(sizeof(S)),
                                   B, d.I, H, 4, npan, 8.0 * static_cast<double>(B * H * H),
                                   d.T};
    schedule::run(rec, [&](const schedule::Tile& w, const schedule::StepSync& after_step) {
      for (i64 q = 0; q < d.T; ++q) {
        step(q, w);
        after_step();  // the next step reads every column of the dgates written here
      }
      flush_last(w);
    });
  }

  // the state each step read: slot t (forward) or t+1 (reverse), so rows line up with dgates
  const S* h_prev_all = cache.h_all + (reverse ? BH : 0);
  bias_gradient(grads.dbias, dgates, d, batch_sizes);  // float32 gate gradients, also in bf16
  RoundedOperands<S> ops{x, h_prev_all, w_ih};
  if (bf16) {
    ops = round_backward_operands(dgates, x, h_prev_all, w_ih, d, batch_sizes,
                                  grads.dx != nullptr);
  }
  weight_gradients(grads, dgates, ops.x, ops.h_prev_all, d, batch_sizes);
  if (grads.dx != nullptr) input_gradient(grads.dx, dgates, ops.w_ih, d, batch_sizes);
}

void check_matmul(i64 M, i64 N, i64 K) {
  if (M < 0 || N < 0 || K < 0) throw std::invalid_argument("matmul: negative size");
  checked_mul(M, K, "a");
  checked_mul(K, N, "b");
  checked_mul(M, N, "the product");
}

template <typename S>
void matmul(S* c, const S* a, const S* b, i64 M, i64 N, i64 K, i64 lda, i64 ldb, bool trans_a,
            bool trans_b) {
  check_matmul(M, N, K);
  blas::gemm<S>(trans_a, trans_b, M, N, K, S(1), a, lda, b, ldb, S(0), c, N);
}

const char* blas_core_name() { return blas::core_name(); }
int blas_call_limit() { return blas::max_concurrent_calls(); }
void set_blas_call_limit_for_tests(int n) { blas::set_call_limit_for_tests(n); }
int blas_peak_calls() { return blas::peak_concurrent_calls(); }

const char* isa() { return kern::active().name; }
void set_isa(const char* name) { kern::set_isa(name); }
bool isa_supported(const char* name, const char** reason) {
  return kern::isa_supported(name, reason);
}

template void matmul<float>(float*, const float*, const float*, i64, i64, i64, i64, i64, bool,
                            bool);
template void matmul<double>(double*, const double*, const double*, i64, i64, i64, i64, i64,
                             bool, bool);
template void lstm_forward<float>(const LstmCache<float>&, const float*, const float*,
                                  const float*, const float*, const float*, const float*,
                                  const Dims&, bool, const i64*, Precision);
template void lstm_forward<double>(const LstmCache<double>&, const double*, const double*,
                                   const double*, const double*, const double*, const double*,
                                   const Dims&, bool, const i64*, Precision);
template class PackedForward<float>;
template class PackedForward<double>;
template void lstm_forward<float>(const LstmCache<float>&, const float*, const float*,
                                  const float*, const PackedForward<float>&, const float*,
                                  const Dims&, bool, const i64*);
template void lstm_forward<double>(const LstmCache<double>&, const double*, const double*,
                                   const double*, const PackedForward<double>&, const double*,
                                   const Dims&, bool, const i64*);
template void lstm_collect_y<float>(float*, const float*, const Dims&, bool, const i64*);
template void lstm_collect_y<double>(double*, const double*, const Dims&, bool, const i64*);
template void lstm_backward<float>(const LstmGrads<float>&, float*, const LstmConstCache<float>&,
                                   const float*, const float*, const float*, const float*,
                                   const float*, const float*, const Dims&, bool, const i64*,
                                   Precision);
template void lstm_backward<double>(const LstmGrads<double>&, double*,
                                    const LstmConstCache<double>&, const double*, const double*,
                                    const double*, const double*, const double*, const double*,
                                    const Dims&, bool, const i64*, Precision);

}  // namespace lstmcore
