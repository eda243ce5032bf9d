/* Quantized matmul out = A . W^T (+ bias) for W in a GGUF block format or int8 per row,
 * and the quantized embedding gather: the format table, the int8 activation quantizer,
 * the per-ISA kernel tables (qgemm_body.h compiled three times) chosen once at load,
 * and the single-thread and threaded drivers. Nothing here allocates: the caller gives
 * kiln_qmm_scratch_bytes of scratch.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#define KILN_QX86 1
#include <immintrin.h>
#endif

#include "gemm.h"
#include "quant.h"

/* A prefetch of weight bytes; it never faults, so it may look past the weights' end. Into L2 on
 * AMD, into L1 elsewhere, as the fp32 GEMM's (gemm.c, KILN_GEMM_STREAM_L1): on a Zen 4
 * (2026-12-02; the two alternated in one process, rounds of 32 tokens) the default model's
 * Q4_1 decode ran 114.5 tokens/s with L1 and 141.8 with L2 (8 rounds), 126.6 and 149.9 with
 * the flag itself switched (10 rounds); with no prefetch at all, 69.7. */
#define QPREFETCH(p)                                                                   \
    do {                                                                               \
        if (kiln_gemm_tuning_flags & KILN_GEMM_STREAM_L1)                            \
            __builtin_prefetch((const void *)(p), 0, 3);                               \
        else                                                                           \
            __builtin_prefetch((const void *)(p), 0, 2);                               \
    } while (0)

const kiln_qformat kiln_qformats[KILN_QFMT_COUNT] = {
    [KILN_Q8_0] = {KILN_QK, sizeof(kiln_block_q8_0), 0},
    [KILN_Q4_0] = {KILN_QK, sizeof(kiln_block_q4_0), 0},
    [KILN_Q4_1] = {KILN_QK, sizeof(kiln_block_q4_1), 0},
    [KILN_Q4_K] = {KILN_QK_K, sizeof(kiln_block_q4_K), 0},
    [KILN_Q5_K] = {KILN_QK_K, sizeof(kiln_block_q5_K), 0},
    [KILN_Q6_K] = {KILN_QK_K, sizeof(kiln_block_q6_K), 0},
    [KILN_I8_ROW] = {1, 1, 4},
    [KILN_Q5_0] = {KILN_QK, sizeof(kiln_block_q5_0), 0},
    [KILN_Q5_1] = {KILN_QK, sizeof(kiln_block_q5_1), 0},
};

int64_t kiln_qrow_bytes(int fmt, int64_t K) {
    if (fmt < 0 || fmt >= KILN_QFMT_COUNT || K < 0 || K % kiln_qformats[fmt].block) return -1;
    return K / kiln_qformats[fmt].block * kiln_qformats[fmt].block_bytes + kiln_qformats[fmt].row_extra;
}

/* int8 activations for A rows [m0, m1): per 32 values scale s = max|a| / 127 and
 * q = round-to-nearest-even(a * (127 / max|a|)); then per 4 values s * (sum of q). */
void kiln_qmm_prepare_generic(const kiln_qmm_args *p, int64_t m0, int64_t m1) {
    const int64_t K = p->K, rb = kiln_qact_row_bytes(K);
    for (int64_t m = m0; m < m1; m++) {
        const float *a = p->a + m * p->lda;
        int8_t *aq = (int8_t *)((uint8_t *)p->scratch + m * rb);
        float *sa = (float *)((uint8_t *)p->scratch + m * rb + K), *s4 = sa + K / 32;
        for (int64_t g = 0; g < K / 32; g++) {
            float amax = 0.0f, probe = 0.0f; /* probe: 0 unless some value is NaN or inf */
            for (int i = 0; i < 32; i++) { amax = fmaxf(amax, fabsf(a[32 * g + i])); probe += a[32 * g + i] * 0.0f; }
            /* non-finite input: codes 0 and a NaN scale, so the output says so too */
            const int finite = probe == 0.0f;
            const float inv = finite && amax > 0.0f ? 127.0f / amax : 0.0f;
            sa[g] = finite ? amax / 127.0f : NAN;
            /* (a NaN or inf times 0 is NaN, whose conversion to int8 is undefined: codes 0 there) */
            for (int i = 0; i < 32; i++) aq[32 * g + i] = finite ? (int8_t)nearbyintf(a[32 * g + i] * inv) : 0;
            for (int l = 0; l < 8; l++) {
                const int8_t *v = aq + 32 * g + 4 * l;
                s4[8 * g + l] = sa[g] * (float)(v[0] + v[1] + v[2] + v[3]);
            }
        }
    }
}

