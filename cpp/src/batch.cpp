// batch.cpp: shifted_batch (see lstmcore/batch.h). In NumPy the same batch took a gather, a
// padded copy, a window gather and a transposing copy: four passes over cold memory, about a
// tenth of a training step of the MNIST model; here it is one.
#include "lstmcore/batch.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace lstmcore {

template <typename S>
void shifted_batch(S* out, const S* images, std::int64_t N, std::int64_t R, std::int64_t C,
                   const std::int64_t* idx, const std::int64_t* dy, const std::int64_t* dx,
                   std::int64_t B) {
  // the indices are copied, then checked, then used: the caller's array (the GIL is released
  // around this call) could change between a check and a read
  const std::vector<std::int64_t> rows_of(idx, idx + B);
  for (std::int64_t b = 0; b < B; ++b) {
    if (rows_of[b] < 0 || rows_of[b] >= N) {
      throw std::invalid_argument("idx: " + std::to_string(rows_of[b]) + " at position " +
                                  std::to_string(b) + " is outside [0, " + std::to_string(N) +
                                  ")");
    }
  }
  // an empty output writes nothing (and R may then be any size an empty array allows)
  if (R == 0 || B == 0 || C == 0) return;
  const auto bytes = [](std::int64_t n) { return sizeof(S) * static_cast<std::size_t>(n); };
  for (std::int64_t r = 0; r < R; ++r) {
    for (std::int64_t b = 0; b < B; ++b) {
      S* dst = out + (r * B + b) * C;
      // a move of a whole image or more leaves only zeros: clamped, so no sum can overflow
      const std::int64_t down = std::clamp<std::int64_t>(dy[b], -R, R);
      const std::int64_t right = std::clamp<std::int64_t>(dx[b], -C, C);
      const std::int64_t src_row = r - down;
      if (src_row < 0 || src_row >= R) {
        std::memset(dst, 0, bytes(C));
        continue;
      }
      // columns c in [c0, c1) read source column c - right; the rest are 0
      const std::int64_t c0 = std::max<std::int64_t>(right, 0);
      const std::int64_t c1 = std::min<std::int64_t>(C + right, C);
      const S* src = images + (rows_of[b] * R + src_row) * C;
      std::memset(dst, 0, bytes(c0));
      if (c1 > c0) std::memcpy(dst + c0, src + (c0 - right), bytes(c1 - c0));
      std::memset(dst + std::max(c0, c1), 0, bytes(C - std::max(c0, c1)));
    }
  }
}

template void shifted_batch<float>(float*, const float*, std::int64_t, std::int64_t,
                                   std::int64_t, const std::int64_t*, const std::int64_t*,
                                   const std::int64_t*, std::int64_t);
template void shifted_batch<double>(double*, const double*, std::int64_t, std::int64_t,
                                    std::int64_t, const std::int64_t*, const std::int64_t*,
                                    const std::int64_t*, std::int64_t);

}  // namespace lstmcore
