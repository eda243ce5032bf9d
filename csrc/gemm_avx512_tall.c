/* The few-row AVX-512 kernels again, in taller tiles: 8 rows x 3 panels (8 x 48; 24
 * accumulators, 3 weight loads and 8 broadcasts per 24 FMAs). gemm.c runs them on 13-16 rows
 * where the CPU's choice (KILN_GEMM_FEW_TALL) says so: two 8-row tiles then cover what would
 * take three 6-row ones, the last of them 1-4 rows tall. The attention kernels keep 6 x 64
 * (no kiln_gemm_plain here). Compiled for AVX-512 whatever the build flags. */
#include "gemm.h"

#ifdef KILN_GEMM_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
#include "gemm_avx512_ops.h"

#define KT_MR 8
#define KT_NP 3
#define KT_NP1 8
#define KT_BLOCK kiln_gemm_block_avx512_tall
#include "gemm_tile.h"

#pragma GCC pop_options
#endif