/* ---- generic C: GCC/Clang vector extensions, 8 lanes (internal helpers: the AVX
 * argument-ABI note does not apply) ---- */
#pragma GCC diagnostic ignored "-Wpsabi"
#define GI static inline __attribute__((always_inline))
typedef float kiln_v8f __attribute__((vector_size(32)));
typedef int32_t kiln_v8i __attribute__((vector_size(32)));
typedef uint8_t kiln_v8u8 __attribute__((vector_size(8)));

GI kiln_v8f g_ld(const float *p) { kiln_v8f v; memcpy(&v, p, 32); return v; }
GI void g_st(float *p, kiln_v8f v) { memcpy(p, &v, 32); }
GI kiln_v8f g_cvtu8(const uint8_t *p) { kiln_v8u8 v; memcpy(&v, p, 8); return __builtin_convertvector(v, kiln_v8f); }
GI float g_hsum(kiln_v8f v) { return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7])); }
GI kiln_v8f g_set1(float x) { return (kiln_v8f){x, x, x, x, x, x, x, x}; }
typedef float kiln_v4f __attribute__((vector_size(16)));
GI kiln_v8f g_bcast4(const float *p) {
    kiln_v4f v; memcpy(&v, p, 16);
    return __builtin_shufflevector(v, v, 0, 1, 2, 3, 0, 1, 2, 3);
}
GI kiln_v8f g_set2(float lo, float hi) { return (kiln_v8f){lo, lo, lo, lo, hi, hi, hi, hi}; }
/* D*q + M rounded once without an FMA: D*q (24 x 8 bits) is exact in double. */
typedef double kiln_v8d __attribute__((vector_size(64)));
GI kiln_v8f g_deq(kiln_v8f q, kiln_v8f d, kiln_v8f m) {
    return __builtin_convertvector(__builtin_convertvector(q, kiln_v8d) * __builtin_convertvector(d, kiln_v8d)
                                   + __builtin_convertvector(m, kiln_v8d), kiln_v8f);
}
GI kiln_v8u8 g_ld8(const uint8_t *p) { kiln_v8u8 v; memcpy(&v, p, 8); return v; }
GI kiln_v8f g_q4lo(const uint8_t *p) { return __builtin_convertvector(g_ld8(p) & 15, kiln_v8f); }
GI kiln_v8f g_q4hi(const uint8_t *p) { return __builtin_convertvector(g_ld8(p) >> 4, kiln_v8f); }
typedef int8_t kiln_v8i8 __attribute__((vector_size(8)));
GI kiln_v8f g_q8s(const uint8_t *p) { kiln_v8i8 v; memcpy(&v, p, 8); return __builtin_convertvector(v, kiln_v8f); }
GI uint16_t g_ld16(const uint8_t *p) { uint16_t h; memcpy(&h, p, 2); return h; }
/* Q5 codes e..e+7 of a block: nibble (low for e < 16, high after) + 16 * bit e+l of qh */
GI kiln_v8f g_q5(const uint8_t *qs, uint32_t qh, int e) {
    kiln_v8u8 v = e < 16 ? g_ld8(qs + e) & 15 : g_ld8(qs + e - 16) >> 4;
    for (int l = 0; l < 8; l++) v[l] |= (uint8_t)(((qh >> (e + l)) & 1) << 4);
    return __builtin_convertvector(v, kiln_v8f);
}
/* (p[i] >> s) & m for 8 bytes: the high bits of a K-quant code */
GI kiln_v8f g_bits(const uint8_t *p, int s, int m) {
    return __builtin_convertvector((g_ld8(p) >> (uint8_t)s) & (uint8_t)m, kiln_v8f);
}
typedef uint8_t kiln_v32u8 __attribute__((vector_size(32)));
typedef uint8_t kiln_v16u8 __attribute__((vector_size(16)));
GI kiln_v32u8 g_w32ld(const uint8_t *p) { kiln_v32u8 v; memcpy(&v, p, 32); return v; }
GI kiln_v32u8 g_w32q8(const uint8_t *p) { return g_w32ld(p) ^ 0x80; }
GI kiln_v32u8 g_w32q4(const uint8_t *p) {
    kiln_v16u8 v; memcpy(&v, p, 16);
    return __builtin_shufflevector(v & 15, v >> 4, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                                   16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31);
}
GI kiln_v8f g_dot4x8(kiln_v32u8 w, const int8_t *a) {
    kiln_v8i s;
    for (int l = 0; l < 8; l++) {
        int32_t t = 0;
        for (int i = 0; i < 4; i++) t += (int32_t)w[4 * l + i] * a[4 * l + i];
        s[l] = t;
    }
    return __builtin_convertvector(s, kiln_v8f);
}

