// MPQ2 x Q8_0 over 16 interleaved rows (see ggml-cpu-mpq2-repack.h): the repacking, the
// activation sums, the scalar reference and the SIMD kernels (x86: AVX-512, AVX2; AArch64: NEON
// with or without dotprod). The scalar version
// stays the reference for tests; the CPU backend repacks only where a SIMD kernel exists.
#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include "ggml-cpu-impl.h"
#include "simd-mappings.h"
#include "ggml-cpu-mpq2-repack.h"

#include <assert.h>
#include <string.h>

void ggml_mpq2_act_finish(void * buf, int64_t n, mpq2_act * act) {
    ggml_mpq2_act_view(buf, n, act);
    int32_t * ahi = (int32_t *) act->ahi;
    float   * dy  = (float *) act->dy;
    for (int64_t j = 0; j < n / 32; ++j) {
        dy[j] = GGML_CPU_FP16_TO_FP32(act->q[j].d);
        for (int h = 0; h < 2; ++h) {
            int32_t sum = 0;
            for (int i = 0; i < 16; ++i) sum += act->q[j].qs[16*h + i];
            ahi[2*j + h] = (int32_t) ((uint32_t) sum << 16 | 0x8000);   // 0x8000: see arch/x86/mpq2-repack.c
        }
    }
}

void ggml_mpq2_repack_x16(block_mpq2x16 * dst, const block_mpq2 * src, int64_t nrows, int64_t n) {
    assert(nrows % MPQ2_RP_ROWS == 0 && n % QK_MPQ2 == 0);
    const int64_t nb = n / QK_MPQ2;
    for (int64_t g = 0; g < nrows / MPQ2_RP_ROWS; ++g) {
        for (int64_t ib = 0; ib < nb; ++ib) {
            block_mpq2x16 * d = dst + g*nb + ib;
            for (int r = 0; r < MPQ2_RP_ROWS; ++r) {
                const block_mpq2 * b = src + (g*MPQ2_RP_ROWS + r)*nb + ib;
                uint32_t h = (uint32_t) (b->meta & 15) | (uint32_t) b->d << 24;
                for (int w = 0; w < MPQ2_WORDS; ++w) {
                    const uint32_t code = (b->meta >> MPQ2_SCALE_SHIFT(w)) & 7;
                    const uint32_t zero = (b->zero >> MPQ2_ZERO_SHIFT(w)) & 3;
                    h |= (code | zero << 3) << MPQ2_RP_WORD_SHIFT(w);
                    d->qs[w][r] = b->qs[w];
                }
                d->hdr[r] = h;
            }
        }
    }
}

// Same integers and float order as ggml_vec_dot_mpq2_q8_0_generic, read from the repacked layout.
void ggml_mpq2x16_mul_generic(int n, float * s, size_t bs, const block_mpq2x16 * x, int64_t ngroups,
                              const mpq2_act * y, int ncols) {
    assert(n % QK_MPQ2 == 0);
    const int nb = n / QK_MPQ2;
    for (int64_t g = 0; g < ngroups; ++g) {
        for (int c = 0; c < ncols; ++c) {
            for (int r = 0; r < MPQ2_RP_ROWS; ++r) {
                float sumf = 0.0f;
                for (int ib = 0; ib < nb; ++ib) {
                    const block_mpq2x16 * xb = x + g*nb + ib;
                    const uint32_t h = xb->hdr[r];
                    int sumi[2] = { 0, 0 };
                    for (int w = 0; w < MPQ2_WORDS; ++w) {
                        const uint32_t f = h >> MPQ2_RP_WORD_SHIFT(w);
                        const int m = mpq2_scale_mult[f & 7];
                        const int z = mpq2_zero2[(f >> 3) & 3];
                        const uint32_t q = xb->qs[w][r];
                        const int8_t * a = y[c].q[2*ib + w/2].qs + (w & 1)*MPQ2_GROUP;
                        int sw = 0;
                        for (int i = 0; i < MPQ2_GROUP; ++i) {
                            const int v = (h >> w & 1) ? (int8_t) (q >> (8*(i >> 2)))
                                                       : MPQ2_GRID_STEP * (int) ((q >> (8*(i & 3) + 2*(i >> 2))) & 3) - z;
                            sw += v * a[i];
                        }
                        sumi[w/2] += m * sw;
                    }
                    const float dx = mpq2_d_from_code((uint8_t) (h >> 24));
                    sumf += dx * (y[c].dy[2*ib] * (float) sumi[0] + y[c].dy[2*ib + 1] * (float) sumi[1]);
                }
                s[c*bs + g*MPQ2_RP_ROWS + r] = sumf;
            }
        }
    }
}

#if defined(__AVX2__) || (defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__))
#include "arch/x86/mpq2-repack.c"
#elif defined(__ARM_NEON) && defined(__aarch64__)
#include "arch/arm/mpq2-repack.c"
#endif

void ggml_mpq2x16_mul(int n, float * s, size_t bs, const block_mpq2x16 * x, int64_t ngroups,
                      const mpq2_act * y, int ncols) {
#if defined(MPQ2_X16_SIMD)
    MPQ2_X16_SIMD(n, s, bs, x, ngroups, y, ncols);
#else
    ggml_mpq2x16_mul_generic(n, s, bs, x, ngroups, y, ncols);
#endif
}

const char * ggml_mpq2x16_impl(void) {
#if defined(MPQ2_X16_SIMD)
    return MPQ2_X16_SIMD_NAME;
#else
    return "generic";
#endif
}
