/* The quantized-matmul kernels, written once and compiled per ISA: qgemm.c includes this
 * file three times with QN (name suffix), QTARGET (target attribute) and the vector
 * macros below defined for generic C, AVX2 and AVX-512. No include guard on purpose.
 *
 * Every output element is one vector accumulator (lanes along K) summed over K in order,
 * then reduced by a fixed sequence: the result does not depend on M, on how N is split,
 * or on which M path ran, so row i of an M-row product equals the 1-row product bitwise
 * (exact mode up to KILN_QMM_OUTER_MIN_M - 1 rows; from there qgemm_outer.h, its own order).
 */

/* ---- unpack: any format -> q (uint8), D and M per 16 elements (value = D*q + M) ---- */

QTARGET static inline float QN(half)(kiln_half h) {
#ifdef QHALF_F16C
    return _cvtsh_ss(h);
#endif
    uint32_t s = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 31, f = h & 1023, bits;
    if (e == 31) bits = s | 0x7f800000u | (f << 13);
    else if (e) bits = s | ((e + 112) << 23) | (f << 13);
    else if (!f) bits = s;
    else { float v = (float)f * (1.0f / 16777216.0f); return s ? -v : v; } /* subnormal: f * 2^-24 */
    float out; memcpy(&out, &bits, 4); return out;
}

QTARGET static inline void QN(k_scale)(const uint8_t *s, int j, int *sc, int *mn) {
    if (j < 4) { *sc = s[j] & 63; *mn = s[j + 4] & 63; }
    else { *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4); *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4); }
}

/* Bytes are unpacked 8 at a time in 64-bit words (SWAR): the same code is fast on every ISA
 * without relying on the auto-vectorizer, which keeps such byte loops scalar. */
