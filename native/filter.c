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

void bedtime_upfirdn(const double *h, size_t n_taps, const double *x, size_t n_x, size_t up, size_t down,
                     double *out, size_t n_out)
{
    size_t per_phase = (n_taps + up - 1) / up;
    for (size_t k = 0; k < n_out; k++) {
        size_t g = k * down, newest = g / up, phase = g % up;
        double acc = 0.0;
        for (size_t i = 0; i < per_phase; i++) {
            size_t m = per_phase - 1 - i; /* oldest sample first */
            size_t tap = phase + m * up;
            if (m > newest || newest - m >= n_x || tap >= n_taps)
                continue; /* a zero sample or a padding tap adds nothing */
            acc += x[newest - m] * h[tap];
        }
        out[k] = acc;
    }
}
