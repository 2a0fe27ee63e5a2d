// kernels.h: the per-ISA recurrent kernels and the table that dispatches to them.
//
// Each ISA (avx512, avx2, generic) compiles kernels/impl.h in its own translation unit with its
// own -m flags and inside its own namespace, so no inline function compiled for one ISA can be
// merged by the linker into another's code. This header holds only plain declarations.
//
// Packed W_hh layouts (U = units per vector of the element type on that ISA):
//   forward  (nF, I+H, 4, U) nF = ceil(H/U) unit blocks; for every k the i, f, g, o weights
//                            of the block's U units side by side, W_ih's I rows of k first,
//                            then W_hh's H: one register tile holds the four gates of the same
//                            units and rows, so the cell math runs on it
//   backward (nB, 4H, P)     nB = ceil(H/P) column panels of P = NV*U units; row kk of panel p
//                            holds W_hh[kk, p*P .. p*P+P): dh = dgates W_hh, P outputs per row
// Units past H are zero in both.
#pragma once

#include <cstdint>

namespace lstmcore::kern {

using i64 = std::int64_t;

// one forward step over rows [r0, r1) and forward unit blocks [k0, k1)
template <typename S>
struct FwdStep {
  const S* packed;  // forward layout above
  const S* x;       // (rows, I): x of this step
  const S* h_prev;  // (rows, H): h of the previous step
  const S* c_prev;  // (rows, H)
  const S* bias;    // (4H,)
  S* gates;         // (rows, 4H) post-activation i, f, g, o out, or null (inference)
  S* c_next;        // (rows, H)
  S* h_next;        // (rows, H)
  S* tanh_c;        // (rows, H) or null (inference)
  i64 I, H;
};

// one backward step over rows [r0, r1) and backward column panels [p0, p1):
//   dh = dgates_prev W_hh for rows < n_gemm, else dh_in (rows that start here); plus dy
//   with gates: the fused cell backward writes dgates and updates dc;
//   without (gates null): dh is written to dh_out (the gradient reaching h0)
template <typename S>
struct BwdStep {
  const S* packed;      // backward layout above
  const S* dg_prev;     // (rows, 4H): dgates of the step processed before, or null
  i64 n_gemm;           // rows [0, n_gemm) take dg_prev W_hh
  const S* dh_in;       // (rows, H) or null (zeros): dh of rows >= n_gemm
  const S* dy;          // (rows, H) or null
  const S* gates;       // (rows, 4H) post-activation i, f, g, o, or null (dh_out mode)
  const S* c_prev;      // (rows, H)
  const S* tanh_c;      // (rows, H)
  S* dc;                // (rows, H): dc_t in, dc_{t-1} out
  S* dgates;            // (rows, 4H) out
  S* dh_out;            // (rows, H) out in dh_out mode
  i64 H;
};

template <typename S>
struct Ops {
  int fwd_units;    // U: forward block width
  int bwd_units;    // P: backward panel width
  // sizes in elements of the packed buffers
  i64 (*fwd_packed_size)(i64 I, i64 H);
  i64 (*bwd_packed_size)(i64 H);
  void (*pack_fwd)(S* packed, const S* w_ih, const S* w_hh, i64 I, i64 H);  // (4H, I), (4H, H)
  void (*pack_bwd)(S* packed, const S* w_hh, i64 H);
  void (*fwd_step)(const FwdStep<S>& a, i64 r0, i64 r1, i64 k0, i64 k1);
  void (*bwd_step)(const BwdStep<S>& a, i64 r0, i64 r1, i64 p0, i64 p1);
};

struct Table {
  const char* name;
  Ops<float> f32;
  Ops<double> f64;
};

namespace avx512 { const Table& table(); }
namespace avx2 { const Table& table(); }
namespace generic { const Table& table(); }

// The table in use: chosen once from cpuid (or LSTMCORE_ISA), changed by set_isa.
const Table& active();
// Throws std::invalid_argument for an unknown name or one this CPU cannot run.
void set_isa(const char* name);
// Whether this CPU (and this build) can run the named path; why not in *reason.
bool isa_supported(const char* name, const char** reason);

}  // namespace lstmcore::kern
