// Standalone support for compiling ggml_ext/src/ggml-cpu-mpq2.c and ggml-mpq2.c outside
// ggml (tests/simd/mpq2_kernel_check.c, bench/bench_vec_dot.c): the few ggml-base symbols
// they need, and test data generators. Include in exactly one translation unit.
#pragma once

#define GGML_COMMON_DECL_C
#include "ggml-common.h"
#include "ggml-impl.h"
#include "ggml-mpq2.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <stdarg.h>

void ggml_abort(const char * file, int line, const char * fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s:%d: ", file, line);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

float ggml_fp16_to_fp32(ggml_fp16_t h) { return ggml_compute_fp16_to_fp32(h); }
ggml_fp16_t ggml_fp32_to_fp16(float f) { return ggml_compute_fp32_to_fp16(f); }

// simd-mappings.h falls back to this table when the target has no fp16 conversion
// instructions (e.g. x86 without F16C); filled by mpq2_support_init().
float ggml_table_f32_f16[1 << 16];

static void mpq2_support_init(void) {
    for (int i = 0; i < (1 << 16); ++i) {
        ggml_table_f32_f16[i] = ggml_compute_fp16_to_fp32((ggml_fp16_t) i);
    }
}

// The kernels under test (ggml_ext/src/ggml-cpu-mpq2.c).
const char * ggml_vec_dot_mpq2_q8_0_impl(void);

// xorshift64*, deterministic across platforms
static uint64_t mpq2_rng_state = 0x9E3779B97F4A7C15ull;
static inline uint64_t mpq2_rand(void) {
    uint64_t x = mpq2_rng_state;
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    mpq2_rng_state = x;
    return x * 0x2545F4914F6CDD1Dull;
}
static inline float mpq2_randf(void) {  // uniform [0, 1)
    return (float) (mpq2_rand() >> 40) * (1.0f / 16777216.0f);
}
static inline float mpq2_randn(void) {  // standard normal (Box-Muller)
    float u = mpq2_randf();
    if (u < 1e-7f) u = 1e-7f;
    return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * mpq2_randf());
}

// Q8_0 activations with int8 values in [-127, 127] (what ggml's quantizer writes).
static void mpq2_quantize_q8_0(const float * a, block_q8_0 * y, int n) {
    for (int ib = 0; ib < n / QK8_0; ++ib) {
        float amax = 0.0f;
        for (int i = 0; i < QK8_0; ++i) amax = fmaxf(amax, fabsf(a[ib*QK8_0 + i]));
        const float d = amax / 127.0f;
        const float id = d ? 1.0f / d : 0.0f;
        y[ib].d = ggml_fp32_to_fp16(d);
        for (int i = 0; i < QK8_0; ++i) y[ib].qs[i] = (int8_t) roundf(a[ib*QK8_0 + i] * id);
    }
}
