/*
 * ADS1299 frame decoder + SPSC lock-free ring buffer. See ring.h for the contract.
 *
 * Why hand-written: no small, well-kept C library does "decode 24-bit ADS1299 frames straight into a
 * struct-of-arrays SPSC ring" and Python-side decoding costs ~20x more per frame (bench/acquisition.py).
 *
 * Memory ordering: head (written by the producer) and tail (written by the consumer) are free-running
 * 64-bit sequence numbers; slot = seq % capacity. The producer fills a slot, then publishes it with a
 * release store of head; the consumer acquires head before reading slots and releases tail after
 * copying them out, which is what lets the producer reuse those slots (it acquires tail).
 */
#include "ring.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* The frame layout (BT_STATUS_BYTES, BT_SYNC_MASK, ...) is in ring.h, checked against appliance/ads1299_frame.py. */
#define BT_SYNC_BYTE_MASK ((uint8_t)(BT_SYNC_MASK >> 16))  /* the sync nibble within the first status byte */
#define BT_SYNC_BYTE ((uint8_t)(BT_SYNC_BITS >> 16))
#define BT_MAX_CHANNELS 64u
#define BT_CACHELINE 64

struct bt_ring {
    /* producer-owned line */
    _Alignas(BT_CACHELINE) _Atomic uint64_t head;
    _Atomic uint64_t pushed;
    _Atomic uint64_t dropped;
    _Atomic uint64_t corrupt;
    uint64_t next_index;
    /* consumer-owned line */
    _Alignas(BT_CACHELINE) _Atomic uint64_t tail;
    _Atomic uint64_t popped;
    /* read-only after creation */
    _Alignas(BT_CACHELINE) uint32_t capacity;
    uint32_t n_channels;
    int64_t *index;
    int64_t *timestamp_ns;
    uint32_t *status;
    int32_t *counts;
    /* producer-written health, readable anywhere (relaxed atomics: plain loads/stores on x86/ARM) */
    _Atomic uint32_t last_status;
    int32_t *last_value;            /* producer-only */
    _Atomic uint32_t *run_length;
    _Atomic uint64_t *railed;
    _Atomic uint32_t *max_run;
    int have_last;                  /* producer-only */
};

size_t bt_frame_bytes(uint32_t n_channels) {
    return (size_t)BT_STATUS_BYTES + (size_t)BT_BYTES_PER_CHANNEL * n_channels;
}

int bt_decode_frame(const uint8_t *frame, uint32_t n_channels, uint32_t *status, int32_t *counts) {
    uint32_t st = ((uint32_t)frame[0] << 16) | ((uint32_t)frame[1] << 8) | (uint32_t)frame[2];
    *status = st;
    const uint8_t *p = frame + BT_STATUS_BYTES;
    for (uint32_t c = 0; c < n_channels; c++, p += BT_BYTES_PER_CHANNEL) {
        int32_t v = (int32_t)(((uint32_t)p[0] << 16) | ((uint32_t)p[1] << 8) | (uint32_t)p[2]);
        /* sign-extend 24 -> 32 bits without implementation-defined shifts */
        counts[c] = (v ^ 0x800000) - 0x800000;
    }
    return ((st & (uint32_t)BT_SYNC_MASK) == (uint32_t)BT_SYNC_BITS) ? 0 : -1;
}

bt_ring *bt_ring_new(uint32_t capacity_frames, uint32_t n_channels) {
    if (capacity_frames == 0 || n_channels == 0 || n_channels > BT_MAX_CHANNELS) return NULL;
    bt_ring *r = aligned_alloc(BT_CACHELINE, (sizeof(bt_ring) + BT_CACHELINE - 1) / BT_CACHELINE * BT_CACHELINE);
    if (!r) return NULL;
    memset(r, 0, sizeof(*r));
    atomic_init(&r->head, 0);
    atomic_init(&r->tail, 0);
    atomic_init(&r->pushed, 0);
    atomic_init(&r->dropped, 0);
    atomic_init(&r->corrupt, 0);
    atomic_init(&r->popped, 0);
    atomic_init(&r->last_status, 0);
    r->capacity = capacity_frames;
    r->n_channels = n_channels;
    r->index = calloc(capacity_frames, sizeof(int64_t));
    r->timestamp_ns = calloc(capacity_frames, sizeof(int64_t));
    r->status = calloc(capacity_frames, sizeof(uint32_t));
    r->counts = calloc((size_t)capacity_frames * n_channels, sizeof(int32_t));
    r->last_value = calloc(n_channels, sizeof(int32_t));
    r->run_length = calloc(n_channels, sizeof(*r->run_length));
    r->railed = calloc(n_channels, sizeof(*r->railed));
    r->max_run = calloc(n_channels, sizeof(*r->max_run));
    if (!r->index || !r->timestamp_ns || !r->status || !r->counts || !r->last_value || !r->run_length ||
        !r->railed || !r->max_run) {
        bt_ring_free(r);
        return NULL;
    }
    return r;
}

