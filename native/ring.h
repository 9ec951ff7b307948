/*
 * ADS1299 frame decoder + single-producer/single-consumer lock-free ring buffer.
 *
 * One frame = what the chip shifts out after one DRDY in RDATAC mode:
 *   3 status bytes (1100 + LOFF_STATP[7:0] + LOFF_STATN[7:0] + GPIOD[4:1]) then
 *   n_channels x 24-bit two's-complement big-endian channel values
 * (ADS1299 datasheet SBAS499, "Data Output Format"; see ../shared/reference/ads1299.md section 4, relative to the repository).
 * The layout is defined for Python in appliance/ads1299_frame.py; the constants below repeat it for the C
 * decoder, and cffi hands them to Python (lib.BT_*) so tests/test_frame_layout.py compares the compiled
 * values, not the source text, with that module.
 *
 * Threading contract: exactly one producer thread calls bt_ring_push_raw(); exactly one consumer thread
 * calls bt_ring_pop() / bt_ring_peek_last(). Counters may be read from any thread.
 * This header is also fed to cffi's cdef(), so it holds plain declarations only (constants as enums, no
 * macros with values, no atomics): the struct is opaque.
 */
#ifndef BEDTIME_RING_H
#define BEDTIME_RING_H

#include <stddef.h>
#include <stdint.h>

/* The RDATAC frame (appliance/ads1299_frame.py: STATUS_BYTES, BYTES_PER_CHANNEL, STATUS_SYNC_MASK, STATUS_SYNC,
 * FULL_SCALE_CODE, MIN_CODE). */
enum {
    BT_STATUS_BYTES = 3,        /* the 24-bit status word comes first ... */
    BT_BYTES_PER_CHANNEL = 3,   /* ... then one 24-bit two's-complement code per channel */
    BT_SYNC_MASK = 0xF00000,    /* top nibble of the status word, which ... */
    BT_SYNC_BITS = 0xC00000,    /* ... must read binary 1100, or the frame is corrupt */
    BT_CODE_MAX = 0x7FFFFF,     /* positive full scale; the ADC clips here (datasheet: "Data Format") */
    BT_CODE_MIN = -0x800000     /* negative full scale */
};

/* Return codes of bt_ring_push_raw() below zero. */
enum {
    BT_ERR_LENGTH = -1,   /* nbytes is not a whole number of frames: nothing was pushed */
    BT_ERR_ARGS = -2      /* NULL ring or NULL data with nbytes > 0 */
};

typedef struct bt_ring bt_ring;

typedef struct bt_counters {
    uint64_t pushed;    /* frames stored */
    uint64_t popped;    /* frames handed to the consumer */
    uint64_t dropped;   /* valid frames refused because the ring was full */
    uint64_t corrupt;   /* frames whose status word did not start with binary 1100 */
} bt_counters;

/* Decode one frame (3 + 3*n_channels bytes). Returns 0 if the sync nibble is 1100, -1 otherwise
 * (outputs are still written, so a caller can inspect a corrupt frame). */
int bt_decode_frame(const uint8_t *frame, uint32_t n_channels, uint32_t *status, int32_t *counts);

/* Frame size in bytes for n_channels channels (one device, RDATAC). */
size_t bt_frame_bytes(uint32_t n_channels);

/* capacity_frames >= 1, 1 <= n_channels <= 64. Returns NULL on bad arguments or out of memory. */
bt_ring *bt_ring_new(uint32_t capacity_frames, uint32_t n_channels);
void bt_ring_free(bt_ring *ring);

/* Producer. data holds one or more concatenated frames. Frame i gets timestamp_ns + i*period_ns.
 * Each valid frame takes the next sample index (stored or dropped alike, so a gap in the index of
 * popped frames shows exactly how many were dropped); corrupt frames take no index.
 * Returns the number of frames stored (>= 0) or a BT_ERR_* code. */
int64_t bt_ring_push_raw(bt_ring *ring, const uint8_t *data, size_t nbytes,
                         int64_t timestamp_ns, int64_t period_ns);

/* Same as bt_ring_push_raw, with char data: cffi passes a Python bytes object to a char* argument
 * without building a buffer object, which is a visible share of a single-frame push. */
int64_t bt_ring_push_bytes(bt_ring *ring, const char *data, size_t nbytes, int64_t timestamp_ns,
                           int64_t period_ns);

/* Consumer. Copies up to max_frames of the oldest unread frames into the caller's arrays
 * (counts is row-major max_frames x n_channels) and releases them. Returns how many were copied. */
size_t bt_ring_pop(bt_ring *ring, size_t max_frames, int64_t *index, int64_t *timestamp_ns,
                   uint32_t *status, int32_t *counts);

/* Consumer side (same thread as pop). Copies the newest n frames, read or not, without consuming
 * anything. Frames the producer may be overwriting are left out, so fewer than n may come back
 * (up to capacity - 1 when the producer is not pushing meanwhile). */
size_t bt_ring_peek_last(bt_ring *ring, size_t n, int64_t *index, int64_t *timestamp_ns,
                         uint32_t *status, int32_t *counts);

size_t bt_ring_available(const bt_ring *ring);
uint32_t bt_ring_capacity(const bt_ring *ring);
uint32_t bt_ring_n_channels(const bt_ring *ring);
void bt_ring_counters(const bt_ring *ring, bt_counters *out);

/* Signal health kept by the producer while decoding (cheap, per channel):
 * run_length[c] = how many consecutive valid frames channel c has had exactly the same value
 * (an ADC with a live input always shows noise, so a long run means a stuck channel);
 * railed[c] = total frames in which channel c sat on a full-scale code (0x7FFFFF or 0x800000).
 * last_status = the status word of the newest valid frame. */
void bt_ring_channel_health(const bt_ring *ring, uint32_t *run_length, uint64_t *railed,
                            uint32_t *last_status);

/* Longest run_length each channel reached since the previous call (then reset to the current run).
 * Lets a caller that checks health once per long burst still see a short stuck stretch inside it. */
void bt_ring_take_max_run(bt_ring *ring, uint32_t *max_run);

#endif
