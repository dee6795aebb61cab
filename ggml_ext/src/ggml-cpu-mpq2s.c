// MPQ2S in the CPU backend: the scalar dot product against Q8_0R, the 16-row repacking and its
// kernels (scalar reference, AVX-512, AVX2, NEON) (docs/FORMAT.md, "MPQ2S"). Compiled into every
// ggml-cpu variant; tests/simd/mpq2s_kernel_check.c also compiles it standalone, as tests/simd/
// does for MPQ2.
#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include "ggml-cpu-impl.h"
#include "simd-mappings.h"
#include "ggml-cpu-mpq2-repack.h"   // mpq2_act: the activation columns of the repacked kernels
#include "ggml-mpq2s.h"

#include <assert.h>
#include <string.h>

// Word w of a block: grid g's integer dot with 16 activations, in units of d * mult.
static inline int mpq2s_word_dot(uint32_t q, int zero, const int8_t * a) {
    int s = 0;
    for (int i = 0; i < 16; ++i) {
        s += (MPQ2_GRID_STEP * (int) ((q >> (8*(i & 3) + 2*(i >> 2))) & 3) - zero) * a[i];
    }
    return s;
}

// One block's float sum from its four Q8_0 blocks' integer sums (two words each), in a fixed
// order: the row-wise kernels (scalar and SIMD) and the scalar 16-row reference all end here, so
// they agree bit for bit.
static inline float mpq2s_block_float(uint32_t hdr, const int32_t sumi[4], const float dy[4]) {
    const float dx = mpq2_d_from_code((uint8_t) (hdr >> 24));
    return dx * (((dy[0] * (float) sumi[0] + dy[1] * (float) sumi[1]) + dy[2] * (float) sumi[2]) + dy[3] * (float) sumi[3]);
}

static inline float mpq2s_block_dot(uint32_t hdr, const uint32_t * qs, size_t qs_stride, const int8_t * const a[4],
                                    const float dy[4]) {
    int32_t sumi[4] = { 0, 0, 0, 0 };
    for (int w = 0; w < MPQ2S_WORDS; ++w) {
        const int g = (int) (hdr >> (MPQ2S_GRID_BITS*w)) & 7;
        sumi[w/2] += mpq2s_grid_mult[g] * mpq2s_word_dot(qs[w*qs_stride], mpq2s_grid_zero[g], a[w/2] + (w & 1)*16);
    }
    return mpq2s_block_float(hdr, sumi, dy);
}

// Word w's grid as the int16 pair (16 m, -z m) in one int32 (low half first): m (16 S - z A) is
// then one multiply-add of the pair (S, A). The SIMD kernels look it up by the grid index.
static inline int32_t mpq2s_grid_pair(int g) {
    const int m = mpq2s_grid_mult[g], z = mpq2s_grid_zero[g];
    return (int32_t) ((uint32_t) (uint16_t) (MPQ2_GRID_STEP*m) | (uint32_t) (uint16_t) (-z*m) << 16);
}

void ggml_vec_dot_mpq2s_q8_0_generic(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                                     const void * GGML_RESTRICT vy, size_t by, int nrc) {
    assert(n % QK_MPQ2S == 0);
    assert(nrc == 1);
    GGML_UNUSED(nrc); GGML_UNUSED(bx); GGML_UNUSED(by); GGML_UNUSED(bs);
    const block_mpq2s * GGML_RESTRICT x = (const block_mpq2s *) vx;
    const block_q8_0  * GGML_RESTRICT y = (const block_q8_0 *) vy;
    float sumf = 0.0f;
    for (int ib = 0; ib < n / QK_MPQ2S; ++ib) {
        const int8_t * a[4];
        float dy[4];
        for (int j = 0; j < 4; ++j) {
            a[j]  = y[4*ib + j].qs;
            dy[j] = GGML_CPU_FP16_TO_FP32(y[4*ib + j].d);
        }
        sumf += mpq2s_block_dot(x[ib].hdr, x[ib].qs, 1, a, dy);
    }
    *s = sumf;
}

void quantize_row_mpq2s(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) {
    quantize_row_mpq2s_ref(x, (block_mpq2s *) y, k);
}

