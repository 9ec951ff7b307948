/* See filter.h. */
#include "filter.h"

void bedtime_sosfilt(const double *sos, size_t n_sections, double *x, size_t n_signals, size_t n_samples,
                     double *zi)
{
    for (size_t i = 0; i < n_signals; i++) {
        double *row = x + i * n_samples;
        double *z = zi + i * n_sections * 2;
        for (size_t n = 0; n < n_samples; n++) {
            double x_cur = row[n];
            for (size_t s = 0; s < n_sections; s++) {
                const double *c = sos + s * 6;
                double x_new = c[0] * x_cur + z[2 * s];
                z[2 * s] = c[1] * x_cur - c[4] * x_new + z[2 * s + 1];
                z[2 * s + 1] = c[2] * x_cur - c[5] * x_new;
                x_cur = x_new;
            }
            row[n] = x_cur;
        }
    }
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