#define QN(x) x##_generic
#define QTARGET
#if (defined(__x86_64__) || defined(__i386__)) && !defined(__AVX512F__)
#define QWIDE 0   /* x86 without AVX-512 has 16 vector registers: 8 rows would spill */
#else
#define QWIDE 1
#endif
#define VW 8
#define VF kiln_v8f
#define QOUT_RG 2     /* outer-product tile: vectors of 2 rows x 4 k, 1 x QOUT_R weight rows */
#define QOUT_VMAX 1
#define QOUT_RMAX 12
#define QOUT_R(v) (QWIDE ? 12 : 6)
#define VBCAST4 g_bcast4
#define VZERO g_set1(0.0f)
#define VLD g_ld
#define VST g_st
#define VSET1 g_set1
#define VMUL(a, b) ((a) * (b))
#define VFMA(a, b, c) ((a) * (b) + (c))
#define VDEQ g_deq
#define VCVTU8 g_cvtu8
#define VQ4LO g_q4lo
#define VQ4HI g_q4hi
#define VQ8S g_q8s
#define VQ5 g_q5
#define VHALFB(p) VSET1(QN(half)(g_ld16(p)))
#define VBITS g_bits
#define VHSUM g_hsum
#define F8 kiln_v8f
#define F8ZERO g_set1(0.0f)
#define F8LD g_ld
#define F8SET1 g_set1
#define F8SET2 g_set2
#define F8MUL(a, b) ((a) * (b))
#define F8FMA(a, b, c) ((a) * (b) + (c))
#define F8HSUM g_hsum
#define DOT4X8 g_dot4x8
#define W32 kiln_v32u8
#define W32LD g_w32ld
#define W32Q4 g_w32q4
#define W32Q8 g_w32q8
#include "qgemm_body.h"
#undef F8
#undef F8ZERO
#undef F8LD
#undef F8SET1
#undef F8SET2
#undef F8MUL
#undef F8FMA
#undef F8HSUM
#undef DOT4X8
#undef W32
#undef W32LD
#undef W32Q4
#undef W32Q8

#if KILN_QX86
/* ---- shared 8-lane (ymm) helpers for the x86 variants ---- */
#define X86_256 __attribute__((target("avx2,fma,f16c")))
#define QHALF_F16C 1
X86_256 static inline float x_hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
X86_256 static inline __m256 x_set2(float lo, float hi) { return _mm256_set_m128(_mm_set1_ps(hi), _mm_set1_ps(lo)); }
/* Weight codes to N fp32 lanes from N bytes, written once for both widths (N = 8: ymm,
 * N = 16: zmm): x_u8xN widens the bytes, then the bytes as floats, low / high nibbles,
 * signed Q8_0 codes, and (p[i] >> s) & m (the high bits of a K-quant code). */