// Rows 16g..16g+15 of src (nrows x n weights, nrows a multiple of 16) into group g of dst.
void ggml_mpq2s_repack_x16(block_mpq2sx16 * dst, const block_mpq2s * src, int64_t nrows, int64_t n) {
    assert(nrows % 16 == 0 && n % QK_MPQ2S == 0);
    const int64_t nb = n / QK_MPQ2S;
    for (int64_t g = 0; g < nrows / 16; ++g) {
        for (int64_t ib = 0; ib < nb; ++ib) {
            block_mpq2sx16 * d = dst + g*nb + ib;
            for (int r = 0; r < 16; ++r) {
                const block_mpq2s * b = src + (g*16 + r)*nb + ib;
                d->hdr[r] = b->hdr;
                for (int w = 0; w < MPQ2S_WORDS; ++w) d->qs[w][r] = b->qs[w];
            }
        }
    }
}

// The same integers and float order as ggml_vec_dot_mpq2s_q8_0_generic, from the repacked layout:
// s[c*bs + 16g + r] = row 16g + r . column c.
void ggml_mpq2sx16_mul_generic(int n, float * s, size_t bs, const block_mpq2sx16 * x, int64_t ngroups,
                               const mpq2_act * y, int ncols) {
    assert(n % QK_MPQ2S == 0);
    const int nb = n / QK_MPQ2S;
    for (int64_t g = 0; g < ngroups; ++g) {
        for (int c = 0; c < ncols; ++c) {
            for (int r = 0; r < 16; ++r) {
                float sumf = 0.0f;
                for (int ib = 0; ib < nb; ++ib) {
                    const block_mpq2sx16 * xb = x + g*nb + ib;
                    const int8_t * a[4] = { y[c].q[4*ib].qs, y[c].q[4*ib + 1].qs, y[c].q[4*ib + 2].qs, y[c].q[4*ib + 3].qs };
                    sumf += mpq2s_block_dot(xb->hdr[r], &xb->qs[0][r], 16, a, y[c].dy + 4*ib);
                }
                s[c*bs + g*16 + r] = sumf;
            }
        }
    }
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>

// As MPQ2's AVX-512 kernel (arch/x86/mpq2-repack.c), lane r = row r: per word, the 2-bit codes
// as 4 byte vectors, 4 vpdpbusd from (A << 16 | 0x8000), one xor leaves the int16 pair (S, A), and
// one vpmaddwd with the lane's (16 m, -z m) gives m (16 S - z A). MPQ2S's pair comes from an
// 8-entry table (16 lanes: entries 8..15 repeat 0..7, so index bit 3 needs no mask).
#if defined(__AVX512VNNI__)
#define MPQ2S_DOT(acc, u, a)      _mm512_dpbusd_epi32((acc), (u), (a))
#define MPQ2S_MADD_ACC(acc, p, q) _mm512_dpwssd_epi32((acc), (p), (q))
#else
#define MPQ2S_DOT(acc, u, a)      _mm512_add_epi32((acc), _mm512_madd_epi16(_mm512_maddubs_epi16((u), (a)), _mm512_set1_epi16(1)))
#define MPQ2S_MADD_ACC(acc, p, q) _mm512_add_epi32((acc), _mm512_madd_epi16((p), (q)))
#endif

static inline __attribute__((always_inline)) __m512i mpq2s_codes(__m512i q, int s) {
#if defined(__GFNI__)
    const uint64_t sel = (uint64_t) (1u << (2*s)) << 56 | (uint64_t) (2u << (2*s)) << 48;
    return _mm512_gf2p8affine_epi64_epi8(q, _mm512_set1_epi64((long long) sel), 0);
#else
    return _mm512_and_si512(_mm512_srli_epi32(q, (unsigned) (2*s)), _mm512_set1_epi8(3));
#endif
}

static inline __attribute__((always_inline)) void mpq2s_x16_group(int nb, float * s, size_t bs, const block_mpq2sx16 * xg,
                                                                const mpq2_act * y, const int nc, __m512i pt) {
    __m512 acc[8];
    for (int c = 0; c < nc; ++c) acc[c] = _mm512_setzero_ps();
    for (int ib = 0; ib < nb; ++ib) {
        const block_mpq2sx16 * xb = xg + ib;
        const __m512i hdr = _mm512_loadu_si512(xb->hdr);
        const __m512 dx = _mm512_castsi512_ps(_mm512_add_epi32(
            _mm512_and_si512(_mm512_srli_epi32(hdr, 3), _mm512_set1_epi32(0x1FE00000)), _mm512_set1_epi32(87 << 23)));
        for (int h = 0; h < 4; ++h) {
            __m512i u[8];
            for (int c = 0; c < nc; ++c) u[c] = _mm512_setzero_si512();
            for (int w = 2*h; w < 2*h + 2; ++w) {
                const __m512i q    = _mm512_loadu_si512(xb->qs[w]);
                const __m512i pair = _mm512_permutexvar_epi32(_mm512_srli_epi32(hdr, (unsigned) (MPQ2S_GRID_BITS*w)), pt);
                __m512i cs[4];
                for (int k = 0; k < 4; ++k) cs[k] = mpq2s_codes(q, k);
                for (int c = 0; c < nc; ++c) {
                    __m512i t = _mm512_set1_epi32(y[c].ahi[8*ib + w]);
                    for (int k = 0; k < 4; ++k) {
                        int32_t a4;
                        memcpy(&a4, y[c].q[4*ib + h].qs + (w & 1)*16 + 4*k, sizeof(a4));
                        t = MPQ2S_DOT(t, cs[k], _mm512_set1_epi32(a4));
                    }
                    u[c] = MPQ2S_MADD_ACC(u[c], _mm512_xor_si512(t, _mm512_set1_epi32(0x8000)), pair);
                }
            }
            for (int c = 0; c < nc; ++c) {
                acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(u[c]), _mm512_mul_ps(dx, _mm512_set1_ps(y[c].dy[4*ib + h])), acc[c]);
            }
        }
    }
    for (int c = 0; c < nc; ++c) _mm512_storeu_ps(s + c*bs, acc[c]);
}

