// bf16.h: rounding float32 to the values bfloat16 can hold (the emulated bf16 path).
//
// bf16 keeps float32's sign and 8-bit exponent and the top 7 of its 23 mantissa bits, so a
// rounded value is still a float32 whose low 16 bits are zero: the float32 kernels compute on
// it unchanged, and every product of two such values is exact in float32 (8 x 8 significant
// bits), leaving only the float32 accumulation's rounding: what vdpbf16ps and tdpbf16ps do.
// Rounding is to nearest, ties to even, on the bit pattern, as vcvtneps2bf16 does; NaN stays a
// (quiet) NaN, infinities stay infinite, values past bf16's largest finite value become
// infinite. Integer operations only: denormal inputs are rounded as bit patterns too (the core
// then treats them as zero, see pool.h's DenormalsAreZero).
#pragma once

#include <cstdint>
#include <cstring>

namespace lstmcore::bf16 {

inline float round(float v) {
  std::uint32_t u = 0;
  std::memcpy(&u, &v, sizeof u);
  const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  const std::uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  u = nan ? ((u | 0x00400000u) & 0xFFFF0000u) : rounded;  // select, no branch: vectorises
  std::memcpy(&v, &u, sizeof v);
  return v;
}

// dst[i] = round(src[i]) for i < n; dst may equal src (in place)
inline void round_n(float* dst, const float* src, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) dst[i] = round(src[i]);
}

// dst[r * ld + c] = round(src[r * ld + c]) for rows [r0, r1) and columns [c0, c1)
inline void round_block(float* dst, const float* src, std::int64_t ld, std::int64_t r0,
                        std::int64_t r1, std::int64_t c0, std::int64_t c1) {
  for (std::int64_t r = r0; r < r1; ++r) round_n(dst + r * ld + c0, src + r * ld + c0, c1 - c0);
}

}  // namespace lstmcore::bf16
