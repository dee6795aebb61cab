// The four ggml-backend functions that gguf.cpp and ggml.c reference on paths the fuzz target
// never takes (writing tensors held in backend buffers, graph helpers). Stubs that abort keep
// ggml-backend.cpp and its dependencies out of the fuzzer build; reaching one is a harness bug.
#include "ggml-backend.h"

#include <stdio.h>
#include <stdlib.h>

static void unreachable(const char * fn) {
    fprintf(stderr, "fuzz_gguf_mpq2: %s called: not linked into the fuzzer\n", fn);
    abort();
}

enum ggml_backend_buffer_usage ggml_backend_buffer_get_usage(ggml_backend_buffer_t buffer) {
    (void) buffer;
    unreachable(__func__);
    return GGML_BACKEND_BUFFER_USAGE_ANY;
}

void ggml_backend_tensor_set(struct ggml_tensor * tensor, const void * data, size_t offset, size_t size) {
    (void) tensor; (void) data; (void) offset; (void) size;
    unreachable(__func__);
}

void ggml_backend_tensor_get(const struct ggml_tensor * tensor, void * data, size_t offset, size_t size) {
    (void) tensor; (void) data; (void) offset; (void) size;
    unreachable(__func__);
}

void ggml_backend_tensor_memset(struct ggml_tensor * tensor, uint8_t value, size_t offset, size_t size) {
    (void) tensor; (void) value; (void) offset; (void) size;
    unreachable(__func__);
}