static void mpq2s_x16_mul_avx512(int n, float * s, size_t bs, const block_mpq2sx16 * x, int64_t ngroups,
                                 const mpq2_act * y, int ncols) {
    assert(n % QK_MPQ2S == 0);
    const int nb = n / QK_MPQ2S;
    int32_t pairs[16];
    for (int i = 0; i < 16; ++i) pairs[i] = mpq2s_grid_pair(i & 7);
    const __m512i pt = _mm512_loadu_si512(pairs);
    for (int64_t g = 0; g < ngroups; ++g) {
        const block_mpq2sx16 * xg = x + g*nb;
        float * sg = s + g*16;
        int c = 0;
        for (; c + 8 <= ncols; c += 8) mpq2s_x16_group(nb, sg + c*bs, bs, xg, y + c, 8, pt);
        if (c + 4 <= ncols) { mpq2s_x16_group(nb, sg + c*bs, bs, xg, y + c, 4, pt); c += 4; }
        if (c + 2 <= ncols) { mpq2s_x16_group(nb, sg + c*bs, bs, xg, y + c, 2, pt); c += 2; }
        if (c < ncols) mpq2s_x16_group(nb, sg + c*bs, bs, xg, y + c, 1, pt);
    }
}
#define MPQ2S_X16_SIMD mpq2s_x16_mul_avx512
#define MPQ2S_X16_SIMD_NAME "avx512"

#elif defined(__AVX2__)
#include <immintrin.h>

// AVX2: the same scheme on 8 lanes, a group's 16 rows in two passes of 8. The grid's (16 m, -z m)
// pair is one vpermd of an 8-entry table (vpermd reads index bits 0..2 only): where MPQ2's AVX2
// kernel needs two lookups and a vpmulld per word, MPQ2S needs one lookup.
#if defined(__AVXVNNI__)
#define MPQ2S_DOT8(acc, u, a) _mm256_dpbusd_avx_epi32((acc), (u), (a))
#define MPQ2S_HAS_VNNI8 1
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define MPQ2S_DOT8(acc, u, a) _mm256_dpbusd_epi32((acc), (u), (a))
#define MPQ2S_HAS_VNNI8 1
#else
#define MPQ2S_DOT8(acc, u, a) _mm256_add_epi32((acc), _mm256_madd_epi16(_mm256_maddubs_epi16((u), (a)), _mm256_set1_epi16(1)))
#define MPQ2S_HAS_VNNI8 0
#endif

