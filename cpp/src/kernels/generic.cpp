// generic.cpp: the generic kernels (see impl.h; the flags are set per file in CMakeLists.txt).
#define LSTMCORE_KERNEL_NS generic
#define LSTMCORE_ISA_NAME "generic"
#define LSTMCORE_VBYTES 16
#define LSTMCORE_FWD_ROWS 2
#define LSTMCORE_BWD_ROWS 2
#define LSTMCORE_BWD_VECS 4
#include "impl.h"
