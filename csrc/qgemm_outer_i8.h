/* int8 mode at M > KILN_QMM_OUTER_MIN_M - 1 (prefill) on AVX-512 VNNI: an outer-product tile of
 * vpdpbusd. Part of qgemm_body.h, compiled where QI8OUTER is defined (no include guard).
 *
 * Like the exact mode's outer tile (qgemm_outer.h), but on codes: kiln_qmm_prepare_generic
 * rearranges the int8 activations once per call into vectors of 16 rows x 4 consecutive k
 * (quant.h: kiln_qi8t_*), a weight panel of KILN_QMM_OUTER_P rows x KILN_QMM_OUTER_KC is
 * unpacked per K block to its unsigned codes with D and M per 16 (QN(unpack)), and 4 codes of
 * a weight row, broadcast, meet a vector in one vpdpbusd (u8 x s8, 4 products summed per lane,
 * no saturation). Per 32 of K (16 for Q6_K, whose scales are per 16) the integer dot of every
 * row is exact; it is scaled once:
 *   acc += (dot * s_a) * D + (s_a * sum of the group's codes) * M,
 * the activations' scale s_a per 32, the weights' D, M (the unpacked form's), the sums
 * precomputed in the prepare. A row's lanes see the same operations in the same order
 * whatever M (>= the threshold), the tile shape or the N split: its bits depend on none of
 * them. They are not the 4 x 4 tile's (other ISAs, M <= 8): rows differ there in the last
 * bits, within the tests' tolerance of the int8 reference.
 */

/* R panel rows x V vectors of 16 activation rows over kc of K starting at k0, in groups of G
 * (16 or 32) k sharing D and M: acc (parked at acc_buf[r * ldacc + 16 v]) += as above; first:
 * start from zero. */
