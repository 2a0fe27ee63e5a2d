// avx2.cpp: the avx2 kernels (see impl.h; the flags are set per file in CMakeLists.txt).
#define LSTMCORE_KERNEL_NS avx2
#define LSTMCORE_ISA_NAME "avx2"
#define LSTMCORE_VBYTES 32
#define LSTMCORE_FWD_ROWS 2
#define LSTMCORE_BWD_ROWS 2
#define LSTMCORE_BWD_VECS 4
#include "impl.h"
