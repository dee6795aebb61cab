// MPQ2 in ggml-cpu's repack ("CPU_REPACK") buffer: included by ggml-cpu/repack.cpp, after its
// tensor_traits_base and before ggml_repack_get_optimal_repack_type, which asks
// ggml_mpq2_repack_traits() for MPQ2 and MPQ2R weights and ggml_mpq2s_repack_traits() for MPQ2S.
// C++, like the file that includes it.
//
// A weight matrix in that buffer is repacked 16 rows at a time once, when llama.cpp loads it;
// MUL_MAT then quantizes the activations to the type's vec_dot_type (as the vec_dot path does,
// so both give the same integers), adds the per-16 sums the kernels need, and runs the type's
// 16-row kernel over row groups shared out between the threads. The types differ only in their
// blocks and two functions, which one class template takes from a small struct per type.
#pragma once

#include "ggml-cpu-mpq2-repack.h"
#include "ggml-mpq2s.h"

namespace ggml::cpu::repack {

// What the class below needs of a type: its block length, its 16-row group, and its functions.
struct mpq2_x16_kind {
    static constexpr int64_t qk = QK_MPQ2;
    using group = block_mpq2x16;
    static void repack(void * dst, const void * src, int64_t nrows, int64_t n) {
        ggml_mpq2_repack_x16((block_mpq2x16 *) dst, (const block_mpq2 *) src, nrows, n);
    }
    static void mul(int n, float * s, size_t bs, const void * x, int64_t ngroups, const mpq2_act * y, int ncols) {
        ggml_mpq2x16_mul(n, s, bs, (const block_mpq2x16 *) x, ngroups, y, ncols);
    }
    static const char * impl() { return ggml_mpq2x16_impl(); }
};

struct mpq2s_x16_kind {
    static constexpr int64_t qk = QK_MPQ2S;
    using group = block_mpq2sx16;
    static void repack(void * dst, const void * src, int64_t nrows, int64_t n) {
        ggml_mpq2s_repack_x16((block_mpq2sx16 *) dst, (const block_mpq2s *) src, nrows, n);
    }
    static void mul(int n, float * s, size_t bs, const void * x, int64_t ngroups, const mpq2_act * y, int ncols) {
        ggml_mpq2sx16_mul(n, s, bs, (const block_mpq2sx16 *) x, ngroups, y, ncols);
    }
    static const char * impl() { return ggml_mpq2sx16_impl(); }
};

template <typename Kind>
class mpq2x16_traits : public tensor_traits_base {
    static constexpr int64_t MAX_COLS = 64;   // activation columns per kernel call (their Q8_0 rows stay in L2)

    bool work_size(int /* n_threads */, const struct ggml_tensor * op, size_t & size) override {
        if (op->op != GGML_OP_MUL_MAT) {
            return false;
        }
        size = ggml_mpq2_act_size(op->src[1]->ne[0]) * (size_t) ggml_nrows(op->src[1]) + 64;   // + alignment
        return true;
    }

    bool compute_forward(struct ggml_compute_params * params, struct ggml_tensor * op) override {
        if (op->op != GGML_OP_MUL_MAT) {
            return false;
        }
        forward_mul_mat(params, op);
        return true;
    }

    int repack(struct ggml_tensor * t, const void * data, size_t data_size) override {
        GGML_ASSERT(data_size == ggml_nbytes(t));
        Kind::repack(t->data, data, t->ne[1], t->ne[0]);
        return 0;
    }