static inline __attribute__((always_inline)) __m256i mpq2s_codes8(__m256i q, int s) {
#if defined(__GFNI__)
    const uint64_t sel = (uint64_t) (1u << (2*s)) << 56 | (uint64_t) (2u << (2*s)) << 48;
    return _mm256_gf2p8affine_epi64_epi8(q, _mm256_set1_epi64x((long long) sel), 0);
#else
    return _mm256_and_si256(_mm256_srli_epi32(q, 2*s), _mm256_set1_epi8(3));
#endif
}

// 8 rows (half `half` of a group) times nc (1 or 2) columns.
static inline __attribute__((always_inline)) void mpq2s_x16_half(int nb, float * s, size_t bs, const block_mpq2sx16 * xg,
                                                               int half, const mpq2_act * y, const int nc, __m256i pt) {
    __m256 acc[2];
    for (int c = 0; c < nc; ++c) acc[c] = _mm256_setzero_ps();
    for (int ib = 0; ib < nb; ++ib) {
        const block_mpq2sx16 * xb = xg + ib;
        const __m256i hdr = _mm256_loadu_si256((const __m256i *) (xb->hdr + 8*half));
        const __m256 dx = _mm256_castsi256_ps(_mm256_add_epi32(
            _mm256_and_si256(_mm256_srli_epi32(hdr, 3), _mm256_set1_epi32(0x1FE00000)), _mm256_set1_epi32(87 << 23)));
        for (int h = 0; h < 4; ++h) {
            __m256i u[2] = { _mm256_setzero_si256(), _mm256_setzero_si256() };
            for (int w = 2*h; w < 2*h + 2; ++w) {
                const __m256i q    = _mm256_loadu_si256((const __m256i *) (xb->qs[w] + 8*half));
                const __m256i pair = _mm256_permutevar8x32_epi32(pt, _mm256_srli_epi32(hdr, MPQ2S_GRID_BITS*w));
                __m256i cs[4];
                for (int k = 0; k < 4; ++k) cs[k] = mpq2s_codes8(q, k);
                for (int c = 0; c < nc; ++c) {
                    const int8_t * a = y[c].q[4*ib + h].qs + (w & 1)*16;
                    __m256i t = _mm256_set1_epi32(y[c].ahi[8*ib + w]);
                    if (!MPQ2S_HAS_VNNI8 && nc == 1) {
                        // one column without VNNI: the four vpmaddubsw add up in int16 (codes 0..3:
                        // |sum| <= 4*762), then one vpmaddwd by ones instead of four: 45 against 49 us
                        // (best of 3) in bench/bench_mpq2s_x16.c's AVX2 build; the same with two
                        // columns was slower (GCC 12, -O2), so they keep the four
                        __m256i b[4];
                        for (int k = 0; k < 4; ++k) {
                            int32_t a4;
                            memcpy(&a4, a + 4*k, sizeof(a4));
                            b[k] = _mm256_set1_epi32(a4);
                        }
                        const __m256i p = _mm256_add_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(cs[0], b[0]), _mm256_maddubs_epi16(cs[1], b[1])),
                                                           _mm256_add_epi16(_mm256_maddubs_epi16(cs[2], b[2]), _mm256_maddubs_epi16(cs[3], b[3])));
                        t = _mm256_add_epi32(t, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
                    } else {
                        for (int k = 0; k < 4; ++k) {
                            int32_t a4;
                            memcpy(&a4, a + 4*k, sizeof(a4));
                            t = MPQ2S_DOT8(t, cs[k], _mm256_set1_epi32(a4));
                        }
                    }
                    u[c] = _mm256_add_epi32(u[c], _mm256_madd_epi16(_mm256_xor_si256(t, _mm256_set1_epi32(0x8000)), pair));
                }
            }
            for (int c = 0; c < nc; ++c) {
                const __m256 sc = _mm256_mul_ps(dx, _mm256_set1_ps(y[c].dy[4*ib + h]));
#if defined(__FMA__)
                acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(u[c]), sc, acc[c]);
#else
                acc[c] = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(u[c]), sc), acc[c]);
#endif
            }
        }
    }
    for (int c = 0; c < nc; ++c) _mm256_storeu_ps(s + c*bs + 8*half, acc[c]);
}