void bt_ring_free(bt_ring *r) {
    if (!r) return;
    free(r->index);
    free(r->timestamp_ns);
    free(r->status);
    free(r->counts);
    free(r->last_value);
    free((void *)r->run_length);
    free((void *)r->railed);
    free((void *)r->max_run);
    free(r);
}

static void update_health(bt_ring *r, uint32_t st, const int32_t *v) {
    atomic_store_explicit(&r->last_status, st, memory_order_relaxed);
    for (uint32_t c = 0; c < r->n_channels; c++) {
        uint32_t run = atomic_load_explicit(&r->run_length[c], memory_order_relaxed);
        run = (r->have_last && v[c] == r->last_value[c]) ? (run < UINT32_MAX ? run + 1 : run) : 0;
        atomic_store_explicit(&r->run_length[c], run, memory_order_relaxed);
        if (run > atomic_load_explicit(&r->max_run[c], memory_order_relaxed))
            atomic_store_explicit(&r->max_run[c], run, memory_order_relaxed);
        r->last_value[c] = v[c];
        if (v[c] == BT_CODE_MAX || v[c] == BT_CODE_MIN)
            atomic_fetch_add_explicit(&r->railed[c], 1, memory_order_relaxed);
    }
    r->have_last = 1;
}

int64_t bt_ring_push_raw(bt_ring *r, const uint8_t *data, size_t nbytes, int64_t timestamp_ns,
                         int64_t period_ns) {
    if (!r || (!data && nbytes)) return BT_ERR_ARGS;
    const size_t fb = bt_frame_bytes(r->n_channels);
    if (nbytes % fb) return BT_ERR_LENGTH;
    const size_t n = nbytes / fb;
    const uint32_t nch = r->n_channels;
    uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    uint64_t stored = 0, dropped = 0, corrupt = 0;
    int32_t scratch[BT_MAX_CHANNELS];
    for (size_t i = 0; i < n; i++) {
        const uint8_t *f = data + i * fb;
        if ((f[0] & BT_SYNC_BYTE_MASK) != BT_SYNC_BYTE) { corrupt++; continue; }   /* before decoding it */
        if (head - tail >= r->capacity) {
            /* looks full: refresh our view of the consumer once before refusing */
            tail = atomic_load_explicit(&r->tail, memory_order_acquire);
        }
        uint32_t st;
        if (head - tail >= r->capacity) {
            bt_decode_frame(f, nch, &st, scratch);
            update_health(r, st, scratch);
            r->next_index++;
            dropped++;
            continue;
        }
        size_t slot = (size_t)(head % r->capacity);
        int32_t *dst = r->counts + slot * nch;
        bt_decode_frame(f, nch, &st, dst);
        update_health(r, st, dst);
        r->status[slot] = st;
        r->index[slot] = (int64_t)r->next_index++;
        r->timestamp_ns[slot] = timestamp_ns + (int64_t)i * period_ns;
        head++;
        stored++;
        /* publish each frame as soon as it is written so a long burst is consumable early */
        atomic_store_explicit(&r->head, head, memory_order_release);
    }
    if (stored) atomic_fetch_add_explicit(&r->pushed, stored, memory_order_relaxed);
    if (dropped) atomic_fetch_add_explicit(&r->dropped, dropped, memory_order_relaxed);
    if (corrupt) atomic_fetch_add_explicit(&r->corrupt, corrupt, memory_order_relaxed);
    return (int64_t)stored;
}

int64_t bt_ring_push_bytes(bt_ring *r, const char *data, size_t nbytes, int64_t timestamp_ns,
                           int64_t period_ns) {
    return bt_ring_push_raw(r, (const uint8_t *)data, nbytes, timestamp_ns, period_ns);
}

static void copy_out(const bt_ring *r, uint64_t seq, size_t n, size_t out_off, int64_t *index,
                     int64_t *ts, uint32_t *status, int32_t *counts) {
    /* at most two contiguous runs because the ring wraps once */
    const uint32_t nch = r->n_channels;
    size_t done = 0;
    while (done < n) {
        size_t slot = (size_t)((seq + done) % r->capacity);
        size_t run = r->capacity - slot;
        if (run > n - done) run = n - done;
        size_t o = out_off + done;
        if (index) memcpy(index + o, r->index + slot, run * sizeof(int64_t));
        if (ts) memcpy(ts + o, r->timestamp_ns + slot, run * sizeof(int64_t));
        if (status) memcpy(status + o, r->status + slot, run * sizeof(uint32_t));
        if (counts) memcpy(counts + o * nch, r->counts + slot * nch, run * nch * sizeof(int32_t));
        done += run;
    }
}

