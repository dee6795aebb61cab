// libFuzzer target: GGUF files and raw MPQ2 blocks through the patched ggml.
//
// Built by tests/fuzz/build_fuzzer.py (clang, -fsanitize=fuzzer,address,undefined) from the
// patched llama.cpp sources in build/llama.cpp-src (gguf.cpp, ggml.c, ggml-quants.c,
// ggml-threading.cpp) and ours (ggml_ext/src/ggml-mpq2*.c, ggml-cpu-mpq2*.c). See docs/ROBUSTNESS.md.
//
// An input that starts with "GGUF" is a file:
//   0. gguf_init_from_buffer without a ggml context, to screen out an upstream abort (below).
//   1. gguf_init_from_buffer(no_alloc=true): header, key/values and tensor table only; every
//      key, value and tensor info is read back through the getters.
//   2. gguf_init_from_file_ptr(no_alloc=false) on the same bytes (fmemopen): tensor data read
//      into a ggml context. Every tensor goes through ggml_validate_row_data (what llama.cpp's
//      --check-tensors runs); for MPQ2 tensors also mpq2_validate_row_data, and only when that
//      passes: dequantize_row_mpq2 and the vec_dot kernels (generic and this build's SIMD one)
//      against a Q8_0 vector, row by row, the 2x2 kernel (nrc = 2) on the first row, and the
//      repacked 16-row kernels (ggml_mpq2_repack_x16, ggml_mpq2_act_finish, ggml_mpq2x16_mul
//      and its _generic reference) on the tensor's blocks. MPQ2R tensors the same (same blocks
//      and kernels, decoded turned back too); Q8_0R tensors: validation and the decode; MPQ2S
//      tensors: validation, the decode, the row-wise dot (scalar and SIMD) and the 16-row kernels.
// Any other input is raw MPQ2 bytes: validate, dequantize (any bit pattern must be memory
// safe), and the dot products (row-wise, 2x2, repacked) when validation passed; the same bytes
// are also read as MPQ2S blocks (36 bytes each; every bit pattern is a valid MPQ2S block).
//
// Oracles, besides the sanitizers: an independent decoder and validator written here from
// docs/FORMAT.md must agree bit for bit with the C code; every block decodes to finite values;
// both dot kernels agree with a double-precision sum over the dequantized row.
//
// Upstream limits avoided (docs/ROBUSTNESS.md):
//  - a tensor shape that gguf.cpp accepts and ggml_new_tensor_impl aborts on (see
//    ggml_new_tensor_would_abort); such inputs stop after pass 0.
//  - with no_alloc=false, gguf.cpp allocates the data size the tensor table claims before it
//    notices that the file is shorter: a few bytes can claim terabytes and GGML_ASSERT-abort in
//    ggml_init. Pass 2 only runs when the claimed data ends within the input or at most
//    MAX_MISSING_DATA bytes past it (so the "file too short" path is still exercised).
//    llama.cpp's model loader uses no_alloc=true and checks the bounds itself.

// assert() must stay on: the C code's preconditions (nrc, row counts, multiples of 64) are
// oracles too. tests/fuzz/build_fuzzer.py builds with -UNDEBUG and forces fuzz_asserts_on.h
// into every file; tests/test_fuzz.py::test_fuzzer_asserts_fire proves they fire.
#ifdef NDEBUG
#error "the fuzz target must be built with assert() on (-UNDEBUG, not -DNDEBUG=0)"
#endif

#include "ggml.h"
#include "ggml-impl.h"    // gguf_type_size
#include "gguf.h"
#include "ggml-mpq2.h"
#include "ggml-mpq2s.h"

#define GGML_COMMON_DECL_C
#include "ggml-common.h"
#include "ggml-cpu-mpq2-repack.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

static constexpr size_t MAX_MISSING_DATA = 1u << 20;   // bytes a table may claim past the input in pass 2
static constexpr int64_t MAX_DOT_ROWS = 4096;           // rows per tensor through dequantize/dot
static constexpr int64_t MAX_X16_BLOCKS = 4096;         // blocks per tensor through the repacked kernels

extern "C" {
// simd-mappings.h falls back to this table on x86 without F16C; ggml-cpu.c (not linked) owns it.
float ggml_table_f32_f16[1 << 16];
}

