/* GEMM kernels for AVX-512: a panel vector is one zmm. 6 rows x 4 panels (6 x 64) keep 24
 * accumulators in registers; per k, 4 weight loads and 6 broadcasts feed 24 FMAs. A single
 * row (decode GEMV) takes 8 panels: 8 independent FMA chains and 8 weight streams.
 * Compiled for AVX-512 whatever the build flags; called only when CPUID says so. */
#include "gemm.h"

#ifdef KILN_GEMM_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
#include "gemm_avx512_ops.h"

#define KT_MR 6
#define KT_NP 4
#define KT_NP1 8
#define KT_BLOCK kiln_gemm_block_avx512
#define KT_PLAIN kiln_gemm_plain_avx512
#include "gemm_tile.h"

/* Large-M tiles (gemm_tile_large.h). 6 x 64 was tuned on AMD Zen; the taller ones (fewer B
 * loads per FMA, more rows sharing each) suit Intel cores (gemm.c). */
#define KT_LMR 6
#define KT_LNP 4
#define KT_LBLOCK kiln_gemm_large_avx512_6x64
#include "gemm_tile_large.h"
#define KT_LMR 8
#define KT_LNP 3
#define KT_LBLOCK kiln_gemm_large_avx512_8x48
#include "gemm_tile_large.h"
#define KT_LMR 14
#define KT_LNP 2
#define KT_LBLOCK kiln_gemm_large_avx512_14x32
#include "gemm_tile_large.h"

#pragma GCC pop_options
#endif
