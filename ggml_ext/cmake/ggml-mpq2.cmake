# Our sources in llama.cpp's ggml targets, with their flags. Included by the patched
# ggml/src/CMakeLists.txt (the patch only registers MPQ2: it calls the two functions below).
#
# -ffp-contract=off on every source of ours: MPQ2's reference quantizer, the MPQ2R rotation and
# the scalar kernels must give the same floats as the numpy mirror (converter/mpq2/) and as each
# other on every compiler and target. GCC contracts a*b+c into an FMA by default in GNU C mode
# wherever the target has one, and so does clang on AArch64; `#pragma GCC optimize` in the
# sources covers GCC only, clang ignores it.

#
# -fno-trapping-math: the quantizer's searches (ggml-mpq2.c) work their candidates as arrays
# with clamps written as comparisons; GCC vectorizes those loops only when it may assume that no
# float operation traps (clang assumes so by default). It changes no value in the default
# floating-point environment, and made llama-quantize's MPQ2 search 2.8x faster
# (bench/quantize_speed.py).

set(GGML_MPQ2_NO_FP_CONTRACT_FLAG "")
if (CMAKE_C_COMPILER_ID MATCHES "GNU|Clang")       # Clang, AppleClang, IntelLLVM's clang too
    set(GGML_MPQ2_NO_FP_CONTRACT_FLAG -ffp-contract=off -fno-trapping-math)
endif()

function(ggml_mpq2_sources target)
    target_sources(${target} PRIVATE ${ARGN})
    if (GGML_MPQ2_NO_FP_CONTRACT_FLAG)
        # in the directory that created the target (ggml's functions create them in ggml/src)
        set_source_files_properties(${ARGN} TARGET_DIRECTORY ${target}
                                    PROPERTIES COMPILE_OPTIONS "${GGML_MPQ2_NO_FP_CONTRACT_FLAG}")
    endif()
endfunction()

# ggml-base: the reference code (quantize, dequantize, validate, the MPQ2R rotation; MPQ2S).
function(ggml_mpq2_add_base target)
    ggml_mpq2_sources(${target} ${GGML_MPQ2_EXT_DIR}/src/ggml-mpq2.c ${GGML_MPQ2_EXT_DIR}/src/ggml-mpq2r.c
                      ${GGML_MPQ2_EXT_DIR}/src/ggml-mpq2s.c)
    target_include_directories(${target} PUBLIC $<BUILD_INTERFACE:${GGML_MPQ2_EXT_DIR}/include>)
endfunction()

# every ggml-cpu variant: the dot products, the activation quantizers, the repacked kernels
# (each includes its arch file, src/arch/<arch>/, so those get the same flags).
function(ggml_mpq2_add_cpu target)
    ggml_mpq2_sources(${target} ${GGML_MPQ2_EXT_DIR}/src/ggml-cpu-mpq2.c ${GGML_MPQ2_EXT_DIR}/src/ggml-cpu-mpq2r.c
                      ${GGML_MPQ2_EXT_DIR}/src/ggml-cpu-mpq2-repack.c ${GGML_MPQ2_EXT_DIR}/src/ggml-cpu-mpq2s.c)
    target_include_directories(${target} PRIVATE ${GGML_MPQ2_EXT_DIR}/src)
endfunction()
