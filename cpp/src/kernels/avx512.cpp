// avx512.cpp: the avx512 kernels (see impl.h; the flags are set per file in CMakeLists.txt).
#define LSTMCORE_KERNEL_NS avx512
#define LSTMCORE_ISA_NAME "avx512"
#define LSTMCORE_VBYTES 64
#define LSTMCORE_FWD_ROWS 4
#define LSTMCORE_BWD_ROWS 4
#define LSTMCORE_BWD_VECS 4
#include "impl.h"