static void mpq2s_x16_mul_avx2(int n, float * s, size_t bs, const block_mpq2sx16 * x, int64_t ngroups,
                               const mpq2_act * y, int ncols) {
    assert(n % QK_MPQ2S == 0);
    const int nb = n / QK_MPQ2S;
    int32_t pairs[8];
    for (int i = 0; i < 8; ++i) pairs[i] = mpq2s_grid_pair(i);
    const __m256i pt = _mm256_loadu_si256((const __m256i *) pairs);
    for (int64_t g = 0; g < ngroups; ++g) {
        const block_mpq2sx16 * xg = x + g*nb;
        float * sg = s + g*16;
        for (int half = 0; half < 2; ++half) {
            int c = 0;
            for (; c + 2 <= ncols; c += 2) mpq2s_x16_half(nb, sg + c*bs, bs, xg, half, y + c, 2, pt);
            if (c < ncols) mpq2s_x16_half(nb, sg + c*bs, bs, xg, half, y + c, 1, pt);
        }
    }
}
#define MPQ2S_X16_SIMD mpq2s_x16_mul_avx2
#define MPQ2S_X16_SIMD_NAME "avx2"

#elif defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>

// AArch64 NEON, as MPQ2's NEON 16-row kernel (arch/arm/mpq2-repack.c): a quad of 4 rows per
// 128-bit vector; per word, 4 sdot by element (smull/smlal without dotprod) give S = sum c a per
// row, and the exact m (16 S - z A) / 8 = 2m S - (z/8) m A comes from 2m and (z/8) m, each one
// tbl of a 16-byte table by the lane's grid index (z is 16, 24 or 32: z/8 is exact); the 8 goes
// into the block scale. No int8 words, so no second pass.
typedef struct { uint8x16_t m2, zm; } mpq2s_neon_tabs;

static inline __attribute__((always_inline)) int32x4_t mpq2s_neon_dot4(int32x4_t acc, const int8x16_t * c, int8x16_t a) {
#if defined(__ARM_FEATURE_DOTPROD)
    acc = vdotq_laneq_s32(acc, c[0], a, 0);
    acc = vdotq_laneq_s32(acc, c[1], a, 1);
    acc = vdotq_laneq_s32(acc, c[2], a, 2);
    return vdotq_laneq_s32(acc, c[3], a, 3);
#else   // the codes are 0..3: the four products of a lane add up in int16
    const int32x4_t a32 = vreinterpretq_s32_s8(a);
    int16x8_t lo = vdupq_n_s16(0), hi = vdupq_n_s16(0);
    int8x16_t b;
#define MPQ2S_NEON_MLAL(k) \
    b  = vreinterpretq_s8_s32(vdupq_laneq_s32(a32, k)); \
    lo = vmlal_s8(lo, vget_low_s8(c[k]), vget_low_s8(b)); \
    hi = vmlal_high_s8(hi, c[k], b);
    MPQ2S_NEON_MLAL(0) MPQ2S_NEON_MLAL(1) MPQ2S_NEON_MLAL(2) MPQ2S_NEON_MLAL(3)
#undef MPQ2S_NEON_MLAL
    return vpadalq_s16(acc, vpaddq_s16(lo, hi));
#endif
}

