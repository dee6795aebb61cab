// Forced into every file of the fuzz build (build_fuzzer.py: -include): assert() must be on in
// ggml's sources and ours alike, or the fuzzer cannot see a broken precondition.
#pragma once
#ifdef NDEBUG
#error "the fuzz build must keep assert() on: compile with -UNDEBUG (-DNDEBUG=0 defines NDEBUG)"
#endif
