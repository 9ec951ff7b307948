/* IIR (second-order sections) and polyphase FIR resampling for appliance.filters: the filters the box runs
 * on every sample.
 *
 * Same arithmetic, in the same order, as scipy.signal's sosfilt (direct form II transposed, section by
 * section) and upfirdn kernels, so results are bit-identical to scipy's on the same machine; built with
 * -ffp-contract=off so no fused multiply-add reorders the rounding (tests/test_filters.py checks).
 */
#ifndef BEDTIME_FILTER_H
#define BEDTIME_FILTER_H

#include <stddef.h>

/* Filter n_signals rows of n_samples each, in place.
 * sos: n_sections x 6 (b0 b1 b2 a0 a1 a2, a0 == 1); x: n_signals x n_samples, C order;
 * zi: n_signals x n_sections x 2, the filter state, updated in place. */
void bedtime_sosfilt(const double *sos, size_t n_sections, double *x, size_t n_signals, size_t n_samples,
                     double *zi);

/* Upsample by up, filter with h (n_taps, at the up-sampled rate), downsample by down: out[k] for k < n_out is
 * sum over m of x[newest - m] * h[phase + m * up], with g = k * down, newest = g / up, phase = g % up, the taps
 * padded with zeros to whole phases and samples outside x counting as zero, summed oldest sample first from
 * 0.0, as scipy.signal.upfirdn's kernel does. */
void bedtime_upfirdn(const double *h, size_t n_taps, const double *x, size_t n_x, size_t up, size_t down,
                     double *out, size_t n_out);

#endif
