/* See filter.h. */
#include "filter.h"

/* One sample through a cascade of sections: scipy's direct form II transposed, section by section, in scipy's
   order of operations (the one arithmetic every IIR filter in this file shares). */
static inline __attribute__((always_inline)) double sos_step(const double *sos, size_t n_sections, double *z,
                                                             double x_cur)
{
#pragma GCC unroll 8
    for (size_t s = 0; s < n_sections; s++) {
        const double *c = sos + s * 6;
        double x_new = c[0] * x_cur + z[2 * s];
        z[2 * s] = c[1] * x_cur - c[4] * x_new + z[2 * s + 1];
        z[2 * s + 1] = c[2] * x_cur - c[5] * x_new;
        x_cur = x_new;
    }
    return x_cur;
}

/* Why the state is copied into a local array and the section counts are constants below: each section's state is
   a chain from one sample to the next (~4 dependent operations). Kept in the caller's memory, every sample also
   waits for the store of the previous one to reach the load (store-to-load forwarding, several cycles, the
   compiler cannot avoid it because the signal and the state may alias); with a constant section count the loop
   is unrolled and the local state lives in registers: about twice as fast, the same operations in the same
   order. */
#define MAX_UNROLLED_SECTIONS 4

static inline __attribute__((always_inline)) void run_one(const double *sos, size_t ns, double *x, size_t n,
                                                          double *zi)
{
    double z[2 * MAX_UNROLLED_SECTIONS];
    for (size_t k = 0; k < 2 * ns; k++)
        z[k] = zi[k];
    for (size_t i = 0; i < n; i++)
        x[i] = sos_step(sos, ns, z, x[i]);
    for (size_t k = 0; k < 2 * ns; k++)
        zi[k] = z[k];
}

/* Two independent signals side by side, sample by sample: their chains overlap in the CPU. */
static inline __attribute__((always_inline)) void run_two(const double *sa, size_t na, double *xa, double *za,
                                                          const double *sb, size_t nb, double *xb, double *zb,
                                                          size_t n)
{
    double a[2 * MAX_UNROLLED_SECTIONS], b[2 * MAX_UNROLLED_SECTIONS];
    for (size_t k = 0; k < 2 * na; k++)
        a[k] = za[k];
    for (size_t k = 0; k < 2 * nb; k++)
        b[k] = zb[k];
    for (size_t i = 0; i < n; i++) {
        xa[i] = sos_step(sa, na, a, xa[i]);
        xb[i] = sos_step(sb, nb, b, xb[i]);
    }
    for (size_t k = 0; k < 2 * na; k++)
        za[k] = a[k];
    for (size_t k = 0; k < 2 * nb; k++)
        zb[k] = b[k];
}

/* n samples of one signal in place, state zi (n_sections x 2) updated. */
static void sos_run(const double *sos, size_t n_sections, double *x, size_t n, double *zi)
{
    switch (n_sections) {
    case 1: run_one(sos, 1, x, n, zi); return;
    case 2: run_one(sos, 2, x, n, zi); return;
    case 3: run_one(sos, 3, x, n, zi); return;
    case 4: run_one(sos, 4, x, n, zi); return;
    default: /* longer cascades: the state stays in memory */
        for (size_t i = 0; i < n; i++)
            x[i] = sos_step(sos, n_sections, zi, x[i]);
    }
}

#define PAIR(na, nb) ((na) * (MAX_UNROLLED_SECTIONS + 1) + (nb))
#define PAIR_CASE(na, nb) \
    case PAIR(na, nb): run_two(sa, na, xa, za, sb, nb, xb, zb, n); return;

