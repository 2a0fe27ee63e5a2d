// schedule.cpp: the split of a recurrence over the pool (see schedule.h) and the thread count.
#include "schedule.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>

#include "blas.h"

namespace lstmcore {
namespace {

std::atomic<int> g_threads{0};  // 0: not yet initialised

int default_threads() {
  unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(std::min<unsigned>(hc, pool::kMaxThreads));
}

}  // namespace

void set_num_threads(int n) {
  if (n < 1) {
    throw std::invalid_argument("set_num_threads: n must be >= 1, got " + std::to_string(n));
  }
  // the work is split into at most as many parts as the pool runs at once: a part past the
  // pool's team would never run
  g_threads.store(std::min(n, pool::kMaxThreads));
  // BLAS runs single-threaded inside each of our blocks; its own pool would fight ours
  blas::set_threads(1);
}

int get_num_threads() {
  int n = g_threads.load();
  return n > 0 ? n : default_threads();
}

namespace schedule {

int gemm_threads() { return std::min(get_num_threads(), blas::max_concurrent_calls()); }

namespace {

// How the recurrence is shared out.
enum class Split {
  kSolo,   // one thread
  kRows,   // each thread a block of batch rows for the whole sequence, no barrier
  kRowChunks,  // the threads take chunks of rows in turn, each for the whole sequence
  kUnits,  // each thread a range of unit blocks (panels), one barrier per step
};

struct Plan {
  Split split = Split::kSolo;
  int threads = 1;
};

// Rows need two row tiles per thread; units need a block per thread and enough work per step to
// be worth a barrier: from 1e5 flops a step (B=1, H=128 is 1.6e5) the units split is offered
// and the tuner times it against one thread (B=1, T=28, H=128 inference, 2 threads, Zen 3 KVM
// guest, alternated: 74-87 us against 118-143 us on one thread; B=1 streams its 320 KB of
// packed weights from L2 every step, and the split halves each core's share).
constexpr double kMinUnitsSplitFlops = 1e5;

i64 dynamic_chunk(i64 B, int threads);  // below, with the row chunks

Plan plan_for(const Recurrence& r, int n) {
  Plan p;
  if (n <= 1 || r.B == 0) return p;
  if (r.B >= 2 * r.row_tile * n) {
    p.threads = static_cast<int>(std::min<i64>(n, r.B / r.row_tile));
    p.split = dynamic_chunk(r.B, p.threads) > 0 ? Split::kRowChunks : Split::kRows;
    return p;
  }
  if (r.blocks >= 2 && r.flops >= kMinUnitsSplitFlops) {
    p.split = Split::kUnits;
    p.threads = static_cast<int>(std::min<i64>(n, r.blocks));
    return p;
  }
  return p;
}

// A thread takes its rows through the whole sequence in chunks of at most kRowChunk rows, so a
// chunk's state stays in the core's L2 cache from step to step: one thread over 256 rows ran
// 10-20% slower per row than over 128 (forward and backward, Intel Xeon), and inference at
// B=1000 on 2 threads 40% slower per row than at 512. Rows are independent, so the chunks
// change no result.
constexpr i64 kRowChunk = 128;

// rows [r0, r1) as Tiles of every block, kRowChunk rows at most each
void run_row_chunks(i64 r0, i64 r1, i64 blocks, SequenceFn sequence, void* ctx) {
  const StepSync none(nullptr);
  for (i64 c0 = r0; c0 < r1; c0 += kRowChunk) {
    sequence(ctx, Tile{c0, std::min(r1, c0 + kRowChunk), 0, blocks}, none);
  }
}

// With many rows the rows split hands them out in chunks that the threads take in turn until
// none are left, instead of one fixed block per thread: on a VM whose vCPUs are shared with
// other guests one thread often ran 10-40% slower than the other for a whole call (B=128
// inference, 2 threads, Zen 3 guest: 4.8 / 6.0 ms, 8.4 / 5.5, 6.5 / 9.2 per thread), and a
// fixed split waits for the slower. A chunk is a quarter of a thread's share rounded up to a
// multiple of kChunkQuantum rows (every kernel's row tile divides it), at most 120 (kRowChunk
// rounded down to that multiple); below kMinRowsPerThreadForChunks rows per thread each thread
// keeps one block (B=16 on two threads in chunks of 12 would be 12 + 4). Rows are independent,
// so chunks change no result. A thread slowed by a busy core takes fewer chunks, so these
// calls are never timed against one thread (the tuner below).
constexpr i64 kChunkQuantum = 12;
constexpr i64 kChunksPerThread = 4;
constexpr i64 kMinRowsPerThreadForChunks = kChunkQuantum * kChunksPerThread;

// rows per chunk for `threads` threads over B rows, or 0: one block per thread
i64 dynamic_chunk(i64 B, int threads) {
  if (B < kMinRowsPerThreadForChunks * threads) return 0;
  const i64 share = (B + threads * kChunksPerThread - 1) / (threads * kChunksPerThread);
  const i64 chunk = (share + kChunkQuantum - 1) / kChunkQuantum * kChunkQuantum;
  return std::min(chunk, kRowChunk / kChunkQuantum * kChunkQuantum);
}

// rows [0, B) in chunks of `chunk`, taken by the team's threads in turn
void run_dynamic_chunks(const Recurrence& r, int threads, i64 chunk, SequenceFn sequence,
                        void* ctx) {
  std::atomic<i64> next{0};
  pool::parallel(threads, [&](int, pool::Team&) {
    const StepSync none(nullptr);
    for (i64 c0 = next.fetch_add(chunk); c0 < r.B; c0 = next.fetch_add(chunk)) {
      sequence(ctx, Tile{c0, std::min(r.B, c0 + chunk), 0, r.blocks}, none);
    }
  });
}

// [begin, end) of part k of n items split into `parts`, each boundary a multiple of `tile`
void tile_range(i64 n, i64 tile, int parts, int k, i64* begin, i64* end) {
  const i64 tiles = (n + tile - 1) / tile;
  *begin = std::min(n, tiles * k / parts * tile);
  *end = std::min(n, tiles * (k + 1) / parts * tile);
}

void run_plan(const Plan& plan, const Recurrence& r, SequenceFn sequence, void* ctx) {
  switch (plan.split) {
    case Split::kSolo:
      run_row_chunks(0, r.B, r.blocks, sequence, ctx);
      break;
    case Split::kRowChunks:
      run_dynamic_chunks(r, plan.threads, dynamic_chunk(r.B, plan.threads), sequence, ctx);
      break;
    case Split::kRows:
      pool::parallel(plan.threads, [&](int tid, pool::Team&) {
        i64 r0 = 0, r1 = 0;
        tile_range(r.B, r.row_tile, plan.threads, tid, &r0, &r1);
        run_row_chunks(r0, r1, r.blocks, sequence, ctx);
      });
      break;
    case Split::kUnits:
      pool::parallel(plan.threads, [&](int tid, pool::Team& team) {
        const i64 k0 = r.blocks * tid / plan.threads, k1 = r.blocks * (tid + 1) / plan.threads;
        sequence(ctx, Tile{0, r.B, k0, k1}, StepSync(&team));
      });
      break;
  }
}

// Schedules chosen by timing (as DeepCPU does): where the shape rule offers the units split
// or a rows split of one fixed block per thread, the first calls of each shape alternate it
// with one thread, four times each, and later calls keep the faster (least of its four times
// per step; the split is kept unless it took over 25% longer). Both give bit-identical results
// (every element is computed the same way whatever the split), so the choice never changes an
// answer, only the speed: two threads are never kept where they clearly lose, e.g. on a
// machine whose other core is busy (at load 8-10 B=16 inference ran 6x slower on two threads
// than on one). The choice is measured again 40 calls after the first time, because the first
// calls of a process judge a split badly (on the 2-core KVM guest the second vCPU ran at a
// fraction of its speed for the first calls, and processes kept one thread: B=16 inference at
// 2 threads 1.40 ms where the rows split takes 0.75-0.93), then every 500 calls, as the
// machine's load changes. With the margin and the second measurement, B=16 inference at 2
// threads ran 0.58-0.59 ms from the 60th call in 3 of 3 processes (one thread: 1.06). The
// rows split in chunks taken in turn is not timed (see dynamic_chunk): a thread that a busy
// core slows takes fewer chunks, so it costs at most about one thread's time, and timing it
// over the first calls kept one thread for B=128 inference at 8-10 ms where two take 5.
class Tuner {
 public:
  struct Key {
    Pass pass;
    int elem;  // sizeof the element type
    int threads;
    i64 B, I, H;
    bool operator<(const Key& o) const {
      return std::tie(pass, elem, threads, B, I, H) <
             std::tie(o.pass, o.elem, o.threads, o.B, o.I, o.H);
    }
  };