QTARGET static inline __attribute__((always_inline)) void QN(tile_i8outer)(
        const int G, const int R, const int V, const uint8_t *qp, const float *Dp, const float *Mp, const uint8_t *tg,
        int64_t tgs, int64_t K, int64_t k0, int64_t kc, float *acc_buf, int64_t ldacc, int first) {
    __m512 acc[QI8_RMAX][QI8_VMAX];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++) acc[r][v] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(acc_buf + r * ldacc + 16 * v);
    for (int64_t h = 0; h < kc / G; h++) {
        const int64_t hk = k0 / G + h;  /* the G-group's index along K */
        __m512i dot[QI8_RMAX][QI8_VMAX];
        for (int r = 0; r < R; r++)
            for (int v = 0; v < V; v++) dot[r][v] = _mm512_setzero_si512();
        for (int t = 0; t < G / 4; t++) {
            __m512i av[QI8_VMAX];
            for (int v = 0; v < V; v++) av[v] = _mm512_loadu_si512(tg + v * tgs + (G / 4 * hk + t) * 64);
            for (int r = 0; r < R; r++) {
                int32_t w4; memcpy(&w4, qp + r * KILN_QMM_OUTER_KC + G * h + 4 * t, 4);
                const __m512i w = _mm512_set1_epi32(w4);
                for (int v = 0; v < V; v++) dot[r][v] = _mm512_dpbusd_epi32(dot[r][v], w, av[v]);
            }
        }
        __m512 sa[QI8_VMAX], rs[QI8_VMAX];
        for (int v = 0; v < V; v++) {
            const float *sv = (const float *)(tg + v * tgs + K * 16);
            sa[v] = _mm512_loadu_ps(sv + (G == 32 ? hk : hk / 2) * 16);
            rs[v] = _mm512_loadu_ps(sv + K / 32 * 16 + (G == 32 ? K / 16 * 16 : 0) + hk * 16);
        }
        for (int r = 0; r < R; r++) {
            const __m512 d = _mm512_set1_ps(Dp[r * (KILN_QMM_OUTER_KC / 16) + G / 16 * h]);
            const __m512 m = _mm512_set1_ps(Mp[r * (KILN_QMM_OUTER_KC / 16) + G / 16 * h]);
            for (int v = 0; v < V; v++) {
                const __m512 x = _mm512_mul_ps(_mm512_cvtepi32_ps(dot[r][v]), sa[v]);
                acc[r][v] = _mm512_fmadd_ps(rs[v], m, _mm512_fmadd_ps(x, d, acc[r][v]));
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++) _mm512_storeu_ps(acc_buf + r * ldacc + 16 * v, acc[r][v]);
}

/* Weight rows [n0, n1) in panels of KILN_QMM_OUTER_P rows, activation rows in blocks of
 * KILN_QMM_OUTER_MB per panel (bounded per-thread scratch; a block re-unpacks the panel). */
QTARGET static void QN(rows_i8outer)(const kiln_qmm_args *p, int64_t n0, int64_t n1, int thread) {
    /* k per scale group: 32 where D and M hold over 32 (all but Q6_K, whose scales are per 16) */
    const int G = p->fmt == KILN_Q6_K ? 16 : 32;
    const int64_t K = p->K, M = p->M, rowb = kiln_qrow_bytes(p->fmt, K), gb = kiln_qi8t_group_bytes(K);
    const int64_t act = kiln_qi8t_offset(M, K) + kiln_qi8t_bytes(M, K);
    int64_t tb = (kiln_qpanel_bytes(K) + 63) / 64 * 64;
    if (kiln_qi8outer_thread_bytes(M) > tb) tb = kiln_qi8outer_thread_bytes(M);
    const uint8_t *t = (const uint8_t *)p->scratch + kiln_qi8t_offset(M, K);
    uint8_t *qp = (uint8_t *)p->scratch + kiln_qthread_offset(act, tb, thread);
    float *Dp = (float *)(qp + KILN_QMM_OUTER_P * KILN_QMM_OUTER_KC), *Mp = Dp + KILN_QMM_OUTER_P * (KILN_QMM_OUTER_KC / 16);
    float *acc_buf = Mp + KILN_QMM_OUTER_P * (KILN_QMM_OUTER_KC / 16);
    for (int64_t n = n0; n < n1; n += KILN_QMM_OUTER_P) {
        const int nr = n1 - n < KILN_QMM_OUTER_P ? (int)(n1 - n) : KILN_QMM_OUTER_P;
        for (int64_t mb = 0; mb < M; mb += KILN_QMM_OUTER_MB) {
            const int64_t mrows = M - mb < KILN_QMM_OUTER_MB ? M - mb : KILN_QMM_OUTER_MB;
            const int64_t nvec = (mrows + 15) / 16, ldacc = nvec * 16;
            const uint8_t *tb0 = t + mb / 16 * gb;
            for (int64_t k0 = 0; k0 < K; k0 += KILN_QMM_OUTER_KC) {
                const int64_t kc = K - k0 < KILN_QMM_OUTER_KC ? K - k0 : KILN_QMM_OUTER_KC;
                for (int r = 0; r < KILN_QMM_OUTER_P; r++) {
                    uint8_t *q = qp + r * KILN_QMM_OUTER_KC;
                    float *D = Dp + r * (KILN_QMM_OUTER_KC / 16), *Mv = Mp + r * (KILN_QMM_OUTER_KC / 16);
                    if (r < nr) QN(unpack)(p->fmt, p->w + (n + r) * rowb, k0, kc, q, D, Mv);
                    else {  /* a short last panel: zeros (their results are dropped) */
                        memset(q, 0, (size_t)kc);
                        for (int h = 0; h < kc / 16; h++) D[h] = Mv[h] = 0.0f;
                    }
                }
                for (int64_t v0 = 0; v0 < nvec;) {
                    const int64_t rem = nvec - v0;
                    const int V = rem > QI8_VMAX ? QI8_VMAX : (int)rem;
                    float *acc = acc_buf + v0 * 16;
#define QI8_CASE(GG, VV) case VV: \
                    for (int r = 0; r < KILN_QMM_OUTER_P; r += QI8_R(VV)) \
                        QN(tile_i8outer)(GG, QI8_R(VV), VV, qp + r * KILN_QMM_OUTER_KC, Dp + r * (KILN_QMM_OUTER_KC / 16), \
                                         Mp + r * (KILN_QMM_OUTER_KC / 16), tb0 + v0 * gb, gb, K, k0, kc, \
                                         acc + r * ldacc, ldacc, k0 == 0); \
                    break;
                    if (G == 32) switch (V) { QI8_CASE(32, 1) QI8_CASE(32, 2) QI8_CASE(32, 3) QI8_CASE(32, 4) }
                    else switch (V) { QI8_CASE(16, 1) QI8_CASE(16, 2) QI8_CASE(16, 3) QI8_CASE(16, 4) }
#undef QI8_CASE
                    v0 += V;
                }
            }
            for (int64_t g = 0; g < nvec; g++) {
                const int rows = mrows - g * 16 < 16 ? (int)(mrows - g * 16) : 16;
                float *o = p->out + (mb + g * 16) * p->ldo + n;
                /* row by row (a column at a time, an ldo of a multiple of 4 KB put 16 rows in one L1 set) */
                for (int i = 0; i < rows; i++)
                    for (int r = 0; r < nr; r++)
                        o[i * p->ldo + r] = acc_buf[r * ldacc + g * 16 + i] + (p->bias ? p->bias[n + r] : 0.0f);
            }
        }
    }
}
