// MPQ2 in the CPU backend: the activation quantizer hook and the scalar dot product
// against Q8_0. The SIMD kernels replace ggml_vec_dot_mpq2_q8_0 per architecture; this
// generic version stays the reference and the fallback.
#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include "ggml-cpu-impl.h"
#include "simd-mappings.h"
#include "ggml-mpq2.h"

#include <assert.h>

void quantize_row_mpq2(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) {
    quantize_row_mpq2_ref(x, (block_mpq2 *) y, k);
}

// Integer dot product of one 16-weight word with 16 int8 activations, in units of d * mult.
static inline int mpq2_word_dot(uint32_t q, bool salient, int zero, const int8_t * a) {
    int s = 0;
    if (salient) {
        for (int i = 0; i < MPQ2_GROUP; ++i) {
            s += (int8_t) (q >> (8*(i >> 2))) * a[i];
        }
    } else {
        for (int i = 0; i < MPQ2_GROUP; ++i) {
            s += (MPQ2_GRID_STEP * (int) ((q >> (8*(i & 3) + 2*(i >> 2))) & 3) - zero) * a[i];
        }
    }
    return s;
}

// One MPQ2 block (64 weights) spans two Q8_0 blocks (32 activations each).
void ggml_vec_dot_mpq2_q8_0_generic(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                                    const void * GGML_RESTRICT vy, size_t by, int nrc) {
    assert(n % QK_MPQ2 == 0);
    assert(nrc == 1);
    GGML_UNUSED(nrc); GGML_UNUSED(bx); GGML_UNUSED(by); GGML_UNUSED(bs);

    const block_mpq2 * GGML_RESTRICT x = (const block_mpq2 *) vx;
    const block_q8_0 * GGML_RESTRICT y = (const block_q8_0 *) vy;
    const int nb = n / QK_MPQ2;

    float sumf = 0.0f;
    for (int ib = 0; ib < nb; ++ib) {
        const uint16_t meta = x[ib].meta;
        int sumi[2] = { 0, 0 };
        for (int w = 0; w < MPQ2_WORDS; ++w) {
            const int m = mpq2_scale_mult[(meta >> MPQ2_SCALE_SHIFT(w)) & 7];
            const int z = mpq2_zero2[(x[ib].zero >> MPQ2_ZERO_SHIFT(w)) & 3];
            const int8_t * a = y[2*ib + w/2].qs + (w & 1)*MPQ2_GROUP;
            sumi[w/2] += m * mpq2_word_dot(x[ib].qs[w], meta >> w & 1, z, a);
        }
        const float dx = mpq2_d_from_code(x[ib].d);
        sumf += dx * (GGML_CPU_FP16_TO_FP32(y[2*ib].d) * (float) sumi[0] + GGML_CPU_FP16_TO_FP32(y[2*ib + 1].d) * (float) sumi[1]);
    }
    *s = sumf;
}

// SIMD kernels, one file per architecture (mirroring ggml-cpu/arch/). Each defines
// MPQ2_VEC_DOT_SIMD (and MPQ2_VEC_DOT_SIMD_NAME) when the target has what it needs.
#if defined(__AVX2__) || (defined(__AVX512F__) && defined(__AVX512BW__))
#include "arch/x86/mpq2-quants.c"
#elif defined(__ARM_NEON) && defined(__aarch64__)
#include "arch/arm/mpq2-quants.c"
#endif

#if GGML_MPQ2_VEC_DOT_NROWS == 2 && !defined(MPQ2_VEC_DOT_SIMD_2X2)
#error "GGML_MPQ2_VEC_DOT_NROWS says 2 but this target has no 2x2 kernel"
#endif

// nrc == 2 (type_traits_cpu.nrows = GGML_MPQ2_VEC_DOT_NROWS): rows vx, vx + bx times columns
// vy, vy + by, s[r + c*bs] = row r . column c, as ggml's mul_mat calls it.
void ggml_vec_dot_mpq2_q8_0(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                            const void * GGML_RESTRICT vy, size_t by, int nrc) {
    assert(n % QK_MPQ2 == 0);
    assert(nrc == 1 || nrc == 2);
#if defined(MPQ2_VEC_DOT_SIMD_2X2)
    if (nrc == 2) {
        MPQ2_VEC_DOT_SIMD_2X2(n, s, bs, (const block_mpq2 *) vx, (const block_mpq2 *) ((const char *) vx + bx),
                              (const block_q8_0 *) vy, (const block_q8_0 *) ((const char *) vy + by));
        return;
    }
#endif
    if (nrc == 2) {   // no 2x2 kernel here: four single dot products
        for (int c = 0; c < 2; ++c)
            for (int r = 0; r < 2; ++r)
                ggml_vec_dot_mpq2_q8_0(n, s + r + c*bs, 0, (const char *) vx + r*bx, 0, (const char *) vy + c*by, 0, 1);
        return;
    }
#if defined(MPQ2_VEC_DOT_SIMD)
    GGML_UNUSED(bx); GGML_UNUSED(by); GGML_UNUSED(bs);
    MPQ2_VEC_DOT_SIMD(n, s, (const block_mpq2 *) vx, (const block_q8_0 *) vy);
#else
    ggml_vec_dot_mpq2_q8_0_generic(n, s, bs, vx, bx, vy, by, nrc);
#endif
}

// Which kernel ggml_vec_dot_mpq2_q8_0 is in this build ("generic", "avx2", "avx512_vnni",
// "neon_dotprod", ...); for tests and benchmarks.
const char * ggml_vec_dot_mpq2_q8_0_impl(void) {
#if defined(MPQ2_VEC_DOT_SIMD)
    return MPQ2_VEC_DOT_SIMD_NAME;
#else
    return "generic";
#endif
}
