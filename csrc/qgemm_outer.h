/* Exact mode at M > KILN_QMM_OUTER_MIN_M - 1 (prefill): an outer-product tile over a dequantized
 * fp32 panel. Part of qgemm_body.h (compiled once per ISA with its macros; no include guard).
 *
 * Why this orientation: the weights are row-major along K, the activations few. The
 * activations are rearranged once per call into vectors of VW / 4 rows x 4 consecutive k
 * (kiln_qmm_prepare, shared scratch), and the weights, dequantized once into an fp32 panel
 * of KILN_QMM_OUTER_P rows x KILN_QMM_OUTER_KC of K (L1-sized), are broadcast 4 k at a time
 * against those vectors. The weight panel needs no transpose (the costly part of a
 * broadcast-A x vector-W tile), every broadcast feeds several FMAs, and M is covered in
 * steps of VW / 4 rows (little padding at odd M).
 *
 * Each output is four FMA chains (k = 0, 1, 2, 3 mod 4), each over k in order from zero (the
 * accumulators are parked in scratch between K blocks, which does not change a chain), then
 * ((c0 + c2) + (c1 + c3)): a row's result depends neither on M (above the threshold), nor on
 * the tile shape, nor on the N split, nor (where FMA is native) on the ISA.
 */

/* out[k], k < ne (ne whole blocks, <= KILN_QK_K) = one weight row's elements e0.. dequantized.
 * Every format decodes straight from its blocks to fp32 (no unpacked q/D/M round trip: at 16
 * prompt rows the dequantization was a third of the time), Q4 nibbles on AVX-512 through a
 * per-block table of its 16 values (one permute per 16 values). Every value is the format's
 * own, D * q + M rounded once. */
QTARGET static inline __attribute__((always_inline)) void QN(deq_blocks)(const int fmt, const uint8_t *row, int64_t e0,
                                                                       int64_t ne, float *out) {
    if (fmt == KILN_I8_ROW) {
        float s; memcpy(&s, row, 4);
        const VF sv = VSET1(s);
        for (int64_t k = 0; k < ne; k += VW) VST(out + k, VMUL(VQ8S(row + 4 + e0 + k), sv));
        return;
    }
    const int bb = kiln_qformats[fmt].block_bytes;
    const int head = fmt == KILN_Q4_1 ? 4 : fmt == KILN_Q5_0 ? 6 : fmt == KILN_Q5_1 ? 8 : 2;
    for (const uint8_t *blk = row + e0 / 32 * bb, *end = blk + ne / 32 * bb; blk < end; blk += bb, out += 32) {
        const VF dv = VHALFB(blk);
        VF mv = dv;
        uint32_t qh = 0;
        if (fmt == KILN_Q4_1 || fmt == KILN_Q5_1) mv = VHALFB(blk + 2);
        else if (fmt == KILN_Q4_0) mv = VMUL(dv, VSET1(-8.0f));
        else if (fmt == KILN_Q5_0) mv = VMUL(dv, VSET1(-16.0f));
        if (fmt == KILN_Q5_0 || fmt == KILN_Q5_1) memcpy(&qh, blk + head - 4, 4);
        const uint8_t *qs = blk + head;
        for (int e = 0; e < 32; e += VW) {
            VF x;
            if (fmt == KILN_Q8_0) x = VMUL(VQ8S(qs + e), dv);
            else if (fmt == KILN_Q5_0 || fmt == KILN_Q5_1) x = VDEQ(VQ5(qs, qh, e), dv, mv);
#ifdef VQ4TAB
            else x = VQ4LUT(qs, e, VQ4TAB(dv, mv));  /* the table's entries are these FMAs' results */
#else
            else x = VDEQ(e < 16 ? VQ4LO(qs + e) : VQ4HI(qs + e - 16), dv, mv);
#endif
            VST(out + e, x);
        }
    }
}

/* Q4_K / Q5_K the same way, per super-block: the scales and mins of its sub-blocks decoded
 * once, the codes assembled in registers from the block's bytes (exact in float), each value
 * fma(code, D, M) with the D and M of the unpacked form (QN(unpack)), so bitwise its values.
 * Q6_K keeps the unpacked form: assembled in registers (two loads, shifts and masks per code)
 * it measured slower than the SWAR unpack. */
