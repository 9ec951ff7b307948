/* Second-order-section IIR filtering for appliance.filters: the one filter the box runs per sample.
 *
 * Same arithmetic, in the same order, as scipy.signal.sosfilt's kernel (direct form II transposed,
 * section by section), so results are bit-identical to scipy's on the same machine; built with
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

#endif