#define QW_LO 0x0F0F0F0F0F0F0F0FULL
#define QW_B0 0x0101010101010101ULL
QTARGET static inline uint64_t QN(ld8)(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
QTARGET static inline void QN(st8)(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

/* q[0..n) = low nibbles of src[0..n), q[n..2n) = high nibbles (n a multiple of 8). */
QTARGET static inline void QN(nibbles)(const uint8_t *restrict src, int n, uint8_t *restrict q) {
    for (int i = 0; i < n; i += 8) {
        uint64_t v = QN(ld8)(src + i);
        QN(st8)(q + i, v & QW_LO);
        QN(st8)(q + n + i, (v >> 4) & QW_LO);
    }
}

/* Unpack elements [e0, e0 + ne) of one row (e0, ne whole blocks) into q, D, M from index 0. */
QTARGET static void QN(unpack)(int fmt, const uint8_t *restrict row, int64_t e0, int64_t ne, uint8_t *restrict q,
                               float *restrict D, float *restrict M) {
    if (fmt == KILN_I8_ROW) {
        float s; memcpy(&s, row, 4);
        const uint8_t *v = row + 4 + e0;
        for (int64_t i = 0; i < ne; i += 8) QN(st8)(q + i, QN(ld8)(v + i) ^ (QW_B0 << 7));
        for (int64_t h = 0; h < ne / 16; h++) { D[h] = s; M[h] = -128.0f * s; }
        return;
    }
    const int bs = kiln_qformats[fmt].block, bb = kiln_qformats[fmt].block_bytes;
    const uint8_t *blk = row + e0 / bs * bb;
    const uint8_t *const end = blk + ne / bs * bb;
    /* the format switch sits outside the block loops: one loop per format */
#define QBLOCKS for (; blk < end; blk += bb, q += bs, D += bs / 16, M += bs / 16)
    switch (fmt) {
    case KILN_Q8_0: QBLOCKS {
            const kiln_block_q8_0 *x = (const kiln_block_q8_0 *)blk;
            float d = QN(half)(x->d);
            for (int i = 0; i < 32; i += 8) QN(st8)(q + i, QN(ld8)((const uint8_t *)x->qs + i) ^ (QW_B0 << 7));
            D[0] = D[1] = d; M[0] = M[1] = -128.0f * d;
        } break;
    case KILN_Q4_0: case KILN_Q4_1: QBLOCKS {
            const uint8_t *qs = fmt == KILN_Q4_0 ? ((const kiln_block_q4_0 *)blk)->qs : ((const kiln_block_q4_1 *)blk)->qs;
            kiln_half hd; memcpy(&hd, blk, 2);
            float d = QN(half)(hd);
            float m = fmt == KILN_Q4_0 ? -8.0f * d : QN(half)(((const kiln_block_q4_1 *)blk)->m);
            QN(nibbles)(qs, 16, q);
            D[0] = D[1] = d; M[0] = M[1] = m;
        } break;
    case KILN_Q5_0: case KILN_Q5_1: QBLOCKS {
            const int head = fmt == KILN_Q5_0 ? 2 : 4;  /* d (, m), then qh, then the nibbles */
            kiln_half hd; memcpy(&hd, blk, 2);
            float d = QN(half)(hd), m = -16.0f * d;
            if (fmt == KILN_Q5_1) { memcpy(&hd, blk + 2, 2); m = QN(half)(hd); }
            uint32_t qh; memcpy(&qh, blk + head, 4);
            QN(nibbles)(blk + head + 4, 16, q);
            for (int i = 0; i < 32; i++) q[i] |= (uint8_t)(((qh >> i) & 1) << 4);
            D[0] = D[1] = d; M[0] = M[1] = m;
        } break;
    case KILN_Q4_K: case KILN_Q5_K: QBLOCKS {
            const kiln_block_q4_K *x4 = (const kiln_block_q4_K *)blk;
            const kiln_block_q5_K *x5 = (const kiln_block_q5_K *)blk;
            const uint8_t *qs = fmt == KILN_Q4_K ? x4->qs : x5->qs;
            float d = QN(half)(x4->d), dmin = QN(half)(x4->dmin);
            for (int j = 0; j < 4; j++) QN(nibbles)(qs + 32 * j, 32, q + 64 * j);
            if (fmt == KILN_Q5_K)  /* bit s of qh[l] is the fifth bit of element 32*s + l */
                for (int j = 0; j < 8; j++)
                    for (int l = 0; l < 32; l += 8)
                        QN(st8)(q + 32 * j + l, QN(ld8)(q + 32 * j + l) | (((QN(ld8)(x5->qh + l) >> j) & QW_B0) << 4));
            for (int s = 0; s < 8; s++) {
                int sc, mn; QN(k_scale)(x4->scales, s, &sc, &mn);
                D[2 * s] = D[2 * s + 1] = d * (float)sc;
                M[2 * s] = M[2 * s + 1] = -(dmin * (float)mn);
            }
        } break;
    case KILN_Q6_K: QBLOCKS {
            /* per 128-half: ql[0..32) low/high nibbles are elements 0..32 / 64..96, ql[32..64)
             * elements 32..64 / 96..128; qh bits 2c..2c+1 are the top bits of chunk c */
            const kiln_block_q6_K *x = (const kiln_block_q6_K *)blk;
            float d = QN(half)(x->d);
            for (int hh = 0; hh < 2; hh++) {
                const uint8_t *ql = x->ql + 64 * hh, *qh = x->qh + 32 * hh;
                uint8_t *y = q + 128 * hh;
                for (int l = 0; l < 32; l += 8) {
                    uint64_t lo = QN(ld8)(ql + l), hi = QN(ld8)(ql + 32 + l), h = QN(ld8)(qh + l);
                    QN(st8)(y + l, (lo & QW_LO) | ((h & (QW_B0 * 3)) << 4));
                    QN(st8)(y + 32 + l, (hi & QW_LO) | (((h >> 2) & (QW_B0 * 3)) << 4));
                    QN(st8)(y + 64 + l, ((lo >> 4) & QW_LO) | (((h >> 4) & (QW_B0 * 3)) << 4));
                    QN(st8)(y + 96 + l, ((hi >> 4) & QW_LO) | (((h >> 6) & (QW_B0 * 3)) << 4));
                }
            }
            for (int t = 0; t < 16; t++) { D[t] = d * (float)x->scales[t]; M[t] = -32.0f * D[t]; }
        } break;
    }
#undef QBLOCKS
}

/* value = D*q + M for VW elements of one 16-element half, rounded once (VDEQ is an FMA,
 * or exact double arithmetic where there is none): bitwise the format's own value. */
#define QX(q, D, M, k) VDEQ(VCVTU8((q) + (k)), VSET1((D)[(k) >> 4]), VSET1((M)[(k) >> 4]))

QTARGET static void QN(dequant_row)(int fmt, const uint8_t *row, int64_t K, float *out) {
    uint8_t q[KILN_QK_K]; float D[16], M[16];
    for (int64_t e = 0; e < K; e += KILN_QK_K) {
        int64_t ne = K - e < KILN_QK_K ? K - e : KILN_QK_K;
        QN(unpack)(fmt, row, e, ne, q, D, M);
        for (int64_t k = 0; k < ne; k += VW) VST(out + e + k, QX(q, D, M, k));
    }
}

/* ---- exact mode: fp32 activations ---- */

/* res[i*4+j] = A row i . W panel row j over K; the weight either dequantized in registers
 * from the unpacked panel (xp == NULL) or read from its fp32 dequantization xp. */
QTARGET static inline __attribute__((always_inline)) void QN(tile_exact)(
        const int mr, const float *a, int64_t lda, const uint8_t *const *q, const float *const *D,
        const float *const *M, const float *const *xp, int64_t K, float *res) {
    VF acc[4][4];
    for (int i = 0; i < mr; i++) for (int j = 0; j < 4; j++) acc[i][j] = VZERO;
    for (int64_t k = 0; k < K; k += VW) {
        VF x[4];
        for (int j = 0; j < 4; j++) x[j] = xp ? VLD(xp[j] + k) : QX(q[j], D[j], M[j], k);
        for (int i = 0; i < mr; i++) {
            VF av = VLD(a + i * lda + k);
            for (int j = 0; j < 4; j++) acc[i][j] = VFMA(x[j], av, acc[i][j]);
        }
    }
    for (int i = 0; i < mr; i++) for (int j = 0; j < 4; j++) res[i * 4 + j] = VHSUM(acc[i][j]);
}

/* Exact mode for the 32-blocks (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) and int8 rows at M <= 4:
 * blocks decode straight into registers, with no unpacked panel, nrt weight rows at once
 * (KILN_QMM_NR_WIDE for one A row: more row streams in flight for the GEMV), each row's
 * block `ahead` bytes on (the next tile's) prefetched. Every weight value equals the panel's
 * D*q + M rounded once (Q8_0 and int8 rows: (signed q) * d, the same rounding of the same
 * real; Q4_0 / Q5_0: d*q - 8d / - 16d exact), and each output is summed in the same order as
 * tile_exact, so the results are bitwise those of the panel paths. */
QTARGET static inline __attribute__((always_inline)) void QN(tile_exact_legacy)(
        const int mr, const int nrt, const int fmt, const float *a, int64_t lda, const uint8_t *const *w,
        int64_t ahead, int64_t K, float *res) {
    const int i8 = fmt == KILN_I8_ROW, bb = i8 ? 32 : kiln_qformats[fmt].block_bytes;
    /* bytes before the codes: d; d, m; d, qh; d, m, qh */
    const int head = fmt == KILN_Q4_1 ? 4 : fmt == KILN_Q5_0 ? 6 : fmt == KILN_Q5_1 ? 8 : 2;
    VF acc[4][KILN_QMM_NR_WIDE], rs[KILN_QMM_NR_WIDE];
    for (int j = 0; j < nrt; j++) {
        for (int i = 0; i < mr; i++) acc[i][j] = VZERO;
        if (i8) { float s; memcpy(&s, w[j], 4); rs[j] = VSET1(s); }
    }
    for (int64_t b = 0; b < K / 32; b++) {
        VF dv[KILN_QMM_NR_WIDE], mv[KILN_QMM_NR_WIDE]; const uint8_t *qs[KILN_QMM_NR_WIDE];
        uint32_t qh[KILN_QMM_NR_WIDE];
        for (int j = 0; j < nrt; j++) {
            const uint8_t *blk = i8 ? w[j] + 4 + 32 * b : w[j] + b * bb;
            QPREFETCH(blk + ahead);
            if (i8) { dv[j] = rs[j]; qs[j] = blk; continue; }
            dv[j] = VHALFB(blk);
            if (fmt == KILN_Q4_1 || fmt == KILN_Q5_1) mv[j] = VHALFB(blk + 2);
            else if (fmt == KILN_Q4_0) mv[j] = VMUL(dv[j], VSET1(-8.0f));
            else if (fmt == KILN_Q5_0) mv[j] = VMUL(dv[j], VSET1(-16.0f));
            if (fmt == KILN_Q5_0 || fmt == KILN_Q5_1) memcpy(&qh[j], blk + head - 4, 4);
            qs[j] = blk + head;
#ifdef VQ4TAB
            /* the block's 16 values fma(code, d, m) as a table, looked up by nibble */
            if (fmt == KILN_Q4_0 || fmt == KILN_Q4_1) dv[j] = VQ4TAB(dv[j], mv[j]);
#endif
        }
        for (int e = 0; e < 32; e += VW) {
            VF av[4];
            for (int i = 0; i < mr; i++) av[i] = VLD(a + i * lda + 32 * b + e);
            for (int j = 0; j < nrt; j++) {
                VF x;
                if (fmt == KILN_Q8_0 || i8) x = VMUL(VQ8S(qs[j] + e), dv[j]);
                else if (fmt == KILN_Q5_0 || fmt == KILN_Q5_1) x = VDEQ(VQ5(qs[j], qh[j], e), dv[j], mv[j]);
#ifdef VQ4TAB
                else x = VQ4LUT(qs[j], e, dv[j]);
#else
                else x = VDEQ(e < 16 ? VQ4LO(qs[j] + e) : VQ4HI(qs[j] + e - 16), dv[j], mv[j]);
#endif
                for (int i = 0; i < mr; i++) acc[i][j] = VFMA(x, av[i], acc[i][j]);
            }
        }
    }
    for (int i = 0; i < mr; i++) for (int j = 0; j < nrt; j++) res[i * nrt + j] = VHSUM(acc[i][j]);
}

/* Exact mode for Q4_K / Q5_K at M <= 4: the 4-5-bit codes are assembled in
 * registers from the block's bytes (nibble + 16 * its high bits, exact in float), scales
 * per 16 elements decoded once per block; no unpacked panel. Same values and order as
 * tile_exact on the panel, so the results are bitwise those of the panel paths. */
QTARGET static inline __attribute__((always_inline)) VF QN(kcode)(const int fmt, const uint8_t *blk, int e) {
    if (fmt == KILN_Q4_K) {  /* element 64c + l: low nibble of qs[32c + l]; 64c + 32 + l: high */
        const uint8_t *qs = ((const kiln_block_q4_K *)blk)->qs + 32 * (e / 64);
        return e % 64 < 32 ? VQ4LO(qs + e % 64) : VQ4HI(qs + e % 64 - 32);
    }
    /* Q5_K: element 32s + l: nibble as Q4_K, fifth bit = bit s of qh[l] */
    const kiln_block_q5_K *x = (const kiln_block_q5_K *)blk;
    const int sb = e / 32, l = e % 32;
    VF nib = sb % 2 ? VQ4HI(x->qs + 32 * (sb / 2) + l) : VQ4LO(x->qs + 32 * (sb / 2) + l);
    return VFMA(VBITS(x->qh + l, sb, 1), VSET1(16.0f), nib);
}

QTARGET static inline __attribute__((always_inline)) void QN(tile_exact_k)(
        const int mr, const int fmt, const float *a, int64_t lda, const uint8_t *const *w, int64_t ahead, int64_t K,
        float *res) {
    const int bb = kiln_qformats[fmt].block_bytes;
    VF acc[4][4];
    for (int i = 0; i < mr; i++) for (int j = 0; j < 4; j++) acc[i][j] = VZERO;
    for (int64_t b = 0; b < K / KILN_QK_K; b++) {
        const uint8_t *blk[4]; float D[4][16], Mv[4][16];
        for (int j = 0; j < 4; j++) {
            blk[j] = w[j] + b * bb;
            for (int l = 0; l < bb; l += 64) QPREFETCH(blk[j] + ahead + l);
            const kiln_block_q4_K *x = (const kiln_block_q4_K *)blk[j];  /* Q5_K starts the same */
            float d = QN(half)(x->d), dmin = QN(half)(x->dmin);
            for (int sb = 0; sb < 8; sb++) {
                int sc, mn; QN(k_scale)(x->scales, sb, &sc, &mn);
                D[j][2 * sb] = D[j][2 * sb + 1] = d * (float)sc;
                Mv[j][2 * sb] = Mv[j][2 * sb + 1] = -(dmin * (float)mn);
            }
        }
        for (int e = 0; e < KILN_QK_K; e += VW) {
            VF x[4];
            for (int j = 0; j < 4; j++)
                x[j] = VDEQ(QN(kcode)(fmt, blk[j], e), VSET1(D[j][e >> 4]), VSET1(Mv[j][e >> 4]));
            for (int i = 0; i < mr; i++) {
                VF av = VLD(a + i * lda + KILN_QK_K * b + e);
                for (int j = 0; j < 4; j++) acc[i][j] = VFMA(x[j], av, acc[i][j]);
            }
        }
    }
    for (int i = 0; i < mr; i++) for (int j = 0; j < 4; j++) res[i * 4 + j] = VHSUM(acc[i][j]);
}

#define QKQUANT(MR) do { switch (p->fmt) { \
    case KILN_Q4_K: QN(tile_exact_k)(MR, KILN_Q4_K, a, p->lda, wr, ahead, K, res); break; \
    default: QN(tile_exact_k)(MR, KILN_Q5_K, a, p->lda, wr, ahead, K, res); break; } } while (0)

