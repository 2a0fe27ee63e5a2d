// avx2.cpp: the avx2 kernels (see impl.h; the flags are set per file in CMakeLists.txt).
#define LSTMCORE_KERNEL_NS avx2
#define LSTMCORE_ISA_NAME "avx2"
#define LSTMCORE_VBYTES 32
// 3 rows: 12 accumulators (3 rows x 4 gates, or x 4 vectors in backward) hide the FMA's latency
// (4 cycles x 2 ports needs >= 8 in flight) and still fit the 16 ymm registers with the weight and
// broadcast operands; 2 rows (8 accumulators, none to spare) ran 15-25% slower, 4 rows spill
// (measured on Zen 3; the outputs are bit-identical, the tile never changes an element's sums).
#define LSTMCORE_FWD_ROWS 3
#define LSTMCORE_BWD_ROWS 3
#define LSTMCORE_BWD_VECS 4
#include "impl.h"