size_t bt_ring_pop(bt_ring *r, size_t max_frames, int64_t *index, int64_t *timestamp_ns,
                   uint32_t *status, int32_t *counts) {
    if (!r) return 0;
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
    size_t n = (size_t)(head - tail);
    if (n > max_frames) n = max_frames;
    if (!n) return 0;
    copy_out(r, tail, n, 0, index, timestamp_ns, status, counts);
    atomic_store_explicit(&r->tail, tail + n, memory_order_release);
    atomic_fetch_add_explicit(&r->popped, n, memory_order_relaxed);
    return n;
}

size_t bt_ring_peek_last(bt_ring *r, size_t n, int64_t *index, int64_t *timestamp_ns, uint32_t *status,
                         int32_t *counts) {
    if (!r || !n) return 0;
    uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
    if (n > head) n = (size_t)head;
    if (n > r->capacity) n = r->capacity;
    if (!n) return 0;
    uint64_t first = head - n;
    copy_out(r, first, n, 0, index, timestamp_ns, status, counts);
    /* Frames already popped may have been reused by the producer while we copied. The producer
     * writes seq q only while head == q, and q's slot is the one of q - capacity; so after the copy,
     * every seq < head_now + 1 - capacity is suspect. Drop those from the front. */
    atomic_thread_fence(memory_order_acquire);
    uint64_t head_now = atomic_load_explicit(&r->head, memory_order_acquire);
    uint64_t safe_from = (head_now + 1 > r->capacity) ? head_now + 1 - r->capacity : 0;
    if (safe_from > first) {
        size_t bad = (size_t)(safe_from - first);
        if (bad >= n) return 0;
        size_t keep = n - bad;
        uint32_t nch = r->n_channels;
        if (index) memmove(index, index + bad, keep * sizeof(int64_t));
        if (timestamp_ns) memmove(timestamp_ns, timestamp_ns + bad, keep * sizeof(int64_t));
        if (status) memmove(status, status + bad, keep * sizeof(uint32_t));
        if (counts) memmove(counts, counts + bad * nch, keep * nch * sizeof(int32_t));
        n = keep;
    }
    return n;
}

size_t bt_ring_available(const bt_ring *r) {
    /* const-cast: C11 atomic_load takes a non-const pointer in older libcs */
    bt_ring *m = (bt_ring *)r;
    uint64_t head = atomic_load_explicit(&m->head, memory_order_acquire);
    uint64_t tail = atomic_load_explicit(&m->tail, memory_order_acquire);
    return (size_t)(head - tail);
}

uint32_t bt_ring_capacity(const bt_ring *r) { return r->capacity; }
uint32_t bt_ring_n_channels(const bt_ring *r) { return r->n_channels; }

void bt_ring_counters(const bt_ring *r, bt_counters *out) {
    bt_ring *m = (bt_ring *)r;
    out->pushed = atomic_load_explicit(&m->pushed, memory_order_relaxed);
    out->popped = atomic_load_explicit(&m->popped, memory_order_relaxed);
    out->dropped = atomic_load_explicit(&m->dropped, memory_order_relaxed);
    out->corrupt = atomic_load_explicit(&m->corrupt, memory_order_relaxed);
}

void bt_ring_channel_health(const bt_ring *r, uint32_t *run_length, uint64_t *railed, uint32_t *last_status) {
    bt_ring *m = (bt_ring *)r;
    for (uint32_t c = 0; c < r->n_channels; c++) {
        if (run_length) run_length[c] = atomic_load_explicit(&m->run_length[c], memory_order_relaxed);
        if (railed) railed[c] = atomic_load_explicit(&m->railed[c], memory_order_relaxed);
    }
    if (last_status) *last_status = atomic_load_explicit(&m->last_status, memory_order_relaxed);
}

void bt_ring_take_max_run(bt_ring *r, uint32_t *max_run) {
    for (uint32_t c = 0; c < r->n_channels; c++) {
        uint32_t now = atomic_load_explicit(&r->run_length[c], memory_order_relaxed);
        max_run[c] = atomic_exchange_explicit(&r->max_run[c], now, memory_order_relaxed);
        if (now > max_run[c]) max_run[c] = now;
    }
}