#define QLEGACY(MR, NRT) do { switch (p->fmt) { \
    case KILN_Q8_0: QN(tile_exact_legacy)(MR, NRT, KILN_Q8_0, a, p->lda, wr, ahead, K, res); break; \
    case KILN_Q4_0: QN(tile_exact_legacy)(MR, NRT, KILN_Q4_0, a, p->lda, wr, ahead, K, res); break; \
    case KILN_Q4_1: QN(tile_exact_legacy)(MR, NRT, KILN_Q4_1, a, p->lda, wr, ahead, K, res); break; \
    case KILN_Q5_0: QN(tile_exact_legacy)(MR, NRT, KILN_Q5_0, a, p->lda, wr, ahead, K, res); break; \
    case KILN_Q5_1: QN(tile_exact_legacy)(MR, NRT, KILN_Q5_1, a, p->lda, wr, ahead, K, res); break; \
    default: QN(tile_exact_legacy)(MR, NRT, KILN_I8_ROW, a, p->lda, wr, ahead, K, res); break; } } while (0)

#include "qgemm_outer.h"
#ifdef QI8OUTER
#include "qgemm_outer_i8.h"
#endif

/* ---- int8 mode: activations quantized per 32, integer dots over groups of 4 ---- */

/* fused < 0: weights from the unpacked panel (q, D, M); else q holds raw row pointers of
 * that legacy format (Q8_0 / Q4_0 / Q4_1), decoded per block in registers with the same
 * values as the panel. */