QTARGET static inline __attribute__((always_inline)) void QN(deq_kblocks)(const int fmt, const uint8_t *row, int64_t e0,
                                                                        int64_t ne, float *out) {
    const int bb = kiln_qformats[fmt].block_bytes;
    for (const uint8_t *blk = row + e0 / KILN_QK_K * bb, *end = blk + ne / KILN_QK_K * bb; blk < end;
         blk += bb, out += KILN_QK_K) {
        const kiln_block_q4_K *x = (const kiln_block_q4_K *)blk;  /* Q5_K starts the same */
        const float d = QN(half)(x->d), dmin = QN(half)(x->dmin);
        for (int sb = 0; sb < 8; sb++) {
            int sc, mn; QN(k_scale)(x->scales, sb, &sc, &mn);
            const VF dv = VSET1(d * (float)sc), mv = VSET1(-(dmin * (float)mn));
#ifdef VQ4TAB
            if (fmt == KILN_Q4_K) {  /* sub-block sb: nibble sb % 2 of qs[32(sb / 2) + l] */
                const VF tab = VQ4TAB(dv, mv);
                for (int l = 0; l < 32; l += VW)
                    VST(out + 32 * sb + l, VQ4LUT(x->qs + 32 * (sb / 2) + l, 16 * (sb % 2), tab));
                continue;
            }
#endif
            for (int l = 0; l < 32; l += VW) VST(out + 32 * sb + l, VDEQ(QN(kcode)(fmt, blk, 32 * sb + l), dv, mv));
        }
    }
}

QTARGET static void QN(deq_span)(int fmt, const uint8_t *row, int64_t e0, int64_t ne, float *out) {
    switch (fmt) {
    case KILN_Q8_0: QN(deq_blocks)(KILN_Q8_0, row, e0, ne, out); return;
    case KILN_Q4_0: QN(deq_blocks)(KILN_Q4_0, row, e0, ne, out); return;
    case KILN_Q4_1: QN(deq_blocks)(KILN_Q4_1, row, e0, ne, out); return;
    case KILN_Q5_0: QN(deq_blocks)(KILN_Q5_0, row, e0, ne, out); return;
    case KILN_Q5_1: QN(deq_blocks)(KILN_Q5_1, row, e0, ne, out); return;
    case KILN_I8_ROW: QN(deq_blocks)(KILN_I8_ROW, row, e0, ne, out); return;
    case KILN_Q4_K: QN(deq_kblocks)(KILN_Q4_K, row, e0, ne, out); return;
    case KILN_Q5_K: QN(deq_kblocks)(KILN_Q5_K, row, e0, ne, out); return;
    }
    uint8_t q[KILN_QK_K]; float D[KILN_QK_K / 16], M[KILN_QK_K / 16];
    QN(unpack)(fmt, row, e0, ne, q, D, M);
    for (int64_t k = 0; k < ne; k += VW) VST(out + k, QX(q, D, M, k));
}

/* Four panel rows' outputs for the activation rows of one vector: c[r * ldc + 4i + j] (row r,
 * activation row i, k phase j) -> o[i * ldo + r] = ((c0 + c2) + (c1 + c3)) + bias[r], i < rows.
 * The ISAs' QOUT_RED4 do the same sums in registers. */
QTARGET static inline void QN(red4)(const float *c, int64_t ldc, const float *bias, float *o, int64_t ldo, int rows) {
    for (int i = 0; i < rows; i++)
        for (int r = 0; r < 4; r++) {
            const float *x = c + r * ldc + 4 * i;
            o[i * ldo + r] = ((x[0] + x[2]) + (x[1] + x[3])) + (bias ? bias[r] : 0.0f);
        }
}
#ifndef QOUT_RED4
#define QOUT_RED4 QN(red4)
#endif

/* A rows [m0, m1) (m0 a multiple of QOUT_RG) into A^T vectors of QOUT_RG rows x 4 consecutive k:
 * row m = QOUT_RG * g + i, element k = 4 * kq + j lies at at[g * K * QOUT_RG + kq * VW + 4 * i + j];
 * rows past M are zeros up to their vector's end. */
