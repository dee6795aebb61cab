// MPQ2R in the CPU backend: the activation quantizer. The dot products are MPQ2's kernels
// (ggml-cpu-mpq2.c), run on Q8_0R activations, which this file makes.
#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include "ggml-cpu-impl.h"
#include "quants.h"
#include "ggml-mpq2.h"

void quantize_row_mpq2r(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) {
    quantize_row_mpq2r_ref(x, y, k);
}

// MPQ2R's activations: each 64-block rotated, then ggml-cpu's own Q8_0 quantizer, so an MPQ2R
// dot product is MPQ2's kernel on the same integers it would see for rotated floats.
void quantize_row_q8_0r(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) {
    mpq2r_quantize_row_q8_0_with(x, y, k, quantize_row_q8_0);
}
