// cell_vec.h: the CPU kernels' vectors (GCC/Clang vector extensions of LSTMCORE_VBYTES bytes)
// and cell.h's primitives on them, so the kernels run cell.h's cell on whole vectors of units.
// Include it after lstmcore/cell.h, outside any namespace, with the same LSTMCORE_CELL_NS
// (kernels/impl.h does). Only the primitives live here; the cell itself is cell.h's.
#pragma once

#include <cstdint>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "lstmcore/cell.h"

#define LSTMCORE_VEC_AI inline __attribute__((always_inline))

namespace LSTMCORE_CELL_NS {

typedef float vf __attribute__((vector_size(LSTMCORE_VBYTES)));
typedef std::int32_t vi __attribute__((vector_size(LSTMCORE_VBYTES)));
typedef double vd __attribute__((vector_size(LSTMCORE_VBYTES)));

// float: no libm calls, so the whole cell stays in registers; a few float ulps from libm's
template <>
struct CellPrims<vf> {
  using Elem = float;

  // Range reduction x = n*ln2 + r (|r| <= ln2/2, ln2 split in two so n*ln2 is exact), a
  // degree-7 Taylor polynomial for e^r (truncation < 6e-9 relative), then 2^n built in the
  // exponent bits. x is clamped to [-87, 88] so 2^n stays a normal float: exp(-100) gives
  // 1.6e-38, not 3.7e-44, an absolute difference far below float resolution, and exp(+-inf)
  // is finite, so sigmoid(+-inf) is no NaN (it is 1 or one ulp below, and below 1e-38).
  static LSTMCORE_VEC_AI vf exp(vf x) {
    x = x < -87.0f ? vf{} - 87.0f : x;
    x = x > 88.0f ? vf{} + 88.0f : x;
    const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
    const vf n = (x * 1.44269504088896341f + shifter) - shifter;
    const vf r = (x - n * 0.693145751953125f) - n * 1.42860682030941723212e-6f;
    vf p = vf{} + 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const vf n_defined = n == n ? n : vf{};  // NaN in: keep the int conversion defined
    const vi bits = (__builtin_convertvector(n_defined, vi) + 127) << 23;
    return p * __builtin_bit_cast(vf, bits);
  }

  // tanh as a rational function (odd degree-13 numerator over even degree-6 denominator, the
  // form and coefficients of Eigen's fast float tanh): no exp, no branch, one reciprocal.
  // Inputs are clamped to [-9, 9] (tanh(9) = 1 - 3e-8), so tanh(+-inf) is +-0.99999994, one
  // ulp short of +-1; measured against float64 tanh on a 2e6-point grid of [-9, 9]: max error
  // 3.9e-7 absolute and relative. NaN propagates (comparisons with NaN are false, so the
  // clamps keep it).
  static LSTMCORE_VEC_AI vf tanh(vf x) {
    x = x > 9.0f ? vf{} + 9.0f : x;
    x = x < -9.0f ? vf{} - 9.0f : x;
    const vf x2 = x * x;
    vf p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
    p = p * x2 + -8.60467152213735e-11f;
    p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f;
    p = p * x2 + 6.37261928875436e-04f;
    p = p * x2 + 4.89352455891786e-03f;
    p = p * x;
    vf q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
    q = q * x2 + 2.26843463243900e-03f;
    q = q * x2 + 4.89352518554385e-03f;
    return p * recip(q);
  }

  // The hardware estimate refined by one Newton step where there is one (rcp14: relative error
  // 2^-14, after the step about 2^-28; rcp on AVX2: 2^-12, after the step about 2^-23, near
  // float resolution), a division elsewhere. A zmm division has a throughput of about 16 cycles
  // and the cell needs five per vector: the estimate cut the cell's cost by about a third.
  static LSTMCORE_VEC_AI vf recip(vf x) {
#if defined(__AVX512F__) && LSTMCORE_VBYTES == 64
    // the all-lanes masked form: the same instruction, without _mm512_rcp14_ps's undefined
    // pass-through operand that GCC 12 reports as "may be used uninitialized"
    const __m512 all = __builtin_bit_cast(__m512, x);
    const vf r = __builtin_bit_cast(vf, _mm512_maskz_rcp14_ps(__mmask16{0xFFFF}, all));
    return r * (2.0f - x * r);
#elif defined(__AVX2__) && LSTMCORE_VBYTES == 32
    const vf r = __builtin_bit_cast(vf, _mm256_rcp_ps(__builtin_bit_cast(__m256, x)));
    return r * (2.0f - x * r);
#else
    return 1.0f / x;
#endif
  }
};

// double: the scalar primitives (libm) on each lane, the tests ask for 1e-10
template <>
struct CellPrims<vd> {
  using Elem = double;
  static constexpr int kLanes = LSTMCORE_VBYTES / 8;

  static LSTMCORE_VEC_AI vd exp(vd x) {
    for (int k = 0; k < kLanes; ++k) x[k] = CellPrims<double>::exp(x[k]);
    return x;
  }
  static LSTMCORE_VEC_AI vd tanh(vd x) {
    for (int k = 0; k < kLanes; ++k) x[k] = CellPrims<double>::tanh(x[k]);
    return x;
  }
  static LSTMCORE_VEC_AI vd recip(vd x) { return 1.0 / x; }
};

}  // namespace LSTMCORE_CELL_NS
