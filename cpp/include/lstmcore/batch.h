// lstmcore/batch.h: a training batch gathered from the data set, moved and laid out for the
// core in one pass.
#pragma once

#include <cstdint>

namespace lstmcore {

// out (R, B, C), time-major as the core reads it: out[r, b, c] = images[idx[b], r - dy[b],
// c - dx[b]] where that pixel exists, else 0 (image b moved down by dy[b], right by dx[b]).
// images (N, R, C); idx, dy, dx (B,). Throws std::invalid_argument for an idx outside [0, N)
// before anything is written.
template <typename S>
void shifted_batch(S* out, const S* images, std::int64_t N, std::int64_t R, std::int64_t C,
                   const std::int64_t* idx, const std::int64_t* dy, const std::int64_t* dx,
                   std::int64_t B);

}  // namespace lstmcore
