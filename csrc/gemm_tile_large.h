/* The large-M GEMM kernel (rows > the few-row tile), one register tile per inclusion:
 * define KT_LMR (rows, <= KT_MRMAX), KT_LNP (panels, <= KT_NPMAX) and KT_LBLOCK (the
 * exported block function's name), then include this after gemm_tile.h; it may be included
 * again with another tile, and gemm.c picks one at load time by the CPU (gemm.h).
 *
 * Blocking (Goto's): per KC block of K, the chunk's rows of A are packed into [kc][MR]
 * tiles (the MC x KC block stays in L2), unless gemm.c packed all of A once beforehand (g->ap); per group of NP panels the KC x NP*16
 * slice of B is packed into [kc][NP * 16] (it stays in L1 while every row tile of the chunk
 * uses it). Packing copies, so every element sees the same operations as in the direct
 * kernels: results equal theirs bit for bit (gemm.h).
 */
void KT_LBLOCK(const kiln_gemm_args *g, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
    float *apack = kiln_gemm_tls_a(), *bpack = kiln_gemm_tls_b();
    const int64_t K = g->K, nkb = K > 0 ? (K + KILN_GEMM_KC - 1) / KILN_GEMM_KC : 1;
    const int64_t rows_max = KILN_GEMM_PACK_ROWS / KT_LMR * KT_LMR;
    for (int64_t r0 = m0; r0 < m1; r0 += rows_max) {
        int64_t r1 = m1 - r0 < rows_max ? m1 : r0 + rows_max;
        for (int64_t kb = 0; kb < nkb; kb++) {
            int64_t k0 = kb * KILN_GEMM_KC, kc = K - k0 < KILN_GEMM_KC ? K - k0 : KILN_GEMM_KC;
            int first = kb == 0, last = kb == nkb - 1;
            const float *ablk = apack;
            if (g->ap) ablk = g->ap + k0 * g->mp + r0 * kc; /* packed once for every chunk (gemm.c) */
            else kt_pack_a(KT_LMR, g, r0, r1, k0, kc, apack);
            for (int64_t p = p0; p < p1; p += KT_LNP) {
                int np = p1 - p < KT_LNP ? (int)(p1 - p) : KT_LNP;
                kt_pack_b(g, p, np, KT_LNP, k0, kc, bpack);
                /* the next group's B: the next panels, else the next K block's first */
                int64_t pn = p + np < p1 ? p + np : p0, kn = p + np < p1 ? k0 : k0 + KILN_GEMM_KC;
                int npn = p1 - pn < KT_LNP ? (int)(p1 - pn) : KT_LNP;
                int64_t kcn = K - kn < KILN_GEMM_KC ? K - kn : KILN_GEMM_KC, tiles = (r1 - r0 + KT_LMR - 1) / KT_LMR;
                if (pn * KILN_GEMM_NR + npn * KILN_GEMM_NR > g->N) npn--; /* the narrower last panel: not prefetched */
                const float *ap = ablk;
                for (int64_t m = r0; m < r1; m += KT_LMR, ap += KT_LMR * kc) {
                    int rows = r1 - m < KT_LMR ? (int)(r1 - m) : KT_LMR;
                    kt_walk w = {0, 0, 1, 0, 0};
                    if (kcn > 0 && npn > 0) w = kt_prefetch_b(g, pn, npn, kn, kcn, (m - r0) / KT_LMR, tiles);
                    kt_ptile(KT_LMR, KT_LNP, ap, bpack, kc, g, m, p, first, last, rows, np, &w);
                    while (w.left > 0) kt_walk_step(&w); /* a tile shorter than its share */
                }
            }
        }
    }
}

#undef KT_LMR
#undef KT_LNP
#undef KT_LBLOCK
