// lstmcore/classifier.h: inference of a whole LSTM stack and its linear head in one call, with
// the packed weights kept between calls (CPU).
//
// Shapes (see lstm.h's legend; L layers, D directions, C classes):
//   x       (T, B, I)       input, time-major
//   cell k  = layer * D + direction: w_ih (4H, I or D*H), w_hh (4H, H), b_ih, b_hh (4H,)
//   head    w (C, D*H), b (C,): logits = [h_n of the top layer's directions] w^T + b
//   stream  h, c (L, B, H): the state a unidirectional stack carries from step to step
//
// Never stale: every call compares the weights it is given with a copy of those it packed
// and packs again whatever changed (in place, a new array, another ISA path): a compare of
// the raw weights costs less than packing them. Calls from several threads may run at once:
// the check and a repack hold a lock; the compute uses an immutable snapshot of the packed
// weights and the calling thread's own buffers.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "lstmcore/lstm.h"

namespace lstmcore {

struct StackShape {
  std::int64_t layers = 1, directions = 1, I = 0, H = 0;
};

template <typename S>
struct CellWeights {
  const S* w_ih;  // (4H, I) for layer 0, (4H, D*H) above
  const S* w_hh;  // (4H, H)
  const S* b_ih;  // (4H,)
  const S* b_hh;  // (4H,)
};

template <typename S>
class StackInference {
 public:
  StackInference(const StackShape& shape, Precision precision);

  const StackShape& shape() const { return shape_; }
  Precision precision() const { return precision_; }

  // logits (B, C) = head(top layer's h_n) for x (T, B, I); cells: L*D entries
  void logits(S* out, const S* x, std::int64_t T, std::int64_t B,
              const std::vector<CellWeights<S>>& cells, const S* head_w, const S* head_b,
              std::int64_t C);

  // one step of a unidirectional stack: h, c (L, B, H) in and out; y (B, H) the top layer's
  // new h; x (B, I)
  void step(S* y, S* h, S* c, const S* x, std::int64_t B,
            const std::vector<CellWeights<S>>& cells);

  // how many times cells were packed (tests: a repack happens exactly when weights change)
  std::int64_t packs() const;

 private:
  struct Cell {
    std::shared_ptr<const PackedForward<S>> packed;
    std::vector<S> bias;      // (4H,) b_ih + b_hh
    std::vector<S> snapshot;  // w_ih, w_hh, b_ih, b_hh as packed, for the staleness compare
  };
  using Snapshot = std::vector<std::shared_ptr<const Cell>>;

  std::int64_t input_of(std::int64_t layer) const;
  Snapshot current(const std::vector<CellWeights<S>>& cells);
  std::shared_ptr<const Cell> pack(const CellWeights<S>& w, std::int64_t inputs) const;
  bool same(const Cell& cell, const CellWeights<S>& w, std::int64_t inputs) const;

  StackShape shape_;
  Precision precision_;
  mutable std::mutex mutex_;  // guards cells_ and packs_
  Snapshot cells_;
  std::int64_t packs_ = 0;
};

}  // namespace lstmcore
