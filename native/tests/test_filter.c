/* C tests of the side-by-side IIR kernels, run under ASan + UBSan by `make -C native test`: every buffer is
 * touched within its bounds, and filtering lanes side by side gives, bit for bit, what each lane gives alone
 * (tests/test_filters.py compares all of them with scipy itself). */
#include "../filter.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;
#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                          \
        }                                                                        \
    } while (0)

static double uniform(void) { return rand() / (double)RAND_MAX - 0.5; }

/* a stable-ish random section: b0 b1 b2 1 a1 a2 */
static void random_section(double *c) {
    c[0] = uniform(); c[1] = uniform(); c[2] = uniform(); c[3] = 1.0; c[4] = -0.5 * uniform(); c[5] = 0.25 * uniform();
}

static void test_sosfiltfilt_lanes_equal_each_lane_alone(void) {
    for (int it = 0; it < 500; it++) {
        size_t nl = 1 + (size_t)rand() % BEDTIME_SOSFILTFILT_MAX_LANES, n = 2 + (size_t)rand() % 300;
        size_t ns[BEDTIME_SOSFILTFILT_MAX_LANES], pad[BEDTIME_SOSFILTFILT_MAX_LANES], tot = 0, padsum = 0;
        for (size_t j = 0; j < nl; j++) {
            ns[j] = 1 + (size_t)rand() % 6; /* 5 and 6: the cascade that is not unrolled */
            pad[j] = (size_t)rand() % n;
            tot += ns[j];
            padsum += pad[j];
        }
        double *sos = malloc(tot * 6 * sizeof *sos), *zi = malloc(tot * 2 * sizeof *zi);
        double *x = malloc(nl * n * sizeof *x), *out = malloc(nl * n * sizeof *out), *one = malloc(n * sizeof *one);
        double *work = malloc((nl * n + 2 * padsum) * sizeof *work), *state = malloc(tot * 2 * sizeof *state);
        double *work1 = malloc((n + 2 * n) * sizeof *work1), *state1 = malloc(12 * sizeof *state1);
        for (size_t k = 0; k < tot; k++) {
            random_section(sos + 6 * k);
            zi[2 * k] = uniform();
            zi[2 * k + 1] = uniform();
        }
        for (size_t i = 0; i < nl * n; i++)
            x[i] = 100.0 * uniform();
        CHECK(bedtime_sosfiltfilt(sos, zi, ns, pad, nl, x, n, out, work, state) == 0);
        size_t first = 0;
        for (size_t j = 0; j < nl; j++) {
            CHECK(bedtime_sosfiltfilt(sos + 6 * first, zi + 2 * first, ns + j, pad + j, 1, x + j * n, n, one, work1,
                                      state1) == 0);
            CHECK(memcmp(one, out + j * n, n * sizeof *one) == 0);
            first += ns[j];
        }
        pad[0] = n; /* scipy refuses a signal not longer than its pad */
        CHECK(bedtime_sosfiltfilt(sos, zi, ns, pad, nl, x, n, out, work, state) == -1);
        free(sos); free(zi); free(x); free(out); free(one); free(work); free(state); free(work1); free(state1);
    }
    size_t ns[BEDTIME_SOSFILTFILT_MAX_LANES + 1] = {0}, pad[BEDTIME_SOSFILTFILT_MAX_LANES + 1] = {0};
    CHECK(bedtime_sosfiltfilt(NULL, NULL, ns, pad, BEDTIME_SOSFILTFILT_MAX_LANES + 1, NULL, 10, NULL, NULL, NULL)
          == -1);
}

static void test_sosfilt_lanes_equal_sosfilt(void) {
    for (int it = 0; it < 500; it++) {
        size_t nf = 1 + (size_t)rand() % 3, nsig = 1 + (size_t)rand() % 4, lanes = nf * nsig;
        size_t ns[3], tot = 0, sec = 0, off[12], len[12], total_len = 0;
        for (size_t f = 0; f < nf; f++) {
            ns[f] = 1 + (size_t)rand() % 6;
            tot += ns[f];
        }
        for (size_t j = 0; j < lanes; j++) { /* lanes of different lengths: the longer one's tail runs alone */
            off[j] = total_len;
            len[j] = (size_t)rand() % 200;
            total_len += len[j];
            sec += ns[j % nf];
        }
        double *sos = malloc(tot * 6 * sizeof *sos), *y = malloc((total_len + 1) * sizeof *y);
        double *ref = malloc((total_len + 1) * sizeof *ref), *st = malloc(sec * 2 * sizeof *st);
        for (size_t k = 0; k < tot; k++)
            random_section(sos + 6 * k);
        for (size_t i = 0; i < total_len; i++)
            y[i] = ref[i] = 50.0 * uniform();
        for (size_t k = 0; k < 2 * sec; k++)
            st[k] = uniform();
        double *st_ref = malloc(sec * 2 * sizeof *st_ref);
        memcpy(st_ref, st, sec * 2 * sizeof *st);
        bedtime_sosfilt_lanes(sos, ns, nf, y, lanes, off, len, st);
        size_t s = 0;
        for (size_t j = 0; j < lanes; j++) {
            size_t f = j % nf, first = 0;
            for (size_t k = 0; k < f; k++)
                first += ns[k];
            bedtime_sosfilt(sos + 6 * first, ns[f], ref + off[j], 1, len[j], st_ref + 2 * s);
            s += ns[f];
        }
        CHECK(memcmp(y, ref, total_len * sizeof *y) == 0);
        CHECK(memcmp(st, st_ref, sec * 2 * sizeof *st) == 0);
        free(sos); free(y); free(ref); free(st); free(st_ref);
    }
}

int main(void) {
    srand(7);
    test_sosfiltfilt_lanes_equal_each_lane_alone();
    test_sosfilt_lanes_equal_sosfilt();
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    puts("filter: all checks passed");
    return 0;
}
