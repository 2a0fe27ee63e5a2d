// pool.cpp: see pool.h. Synchronisation is one 32-bit "generation" word per purpose, waited on
// with a bounded spin and then a futex (Linux) or a short sleep loop (elsewhere).
#include "pool.h"

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace lstmcore::pool {
namespace {

// how long a waiter spins before it sleeps: long enough to cover the gap between the forward
// and backward calls of a training step or a per-step barrier, short enough not to matter to
// whatever runs next on the core
constexpr auto kIdleSpin = std::chrono::microseconds(100);
constexpr auto kBarrierSpin = std::chrono::microseconds(2000);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// A word that waiters watch for a change; wakers pay a syscall only when someone sleeps.
struct Signal {
  std::atomic<std::uint32_t> word{0};
  std::atomic<int> sleepers{0};

  // returns the new value once word != old
  std::uint32_t wait_change(std::uint32_t old, std::chrono::microseconds spin) {
    std::uint32_t v = word.load(std::memory_order_acquire);
    if (v != old) return v;
    const auto until = std::chrono::steady_clock::now() + spin;
    for (unsigned k = 1;; ++k) {
      cpu_relax();
      v = word.load(std::memory_order_acquire);
      if (v != old) return v;
      if ((k & 63) == 0 && std::chrono::steady_clock::now() > until) break;
    }
    for (;;) {
      sleepers.fetch_add(1, std::memory_order_seq_cst);
      v = word.load(std::memory_order_seq_cst);
      if (v == old) {
#if defined(__linux__)
        // returns at once if word no longer equals old (no lost wake-up)
        syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAIT_PRIVATE, old,
                nullptr, nullptr, 0);
#else
        std::this_thread::sleep_for(std::chrono::microseconds(50));
#endif
      }
      sleepers.fetch_sub(1, std::memory_order_seq_cst);
      v = word.load(std::memory_order_acquire);
      if (v != old) return v;
    }
  }

  void wake_all() {
    if (sleepers.load(std::memory_order_seq_cst) > 0) {
#if defined(__linux__)
      syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAKE_PRIVATE, INT_MAX,
              nullptr, nullptr, 0);
#endif
    }
  }

  void publish(std::uint32_t v) {
    word.store(v, std::memory_order_seq_cst);
    wake_all();
  }
};

constexpr std::uint32_t kSizeMask = 0xff;  // team size lives in the low byte of `start`

// sense-reversing barrier over the members of the current job
class JobTeam final : public Team {
 public:
  int n = 1;
  std::atomic<int> arrived{0};
  Signal phase;

  int size() const override { return n; }
  void barrier() override {
    if (n == 1) return;
    const std::uint32_t p = phase.word.load(std::memory_order_acquire);
    if (arrived.fetch_add(1, std::memory_order_acq_rel) == n - 1) {
      arrived.store(0, std::memory_order_relaxed);
      phase.publish(p + 1);
    } else {
      phase.wait_change(p, kBarrierSpin);
    }
  }
};

class Pool {
 public:
  std::mutex run_mutex;  // one job at a time
  std::mutex grow_mutex;
  std::vector<std::thread> threads;
  Signal start;                // (generation << 8) | team size of the current job
  Signal finish;               // counts finished workers of the current job
  std::atomic<int> pending{0}; // workers still running the current job
  JobTeam team;
  TaskFn task = nullptr;
  void* ctx = nullptr;
  std::vector<std::exception_ptr> errors;  // one per tid, sized before a job

  void grow(int workers_needed) {
    while (static_cast<int>(threads.size()) < workers_needed) {
      const int tid = static_cast<int>(threads.size()) + 1;
      // the word as it is before the job that needs this worker is published: a thread that
      // starts running only after the publication must still see that job as new
      const std::uint32_t seen = start.word.load(std::memory_order_relaxed);
      threads.emplace_back([this, tid, seen] { worker(tid, seen); });
#if defined(__linux__)
      // a name tools (and tests/test_pool.py) can find the workers by
      pthread_setname_np(threads.back().native_handle(), "lstmcore-pool");
#endif
      // the pool lives for the process (and is abandoned, not destroyed, in a fork child)
      threads.back().detach();
    }
  }

