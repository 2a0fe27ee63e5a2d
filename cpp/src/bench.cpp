// bench.cpp: the sgemm ceiling measurement the benchmark reports lstmcore's times against.
#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <string>
#include <vector>

#include "blas.h"
#include "lstmcore/lstm.h"

namespace lstmcore {

double time_sgemm(int n, int repeats) {
  if (n < 1 || n > 16384 || repeats < 1) {
    throw std::invalid_argument("time_sgemm: need 1 <= n <= 16384 and repeats >= 1, got n=" +
                                std::to_string(n) + " repeats=" + std::to_string(repeats));
  }
  const std::size_t count = static_cast<std::size_t>(n) * static_cast<std::size_t>(n);
  std::vector<float> a(count, 0.5f), b(count, 0.25f), c(count, 0.0f);
  // the core hands BLAS one thread per block; the ceiling uses BLAS's own threads, the same
  // number the core runs
  blas::set_threads(get_num_threads());
  std::vector<double> seconds;
  for (int r = 0; r <= repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    blas::gemm<float>(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    if (r > 0) seconds.push_back(took.count());
  }
  blas::set_threads(1);
  std::nth_element(seconds.begin(), seconds.begin() + seconds.size() / 2, seconds.end());
  return seconds[seconds.size() / 2];
}

}  // namespace lstmcore