QTARGET static void QN(transpose_a)(const kiln_qmm_args *p, int64_t m0, int64_t m1, float *at) {
    const int64_t K = p->K;
    const int64_t end = (m1 + QOUT_RG - 1) / QOUT_RG * QOUT_RG;
    for (int64_t m = m0; m < end; m++) {
        float *dst = at + m / QOUT_RG * K * QOUT_RG + 4 * (m % QOUT_RG);
        const float *a = p->a + m * p->lda;
        for (int64_t kq = 0; kq < K / 4; kq++) {
            if (m < p->M) memcpy(dst + kq * VW, a + 4 * kq, 16);
            else memset(dst + kq * VW, 0, 16);
        }
    }
}

/* R panel rows x V activation vectors over kc (a multiple of 4): acc (parked at
 * acc_buf[r * ldacc + v * VW]) += (4 k of row r, broadcast) * (A^T vector v), lane 4i + j
 * summing the k = j (mod 4) terms of row i; first: start from zero. Four k per broadcast
 * keep the loads below one per FMA even for one vector of activations (with one k per
 * broadcast, 16 prompt rows made it load-bound), and the rows come in groups of VW / 4. */
QTARGET static inline __attribute__((always_inline)) void QN(tile_outer)(
        const int R, const int V, const float *xp, const float *at, int64_t atv, int64_t kc, float *acc_buf,
        int64_t ldacc, int first) {
    VF acc[QOUT_RMAX][QOUT_VMAX];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++) acc[r][v] = first ? VZERO : VLD(acc_buf + r * ldacc + v * VW);
    for (int64_t kq = 0; kq < kc / 4; kq++) {
        VF av[QOUT_VMAX];
        for (int v = 0; v < V; v++) av[v] = VLD(at + v * atv + kq * VW);
        for (int r = 0; r < R; r++) {
            VF w = VBCAST4(xp + r * KILN_QMM_OUTER_KC + 4 * kq);
            for (int v = 0; v < V; v++) acc[r][v] = VFMA(w, av[v], acc[r][v]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++) VST(acc_buf + r * ldacc + v * VW, acc[r][v]);
}

/* One panel's K block: the nvec activation vectors in groups of up to QOUT_VMAX (no lone
 * last vector where a group can give one up), each group x every R-row tile. */
QTARGET static void QN(outer_block)(const float *xp, const float *at, int64_t K, int64_t nvec, int64_t kc,
                                    float *acc_buf, int64_t ldacc, int first) {
    for (int64_t v0 = 0; v0 < nvec;) {
        const int64_t rem = nvec - v0;
        const int V = rem > QOUT_VMAX ? (rem == QOUT_VMAX + 1 && QOUT_VMAX > 2 ? QOUT_VMAX - 1 : QOUT_VMAX) : (int)rem;
        const float *a = at + v0 * K * QOUT_RG;
        float *acc = acc_buf + v0 * VW;
#define QOUT_CASE(VV) case VV: \
        for (int r = 0; r < KILN_QMM_OUTER_P; r += QOUT_R(VV)) \
            QN(tile_outer)(QOUT_R(VV), VV, xp + r * KILN_QMM_OUTER_KC, a, K * QOUT_RG, kc, acc + r * ldacc, ldacc, first); \
        break;
        switch (V) {
        QOUT_CASE(1)
#if QOUT_VMAX > 1
        QOUT_CASE(2)
#endif
#if QOUT_VMAX > 2
        QOUT_CASE(3)
#endif
#if QOUT_VMAX > 3
        QOUT_CASE(4)
#endif
        }
#undef QOUT_CASE
        v0 += V;
    }
}

/* Weight rows [n0, n1) of the product, in panels of KILN_QMM_OUTER_P rows; per panel the
 * activation rows in blocks of KILN_QMM_OUTER_MB (the parked accumulators, and so the
 * per-thread scratch, stay bounded for long prompts; a block re-dequantizes the panel). */
QTARGET static void QN(rows_outer)(const kiln_qmm_args *p, int64_t n0, int64_t n1, int thread) {
    const int64_t K = p->K, M = p->M, rowb = kiln_qrow_bytes(p->fmt, K);
    const float *at = (const float *)p->scratch;
    float *xp = (float *)((uint8_t *)p->scratch +
                          kiln_qthread_offset(kiln_qouter_shared_bytes(M, K), kiln_qouter_thread_bytes(M), thread));
    float *acc_buf = xp + KILN_QMM_OUTER_P * KILN_QMM_OUTER_KC;
    for (int64_t n = n0; n < n1; n += KILN_QMM_OUTER_P) {
        const int nr = n1 - n < KILN_QMM_OUTER_P ? (int)(n1 - n) : KILN_QMM_OUTER_P;
        for (int64_t mb = 0; mb < M; mb += KILN_QMM_OUTER_MB) {
            const int64_t mrows = M - mb < KILN_QMM_OUTER_MB ? M - mb : KILN_QMM_OUTER_MB;
            const int64_t nvec = (mrows + QOUT_RG - 1) / QOUT_RG, ldacc = nvec * VW;
            const float *atb = at + mb / QOUT_RG * K * QOUT_RG;  /* mb: whole vectors */
            for (int64_t k0 = 0; k0 < K; k0 += KILN_QMM_OUTER_KC) {
                const int64_t kc = K - k0 < KILN_QMM_OUTER_KC ? K - k0 : KILN_QMM_OUTER_KC;
                /* the next panel's bytes of this K block, fetched while this one computes: from
                 * memory (a weight read once per call) they cost ~20 % at 16 rows otherwise */
                const int64_t pf0 = rowb * k0 / K, pf1 = rowb * (k0 + kc) / K;
                for (int r = 0; r < nr; r++) {
                    if (mb == 0 && n + KILN_QMM_OUTER_P + r < p->N) {
                        const uint8_t *nx = p->w + (n + KILN_QMM_OUTER_P + r) * rowb;
                        for (int64_t b = pf0; b < pf1; b += 64) QPREFETCH(nx + b);
                    }
                    QN(deq_span)(p->fmt, p->w + (n + r) * rowb, k0, kc, xp + r * KILN_QMM_OUTER_KC);
                }
                /* a short last panel: its missing rows are zeros (their results are dropped) */
                for (int r = nr; r < KILN_QMM_OUTER_P; r++) memset(xp + r * KILN_QMM_OUTER_KC, 0, (size_t)kc * 4);
                QN(outer_block)(xp, atb + k0 * QOUT_RG, K, nvec, kc, acc_buf, ldacc, k0 == 0);
            }
            /* the four k phases of each output, summed in a fixed order */
            for (int64_t g = 0; g < nvec; g++) {
                const int rows = mrows - g * QOUT_RG < QOUT_RG ? (int)(mrows - g * QOUT_RG) : QOUT_RG;
                float *o = p->out + (mb + g * QOUT_RG) * p->ldo + n;
                const float *c = acc_buf + g * VW;
                int r = 0;
                for (; r + 4 <= nr; r += 4)
                    QOUT_RED4(c + r * ldacc, ldacc, p->bias ? p->bias + n + r : NULL, o + r, p->ldo, rows);
                for (; r < nr; r++)
                    for (int i = 0; i < rows; i++) {
                        const float *x = c + r * ldacc + 4 * i;
                        o[i * p->ldo + r] = ((x[0] + x[2]) + (x[1] + x[3])) + (p->bias ? p->bias[n + r] : 0.0f);
                    }
            }
        }
    }
}

/* The kernel table's prepare: int8 activations, or A^T for the outer-product path. */
QTARGET static void QN(prepare)(const kiln_qmm_args *p, int64_t m0, int64_t m1) {
#ifdef QI8OUTER
    if (kiln_qmm_i8outer(p)) { QI8PREP(p, m0, m1); return; }
#endif
    if (p->mode == KILN_QMODE_INT8) kiln_qmm_prepare_generic(p, m0, m1);
    else if (kiln_qmm_outer(p)) QN(transpose_a)(p, m0, m1, (float *)p->scratch);
}
