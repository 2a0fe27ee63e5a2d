// lstmcore/hd.h: LSTMCORE_HD marks the math that both devices compile (cell.h, optim_rule.h):
// host and device functions under nvcc, plain inline functions everywhere else.
#pragma once

#if defined(__CUDACC__)
#define LSTMCORE_HD __host__ __device__ __forceinline__
#else
#define LSTMCORE_HD inline
#endif
