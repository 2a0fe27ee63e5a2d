// dispatch.cpp: picks the kernel table once from cpuid (or LSTMCORE_ISA). Compiled without ISA
// flags: it must run on any x86-64 CPU to find out what the CPU has.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels.h"

namespace lstmcore::kern {
namespace {

#if defined(__x86_64__) || defined(__i386__)
#define LSTMCORE_X86 1
#endif

const Table* table_named(const char* name) {
  if (std::strcmp(name, "generic") == 0) return &generic::table();
#ifdef LSTMCORE_X86
  if (std::strcmp(name, "avx2") == 0) return &avx2::table();
  if (std::strcmp(name, "avx512") == 0) return &avx512::table();
#endif
  return nullptr;
}

const Table* choose_default() {
  const char* env = std::getenv("LSTMCORE_ISA");
  if (env != nullptr && *env != '\0') {
    const char* why = nullptr;
    if (!isa_supported(env, &why)) {
      throw std::invalid_argument(std::string("LSTMCORE_ISA=") + env + ": " + why);
    }
    return table_named(env);
  }
  for (const char* name : {"avx512", "avx2"}) {
    if (isa_supported(name, nullptr)) return table_named(name);
  }
  return &generic::table();
}

std::atomic<const Table*> g_active{nullptr};

}  // namespace

bool isa_supported(const char* name, const char** reason) {
  const char* why = nullptr;
  if (std::strcmp(name, "generic") == 0) {
    why = nullptr;
#ifdef LSTMCORE_X86
  } else if (std::strcmp(name, "avx2") == 0) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
      why = "this CPU lacks AVX2 or FMA";
    }
  } else if (std::strcmp(name, "avx512") == 0) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512dq") ||
        !__builtin_cpu_supports("avx512bw") || !__builtin_cpu_supports("avx512vl") ||
        !__builtin_cpu_supports("fma")) {
      why = "this CPU lacks AVX-512 (F, DQ, BW, VL) or FMA";
    }
#else
  } else if (std::strcmp(name, "avx2") == 0 || std::strcmp(name, "avx512") == 0) {
    why = "built for a CPU architecture other than x86-64";
#endif
  } else {
    why = "unknown ISA path (expected avx512, avx2 or generic)";
  }
  if (reason != nullptr) *reason = why;
  return why == nullptr;
}

const Table& active() {
  const Table* t = g_active.load(std::memory_order_acquire);
  if (t == nullptr) {
    const Table* chosen = choose_default();  // throws for a bad LSTMCORE_ISA, every call
    g_active.compare_exchange_strong(t, chosen);
    t = g_active.load(std::memory_order_acquire);
  }
  return *t;
}

void set_isa(const char* name) {
  const char* why = nullptr;
  if (!isa_supported(name, &why)) {
    throw std::invalid_argument(std::string("isa '") + name + "': " + why);
  }
  g_active.store(table_named(name), std::memory_order_release);
}

}  // namespace lstmcore::kern