  void worker(int tid, std::uint32_t seen);
};

thread_local bool t_in_task = false;

void run_member(Pool& p, int tid) {
  t_in_task = true;
  const DenormalsAreZero daz;
  try {
    p.task(p.ctx, tid, p.team);
  } catch (...) {
    p.errors[static_cast<std::size_t>(tid)] = std::current_exception();
  }
  t_in_task = false;
}

void Pool::worker(int tid, std::uint32_t seen) {
  for (;;) {
    seen = start.wait_change(seen, kIdleSpin);
    // membership comes from the word itself: a worker that is not a member may see this word
    // late, while the caller already sets up the next job, and must read nothing else
    if (tid < static_cast<int>(seen & kSizeMask)) {
      run_member(*this, tid);
      if (pending.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        finish.publish(finish.word.load(std::memory_order_relaxed) + 1);
      }
    }
  }
}

Pool* g_pool = nullptr;         // created on first use; replaced (leaked) in a fork child
std::mutex g_pool_mutex;        // guards g_pool's creation
std::once_flag g_atfork_once;

// fork: the parent waits for a running job to end (prepare holds the run mutex), the child
// gets a fresh pool on its next call, the old one (whose threads do not exist there) is leaked
void atfork_prepare() {
  g_pool_mutex.lock();
  if (g_pool != nullptr) g_pool->run_mutex.lock();
}
void atfork_parent() {
  if (g_pool != nullptr) g_pool->run_mutex.unlock();
  g_pool_mutex.unlock();
}
void atfork_child() {
  g_pool = nullptr;  // the old object, its run mutex held by this thread, is abandoned
  g_pool_mutex.unlock();  // the child's only thread is the one that locked it in prepare
}

Pool& the_pool() {
  std::call_once(g_atfork_once, [] { pthread_atfork(atfork_prepare, atfork_parent, atfork_child); });
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  if (g_pool == nullptr) g_pool = new Pool();  // NOLINT: lives for the process
  return *g_pool;
}

class SoloTeam final : public Team {
 public:
  int size() const override { return 1; }
  void barrier() override {}
};

}  // namespace

void run(int n, TaskFn task, void* ctx) {
  if (n <= 1 || t_in_task) {
    SoloTeam solo;
    const DenormalsAreZero daz;
    task(ctx, 0, solo);
    return;
  }
  if (n > kMaxThreads) n = kMaxThreads;
  Pool& p = the_pool();
  std::lock_guard<std::mutex> lock(p.run_mutex);
  p.grow(n - 1);
  if (p.errors.size() < static_cast<std::size_t>(n)) p.errors.resize(static_cast<std::size_t>(n));
  for (int k = 0; k < n; ++k) p.errors[static_cast<std::size_t>(k)] = nullptr;
  p.task = task;
  p.ctx = ctx;
  p.team.n = n;
  p.team.arrived.store(0, std::memory_order_relaxed);
  p.pending.store(n - 1, std::memory_order_relaxed);
  const std::uint32_t done = p.finish.word.load(std::memory_order_acquire);
  const std::uint32_t gen = (p.start.word.load(std::memory_order_relaxed) >> 8) + 1;
  p.start.publish((gen << 8) | static_cast<std::uint32_t>(n));  // releases the job
  run_member(p, 0);
  // workers of tid >= n see the new generation too and skip it; wait for the n - 1 members
  while (p.pending.load(std::memory_order_acquire) != 0) p.finish.wait_change(done, kBarrierSpin);
  for (int k = 0; k < n; ++k) {
    if (p.errors[static_cast<std::size_t>(k)]) std::rethrow_exception(p.errors[static_cast<std::size_t>(k)]);
  }
}

int workers() {
  Pool& p = the_pool();
  std::lock_guard<std::mutex> lock(p.run_mutex);
  return static_cast<int>(p.threads.size());
}

}  // namespace lstmcore::pool
