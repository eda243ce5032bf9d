/* What attention.c (the op entry points, the row kernels) and attention_blocked.c (the
 * prefill kernel on the GEMM tiles) share: one call's facts and the causal limit. */
#ifndef KILN_ATTENTION_H
#define KILN_ATTENTION_H

#include "kiln.h"

typedef struct {
    const float *q, *k, *v;
    float *out;
    const void *mask;
    int mask_bool;
    int64_t ms[4];  /* mask strides over [B, Hq, Sq, Sk] (0 = broadcast) */
    int64_t B, Hq, Hkv, Sq, Sk, D, Dv, group;
    int64_t kv_len;   /* keys [0, kv_len) are valid (Sk, or the cache's filled prefix) */
    int64_t offset;   /* causal: query i sits at position offset + i */
    int causal;
    float scale;
} attn_args;

/* number of leading keys query row i may attend to */
static inline int64_t visible(const attn_args *a, int64_t i) {
    int64_t last = a->offset + i + 1;
    return a->causal && last < a->kv_len ? last : a->kv_len;
}

/* Floats from one thread's scratch slot to the next for `per` floats of use: whole pages and
 * one more, so no 4 KiB page holds two threads' scores (as csrc/quant.h kiln_qthread_offset:
 * back to back, a decode row's 1-8 KiB slots shared cache lines between threads). The
 * planner's formula (kiln/backends/c/kernels.py attention_scratch) matches. */
static inline int64_t attn_slot_floats(int64_t per) { return (per + 1023) / 1024 * 1024 + 1024; }

/* Runs every query row of `a` with the blocked prefill kernel; 0 if it does not apply (few
 * queries, a head too wide, too little scratch, turned off by kiln_set_attention_blocked). */
int kiln_attention_blocked(const attn_args *a, const kiln_call *c);

#endif