/* n samples of two signals in place, side by side; the same results as two sos_run calls. */
static void sos_run_two(const double *sa, size_t na, double *xa, double *za, const double *sb, size_t nb,
                        double *xb, double *zb, size_t n)
{
    if (na <= MAX_UNROLLED_SECTIONS && nb <= MAX_UNROLLED_SECTIONS) {
        switch (PAIR(na, nb)) {
        PAIR_CASE(1, 1) PAIR_CASE(1, 2) PAIR_CASE(1, 3) PAIR_CASE(1, 4)
        PAIR_CASE(2, 1) PAIR_CASE(2, 2) PAIR_CASE(2, 3) PAIR_CASE(2, 4)
        PAIR_CASE(3, 1) PAIR_CASE(3, 2) PAIR_CASE(3, 3) PAIR_CASE(3, 4)
        PAIR_CASE(4, 1) PAIR_CASE(4, 2) PAIR_CASE(4, 3) PAIR_CASE(4, 4)
        default: break;
        }
    }
    sos_run(sa, na, xa, n, za);
    sos_run(sb, nb, xb, n, zb);
}

void bedtime_sosfilt(const double *sos, size_t n_sections, double *x, size_t n_signals, size_t n_samples,
                     double *zi)
{
    for (size_t i = 0; i < n_signals; i++)
        sos_run(sos, n_sections, x + i * n_samples, n_samples, zi + i * n_sections * 2);
}

void bedtime_sosfilt_lanes(const double *sos, const size_t *n_sections, size_t n_filters, double *x,
                           size_t n_lanes, const size_t *offset, const size_t *length, double *zi)
{
    size_t state = 0; /* first section of the lane's state */
    for (size_t j = 0; j < n_lanes; j += 2) {
        size_t f = j % n_filters, first = 0;
        for (size_t k = 0; k < f; k++)
            first += n_sections[k];
        const double *sa = sos + 6 * first;
        size_t na = n_sections[f];
        double *xa = x + offset[j], *za = zi + 2 * state;
        state += na;
        if (j + 1 == n_lanes) {
            sos_run(sa, na, xa, length[j], za);
            break;
        }
        size_t g = (j + 1) % n_filters, first_b = 0;
        for (size_t k = 0; k < g; k++)
            first_b += n_sections[k];
        const double *sb = sos + 6 * first_b;
        size_t nb = n_sections[g];
        double *xb = x + offset[j + 1], *zb = zi + 2 * state;
        state += nb;
        size_t common = length[j] < length[j + 1] ? length[j] : length[j + 1];
        sos_run_two(sa, na, xa, za, sb, nb, xb, zb, common);
        /* the longer lane's tail, alone, from the state the pair left */
        sos_run(sa, na, xa + common, length[j] - common, za);
        sos_run(sb, nb, xb + common, length[j + 1] - common, zb);
    }
}

int bedtime_sosfiltfilt(const double *sos, const double *zi_design, const size_t *n_sections, const size_t *pad,
                        size_t n_lanes, const double *x, size_t n, double *out, double *work, double *state)
{
    size_t offset[BEDTIME_SOSFILTFILT_MAX_LANES] = {0}, length[BEDTIME_SOSFILTFILT_MAX_LANES] = {0};
    if (n_lanes > BEDTIME_SOSFILTFILT_MAX_LANES || n < 2)
        return -1;
    size_t at = 0;
    for (size_t j = 0; j < n_lanes; j++) {
        if (pad[j] >= n)
            return -1;
        offset[j] = at;
        length[j] = n + 2 * pad[j];
        at += length[j];
    }
    /* odd extension, as scipy's odd_ext: 2 * x[0] - x[pad..1], x, 2 * x[n-1] - x[n-2..n-1-pad] */
    for (size_t j = 0; j < n_lanes; j++) {
        const double *xj = x + j * n;
        double *e = work + offset[j];
        size_t p = pad[j];
        for (size_t i = 0; i < p; i++) {
            e[i] = 2.0 * xj[0] - xj[p - i];
            e[p + n + i] = 2.0 * xj[n - 1] - xj[n - 2 - i];
        }
        for (size_t i = 0; i < n; i++)
            e[p + i] = xj[i];
    }
    /* forward pass from the steady state scaled by the first sample (zi * x_0) */
    size_t s0 = 0;
    for (size_t j = 0; j < n_lanes; j++) {
        double x0 = work[offset[j]];
        for (size_t k = 0; k < 2 * n_sections[j]; k++)
            state[2 * s0 + k] = zi_design[2 * s0 + k] * x0;
        s0 += n_sections[j];
    }
    bedtime_sosfilt_lanes(sos, n_sections, n_lanes, work, n_lanes, offset, length, state);
    /* backward pass over the reversed output, from the steady state scaled by its last sample */
    s0 = 0;
    for (size_t j = 0; j < n_lanes; j++) {
        double *e = work + offset[j];
        for (size_t a = 0, b = length[j] - 1; a < b; a++, b--) {
            double t = e[a];
            e[a] = e[b];
            e[b] = t;
        }
        for (size_t k = 0; k < 2 * n_sections[j]; k++)
            state[2 * s0 + k] = zi_design[2 * s0 + k] * e[0];
        s0 += n_sections[j];
    }
    bedtime_sosfilt_lanes(sos, n_sections, n_lanes, work, n_lanes, offset, length, state);
    /* reversed back, the padding dropped */
    for (size_t j = 0; j < n_lanes; j++) {
        const double *e = work + offset[j];
        for (size_t i = 0; i < n; i++)
            out[j * n + i] = e[length[j] - 1 - pad[j] - i];
    }
    return 0;
}