#define X_LOADERS(N, ATTR, VI, VFT, LD, U8, S8, AND, SRLI, SRL, SET1I, CVT) \
    ATTR static inline VI x_u8x##N(const uint8_t *p) { return U8(LD(p)); } \
    ATTR static inline VFT x_cvtu8x##N(const uint8_t *p) { return CVT(x_u8x##N(p)); } \
    ATTR static inline VFT x_q4lo##N(const uint8_t *p) { return CVT(AND(x_u8x##N(p), SET1I(15))); } \
    ATTR static inline VFT x_q4hi##N(const uint8_t *p) { return CVT(SRLI(x_u8x##N(p), 4)); } \
    ATTR static inline VFT x_q8s_##N(const uint8_t *p) { return CVT(S8(LD(p))); } \
    ATTR static inline VFT x_bits##N(const uint8_t *p, int s, int m) { \
        return CVT(AND(SRL(x_u8x##N(p), _mm_cvtsi32_si128(s)), SET1I(m))); \
    }
#define X_LD8(p) _mm_loadl_epi64((const __m128i *)(p))
#define X_LD16(p) _mm_loadu_si128((const __m128i *)(p))
X_LOADERS(8, X86_256, __m256i, __m256, X_LD8, _mm256_cvtepu8_epi32, _mm256_cvtepi8_epi32, _mm256_and_si256,
          _mm256_srli_epi32, _mm256_srl_epi32, _mm256_set1_epi32, _mm256_cvtepi32_ps)
/* fp16 at p, converted and broadcast (vector ops: no scalar round trip) */
X86_256 static inline __m256 x_half8(const uint8_t *p) {
    short h; memcpy(&h, p, 2);
    return _mm256_cvtph_ps(_mm_set1_epi16(h));
}
X86_256 static inline __m256 x_q5_8(const uint8_t *qs, uint32_t qh, int e) {
    __m256i v = e < 16 ? _mm256_and_si256(x_u8x8(qs + e), _mm256_set1_epi32(15)) : _mm256_srli_epi32(x_u8x8(qs + e - 16), 4);
    __m256i bit = _mm256_srlv_epi32(_mm256_set1_epi32((int)(qh >> e)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return _mm256_cvtepi32_ps(_mm256_or_si256(v, _mm256_slli_epi32(_mm256_and_si256(bit, _mm256_set1_epi32(1)), 4)));
}
/* 8 lanes, lane l = sum of w[4l..4l+3] * a[4l..4l+3]; u8 x s8 widened to 16 bits (no
 * saturation, unlike maddubs with weights up to 255). */
X86_256 static inline __m256 x_dot4x8_avx2(__m256i w, const int8_t *a) {
    __m256i w0 = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(w));
    __m256i w1 = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(w, 1));
    __m256i a0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)a));
    __m256i a1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(a + 16)));
    __m256i h = _mm256_hadd_epi32(_mm256_madd_epi16(w0, a0), _mm256_madd_epi16(w1, a1));
    return _mm256_cvtepi32_ps(_mm256_permute4x64_epi64(h, 0xD8));
}

/* 32 weight codes in element order: from a panel, Q4 nibbles (low then high), Q8_0 + 128 */
X86_256 static inline __m256i x_w32ld(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)p); }
X86_256 static inline __m256i x_w32q4(const uint8_t *p) {
    __m128i v = _mm_loadu_si128((const __m128i *)p), m = _mm_set1_epi8(15);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
}
X86_256 static inline __m256i x_w32q8(const uint8_t *p) { return _mm256_xor_si256(x_w32ld(p), _mm256_set1_epi8((char)0x80)); }
#define W32 __m256i
#define W32LD x_w32ld
#define W32Q4 x_w32q4
#define W32Q8 x_w32q8

#define F8 __m256
#define F8ZERO _mm256_setzero_ps()
#define F8LD _mm256_loadu_ps
#define F8SET1 _mm256_set1_ps
#define F8SET2 x_set2
#define F8MUL _mm256_mul_ps
#define F8FMA _mm256_fmadd_ps
#define F8HSUM x_hsum8

/* The outer-product tile's write-out (qgemm_outer.h red4) in registers, per 128-bit lane
 * (one activation row): a_r = (c0, c1, c2, c3) of panel rows r = 0..3 ->
 * ((c0 + c2) + (c1 + c3)) of each, + bias, stored as 4 outputs of that row. */
#define X_RED4(N, ATTR, VFT, LD, ADD, UNLO, UNHI, SHUF, ST)                                                    \
    ATTR static inline void x_red4_##N(const float *c, int64_t ldc, const float *bias, float *o, int64_t ldo, \
                                       int rows) {                                                           \
        VFT a0 = LD(c), a1 = LD(c + ldc), a2 = LD(c + 2 * ldc), a3 = LD(c + 3 * ldc);                        \
        VFT s01 = ADD(UNLO(a0, a1), UNHI(a0, a1)), s23 = ADD(UNLO(a2, a3), UNHI(a2, a3));                    \
        float t[N];                                                                                          \
        ST(t, ADD(SHUF(s01, s23, 0x44), SHUF(s01, s23, 0xEE)));                                              \
        const __m128 b = bias ? _mm_loadu_ps(bias) : _mm_setzero_ps();                                       \
        for (int i = 0; i < rows; i++) _mm_storeu_ps(o + i * ldo, _mm_add_ps(_mm_loadu_ps(t + 4 * i), b));    \
    }