    static void forward_mul_mat(struct ggml_compute_params * params, struct ggml_tensor * op) {
        const ggml_tensor * src0 = op->src[0];
        const ggml_tensor * src1 = op->src[1];
        ggml_tensor *       dst  = op;

        GGML_TENSOR_BINARY_OP_LOCALS

        const int ith = params->ith;
        const int nth = params->nth;

        GGML_ASSERT(ne0 == ne01 && ne1 == ne11 && ne2 == ne12 && ne3 == ne13);
        GGML_ASSERT(ne02 == 1 && ne03 == 1);   // 2-D weights only (ggml_mpq2_repack_traits)
        GGML_ASSERT(src1->type == GGML_TYPE_F32 && nb10 == sizeof(float));
        // every activation column j (over ne11, ne12, ne13) lands at dst + j * nb1
        GGML_ASSERT(nb0 == sizeof(float) && nb2 == nb1 * ne1 && nb3 == nb2 * ne2);

        const int64_t ncols    = ne11 * ne12 * ne13;
        const size_t  act_size = ggml_mpq2_act_size(ne10);
        char *        wdata    = (char *) GGML_PAD((uintptr_t) params->wdata, 64);
        GGML_ASSERT(wdata + act_size * ncols <= (char *) params->wdata + params->wsize);

        // activations: the weight type's vec_dot_type (Q8_0 for MPQ2, Q8_0R for MPQ2R and MPQ2S), with
        // ggml's own quantizer as for vec_dot, plus the kernel's sums
        const ggml_type act_type = ggml_get_type_traits_cpu(src0->type)->vec_dot_type;
        const ggml_from_float_t to_q8_0 = ggml_get_type_traits_cpu(act_type)->from_float;
        for (int64_t j = ith; j < ncols; j += nth) {
            const int64_t i11 = j % ne11, i12 = (j / ne11) % ne12, i13 = j / (ne11 * ne12);
            char * buf = wdata + j * act_size;
            to_q8_0((const float *) ((const char *) src1->data + i11 * nb11 + i12 * nb12 + i13 * nb13), buf, ne10);
            mpq2_act unused;
            ggml_mpq2_act_finish(buf, ne10, &unused);
        }

        // row groups of 16, in chunks handed out to whichever thread is free
        const int64_t ngroups   = ne01 / MPQ2_RP_ROWS;
        const int64_t nchunks   = MIN(ngroups, (int64_t) nth * 4);
        const int64_t per_chunk = (ngroups + nchunks - 1) / nchunks;
        const size_t  group_size = (size_t) (ne00 / Kind::qk) * sizeof(typename Kind::group);
        const size_t  bs         = nb1 / sizeof(float);

        if (ith == 0) {
            ggml_threadpool_chunk_set(params->threadpool, nth);
        }
        ggml_barrier(params->threadpool);

        for (int64_t chunk = ith; chunk < nchunks; chunk = ggml_threadpool_chunk_add(params->threadpool, 1)) {
            const int64_t g0 = chunk * per_chunk;
            const int64_t g1 = MIN(g0 + per_chunk, ngroups);
            if (g0 >= g1) {
                continue;
            }
            const void * x = (const char *) src0->data + g0 * group_size;
            for (int64_t c0 = 0; c0 < ncols; c0 += MAX_COLS) {
                const int nc = (int) MIN(MAX_COLS, ncols - c0);
                mpq2_act acts[MAX_COLS];
                for (int c = 0; c < nc; ++c) {
                    ggml_mpq2_act_view(wdata + (c0 + c) * act_size, ne10, &acts[c]);
                }
                Kind::mul((int) ne00, (float *) dst->data + c0 * bs + g0 * MPQ2_RP_ROWS, bs, x, g1 - g0, acts, nc);
            }
        }
    }
};

}  // namespace ggml::cpu::repack

// The traits of a weight of this kind, or nullptr (plain CPU buffer, row-wise vec_dot) where the
// repacked kernel would not pay or not apply: no SIMD kernel in this build, not a 2-D matrix, or
// a row count that is not a multiple of 16.
template <typename Kind>
static const ggml::cpu::tensor_traits * ggml_mpq2_x16_traits(const struct ggml_tensor * cur) {
    static const ggml::cpu::repack::mpq2x16_traits<Kind> traits;
    if (strcmp(Kind::impl(), "generic") == 0 || ggml_n_dims(cur) != 2 || cur->ne[1] % MPQ2_RP_ROWS != 0) {
        return nullptr;
    }
    return &traits;
}

// MPQ2 and MPQ2R (the same blocks)
static const ggml::cpu::tensor_traits * ggml_mpq2_repack_traits(const struct ggml_tensor * cur) {
    return ggml_mpq2_x16_traits<ggml::cpu::repack::mpq2_x16_kind>(cur);
}

static const ggml::cpu::tensor_traits * ggml_mpq2s_repack_traits(const struct ggml_tensor * cur) {
    return ggml_mpq2_x16_traits<ggml::cpu::repack::mpq2s_x16_kind>(cur);
}