/* Taps of polyphase branch `phase` (the m >= 0 with phase + m*up < n_taps). */
static size_t taps_of_phase(size_t phase, size_t n_taps, size_t up)
{
    return phase < n_taps ? (n_taps - phase + up - 1) / up : 0;
}

/* One output the general way: every branch tap, oldest sample first, skipping zero samples and padding taps. */
static double upfirdn_one(const double *h, size_t n_taps, const double *x, size_t n_x, size_t up,
                          size_t per_phase, size_t g)
{
    size_t newest = g / up, phase = g % up;
    double acc = 0.0;
    for (size_t i = 0; i < per_phase; i++) {
        size_t m = per_phase - 1 - i; /* oldest sample first */
        size_t tap = phase + m * up;
        if (m > newest || newest - m >= n_x || tap >= n_taps)
            continue; /* a zero sample or a padding tap adds nothing */
        acc += x[newest - m] * h[tap];
    }
    return acc;
}

void bedtime_upfirdn(const double *h, size_t n_taps, const double *x, size_t n_x, size_t up, size_t down,
                     double *out, size_t n_out)
{
    size_t per_phase = (n_taps + up - 1) / up;
    size_t k = 0;
    while (k < n_out) {
        /* Four outputs at once where every tap of each meets a real sample (all but the edges): each sum
           still adds the same products in the same order as upfirdn_one (oldest sample first), but the four
           independent additions overlap in the CPU instead of waiting on one another. */
        const double *xp[4], *hp[4];
        size_t len[4], lmin = (size_t)-1;
        int interior = k + 4 <= n_out;
        for (int j = 0; interior && j < 4; j++) {
            size_t g = (k + (size_t)j) * down, newest = g / up, phase = g % up;
            len[j] = taps_of_phase(phase, n_taps, up);
            if (len[j] == 0 || newest + 1 < len[j] || newest >= n_x) {
                interior = 0;
                break;
            }
            xp[j] = x + (newest + 1 - len[j]);          /* the oldest sample this output uses */
            hp[j] = h + phase + (len[j] - 1) * up;      /* its tap */
            if (len[j] < lmin)
                lmin = len[j];
        }
        if (!interior) {
            out[k] = upfirdn_one(h, n_taps, x, n_x, up, per_phase, k * down);
            k++;
            continue;
        }
        double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
        for (size_t i = 0; i < lmin; i++) {
            size_t back = i * up;
            a0 += xp[0][i] * hp[0][-(ptrdiff_t)back];
            a1 += xp[1][i] * hp[1][-(ptrdiff_t)back];
            a2 += xp[2][i] * hp[2][-(ptrdiff_t)back];
            a3 += xp[3][i] * hp[3][-(ptrdiff_t)back];
        }
        double acc[4] = {a0, a1, a2, a3};
        for (int j = 0; j < 4; j++) {
            for (size_t i = lmin; i < len[j]; i++)
                acc[j] += xp[j][i] * hp[j][-(ptrdiff_t)(i * up)];
            out[k + (size_t)j] = acc[j];
        }
        k += 4;
    }
}