// Rows 4 qd .. 4 qd + 3 of a group times NC (1..4) columns. A block's quarters (one Q8_0 block,
// two words each) go to float one at a time, so only one quarter's integer sums are live: with
// all four (and 4 columns) the 32 registers spilled (bench/mca_kernels.py).
static inline __attribute__((always_inline)) void mpq2s_x16_neon_tile(int nb, float * s, size_t bs, const block_mpq2sx16 * xg,
                                                                    int qd, const mpq2_act * y, const int NC,
                                                                    const mpq2s_neon_tabs * tabs) {
    float32x4_t acc[4];
    for (int c = 0; c < NC; ++c) acc[c] = vdupq_n_f32(0.0f);
    const uint8x16_t three = vdupq_n_u8(3);
    for (int ib = 0; ib < nb; ++ib) {
        const block_mpq2sx16 * xb = xg + ib;
        const uint32x4_t hdr = vld1q_u32(xb->hdr + 4*qd);
        float32x4_t t[4];
        int32x4_t av[4][2];   // the 8 words' activation sums A of each column
        for (int c = 0; c < NC; ++c) {
            av[c][0] = vshrq_n_s32(vld1q_s32(y[c].ahi + 8*ib), 16);       // ahi = A << 16 | 0x8000
            av[c][1] = vshrq_n_s32(vld1q_s32(y[c].ahi + 8*ib + 4), 16);
        }
#if defined(__clang__)
#pragma clang loop unroll(full)
#else
#pragma GCC unroll 4
#endif
        for (int h = 0; h < 4; ++h) {
            int32x4_t u[4];
            for (int c = 0; c < NC; ++c) u[c] = vdupq_n_s32(0);
            // unrolled whole: the lane of vmlsq_laneq_s32 must be a constant
#if defined(__clang__)
#pragma clang loop unroll(full)
#else
#pragma GCC unroll 2
#endif
            for (int w = 2*h; w < 2*h + 2; ++w) {
                const uint8x16_t q   = vreinterpretq_u8_u32(vld1q_u32(xb->qs[w] + 4*qd));
                const uint8x16_t idx = vreinterpretq_u8_u32(vorrq_u32(vandq_u32(vshlq_u32(hdr, vdupq_n_s32(-MPQ2S_GRID_BITS*w)),
                                                                                vdupq_n_u32(7)), vdupq_n_u32(0xFFFFFF00u)));
                const int32x4_t m2 = vreinterpretq_s32_u8(vqtbl1q_u8(tabs->m2, idx));   // bytes 1..3 out of range: 0
                const int32x4_t zm = vreinterpretq_s32_u8(vqtbl1q_u8(tabs->zm, idx));
                const int8x16_t cs[4] = { vreinterpretq_s8_u8(vandq_u8(q, three)),
                                          vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(q, 2), three)),
                                          vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(q, 4), three)),
                                          vreinterpretq_s8_u8(vshrq_n_u8(q, 6)) };
                for (int c = 0; c < NC; ++c) {
                    const int8x16_t a = vld1q_s8(y[c].q[4*ib + h].qs + (w & 1)*16);
                    const int32x4_t S = mpq2s_neon_dot4(vdupq_n_s32(0), cs, a);
                    int32x4_t v = vmlaq_s32(u[c], S, m2);                   // m (16 S - z A) / 8
                    switch (w & 3) {
                        case 0:  v = vmlsq_laneq_s32(v, zm, av[c][w/4], 0); break;
                        case 1:  v = vmlsq_laneq_s32(v, zm, av[c][w/4], 1); break;
                        case 2:  v = vmlsq_laneq_s32(v, zm, av[c][w/4], 2); break;
                        default: v = vmlsq_laneq_s32(v, zm, av[c][w/4], 3); break;
                    }
                    u[c] = v;
                }
            }
            for (int c = 0; c < NC; ++c) {
                const float32x4_t f = vmulq_n_f32(vcvtq_f32_s32(u[c]), y[c].dy[4*ib + h]);
                t[c] = h == 0 ? f : vaddq_f32(t[c], f);
            }
        }
        // d * 8 of every lane (E6M2 in the top byte: bits (code << 21) + ((87 + 3) << 23) of a float)
        const float32x4_t dx8 = vreinterpretq_f32_u32(vaddq_u32(vandq_u32(vshrq_n_u32(hdr, 3), vdupq_n_u32(0x1FE00000u)),
                                                                vdupq_n_u32((87u + 3u) << 23)));
        for (int c = 0; c < NC; ++c) acc[c] = vfmaq_f32(acc[c], t[c], dx8);
    }
    for (int c = 0; c < NC; ++c) vst1q_f32(s + c*bs + 4*qd, acc[c]);
}

// One column (gemv, token generation), a quad of rows at a time; separate functions so that
// bench/mca_kernels.py finds each loop by name.
static __attribute__((noinline)) void mpq2s_x16_neon_gemv(int nb, float * s, size_t bs, const block_mpq2sx16 * xg,
                                                          const mpq2_act * y, const mpq2s_neon_tabs * tabs) {
    for (int qd = 0; qd < 4; ++qd) mpq2s_x16_neon_tile(nb, s, bs, xg, qd, y, 1, tabs);
}

// nc (2..4) columns share each decoded word (gemm, prompts).
static __attribute__((noinline)) void mpq2s_x16_neon_gemm(int nb, float * s, size_t bs, const block_mpq2sx16 * xg,
                                                          const mpq2_act * y, int nc, const mpq2s_neon_tabs * tabs) {
    for (int qd = 0; qd < 4; ++qd) {
        switch (nc) {
            case 4:  mpq2s_x16_neon_tile(nb, s, bs, xg, qd, y, 4, tabs); break;
            case 3:  mpq2s_x16_neon_tile(nb, s, bs, xg, qd, y, 3, tabs); break;
            default: mpq2s_x16_neon_tile(nb, s, bs, xg, qd, y, 2, tabs); break;
        }
    }
}