  // the plan to run now, and the slot to report its time to (-1: nothing to report)
  Plan pick(const Key& key, const Plan& rule, int* slot) {
    *slot = -1;
    if (rule.split == Split::kSolo || rule.split == Split::kRowChunks) return rule;
    std::lock_guard<std::mutex> lock(mutex_);
    Entry& e = table_[key];
    if (e.trials >= 2 * kTrials) {
      // the load of the machine changes: measure again now and then, and soon after the
      // first time (the first calls of a process judge a split badly, see above)
      const int keep_for = e.rounds == 1 ? kFirstRetune : kRetune;
      if (++e.kept < keep_for) return e.best[0] <= kKeepSplitUpTo * e.best[1] ? rule : Plan{};
      const int rounds = e.rounds;
      e = Entry{};
      e.rounds = rounds;
    }
    *slot = e.trials % 2;
    return *slot == 0 ? rule : Plan{};
  }

  void report(const Key& key, int slot, double seconds_per_step) {
    if (slot < 0) return;
    std::lock_guard<std::mutex> lock(mutex_);
    Entry& e = table_[key];
    e.best[slot] = std::min(e.best[slot], seconds_per_step);
    if (++e.trials == 2 * kTrials) ++e.rounds;
  }

 private:
  static constexpr int kTrials = 4;
  static constexpr int kRetune = 500;      // calls kept between measurements
  static constexpr int kFirstRetune = 40;  // calls kept after the first measurement
  // the split is kept unless it took this much longer than one thread: a thread whose vCPU sat
  // idle runs slowly at first, so trials taken while one thread was kept judge the split at
  // about one thread's speed, and a strict comparison kept one thread for good (B=16
  // inference, 2 threads: 2 of 3 processes at 1.03-1.04 ms, the third 0.62 with the split)
  static constexpr double kKeepSplitUpTo = 1.25;
  struct Entry {
    double best[2] = {1e300, 1e300};  // [rule's split, one thread]
    int trials = 0;
    int kept = 0;
    int rounds = 0;  // measurements completed
  };
  std::mutex mutex_;
  std::map<Key, Entry> table_;
};

Tuner& tuner() {
  static Tuner* t = new Tuner();  // NOLINT: lives for the process (used from any thread)
  return *t;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

void run(const Recurrence& r, SequenceFn sequence, void* ctx) {
  const int threads = get_num_threads();
  const Tuner::Key key{r.pass, r.elem, threads, r.B, r.I, r.H};
  int slot = -1;
  const Plan plan = tuner().pick(key, plan_for(r, threads), &slot);
  const auto start = std::chrono::steady_clock::now();
  run_plan(plan, r, sequence, ctx);
  tuner().report(key, slot, seconds_since(start) / static_cast<double>(r.steps));
}

}  // namespace schedule
}  // namespace lstmcore