QTARGET static inline __attribute__((always_inline)) void QN(tile_int8)(
        const int mr, const int fused, const uint8_t *act, int64_t K, const uint8_t *const *q, const float *const *D,
        const float *const *M, float *res) {
    const int64_t rb = kiln_qact_row_bytes(K);
    const int bb = fused >= 0 ? kiln_qformats[fused].block_bytes : 0;
    F8 acc[4][4];
    for (int i = 0; i < mr; i++) for (int j = 0; j < 4; j++) acc[i][j] = F8ZERO;
    for (int64_t g = 0; g < K / 32; g++) {
        F8 dl[4], ml[4]; W32 wv[4];
        for (int j = 0; j < 4; j++) {
            if (fused < 0) {
                wv[j] = W32LD(q[j] + 32 * g);
                dl[j] = F8SET2(D[j][2 * g], D[j][2 * g + 1]);
                ml[j] = F8SET2(M[j][2 * g], M[j][2 * g + 1]);
            } else {
                const uint8_t *blk = q[j] + g * bb;
                kiln_half h; memcpy(&h, blk, 2);
                float d = QN(half)(h), m;
                if (fused == KILN_Q4_1) { memcpy(&h, blk + 2, 2); m = QN(half)(h); wv[j] = W32Q4(blk + 4); }
                else if (fused == KILN_Q4_0) { m = -8.0f * d; wv[j] = W32Q4(blk + 2); }
                else { m = -128.0f * d; wv[j] = W32Q8(blk + 2); }
                dl[j] = F8SET2(d, d);
                ml[j] = F8SET2(m, m);
            }
        }
        for (int i = 0; i < mr; i++) {
            const int8_t *aq = (const int8_t *)(act + i * rb);
            const float *sa = (const float *)(act + i * rb + K), *s4 = sa + K / 32;
            F8 sav = F8SET1(sa[g]), s4v = F8LD(s4 + 8 * g);
            for (int j = 0; j < 4; j++) {
                F8 dot = F8MUL(DOT4X8(wv[j], aq + 32 * g), sav);
                acc[i][j] = F8FMA(s4v, ml[j], F8FMA(dot, dl[j], acc[i][j]));
            }
        }
    }
    for (int i = 0; i < mr; i++) for (int j = 0; j < 4; j++) res[i * 4 + j] = F8HSUM(acc[i][j]);
}