static void mpq2s_x16_mul_neon(int n, float * s, size_t bs, const block_mpq2sx16 * x, int64_t ngroups,
                               const mpq2_act * y, int ncols) {
    assert(n % QK_MPQ2S == 0);
    const int nb = n / QK_MPQ2S;
    uint8_t m2[16] = {0}, zm[16] = {0};
    for (int i = 0; i < 8; ++i) {
        m2[i] = (uint8_t) (2*mpq2s_grid_mult[i]);
        zm[i] = (uint8_t) (mpq2s_grid_zero[i] / 8 * mpq2s_grid_mult[i]);
    }
    const mpq2s_neon_tabs tabs = { vld1q_u8(m2), vld1q_u8(zm) };
    for (int64_t g = 0; g < ngroups; ++g) {
        const block_mpq2sx16 * xg = x + g*nb;
        float * sg = s + g*16;
        int c = 0;
        for (; c + 4 <= ncols; c += 4) mpq2s_x16_neon_gemm(nb, sg + c*bs, bs, xg, y + c, 4, &tabs);
        if (c + 2 <= ncols) { mpq2s_x16_neon_gemm(nb, sg + c*bs, bs, xg, y + c, ncols - c, &tabs); c = ncols; }
        if (c < ncols) mpq2s_x16_neon_gemv(nb, sg + c*bs, bs, xg, y + c, &tabs);
    }
}
#define MPQ2S_X16_SIMD mpq2s_x16_mul_neon
#if defined(__ARM_FEATURE_DOTPROD)
#define MPQ2S_X16_SIMD_NAME "neon_dotprod"
#else
#define MPQ2S_X16_SIMD_NAME "neon"
#endif
#endif

// ---------------------------------------------------------------- row-wise SIMD
// One block's four integer sums, as mpq2s_block_dot's, for ggml_vec_dot_mpq2s_q8_0: per Q8_0
// block (two words), the codes in natural order (the word in every dword, shifted by 0, 2, 4, 6,
// masked: byte k of dword j is the code of weight 4j + k), S = sum c a and A = sum a by pairs,
// and m (16 S - z A) by one multiply-add with the word's grid pair. The integers are exact, and
// the float sum is mpq2s_block_float's: the same bits as the scalar dot product.
#if defined(__AVX2__)
static inline void mpq2s_row_block_sums(const block_mpq2s * x, const block_q8_0 * y, int32_t sumi[4]) {
    const __m256i shifts = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    __m256i s[4];
    for (int j = 0; j < 4; ++j) {
        const uint32_t w0 = x->qs[2*j], w1 = x->qs[2*j + 1];
        const __m256i a = _mm256_loadu_si256((const __m256i *) y[j].qs);
        const __m256i c = _mm256_and_si256(_mm256_srlv_epi32(_mm256_setr_epi32((int) w0, (int) w0, (int) w0, (int) w0,
            (int) w1, (int) w1, (int) w1, (int) w1), shifts), _mm256_set1_epi8(3));
        const __m256i P = _mm256_maddubs_epi16(c, a);                          // codes 0..3: no saturation
        const __m256i A = _mm256_maddubs_epi16(_mm256_set1_epi8(1), a);
        const int32_t p0 = mpq2s_grid_pair((int) (x->hdr >> (MPQ2S_GRID_BITS*2*j)) & 7);
        const int32_t p1 = mpq2s_grid_pair((int) (x->hdr >> (MPQ2S_GRID_BITS*(2*j + 1))) & 7);
        const __m256i pair = _mm256_setr_epi32(p0, p0, p0, p0, p1, p1, p1, p1);
        s[j] = _mm256_add_epi32(_mm256_madd_epi16(_mm256_unpacklo_epi16(P, A), pair),
                                _mm256_madd_epi16(_mm256_unpackhi_epi16(P, A), pair));
    }
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
    _mm_storeu_si128((__m128i *) sumi, _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1)));
}
#define MPQ2S_ROW_SIMD_NAME "avx2"
#elif defined(__ARM_NEON) && defined(__aarch64__)
static inline int32x4_t mpq2s_neon_word(uint32_t q, int8x16_t a, int32_t pair) {
    const int32x4_t shifts = { 0, -2, -4, -6 };
    const int8x16_t c = vreinterpretq_s8_u32(vandq_u32(vshlq_u32(vdupq_n_u32(q), shifts), vdupq_n_u32(0x03030303)));
#if defined(__ARM_FEATURE_DOTPROD)
    const int32x4_t S = vdotq_s32(vdupq_n_s32(0), c, a);
    const int32x4_t A = vdotq_s32(vdupq_n_s32(0), vdupq_n_s8(1), a);
#else
    const int32x4_t S = vpaddlq_s16(vpaddq_s16(vmull_s8(vget_low_s8(c), vget_low_s8(a)), vmull_high_s8(c, a)));
    const int32x4_t A = vpaddlq_s16(vpaddlq_s8(a));
#endif
    return vmlaq_n_s32(vmulq_n_s32(S, (int16_t) (pair & 0xFFFF)), A, (int16_t) ((uint32_t) pair >> 16));
}

