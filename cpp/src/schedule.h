// schedule.h: how the core's work is shared out over the pool's threads, decided here once for
// every caller (forward in training and in inference, backward).
//
// The recurrence: batch row b of every step depends only on row b of the step before, so with
// enough rows each thread owns a block of rows for the whole sequence and never synchronises;
// with fewer than two row tiles per thread each thread owns a range of unit blocks (all four
// gates of them, its slice of W_hh staying in its own cache) and the team meets at one barrier
// per step. Where neither pays, one thread runs. Whether the units split (or a rows split of
// one block per thread) or one thread runs is chosen by timing (schedule.cpp, Tuner); with 48
// rows or more per thread the rows split hands out chunks and always runs.
// The caller writes the sequence loop once, over a Tile, and calls StepSync after every step;
// every output element is computed by the same operations in the same order whatever the
// split, so the choice changes no result, only the speed.
#pragma once

#include <algorithm>
#include <cstdint>

#include "lstmcore/lstm.h"
#include "pool.h"

namespace lstmcore::schedule {

using i64 = std::int64_t;

// the recurrences the tuner times apart
enum class Pass : int { kTrainForward = 0, kInferForward = 1, kBackward = 2 };

// What one call's recurrence is: its key for the tuner and the size of a step.
struct Recurrence {
  Pass pass;
  int elem;       // sizeof the element type
  i64 B, I, H;    // the call's shape
  i64 row_tile;   // rows per register tile of the kernel
  i64 blocks;     // unit blocks (forward) or column panels (backward) of the kernel
  double flops;   // one step's multiply-adds x2
  i64 steps;      // T, >= 1
};

// A thread's share of the whole sequence: rows [r0, r1) x unit blocks [k0, k1). The rows
// splits hand a thread its rows in chunks (one Tile each, every block); the units split one
// Tile of every row.
struct Tile {
  i64 r0, r1, k0, k1;
};

// Called by the sequence loop after each step: a barrier in the units split (the next step
// reads every unit the team wrote), nothing otherwise. Every Tile of a call calls it equally
// often and must not throw before its last call (the kernels never throw).
class StepSync {
 public:
  explicit StepSync(pool::Team* team) : team_(team) {}
  void operator()() const {
    if (team_ != nullptr) team_->barrier();
  }

 private:
  pool::Team* team_;  // null: no barrier
};

using SequenceFn = void (*)(void* ctx, const Tile& tile, const StepSync& after_step);

// Runs sequence(ctx, tile, after_step) over the tiles of the split chosen for `r` (each on
// its own thread, or all in the calling thread) and returns when all are done; reports the
// time per step to the tuner. Nothing to run (no rows) runs nothing.
void run(const Recurrence& r, SequenceFn sequence, void* ctx);

// run() with a callable: seq(const Tile&, const StepSync&).
template <typename Seq>
void run(const Recurrence& r, const Seq& seq) {
  run(
      r,
      [](void* ctx, const Tile& tile, const StepSync& after_step) {
        (*static_cast<const Seq*>(ctx))(tile, after_step);
      },
      const_cast<void*>(static_cast<const void*>(&seq)));
}

// Work without a recurrence (GEMMs after the loop, sums, rounding passes): calls
// fn(begin, end) on contiguous blocks of [0, n) over the pool, at most one block per thread
// and none smaller than min_block.
template <typename Fn>
void blocks(i64 n, i64 min_block, const Fn& fn, int threads = get_num_threads()) {
  const i64 most = std::max<i64>(1, n / std::max<i64>(1, min_block));
  pool::blocks(static_cast<int>(std::min<i64>(threads, most)), n, fn);
}

// The threads that may call BLAS at once: get_num_threads(), but no more than the BLAS build
// holds callers for (blas::max_concurrent_calls()).
int gemm_threads();

// blocks() for work that calls BLAS in each block: on at most gemm_threads() threads.
template <typename Fn>
void gemm_blocks(i64 n, i64 min_block, const Fn& fn) {
  blocks(n, min_block, fn, gemm_threads());
}

}  // namespace lstmcore::schedule
