// blas.cpp: the limit on threads inside BLAS at once (see blas.h).
#include "blas.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace lstmcore::blas {
namespace {

std::atomic<int> g_inside{0};      // threads holding a place now
std::atomic<int> g_peak{0};        // the most that ever held one at once
std::atomic<int> g_limit_override{0};  // set_call_limit_for_tests(); 0: none

// A fork child has only the thread that forked, which holds no place: the parent's other
// threads' places are free there (they would otherwise be lost for good, and with all of them
// lost the child's first GEMM would wait forever). Registered when the module loads.
[[maybe_unused]] const int g_reset_in_fork_child =
    pthread_atfork(nullptr, nullptr, [] { g_inside.store(0); });

int build_limit() {
  const char* config = scipy_openblas_get_config();
  const char* at = config == nullptr ? nullptr : std::strstr(config, "MAX_THREADS=");
  const long n = at == nullptr ? 0 : std::strtol(at + std::strlen("MAX_THREADS="), nullptr, 10);
  return n >= 1 && n <= 4096 ? static_cast<int>(n) : 32;
}

bool try_take() {
  const int most = max_concurrent_calls();
  int n = g_inside.load();
  while (n < most) {
    if (g_inside.compare_exchange_weak(n, n + 1)) {
      int peak = g_peak.load(std::memory_order_relaxed);
      while (peak < n + 1 && !g_peak.compare_exchange_weak(peak, n + 1)) {
      }
      return true;
    }
  }
  return false;
}

}  // namespace

int max_concurrent_calls() {
  static const int build = build_limit();
  const int override_n = g_limit_override.load(std::memory_order_relaxed);
  return override_n > 0 ? std::min(override_n, build) : build;
}

void set_call_limit_for_tests(int n) { g_limit_override.store(std::max(0, n)); }

int peak_concurrent_calls() { return g_peak.load(); }

CallSlot::CallSlot() {
  // only reached past the limit: the holders are in GEMMs of microseconds to milliseconds
  for (int tries = 0; !try_take(); ++tries) {
    if (tries < 100) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
}

CallSlot::~CallSlot() { g_inside.fetch_sub(1); }

}  // namespace lstmcore::blas