static inline void mpq2s_row_block_sums(const block_mpq2s * x, const block_q8_0 * y, int32_t sumi[4]) {
    for (int j = 0; j < 4; ++j) {
        const int32x4_t s0 = mpq2s_neon_word(x->qs[2*j],     vld1q_s8(y[j].qs),      mpq2s_grid_pair((int) (x->hdr >> (MPQ2S_GRID_BITS*2*j)) & 7));
        const int32x4_t s1 = mpq2s_neon_word(x->qs[2*j + 1], vld1q_s8(y[j].qs + 16), mpq2s_grid_pair((int) (x->hdr >> (MPQ2S_GRID_BITS*(2*j + 1))) & 7));
        sumi[j] = vaddvq_s32(vaddq_s32(s0, s1));
    }
}
#if defined(__ARM_FEATURE_DOTPROD)
#define MPQ2S_ROW_SIMD_NAME "neon_dotprod"
#else
#define MPQ2S_ROW_SIMD_NAME "neon"
#endif
#endif

// Row-wise (ggml's vec_dot): for weights outside the repack buffer (a row count that is not a
// multiple of 16, 3-D expert weights, --no-repack).
void ggml_vec_dot_mpq2s_q8_0(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                             const void * GGML_RESTRICT vy, size_t by, int nrc) {
#if defined(MPQ2S_ROW_SIMD_NAME)
    assert(n % QK_MPQ2S == 0);
    assert(nrc == 1);
    GGML_UNUSED(nrc); GGML_UNUSED(bx); GGML_UNUSED(by); GGML_UNUSED(bs);
    const block_mpq2s * GGML_RESTRICT x = (const block_mpq2s *) vx;
    const block_q8_0  * GGML_RESTRICT y = (const block_q8_0 *) vy;
    float sumf = 0.0f;
    for (int ib = 0; ib < n / QK_MPQ2S; ++ib) {
        int32_t sumi[4];
        float dy[4];
        mpq2s_row_block_sums(x + ib, y + 4*ib, sumi);
        for (int j = 0; j < 4; ++j) dy[j] = GGML_CPU_FP16_TO_FP32(y[4*ib + j].d);
        sumf += mpq2s_block_float(x[ib].hdr, sumi, dy);
    }
    *s = sumf;
#else
    ggml_vec_dot_mpq2s_q8_0_generic(n, s, bs, vx, bx, vy, by, nrc);
#endif
}

const char * ggml_vec_dot_mpq2s_impl(void) {
#if defined(MPQ2S_ROW_SIMD_NAME)
    return MPQ2S_ROW_SIMD_NAME;
#else
    return "generic";
#endif
}

void ggml_mpq2sx16_mul(int n, float * s, size_t bs, const block_mpq2sx16 * x, int64_t ngroups,
                       const mpq2_act * y, int ncols) {
#if defined(MPQ2S_X16_SIMD)
    MPQ2S_X16_SIMD(n, s, bs, x, ngroups, y, ncols);
#else
    ggml_mpq2sx16_mul_generic(n, s, bs, x, ngroups, y, ncols);
#endif
}

const char * ggml_mpq2sx16_impl(void) {
#if defined(MPQ2S_X16_SIMD)
    return MPQ2S_X16_SIMD_NAME;
#else
    return "generic";
#endif
}