X_RED4(8, X86_256, __m256, _mm256_loadu_ps, _mm256_add_ps, _mm256_unpacklo_ps, _mm256_unpackhi_ps,
       _mm256_shuffle_ps, _mm256_storeu_ps)

/* ---- AVX2 + FMA ---- */
#define QN(x) x##_avx2
#define QTARGET X86_256
#define QWIDE 0   /* 16 ymm registers: 8 rows' accumulators and scales would spill */
#define VW 8
#define QOUT_RG 2     /* outer-product tile: 12 accumulators (12 x 1 or 6 x 2 vectors of 2 rows x 4 k) */
#define QOUT_VMAX 2
#define QOUT_RMAX 12
#define QOUT_R(v) ((v) == 1 ? 12 : 6)
#define VBCAST4(p) _mm256_broadcast_ps((const __m128 *)(p))
#define QOUT_RED4 x_red4_8
#define VF __m256
#define VZERO _mm256_setzero_ps()
#define VLD _mm256_loadu_ps
#define VST _mm256_storeu_ps
#define VSET1 _mm256_set1_ps
#define VMUL _mm256_mul_ps
#define VFMA _mm256_fmadd_ps
#define VDEQ _mm256_fmadd_ps
#define VCVTU8 x_cvtu8x8
#define VQ4LO x_q4lo8
#define VQ4HI x_q4hi8
#define VQ8S x_q8s_8
#define VQ5 x_q5_8
#define VHALFB x_half8
#define VBITS x_bits8
#define VHSUM x_hsum8
#define DOT4X8 x_dot4x8_avx2
#include "qgemm_body.h"

/* ---- AVX-512 (F, BW, VL) + VNNI ---- */
#define X86_512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
X_LOADERS(16, X86_512, __m512i, __m512, X_LD16, _mm512_cvtepu8_epi32, _mm512_cvtepi8_epi32, _mm512_and_si512,
          _mm512_srli_epi32, _mm512_srl_epi32, _mm512_set1_epi32, _mm512_cvtepi32_ps)
X86_512 static inline __m256 x_dot4x8_vnni(__m256i w, const int8_t *a) {
    return _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), w, _mm256_loadu_si256((const __m256i *)a)));
}
X86_512 static inline __m512 x_half16(const uint8_t *p) {
    short h; memcpy(&h, p, 2);
    return _mm512_cvtph_ps(_mm256_set1_epi16(h));
}
/* Q5 codes e..e+15 (e = 0 or 16): the nibbles, bit 4 set in the lanes whose qh bit is */
X86_512 static inline __m512 x_q5_16(const uint8_t *qs, uint32_t qh, int e) {
    __m512i v = x_u8x16(qs);
    v = e < 16 ? _mm512_and_si512(v, _mm512_set1_epi32(15)) : _mm512_srli_epi32(v, 4);
    return _mm512_cvtepi32_ps(_mm512_mask_or_epi32(v, (__mmask16)(qh >> e), v, _mm512_set1_epi32(16)));
}
/* Q4 blocks by table: the 16 values fma(code, d, m) of a block (the same fma as the panel's,
 * so bitwise its values), then one permute per 16 codes; vpermps reads the index's low 4
 * bits only, so a low nibble needs no mask */
X86_512 static inline __m512 x_q4tab16(__m512 d, __m512 m) {
    return _mm512_fmadd_ps(_mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), d, m);
}
X86_512 static inline __m512 x_q4lut16(const uint8_t *qs, int e, __m512 tab) {
    __m512i v = x_u8x16(qs);
    return _mm512_permutexvar_ps(e < 16 ? v : _mm512_srli_epi32(v, 4), tab);
}
X86_512 static inline float x_hsum16(__m512 v) {
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    return x_hsum8(_mm256_add_ps(_mm512_castps512_ps256(v), hi));
}
X_RED4(16, X86_512, __m512, _mm512_loadu_ps, _mm512_add_ps, _mm512_unpacklo_ps, _mm512_unpackhi_ps,
       _mm512_shuffle_ps, _mm512_storeu_ps)
/* int8 mode's prepare for the VNNI outer path (M >= 9): codes, scales and sums straight into
 * its layout (quant.h kiln_qi8t_*), rows [m0, m1) and at the end the padding rows; the codes
 * and scales are kiln_qmm_prepare_generic's (the same max, 127 / max, product and
 * round-to-nearest-even; a non-finite group: codes 0, scale NaN). */
