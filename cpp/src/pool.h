// pool.h: the core's persistent worker pool.
//
// Workers are created once (lazily, grown when more threads are asked for) and live for the
// process. Between jobs an idle worker spins for a short bounded time (so back-to-back calls,
// e.g. forward then backward, skip the wake-up cost) and then sleeps in the kernel (a futex on
// Linux), so it never takes the CPU away from NumPy, PyTorch or the user's threads after a call.
//
// Jobs are serialised: run() holds a mutex for the whole job, so concurrent calls from several
// Python threads (the GIL is released around the compute) each get the whole team in turn.
// After fork() the child starts with a fresh, empty pool (pthread_atfork): the parent's workers
// do not exist there.
#pragma once

#include <cstdint>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

namespace lstmcore::pool {

// the most threads a job runs on (its team size lives in one byte of the start word)
constexpr int kMaxThreads = 255;

// While alive, the thread treats denormal floats as zero and flushes denormal results to zero
// (x86: MXCSR's DAZ and FTZ bits); the thread's previous mode comes back at destruction, so the
// caller's own arithmetic never changes. Why: long sequences drive gates and gradients through
// values below 1.2e-38 (float) where x86 cores take a microcode assist per operation: a pixel-
// MNIST step ran 5-10x slower on an Intel Xeon. Values that small change no result beyond the
// tests' tolerances (they are 1e-33 of the values they are summed with).
class DenormalsAreZero {
 public:
#if defined(__x86_64__) || defined(__i386__)
  DenormalsAreZero() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | kFlushToZero | kDenormalsZero); }
  ~DenormalsAreZero() { _mm_setcsr(saved_); }

 private:
  static constexpr unsigned kFlushToZero = 0x8000;  // MXCSR.FTZ
  static constexpr unsigned kDenormalsZero = 0x0040;  // MXCSR.DAZ
  unsigned saved_;
#elif defined(__aarch64__)
  DenormalsAreZero() : saved_(read_fpcr()) { write_fpcr(saved_ | kFlushToZero); }
  ~DenormalsAreZero() { write_fpcr(saved_); }

 private:
  static constexpr std::uint64_t kFlushToZero = std::uint64_t{1} << 24;  // FPCR.FZ
  static std::uint64_t read_fpcr() {
    std::uint64_t v = 0;
    asm volatile("mrs %0, fpcr" : "=r"(v));
    return v;
  }
  static void write_fpcr(std::uint64_t v) { asm volatile("msr fpcr, %0" : : "r"(v)); }
  std::uint64_t saved_;
#else
  DenormalsAreZero() {}  // user-provided: a guard variable is not reported as unused
#endif
 public:
  DenormalsAreZero(const DenormalsAreZero&) = delete;
  DenormalsAreZero& operator=(const DenormalsAreZero&) = delete;
};

// The threads of one job. barrier() returns once every member has called it; a task that
// calls barrier() must not throw before its last barrier (our kernels never throw).
class Team {
 public:
  virtual ~Team() = default;
  virtual int size() const = 0;
  virtual void barrier() = 0;
};

using TaskFn = void (*)(void* ctx, int tid, Team& team);

// Runs task(ctx, tid, team) for tid = 0 .. n-1 (tid 0 in the calling thread) and returns when
// all have finished; rethrows the exception of the lowest tid that threw. n < 1 counts as 1.
// Called from inside a task (nesting), it runs the whole job in the calling thread with n = 1.
void run(int n, TaskFn task, void* ctx);

// run() with a callable: fn(int tid, Team& team).
template <typename Fn>
void parallel(int n, Fn&& fn) {
  run(
      n,
      [](void* ctx, int tid, Team& team) { (*static_cast<Fn*>(ctx))(tid, team); },
      const_cast<void*>(static_cast<const void*>(&fn)));
}

// Workers started so far (for tests: they never exceed the largest n asked for, minus 1).
int workers();

// Calls fn(begin, end) on `parts` contiguous, nearly equal blocks of [0, n) in parallel,
// deterministically (block k is [n*k/parts, n*(k+1)/parts)).
template <typename Fn>
void blocks(int parts, std::int64_t n, const Fn& fn) {
  if (parts < 1) parts = 1;
  if (n < parts) parts = n < 1 ? 1 : static_cast<int>(n);
  if (parts == 1) {
    fn(std::int64_t{0}, n);
    return;
  }
  parallel(parts, [&](int tid, Team&) {
    fn(n * tid / parts, n * (tid + 1) / parts);
  });
}

}  // namespace lstmcore::pool