#define FUZZ_CHECK(cond, ...)                                                                        \
    do {                                                                                             \
        if (!(cond)) {                                                                               \
            fprintf(stderr, "fuzz_gguf_mpq2: check failed: %s (%s:%d): ", #cond, __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                                                            \
            fprintf(stderr, "\n");                                                                   \
            abort();                                                                                 \
        }                                                                                            \
    } while (0)

// ---------------------------------------------------------------- reference from docs/FORMAT.md

// IEEE half to float (the Q8_0 activations' scales), checked against ggml's at start-up.
static float ref_fp16_to_fp32(uint16_t h) {
    const uint32_t sign = (uint32_t) (h >> 15) << 31;
    const uint32_t exp = (h >> 10) & 0x1F;
    const uint32_t man = h & 0x3FF;
    float mag;
    if (exp == 0) {
        mag = std::ldexp((float) man, -24);                     // zero and subnormals
    } else if (exp == 0x1F) {
        uint32_t bits = 0x7F800000u | (man << 13);              // inf / nan, payload kept
        std::memcpy(&mag, &bits, 4);
    } else {
        mag = std::ldexp((float) (man | 0x400), (int) exp - 25);
    }
    uint32_t bits;
    std::memcpy(&bits, &mag, 4);
    bits |= sign;
    std::memcpy(&mag, &bits, 4);
    return mag;
}

static const int REF_MULT[8] = { 8, 10, 13, 16, 20, 25, 32, 40 };
static const int REF_ZERO[4] = { 16, 24, 32, 8 };

static uint16_t rd16(const uint8_t * p) { return (uint16_t) (p[0] | p[1] << 8); }
static uint32_t rd32(const uint8_t * p) { return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 | (uint32_t) p[3] << 24; }

// FORMAT.md "Block": dd = 2^((d >> 2) - 40) * (1 + (d & 3)/4), an E6M2 code.
static float ref_scale(uint8_t d) {
    return std::ldexp(1.0f + (float) (d & 3) / 4.0f, (d >> 2) - 40);
}

// Value of weight j (0..63) of the 20-byte block at p, as FORMAT.md "Decoding one weight":
// header meta (u16) | zero (u8) | d (u8), then four little-endian words.
static float ref_weight(const uint8_t * p, int j) {
    const uint16_t meta = rd16(p);
    const uint8_t zero = p[2];
    const float dd = ref_scale(p[3]);
    const int w = j / 16, i = j % 16;
    const uint32_t q = rd32(p + 4 + 4*w);
    const int m = REF_MULT[(meta >> (4 + 3*w)) & 7];
    int v;
    if (meta >> w & 1) {
        v = (int8_t) (uint8_t) (q >> (8*(i/4)));
    } else {
        v = 16 * (int) ((q >> (8*(i % 4) + 2*(i/4))) & 3) - REF_ZERO[(zero >> (2*w)) & 3];
    }
    return dd * (float) (m * v);
}

// FORMAT.md "Validation": size a multiple of 20; no -128 in a word the bitmap marks int8.
static bool ref_valid(const uint8_t * p, size_t n) {
    if (n % 20) {
        return false;
    }
    for (size_t b = 0; b < n / 20; ++b, p += 20) {
        const uint16_t meta = rd16(p);
        for (int w = 0; w < 4; ++w) {
            for (int k = 0; (meta >> w & 1) && k < 4; ++k) {
                if (p[4 + 4*w + k] == 0x80) {
                    return false;
                }
            }
        }
    }
    return true;
}

static bool same_float(float a, float b) {
    return (std::isnan(a) && std::isnan(b)) || std::memcmp(&a, &b, sizeof(float)) == 0;
}

// ---------------------------------------------------------------- MPQ2 rows

// Q8_0 activations for n weights (n % 64 == 0), in an exactly sized heap buffer.
static block_q8_0 * make_q8_0(int64_t n, uint32_t seed) {
    const int64_t nb = n / QK8_0;
    block_q8_0 * y = (block_q8_0 *) malloc(nb * sizeof(block_q8_0));
    uint32_t s = seed * 2654435761u + 1;
    for (int64_t b = 0; b < nb; ++b) {
        s = s * 1664525u + 1013904223u;
        // scales 2^-8 .. 2^0 as fp16 (exact): 0x1C00 = 2^-8, step 0x0400 doubles
        y[b].d = (ggml_half) (0x1C00 + 0x0400 * ((s >> 24) % 9));
        for (int i = 0; i < QK8_0; ++i) {
            s = s * 1664525u + 1013904223u;
            y[b].qs[i] = (int8_t) ((int) ((s >> 16) % 255) - 127);      // -127..127, as ggml writes
        }
    }
    return y;
}

// Exact dot of n float weights with Q8_0 activations in float64, and the sum of |terms| (the
// scale the kernels' rounding error is measured against).
static double ref_dot(const float * w, const block_q8_0 * a, int64_t n, double * mag) {
    double ref = 0.0;
    *mag = 0.0;
    for (int64_t j = 0; j < n; ++j) {
        const double t = (double) w[j] * ((double) ref_fp16_to_fp32(a[j / QK8_0].d) * a[j / QK8_0].qs[j % QK8_0]);
        ref += t;
        *mag += std::fabs(t);
    }
    return ref;
}

// One row of nb blocks at `row` (exactly nb*20 bytes, heap): decode and, if valid, dot.
static void check_row(const uint8_t * row, int64_t nb, bool valid, uint32_t seed) {
    const int64_t n = nb * QK_MPQ2;
    float * y = (float *) malloc((n ? n : 1) * sizeof(float));
    dequantize_row_mpq2((const block_mpq2 *) row, y, n);
    for (int64_t j = 0; j < n; ++j) {
        const float r = ref_weight(row + (j / QK_MPQ2) * sizeof(block_mpq2), (int) (j % QK_MPQ2));
        FUZZ_CHECK(same_float(y[j], r), "weight %lld: dequantize_row_mpq2 %a, FORMAT.md %a", (long long) j, y[j], r);
        // every header holds a finite positive scale: any block, even an invalid one, is finite
        FUZZ_CHECK(std::isfinite(y[j]), "block %lld decodes to %a", (long long) (j / QK_MPQ2), y[j]);
    }
    // MPQ2R: the same bytes, turned back per 64-block (FORMAT.md "MPQ2R"); still finite
    float * yr = (float *) malloc((n ? n : 1) * sizeof(float));
    dequantize_row_mpq2r(row, yr, n);
    mpq2r_rotate(yr, yr, n);
    for (int64_t j = 0; j < n; ++j) {
        FUZZ_CHECK(std::isfinite(yr[j]), "mpq2r block %lld decodes to a non-finite value", (long long) (j / QK_MPQ2));
        FUZZ_CHECK(std::fabs(yr[j] - y[j]) <= 1e-5f * std::fabs(y[j]) + 1e-5f * ref_scale(row[(j / QK_MPQ2) * sizeof(block_mpq2) + 3]) * 5120.0f,   // |m v| <= 40 * 128
                   "weight %lld: mpq2r turned back %a, mpq2 %a", (long long) j, yr[j], y[j]);
    }
    free(yr);
    if (valid && n > 0) {
        block_q8_0 * a = make_q8_0(n, seed);
        double mag;
        const double ref = ref_dot(y, a, n, &mag);
        float s_generic = NAN, s_kernel = NAN;
        ggml_vec_dot_mpq2_q8_0_generic((int) n, &s_generic, 0, row, 0, a, 0, 1);
        ggml_vec_dot_mpq2_q8_0((int) n, &s_kernel, 0, row, 0, a, 0, 1);
        const double tol = 1e-4 * mag + 1e-30;
        FUZZ_CHECK(std::fabs(s_generic - ref) <= tol, "generic dot %.9g, reference %.9g (sum|t| %.3g, n %lld)",
                   s_generic, ref, mag, (long long) n);
        FUZZ_CHECK(std::fabs(s_kernel - ref) <= 10 * tol, "%s dot %.9g, reference %.9g (sum|t| %.3g, n %lld)",
                   ggml_vec_dot_mpq2_q8_0_impl(), s_kernel, ref, mag, (long long) n);
        free(a);
    }
    free(y);
}

// The kernels that share a decode (checked only on valid blocks, as the CPU backend only ever
// sees those after --check-tensors, and an int8 -128 is outside every kernel's contract):
//  - 2x2 (nrc = 2, GGML_MPQ2_VEC_DOT_NROWS): rows a, b times columns p, q must be bit for bit the
//    four nrc = 1 calls;
//  - the repacked 16-row layout (CPU_REPACK): 16 rows cut from the blocks (cycled when fewer),
//    ggml_mpq2_repack_x16, ggml_mpq2_act_finish on 1..11 columns; the scalar x16 reference must
//    equal the scalar vec_dot bit for bit, this build's x16 kernel must match the float64 sum.
static void check_2x2(const uint8_t * blocks, int64_t nb, uint32_t seed) {
    if (nb < 2) {
        return;
    }
    const int64_t n = nb * QK_MPQ2;
    // the second row: the same blocks rotated by one, so that the two rows differ
    block_mpq2 * x = (block_mpq2 *) malloc(2 * nb * sizeof(block_mpq2));
    std::memcpy(x, blocks, nb * sizeof(block_mpq2));
    for (int64_t b = 0; b < nb; ++b) {
        std::memcpy(x + nb + b, blocks + ((b + 1) % nb) * sizeof(block_mpq2), sizeof(block_mpq2));
    }
    block_q8_0 * y = (block_q8_0 *) malloc(2 * (n / QK8_0) * sizeof(block_q8_0));
    block_q8_0 * y0 = make_q8_0(n, seed), * y1 = make_q8_0(n, seed ^ 0x5bd1e995u);
    std::memcpy(y, y0, (n / QK8_0) * sizeof(block_q8_0));
    std::memcpy(y + n / QK8_0, y1, (n / QK8_0) * sizeof(block_q8_0));
    free(y0);
    free(y1);
    const size_t bx = nb * sizeof(block_mpq2), by = (n / QK8_0) * sizeof(block_q8_0);
    const size_t bs = 3;     // any output stride
    float s4[2 * 3];
    for (float & v : s4) v = NAN;
    ggml_vec_dot_mpq2_q8_0((int) n, s4, bs, x, bx, y, by, 2);
    for (int c = 0; c < 2; ++c) {
        for (int r = 0; r < 2; ++r) {
            float one = NAN;
            ggml_vec_dot_mpq2_q8_0((int) n, &one, 0, (const char *) x + r*bx, 0, (const char *) y + c*by, 0, 1);
            FUZZ_CHECK(std::memcmp(&one, &s4[r + c*bs], sizeof(float)) == 0,
                       "%s 2x2 row %d col %d = %a, single call %a (n %lld)", ggml_vec_dot_mpq2_q8_0_impl(), r, c,
                       s4[r + c*bs], one, (long long) n);
        }
    }
    free(x);
    free(y);
}

static void check_x16(const uint8_t * blocks, int64_t total, uint32_t seed) {
    const int64_t nb = total >= MPQ2_RP_ROWS ? total / MPQ2_RP_ROWS : 1;   // blocks per row
    const int64_t n = nb * QK_MPQ2;
    const int ncols = 1 + (int) (seed % 11);                                 // every column tile and remainder
    block_mpq2 * rows = (block_mpq2 *) malloc(MPQ2_RP_ROWS * nb * sizeof(block_mpq2));
    for (int64_t i = 0; i < MPQ2_RP_ROWS * nb; ++i) {
        std::memcpy(rows + i, blocks + (i % total) * sizeof(block_mpq2), sizeof(block_mpq2));
    }
    block_mpq2x16 * xp = (block_mpq2x16 *) aligned_alloc(64, nb * sizeof(block_mpq2x16));
    ggml_mpq2_repack_x16(xp, rows, MPQ2_RP_ROWS, n);
    std::vector<void *> bufs(ncols);
    std::vector<mpq2_act> act(ncols);
    std::vector<block_q8_0 *> cols(ncols);
    const size_t act_bytes = (ggml_mpq2_act_size(n) + 63) & ~(size_t) 63;
    for (int c = 0; c < ncols; ++c) {
        cols[c] = make_q8_0(n, seed + 7919u * (uint32_t) c);
        bufs[c] = aligned_alloc(64, act_bytes);
        std::memcpy(bufs[c], cols[c], (n / QK8_0) * sizeof(block_q8_0));
        ggml_mpq2_act_finish(bufs[c], n, &act[c]);
    }
    std::vector<float> gen(MPQ2_RP_ROWS * ncols, NAN), got(MPQ2_RP_ROWS * ncols, NAN);
    ggml_mpq2x16_mul_generic((int) n, gen.data(), MPQ2_RP_ROWS, xp, 1, act.data(), ncols);
    ggml_mpq2x16_mul((int) n, got.data(), MPQ2_RP_ROWS, xp, 1, act.data(), ncols);
    std::vector<float> w(n);
    for (int r = 0; r < MPQ2_RP_ROWS; ++r) {
        dequantize_row_mpq2(rows + r * nb, w.data(), n);
        for (int c = 0; c < ncols; ++c) {
            float one = NAN;
            ggml_vec_dot_mpq2_q8_0_generic((int) n, &one, 0, rows + r * nb, 0, cols[c], 0, 1);
            const int i = c * MPQ2_RP_ROWS + r;
            FUZZ_CHECK(std::memcmp(&one, &gen[i], sizeof(float)) == 0,
                       "x16 generic row %d col %d = %a, vec_dot generic %a (n %lld)", r, c, gen[i], one, (long long) n);
            // The SIMD x16 kernels' error must be relative to the row's true terms, as the
            // row-wise kernels' (they once were not: tests/fuzz/corpus/
            // regress-raw-x16-int8-word-huge-scale, docs/ROBUSTNESS.md).
            double mag;
            const double ref = ref_dot(w.data(), cols[c], n, &mag);
            FUZZ_CHECK(std::fabs(got[i] - ref) <= 1e-5 * mag + 1e-30, "%s x16 row %d col %d of %d = %.9g, reference %.9g "
                       "(sum|t| %.3g, n %lld)", ggml_mpq2x16_impl(), r, c, ncols, got[i], ref, mag, (long long) n);
        }
    }
    for (int c = 0; c < ncols; ++c) {
        free(bufs[c]);
        free(cols[c]);
    }
    free(xp);
    free(rows);
}

// ---------------------------------------------------------------- MPQ2S (FORMAT.md "MPQ2S")

static const int REF_S_MULT[8] = { 20, 25, 25, 25, 32, 32, 32, 40 };
static const int REF_S_ZERO[8] = { 24, 16, 24, 32, 16, 24, 32, 24 };

// Turned weight j (0..127) of the 36-byte block at p: header (grid index of word w in bits
// 3w..3w+2, scale code in bits 24..31), then eight words with MPQ2's 2-bit bit order.
static float ref_weight_s(const uint8_t * p, int j) {
    const uint32_t hdr = rd32(p);
    const int w = j / 16, i = j % 16, g = (int) (hdr >> (3*w)) & 7;
    const int c = (int) (rd32(p + 4 + 4*w) >> (8*(i % 4) + 2*(i/4))) & 3;
    return ref_scale((uint8_t) (hdr >> 24)) * (float) (REF_S_MULT[g] * (16*c - REF_S_ZERO[g]));
}

// One row of nb MPQ2S blocks: the decode is the reference's, turned back by MPQ2R's rotation
// (bit for bit: the same float operations), finite; the row-wise dot products (scalar, and this
// build's SIMD one bit for bit) against a float64 sum over the turned weights and the
// activations as the kernels see them (already turned: Q8_0R).
static void check_row_s(const uint8_t * row, int64_t nb, uint32_t seed) {
    const int64_t n = nb * QK_MPQ2S;
    std::vector<float> y(n), t(n), back(n);
    dequantize_row_mpq2s((const block_mpq2s *) row, y.data(), n);
    for (int64_t j = 0; j < n; ++j) {
        t[j] = ref_weight_s(row + (j / QK_MPQ2S) * sizeof(block_mpq2s), (int) (j % QK_MPQ2S));
    }
    mpq2r_unrotate(t.data(), back.data(), n);
    for (int64_t j = 0; j < n; ++j) {
        FUZZ_CHECK(same_float(y[j], back[j]), "mpq2s weight %lld: dequantize_row_mpq2s %a, FORMAT.md %a",
                   (long long) j, y[j], back[j]);
        FUZZ_CHECK(std::isfinite(y[j]), "mpq2s block %lld decodes to %a", (long long) (j / QK_MPQ2S), y[j]);
    }
    block_q8_0 * a = make_q8_0(n, seed);
    double mag;
    const double ref = ref_dot(t.data(), a, n, &mag);
    float s_generic = NAN, s_kernel = NAN;
    ggml_vec_dot_mpq2s_q8_0_generic((int) n, &s_generic, 0, row, 0, a, 0, 1);
    ggml_vec_dot_mpq2s_q8_0((int) n, &s_kernel, 0, row, 0, a, 0, 1);
    FUZZ_CHECK(std::fabs(s_generic - ref) <= 1e-4 * mag + 1e-30, "mpq2s generic dot %.9g, reference %.9g (sum|t| %.3g, n %lld)",
               s_generic, ref, mag, (long long) n);
    FUZZ_CHECK(same_float(s_kernel, s_generic), "mpq2s %s dot %a, generic %a (n %lld)", ggml_vec_dot_mpq2s_impl(),
               s_kernel, s_generic, (long long) n);
    free(a);
}

// The 16-row kernels on `total` blocks cut into 16 rows (cycled when fewer), as check_x16.
static void check_x16_s(const uint8_t * blocks, int64_t total, uint32_t seed) {
    const int64_t nb = total >= 16 ? total / 16 : 1;
    const int64_t n = nb * QK_MPQ2S;
    const int ncols = 1 + (int) (seed % 11);
    block_mpq2s * rows = (block_mpq2s *) malloc(16 * nb * sizeof(block_mpq2s));
    for (int64_t i = 0; i < 16 * nb; ++i) {
        std::memcpy(rows + i, blocks + (i % total) * sizeof(block_mpq2s), sizeof(block_mpq2s));
    }
    block_mpq2sx16 * xp = (block_mpq2sx16 *) aligned_alloc(64, nb * sizeof(block_mpq2sx16));
    ggml_mpq2s_repack_x16(xp, rows, 16, n);
    std::vector<void *> bufs(ncols);
    std::vector<mpq2_act> act(ncols);
    std::vector<block_q8_0 *> cols(ncols);
    const size_t act_bytes = (ggml_mpq2_act_size(n) + 63) & ~(size_t) 63;
    for (int c = 0; c < ncols; ++c) {
        cols[c] = make_q8_0(n, seed + 7919u * (uint32_t) c);
        bufs[c] = aligned_alloc(64, act_bytes);
        std::memcpy(bufs[c], cols[c], (n / QK8_0) * sizeof(block_q8_0));
        ggml_mpq2_act_finish(bufs[c], n, &act[c]);
    }
    std::vector<float> gen(16 * ncols, NAN), got(16 * ncols, NAN), t(n);
    ggml_mpq2sx16_mul_generic((int) n, gen.data(), 16, xp, 1, act.data(), ncols);
    ggml_mpq2sx16_mul((int) n, got.data(), 16, xp, 1, act.data(), ncols);
    for (int r = 0; r < 16; ++r) {
        for (int64_t j = 0; j < n; ++j) {
            t[j] = ref_weight_s((const uint8_t *) (rows + r * nb) + (j / QK_MPQ2S) * sizeof(block_mpq2s), (int) (j % QK_MPQ2S));
        }
        for (int c = 0; c < ncols; ++c) {
            float one = NAN;
            ggml_vec_dot_mpq2s_q8_0_generic((int) n, &one, 0, rows + r * nb, 0, cols[c], 0, 1);
            const int i = c * 16 + r;
            FUZZ_CHECK(same_float(one, gen[i]), "mpq2s x16 generic row %d col %d = %a, vec_dot generic %a (n %lld)",
                       r, c, gen[i], one, (long long) n);
            double mag;
            const double ref = ref_dot(t.data(), cols[c], n, &mag);
            FUZZ_CHECK(std::fabs(got[i] - ref) <= 1e-5 * mag + 1e-30, "mpq2s %s x16 row %d col %d of %d = %.9g, reference %.9g "
                       "(sum|t| %.3g, n %lld)", ggml_mpq2sx16_impl(), r, c, ncols, got[i], ref, mag, (long long) n);
        }
    }
    for (int c = 0; c < ncols; ++c) {
        free(bufs[c]);
        free(cols[c]);
    }
    free(xp);
    free(rows);
}

// Raw bytes as MPQ2S: the size alone decides validity; whole blocks go through every check.
static void fuzz_raw_s(const uint8_t * buf, size_t size) {
    const bool valid = size % sizeof(block_mpq2s) == 0;
    FUZZ_CHECK(mpq2s_validate_row_data(buf, size) == valid, "mpq2s_validate_row_data on %zu bytes", size);
    FUZZ_CHECK(ggml_validate_row_data(GGML_TYPE_MPQ2S, buf, size) == valid, "ggml_validate_row_data(MPQ2S) on %zu bytes", size);
    const size_t nb = size / sizeof(block_mpq2s);
    if (nb == 0) {
        return;
    }
    uint8_t * blocks = (uint8_t *) malloc(nb * sizeof(block_mpq2s));      // exactly sized: ASan sees any overread
    std::memcpy(blocks, buf, nb * sizeof(block_mpq2s));
    check_row_s(blocks, (int64_t) nb, (uint32_t) size);
    check_x16_s(blocks, (int64_t) nb, (uint32_t) size);
    free(blocks);
}

// The C quantizers on the same bytes read as floats (any bit pattern: NaN, Inf, subnormals), when
// they are whole 64-float blocks: MPQ2 and MPQ2R must write valid, finite blocks whatever the
// input (llama-quantize does not check its floats); with an imatrix (the floats' magnitudes, NaN
// taken as 0) and at the salient fractions 0, 1/8 and 1. numpy's agreement is tests/test_fuzz.py's.
static constexpr size_t MAX_QUANTIZE_BYTES = 1024;   // up to 4 blocks: the search is the slowest thing here
static void check_quantizer(const uint8_t * buf, size_t size) {
    if (size == 0 || size % (QK_MPQ2 * sizeof(float)) != 0 || size > MAX_QUANTIZE_BYTES) {
        return;
    }
    const int64_t n = (int64_t) (size / sizeof(float));
    std::vector<float> x(n), im(n), y(n);
    std::memcpy(x.data(), buf, size);
    for (int64_t j = 0; j < n; ++j) {
        const float a = std::fabs(x[j]);
        im[j] = std::isnan(a) ? 0.0f : std::fmin(a, 1e30f);
    }
    const float fraction = buf[0] % 3 == 0 ? 0.0f : buf[0] % 3 == 1 ? 0.125f : 1.0f;
    const float * imatrix = (buf[1] & 1) ? im.data() : nullptr;
    if (n % QK_MPQ2S == 0) {      // MPQ2S: any floats give blocks that decode to finite weights
        std::vector<uint8_t> qs((n / QK_MPQ2S) * sizeof(block_mpq2s));
        const size_t wrote = quantize_mpq2s(x.data(), qs.data(), 1, n, imatrix);
        FUZZ_CHECK(wrote == qs.size(), "quantize_mpq2s wrote %zu bytes for %lld weights", wrote, (long long) n);
        dequantize_row_mpq2s((const block_mpq2s *) qs.data(), y.data(), n);
        for (int64_t j = 0; j < n; ++j) {
            FUZZ_CHECK(std::isfinite(y[j]), "quantize_mpq2s: weight %lld decodes to %a", (long long) j, y[j]);
        }
    }
    std::vector<uint8_t> q((n / QK_MPQ2) * sizeof(block_mpq2));
    for (int rot = 0; rot < 2; ++rot) {
        const size_t wrote = rot ? quantize_mpq2r_ex(x.data(), q.data(), 1, n, imatrix, fraction)
                                 : quantize_mpq2_ex(x.data(), q.data(), 1, n, imatrix, fraction);
        FUZZ_CHECK(wrote == q.size(), "quantize_%s_ex wrote %zu bytes for %lld weights", rot ? "mpq2r" : "mpq2", wrote, (long long) n);
        FUZZ_CHECK(mpq2_validate_row_data(q.data(), q.size()) && ref_valid(q.data(), q.size()),
                   "quantize_%s_ex wrote an invalid block (fraction %g, imatrix %d)", rot ? "mpq2r" : "mpq2", fraction, imatrix != nullptr);
        dequantize_row_mpq2((const block_mpq2 *) q.data(), y.data(), n);
        for (int64_t j = 0; j < n; ++j) {
            FUZZ_CHECK(std::isfinite(y[j]), "quantize_%s_ex: weight %lld decodes to %a", rot ? "mpq2r" : "mpq2", (long long) j, y[j]);
        }
    }
}

static void fuzz_raw(const uint8_t * data, size_t size) {
    // a copy in an exactly sized heap buffer, so that ASan sees any read past the last block
    uint8_t * buf = (uint8_t *) malloc(size ? size : 1);
    if (size) {
        std::memcpy(buf, data, size);
    }
    const bool valid = mpq2_validate_row_data(buf, size);
    FUZZ_CHECK(valid == ref_valid(buf, size), "mpq2_validate_row_data %d, FORMAT.md %d (%zu bytes)", valid, !valid, size);
    FUZZ_CHECK(valid == ggml_validate_row_data(GGML_TYPE_MPQ2, buf, size), "ggml_validate_row_data disagrees");
    FUZZ_CHECK(valid == ggml_validate_row_data(GGML_TYPE_MPQ2R, buf, size), "ggml_validate_row_data disagrees for mpq2r");
    const size_t nb = size / sizeof(block_mpq2);
    if (nb > 0) {
        uint8_t * blocks = (uint8_t *) malloc(nb * sizeof(block_mpq2));
        std::memcpy(blocks, buf, nb * sizeof(block_mpq2));
        check_row(blocks, (int64_t) nb, valid, (uint32_t) size);
        if (valid) {
            check_2x2(blocks, (int64_t) nb, (uint32_t) size);
            check_x16(blocks, (int64_t) nb, (uint32_t) size);
        }
        free(blocks);
    }
    fuzz_raw_s(buf, size);
    check_quantizer(buf, size);
    free(buf);
}

// ---------------------------------------------------------------- GGUF

static void walk_metadata(const gguf_context * g) {
    const int64_t n_kv = gguf_get_n_kv(g);
    for (int64_t i = 0; i < n_kv; ++i) {
        const char * key = gguf_get_key(g, i);
        // a key with a NUL byte reads back shorter and may match an earlier key (docs/ROBUSTNESS.md)
        const int64_t found = gguf_find_key(g, key);
        FUZZ_CHECK(found >= 0 && found <= i && strcmp(gguf_get_key(g, found), key) == 0, "key %lld '%s' not found", (long long) i, key);
        const gguf_type t = gguf_get_kv_type(g, i);
        if (t == GGUF_TYPE_ARRAY) {
            const gguf_type at = gguf_get_arr_type(g, i);
            const size_t n = gguf_get_arr_n(g, i);
            if (at == GGUF_TYPE_STRING) {
                for (size_t k = 0; k < n && k < 256; ++k) {
                    volatile size_t len = strlen(gguf_get_arr_str(g, i, k));
                    (void) len;
                }
            } else if (n > 0) {
                const uint8_t * p = (const uint8_t *) gguf_get_arr_data(g, i);
                volatile uint8_t last = p[n * gguf_type_size(at) - 1];   // the whole array is readable
                (void) last;
            }
        } else if (t == GGUF_TYPE_STRING) {
            volatile size_t len = strlen(gguf_get_val_str(g, i));
            (void) len;
        } else {
            const uint8_t * p = (const uint8_t *) gguf_get_val_data(g, i);
            volatile uint8_t last = p[gguf_type_size(t) - 1];
            (void) last;
        }
    }
}

// End of the tensor data the table claims, relative to the start of the input.
static uint64_t walk_tensors(const gguf_context * g) {
    const int64_t n = gguf_get_n_tensors(g);
    const uint64_t align = gguf_get_alignment(g);
    uint64_t expect = 0;    // gguf.cpp requires tensors back to back, each padded to the alignment
    for (int64_t i = 0; i < n; ++i) {
        const char * name = gguf_get_tensor_name(g, i);
        const int64_t found = gguf_find_tensor(g, name);   // NUL bytes in names: as for keys
        FUZZ_CHECK(found >= 0 && found <= i && strcmp(gguf_get_tensor_name(g, found), name) == 0,
                   "tensor %lld '%s' not found", (long long) i, name);
        const ggml_type type = gguf_get_tensor_type(g, i);
        FUZZ_CHECK(type >= 0 && type < GGML_TYPE_COUNT && ggml_blck_size(type) > 0, "tensor '%s' type %d", name, (int) type);
        FUZZ_CHECK(gguf_get_tensor_offset(g, i) == expect, "tensor '%s' at offset %zu, expected %llu", name,
                   gguf_get_tensor_offset(g, i), (unsigned long long) expect);
        const uint64_t nbytes = gguf_get_tensor_size(g, i);
        expect += (nbytes + align - 1) / align * align;
    }
    const uint64_t start = gguf_get_data_offset(g);
    return expect > UINT64_MAX - start ? UINT64_MAX : start + expect;
}

// Q8_0R (MPQ2R's activations, two Q8_0 blocks per 64): valid when every fp16 scale is finite;
// each valid row decodes to finite values that the rotation turns back into the Q8_0 decode.
static void check_q8_0r_tensor(const ggml_tensor * t, bool valid) {
    FUZZ_CHECK(t->ne[0] % QK_MPQ2R == 0, "Q8_0R tensor '%s' with %lld weights per row was accepted", t->name, (long long) t->ne[0]);
    const size_t nbytes = ggml_nbytes(t);
    const uint8_t * p = (const uint8_t *) t->data;
    bool ref = nbytes % sizeof(block_q8_0) == 0;
    for (size_t b = 0; ref && b < nbytes / sizeof(block_q8_0); ++b) {
        ref = ((rd16(p + b * sizeof(block_q8_0)) >> 10) & 0x1F) != 0x1F;      // not Inf / NaN
    }
    FUZZ_CHECK(valid == ref, "'%s': ggml_validate_row_data(Q8_0R) %d, every scale finite %d", t->name, valid, ref);
    if (!valid || nbytes == 0) {
        return;
    }
    const int64_t n = t->ne[0];
    const size_t row_bytes = ggml_row_size(t->type, n);
    std::vector<float> y(n), back(n), want(n);
    for (int64_t r = 0; r < (int64_t) (nbytes / row_bytes) && r < MAX_DOT_ROWS; ++r) {
        const uint8_t * row = p + r * row_bytes;
        dequantize_row_q8_0r(row, y.data(), n);
        mpq2r_rotate(y.data(), back.data(), n);
        for (int64_t j = 0; j < n; ++j) {
            const block_q8_0 * b = (const block_q8_0 *) (row + (j / QK8_0) * sizeof(block_q8_0));
            want[j] = ref_fp16_to_fp32(b->d) * (float) b->qs[j % QK8_0];
        }
        for (int64_t j = 0; j < n; ++j) {
            float big = 0.0f;      // the rotation mixes the 64 values of a block: its error scales with their largest
            for (int64_t i = j / QK_MPQ2R * QK_MPQ2R; i < (j / QK_MPQ2R + 1) * QK_MPQ2R; ++i) big = std::fmax(big, std::fabs(want[i]));
            FUZZ_CHECK(std::isfinite(y[j]), "'%s' row %lld: q8_0r weight %lld decodes to %a", t->name, (long long) r, (long long) j, y[j]);
            FUZZ_CHECK(std::fabs(back[j] - want[j]) <= 1e-4f * big, "'%s' row %lld weight %lld: q8_0r turned back %a, Q8_0 %a",
                       t->name, (long long) r, (long long) j, back[j], want[j]);
        }
    }
}

// MPQ2S: every tensor gguf.cpp accepts is whole blocks, and every block is valid.
static void check_mpq2s_tensor(const ggml_tensor * t, bool valid, uint32_t seed) {
    FUZZ_CHECK(t->ne[0] % QK_MPQ2S == 0, "MPQ2S tensor '%s' with %lld weights per row was accepted", t->name, (long long) t->ne[0]);
    FUZZ_CHECK(valid, "'%s': an MPQ2S tensor failed validation", t->name);
    const size_t nbytes = ggml_nbytes(t);
    if (nbytes == 0) {
        return;
    }
    const size_t row_bytes = ggml_row_size(t->type, t->ne[0]);
    uint8_t * row = (uint8_t *) malloc(row_bytes);
    for (int64_t r = 0; r < (int64_t) (nbytes / row_bytes) && r < MAX_DOT_ROWS; ++r) {
        std::memcpy(row, (const uint8_t *) t->data + r * row_bytes, row_bytes);
        check_row_s(row, t->ne[0] / QK_MPQ2S, seed + (uint32_t) r);
    }
    free(row);
    const int64_t nblocks = (int64_t) (nbytes / sizeof(block_mpq2s));
    const int64_t take = nblocks < MAX_X16_BLOCKS ? nblocks : MAX_X16_BLOCKS;
    check_x16_s((const uint8_t *) t->data, take, seed);
}

static void check_tensor(const ggml_tensor * t, uint32_t seed) {
    const size_t nbytes = ggml_nbytes(t);
    const bool valid = ggml_validate_row_data(t->type, t->data, nbytes);   // llama.cpp --check-tensors
    if (t->type == GGML_TYPE_Q8_0R) {
        check_q8_0r_tensor(t, valid);
        return;
    }
    if (t->type == GGML_TYPE_MPQ2S) {
        check_mpq2s_tensor(t, valid, seed);
        return;
    }
    if (t->type != GGML_TYPE_MPQ2 && t->type != GGML_TYPE_MPQ2R) {     // MPQ2R: the same blocks and kernels
        return;
    }
    FUZZ_CHECK(t->ne[0] % QK_MPQ2 == 0, "MPQ2 tensor '%s' with %lld weights per row was accepted", t->name, (long long) t->ne[0]);
    const bool valid_mpq2 = mpq2_validate_row_data(t->data, nbytes);
    FUZZ_CHECK(valid == valid_mpq2, "'%s': ggml_validate_row_data %d, mpq2_validate_row_data %d", t->name, valid, valid_mpq2);
    FUZZ_CHECK(valid == ref_valid((const uint8_t *) t->data, nbytes), "'%s': validation differs from FORMAT.md", t->name);
    if (!valid || nbytes == 0) {
        return;     // (a row may be huge when there are no rows: ne = (2^40, 0))
    }
    const size_t row_bytes = ggml_row_size(t->type, t->ne[0]);
    const int64_t nrows = (int64_t) (nbytes / row_bytes);
    uint8_t * row = (uint8_t *) malloc(row_bytes);
    for (int64_t r = 0; r < nrows && r < MAX_DOT_ROWS; ++r) {
        std::memcpy(row, (const uint8_t *) t->data + r * row_bytes, row_bytes);
        check_row(row, t->ne[0] / QK_MPQ2, true, seed + (uint32_t) r);
        if (r == 0) {
            check_2x2(row, t->ne[0] / QK_MPQ2, seed);
        }
    }
    free(row);
    // the tensor's blocks (up to MAX_X16_BLOCKS) as 16 rows of the repacked layout
    const int64_t nblocks = (int64_t) (nbytes / sizeof(block_mpq2));
    const int64_t take = nblocks < MAX_X16_BLOCKS ? nblocks : MAX_X16_BLOCKS;
    uint8_t * blocks = (uint8_t *) malloc(take * sizeof(block_mpq2));
    std::memcpy(blocks, t->data, take * sizeof(block_mpq2));
    check_x16(blocks, take, seed);
    free(blocks);
}

// Upstream limit (docs/ROBUSTNESS.md): gguf.cpp's shape check multiplies by dimensions of 0 and
// 1 and allows INT64_MAX / ne[i] == n, ggml_new_tensor_impl skips them and asserts
// INT64_MAX / ne[i] > n: a shape such as (64, 0, 2^32, 2^32) passes the first and aborts in the
// second as soon as a ggml context is asked for (llama.cpp's model loader asks for one).
static bool ggml_new_tensor_would_abort(const int64_t * ne) {
    int64_t n = ne[0];
    for (int i = 1; i < GGML_MAX_DIMS; ++i) {
        if (ne[i] > 1) {
            if (!(INT64_MAX / ne[i] > n)) {
                return true;
            }
            n *= ne[i];
        }
    }
    return false;
}

static void fuzz_gguf(const uint8_t * data, size_t size) {
    // pass 0: no ggml context, so no ggml_new_tensor; screens out the shapes it would abort on
    gguf_context * g0 = gguf_init_from_buffer(data, size, { /*no_alloc =*/ true, /*ctx =*/ nullptr });
    if (g0 == nullptr) {
        return;
    }
    bool upstream_abort = false;
    for (int64_t i = 0; i < gguf_get_n_tensors(g0); ++i) {
        upstream_abort = upstream_abort || ggml_new_tensor_would_abort(gguf_get_tensor_ne(g0, i));
    }
    gguf_free(g0);
    if (upstream_abort) {
        return;
    }

    // pass 1: metadata and tensor table only
    ggml_context * meta = nullptr;
    gguf_context * g = gguf_init_from_buffer(data, size, { /*no_alloc =*/ true, /*ctx =*/ &meta });
    if (g == nullptr) {
        FUZZ_CHECK(meta == nullptr, "failed load left a ggml context");
        return;
    }
    walk_metadata(g);
    const uint64_t data_end = walk_tensors(g);
    for (int64_t i = 0; i < gguf_get_n_tensors(g); ++i) {
        FUZZ_CHECK(ggml_get_tensor(meta, gguf_get_tensor_name(g, i)) != nullptr, "tensor %lld missing from the context", (long long) i);
    }
    ggml_free(meta);
    gguf_free(g);

    if (data_end > size && data_end - size > MAX_MISSING_DATA) {
        return;     // upstream limit: pass 2 would allocate data_end bytes first (see the header)
    }

    // pass 2: through the FILE * reader, with the tensor data
    FILE * f = fmemopen((void *) data, size, "rb");
    if (f == nullptr) {
        return;
    }
    ggml_context * ctx = nullptr;
    g = gguf_init_from_file_ptr(f, { /*no_alloc =*/ false, /*ctx =*/ &ctx });
    fclose(f);
    if (g == nullptr) {
        FUZZ_CHECK(data_end > size, "pass 2 failed on a file whose data is complete (%llu <= %zu)",
                   (unsigned long long) data_end, size);
        return;
    }
    FUZZ_CHECK(data_end <= size, "pass 2 loaded data up to %llu from %zu bytes", (unsigned long long) data_end, size);
    // the context holds the data blob first, then the tensors in file order (by position, not
    // by name: names that differ only after a NUL byte read back alike)
    ggml_tensor * blob = ggml_get_first_tensor(ctx);
    FUZZ_CHECK(blob != nullptr, "no data blob");
    int64_t i = 0;
    for (ggml_tensor * t = ggml_get_next_tensor(ctx, blob); t != nullptr; t = ggml_get_next_tensor(ctx, t), ++i) {
        FUZZ_CHECK(t->data != nullptr || ggml_nbytes(t) == 0, "tensor %lld has no data", (long long) i);
        FUZZ_CHECK(ggml_nbytes(t) == 0 || ((const char *) t->data >= (const char *) blob->data &&
                   (const char *) t->data + ggml_nbytes(t) <= (const char *) blob->data + ggml_nbytes(blob)),
                   "tensor %lld lies outside the data blob", (long long) i);
        check_tensor(t, (uint32_t) i);
    }
    FUZZ_CHECK(i == gguf_get_n_tensors(g), "%lld tensors in the context, %lld in the file", (long long) i,
               (long long) gguf_get_n_tensors(g));
    ggml_free(ctx);
    gguf_free(g);
}

static void quiet_log(enum ggml_log_level, const char *, void *) {}

// MPQ2_FUZZ_ASSERT_PROBE=<name>: call one of our kernels against its assert()ed precondition
// and expect the abort (tests/test_fuzz.py::test_fuzzer_asserts_fire). An environment variable,
// not an input, so that libFuzzer cannot find the probe by itself.
static void assert_probe(const char * name) {
    block_mpq2 x[2] = {};
    block_q8_0 * a = make_q8_0(2 * QK_MPQ2, 1);
    float s[4] = {};
    if (strcmp(name, "generic_nrc") == 0) {
        ggml_vec_dot_mpq2_q8_0_generic(QK_MPQ2, s, 0, x, 0, a, 0, 3);
    } else if (strcmp(name, "vec_dot_nrc") == 0) {
        ggml_vec_dot_mpq2_q8_0(QK_MPQ2, s, 1, x, sizeof(block_mpq2), a, 2 * sizeof(block_q8_0), 3);
    } else if (strcmp(name, "generic_n") == 0) {
        ggml_vec_dot_mpq2_q8_0_generic(QK_MPQ2 + 32, s, 0, x, 0, a, 0, 1);
    } else {
        fprintf(stderr, "fuzz_gguf_mpq2: unknown MPQ2_FUZZ_ASSERT_PROBE '%s'\n", name);
        exit(2);
    }
    fprintf(stderr, "fuzz_gguf_mpq2: assert probe '%s' returned: assert() is compiled out\n", name);
    exit(3);
}

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
    ggml_log_set(quiet_log, nullptr);
    if (const char * probe = getenv("MPQ2_FUZZ_ASSERT_PROBE")) {
        assert_probe(probe);
    }
    fprintf(stderr, "fuzz_gguf_mpq2: vec_dot kernel %s (and generic), x16 kernel %s (and generic); "
            "mpq2s: vec_dot %s, x16 %s\n", ggml_vec_dot_mpq2_q8_0_impl(), ggml_mpq2x16_impl(),
            ggml_vec_dot_mpq2s_impl(), ggml_mpq2sx16_impl());
    for (int d = 0; d < 256; ++d) {
        const float r = ref_scale((uint8_t) d);
        FUZZ_CHECK(std::isfinite(r) && r > 0.0f && same_float(r, mpq2_d_from_code((uint8_t) d)),
                   "scale code %d: mpq2_d_from_code %a, FORMAT.md %a", d, mpq2_d_from_code((uint8_t) d), r);
    }
    for (int i = 0; i < (1 << 16); ++i) {
        const float r = ref_fp16_to_fp32((uint16_t) i);
        ggml_table_f32_f16[i] = r;
        FUZZ_CHECK(same_float(r, ggml_fp16_to_fp32((ggml_fp16_t) i)), "fp16 0x%04x: ggml %a, reference %a",
                   i, ggml_fp16_to_fp32((ggml_fp16_t) i), r);
    }
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    if (size >= 4 && std::memcmp(data, "GGUF", 4) == 0) {
        fuzz_gguf(data, size);
    } else {
        fuzz_raw(data, size);
    }
    return 0;
}
