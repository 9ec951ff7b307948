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

/* Filter n_lanes independent signals side by side (sample by sample, two lanes at a time, so their
 * recurrences overlap in the CPU), each with the same arithmetic as bedtime_sosfilt. Lane j is filtered by
 * filter j % n_filters; sos holds the filters' sections one after the other (sum of n_sections x 6). Lane j's
 * signal is x[offset[j] .. offset[j] + length[j]), filtered in place; zi holds the lanes' states one after the
 * other (lane j: its filter's n_sections x 2), updated in place. */
void bedtime_sosfilt_lanes(const double *sos, const size_t *n_sections, size_t n_filters, double *x,
                           size_t n_lanes, const size_t *offset, const size_t *length, double *zi);

#define BEDTIME_SOSFILTFILT_MAX_LANES 8

/* scipy.signal.sosfiltfilt(sos, x) with its defaults (odd extension by pad samples, initial states
 * sosfilt_zi(sos) scaled by the first sample of each pass) of n_lanes signals of n samples each, lane j with
 * its own sections, steady state zi_design and pad[j] (scipy's 3 * ntaps), the lanes filtered side by side.
 * sos, zi_design: the lanes' (sum of n_sections x 6, x 2); x, out: n_lanes x n; work: sum of (n + 2 pad[j])
 * doubles; state: sum of n_sections x 2 doubles. Returns 0, or -1 (nothing written to out) when
 * n_lanes > BEDTIME_SOSFILTFILT_MAX_LANES, n < 2 or some pad[j] >= n (scipy refuses such input). */
int bedtime_sosfiltfilt(const double *sos, const double *zi_design, const size_t *n_sections, const size_t *pad,
                        size_t n_lanes, const double *x, size_t n, double *out, double *work, double *state);

/* Upsample by up, filter with h (n_taps, at the up-sampled rate), downsample by down: out[k] for k < n_out is
 * sum over m of x[newest - m] * h[phase + m * up], with g = k * down, newest = g / up, phase = g % up, the taps
 * padded with zeros to whole phases and samples outside x counting as zero, summed oldest sample first from
 * 0.0, as scipy.signal.upfirdn's kernel does. */
void bedtime_upfirdn(const double *h, size_t n_taps, const double *x, size_t n_x, size_t up, size_t down,
                     double *out, size_t n_out);

#endif