X86_512 static void x_prepare_i8t(const kiln_qmm_args *p, int64_t m0, int64_t m1) {
    const int64_t K = p->K, gb = kiln_qi8t_group_bytes(K), end = m1 == p->M ? kiln_qouter_mpad(p->M) : m1;
    uint8_t *t = (uint8_t *)p->scratch + kiln_qi8t_offset(p->M, K);
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t m = m0; m < end; m++) {
        uint8_t *grp = t + m / 16 * gb;
        const int i = (int)(m % 16);
        float *sv = (float *)(grp + K * 16), *rv = sv + K / 32 * 16, *rv32 = rv + K / 16 * 16;
        const float *a = p->a + m * p->lda;
        for (int64_t g = 0; g < K / 32; g++) {
            float s = 0.0f;
            int32_t w[8] = {0};
            int s0 = 0, s1 = 0;
            if (m < p->M) {
                const __m512 x0 = _mm512_loadu_ps(a + 32 * g), x1 = _mm512_loadu_ps(a + 32 * g + 16);
                if (_mm512_cmp_ps_mask(_mm512_mul_ps(x0, zero), _mm512_mul_ps(x1, zero), _CMP_UNORD_Q)) s = NAN;
                else {
                    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
                    const __m512 inv = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
                    s = amax / 127.0f;
                    const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, inv)), q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, inv));
                    _mm_storeu_si128((__m128i *)w, _mm512_cvtepi32_epi8(q0));
                    _mm_storeu_si128((__m128i *)(w + 4), _mm512_cvtepi32_epi8(q1));
                    s0 = _mm512_reduce_add_epi32(q0);
                    s1 = _mm512_reduce_add_epi32(q1);
                }
            }
            for (int l = 0; l < 8; l++) memcpy(grp + (8 * g + l) * 64 + 4 * i, w + l, 4);
            sv[g * 16 + i] = s;
            rv[2 * g * 16 + i] = s * (float)s0;
            rv[(2 * g + 1) * 16 + i] = s * (float)s1;
            rv32[g * 16 + i] = s * (float)(s0 + s1);
        }
    }
}
#define QN(x) x##_avx512
#define QI8PREP x_prepare_i8t
#define QTARGET X86_512
#define QWIDE 1
#define VW 16
#define QOUT_RG 4     /* outer-product tile: 24 accumulators (24 x 1 ... 6 x 4 vectors of 4 rows x 4 k) */
#define QOUT_VMAX 4
#define QOUT_RMAX 24
#define QOUT_R(v) ((v) == 1 ? 24 : (v) == 2 ? 12 : (v) == 3 ? 8 : 6)
#define VBCAST4(p) _mm512_broadcast_f32x4(_mm_loadu_ps(p))
#define QOUT_RED4 x_red4_16
#define VF __m512
#define VZERO _mm512_setzero_ps()
#define VLD _mm512_loadu_ps
#define VST _mm512_storeu_ps
#define VSET1 _mm512_set1_ps
#define VMUL _mm512_mul_ps
#define VFMA _mm512_fmadd_ps
#define VDEQ _mm512_fmadd_ps
#define VCVTU8 x_cvtu8x16
#define VQ4LO x_q4lo16
#define VQ4HI x_q4hi16
#define VQ8S x_q8s_16
#define VQ5 x_q5_16
#define VHALFB x_half16
#define VQ4TAB x_q4tab16
#define VQ4LUT x_q4lut16
#define VBITS x_bits16
#define VHSUM x_hsum16
#define DOT4X8 x_dot4x8_vnni
#define QI8OUTER 1    /* int8 mode's outer-product tile (vpdpbusd): R weight rows x V vectors of 16 rows */
#define QI8_VMAX 4
#define QI8_RMAX 12
#define QI8_R(v) ((v) == 1 ? 12 : (v) == 2 ? 6 : (v) == 3 ? 4 : 3)
#include "qgemm_body.h"
#else
/* not x86: the table's SIMD rows are the portable kernels (kiln_qmm_set_isa refuses them) */
const kiln_qkernels kiln_qk_avx2 = {prepare_generic, rows_generic, dequant_row_generic};
const kiln_qkernels kiln_qk_avx512 = {prepare_generic, rows_generic, dequant_row_generic};
#endif
