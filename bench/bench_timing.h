// Timing helpers shared by the C micro-benchmarks (bench_vec_dot.c, bench_types.c).
#pragma once

#include <stdint.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double) t.tv_sec + 1e-9 * (double) t.tv_nsec;
}

static int cmp_double(const void * a, const void * b) {
    const double x = *(const double *) a, y = *(const double *) b;
    return (x > y) - (x < y);
}

// Sorts t[0..reps) in place; the result of a timed loop goes to these so it is not optimized away.
static void sort_times(double * t, int reps) { qsort(t, (size_t) reps, sizeof(double), cmp_double); }

static volatile float    sink_f;
static volatile uint64_t sink_u;