#define QINT8(MR) do { switch (ifused ? p->fmt : -1) { \
    case KILN_Q8_0: QN(tile_int8)(MR, KILN_Q8_0, act, K, wr, D, Mo, res); break; \
    case KILN_Q4_0: QN(tile_int8)(MR, KILN_Q4_0, act, K, wr, D, Mo, res); break; \
    case KILN_Q4_1: QN(tile_int8)(MR, KILN_Q4_1, act, K, wr, D, Mo, res); break; \
    default: QN(tile_int8)(MR, -1, act, K, q, D, Mo, res); break; } } while (0)

/* ---- the row-range driver ---- */

QTARGET static void QN(rows)(const kiln_qmm_args *p, int64_t n0, int64_t n1, int thread) {
    if (kiln_qmm_outer(p)) {
        QN(rows_outer)(p, n0, n1, thread);
        return;
    }
#ifdef QI8OUTER
    if (kiln_qmm_i8outer(p)) {
        QN(rows_i8outer)(p, n0, n1, thread);
        return;
    }
#endif
    const int64_t K = p->K, rowb = kiln_qrow_bytes(p->fmt, K), M = p->M;
    int64_t act_bytes = p->mode == KILN_QMODE_INT8 ? kiln_qi8t_offset(M, K) : 0;
    int64_t tstride = (kiln_qpanel_bytes(K) + 63) / 64 * 64;
    if (kiln_qmm_i8outer(p)) {  /* the scratch is laid out for the int8 outer path (quant.h) */
        act_bytes += kiln_qi8t_bytes(M, K);
        if (kiln_qi8outer_thread_bytes(M) > tstride) tstride = kiln_qi8outer_thread_bytes(M);
    }
    uint8_t *panel = (uint8_t *)p->scratch + kiln_qthread_offset(act_bytes, tstride, thread);
    float *Dp = (float *)(panel + KILN_QMM_NR * K), *Mp = Dp + KILN_QMM_NR * (K / 16), *Xp = Mp + KILN_QMM_NR * (K / 16);
    const int fp32_panel = p->mode == KILN_QMODE_EXACT && M > 4;
    const int legacy = p->fmt == KILN_Q8_0 || p->fmt == KILN_Q4_0 || p->fmt == KILN_Q4_1;
    /* no unpacked panel: the 32-blocks and int8 rows at M <= 4 in exact mode (tile_exact_legacy),
     * Q8_0 / Q4_0 / Q4_1 always in int8 mode */
    const int xfused = p->mode == KILN_QMODE_EXACT && M <= 4 &&
                       (legacy || p->fmt == KILN_Q5_0 || p->fmt == KILN_Q5_1 || p->fmt == KILN_I8_ROW);
    const int ifused = p->mode == KILN_QMODE_INT8 && legacy;
    /* Q4_K / Q5_K at M <= 4 in exact mode decode their blocks in registers too (tile_exact_k);
     * Q6_K measured slower that way (its codes take two loads and a shift each) and keeps the panel */
    const int kfused = p->mode == KILN_QMODE_EXACT && M <= 4 && (p->fmt == KILN_Q4_K || p->fmt == KILN_Q5_K);
    for (int64_t n = n0; n < n1;) {
        /* the GEMV takes KILN_QMM_NR_WIDE rows at once where the ISA has the registers for them */
        const int step = xfused && M == 1 && QWIDE && n1 - n >= KILN_QMM_NR_WIDE ? KILN_QMM_NR_WIDE : KILN_QMM_NR;
        const int nr = n1 - n < step ? (int)(n1 - n) : step;
        const int64_t ahead = step * rowb;   /* the next tile's rows, prefetched */
        const uint8_t *q[4], *wr[KILN_QMM_NR_WIDE]; const float *D[4], *Mo[4], *X[4];
        for (int j = 0; j < step; j++) wr[j] = p->w + (n + (j < nr ? j : 0)) * rowb;
        for (int j = 0; j < 4; j++) {
            int jj = j < nr ? j : 0; /* a short last panel repeats its first row; results dropped */
            q[j] = panel + jj * K; D[j] = Dp + jj * (K / 16); Mo[j] = Mp + jj * (K / 16); X[j] = Xp + jj * K;
            if (j < nr && !xfused && !ifused && !kfused) {
                QN(unpack)(p->fmt, p->w + (n + j) * rowb, 0, K, panel + j * K, Dp + j * (K / 16), Mp + j * (K / 16));
                if (fp32_panel)
                    for (int64_t k = 0; k < K; k += VW) VST(Xp + j * K + k, QX(q[j], D[j], Mo[j], k));
            }
        }
        for (int64_t m = 0; m < M; m += 4) {
            const int mr = M - m < 4 ? (int)(M - m) : 4;
            float res[4 * KILN_QMM_NR_WIDE];
            if (p->mode == KILN_QMODE_INT8) {
                const uint8_t *act = (const uint8_t *)p->scratch + m * kiln_qact_row_bytes(K);
                switch (mr) {
                case 1: QINT8(1); break;
                case 2: QINT8(2); break;
                case 3: QINT8(3); break;
                default: QINT8(4); break;
                }
            } else {
                const float *a = p->a + m * p->lda;
                const float *const *xp = fp32_panel ? X : NULL;
                if (xfused) switch (mr) {
                case 1: if (step == KILN_QMM_NR_WIDE) QLEGACY(1, KILN_QMM_NR_WIDE); else QLEGACY(1, 4); break;
                case 2: QLEGACY(2, 4); break;
                case 3: QLEGACY(3, 4); break;
                default: QLEGACY(4, 4); break;
                } else if (kfused) switch (mr) {
                case 1: QKQUANT(1); break;
                case 2: QKQUANT(2); break;
                case 3: QKQUANT(3); break;
                default: QKQUANT(4); break;
                } else switch (mr) {
                case 1: QN(tile_exact)(1, a, p->lda, q, D, Mo, xp, K, res); break;
                case 2: QN(tile_exact)(2, a, p->lda, q, D, Mo, xp, K, res); break;
                case 3: QN(tile_exact)(3, a, p->lda, q, D, Mo, xp, K, res); break;
                default: QN(tile_exact)(4, a, p->lda, q, D, Mo, xp, K, res); break;
                }
            }
            const int rw = step == KILN_QMM_NR_WIDE ? KILN_QMM_NR_WIDE : 4;  /* res row width */
            for (int i = 0; i < mr; i++)
                for (int j = 0; j < nr; j++)
                    p->out[(m + i) * p->ldo + n + j] = res[i * rw + j] + (p->bias ? p->bias[n + j] : 0.0f);
        }
        n += nr;
    }
}

const kiln_qkernels QN(kiln_qk) = {QN(prepare), QN(rows), QN(dequant_row)};

#undef QX
#undef QLEGACY
#undef QKQUANT
#undef QINT8
#undef QW_LO
#undef QW_B0
#undef QN
#undef QTARGET
#undef QWIDE
#undef VW
#undef VF
#undef VZERO
#undef VLD
#undef VST
#undef VSET1
#undef VMUL
#undef VFMA
#undef VDEQ
#undef VCVTU8
#undef VQ4LO
#undef VQ4HI
#undef VQ8S
#undef VQ5
#undef VHALFB
#undef VQ4TAB
#undef VQ4LUT
#undef VBITS
#undef VHSUM
#undef QOUT_VMAX
#undef QOUT_RED4
#undef QOUT_RG
#undef VBCAST4
#undef QOUT_RMAX
#undef QOUT_R
#undef QI8OUTER
#undef QI8_VMAX
#undef QI8_RMAX
#undef QI8_R
#undef QI8PREP
#undef DOT4X8
