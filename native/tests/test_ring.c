/* C tests of the decoder and the SPSC ring, run under ASan + UBSan by `make -C native test`. */
#include "../ring.h"

#include <pthread.h>
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

static void put24(uint8_t *p, int32_t v) {
    uint32_t u = (uint32_t)v & 0xFFFFFFu;
    p[0] = (uint8_t)(u >> 16);
    p[1] = (uint8_t)(u >> 8);
    p[2] = (uint8_t)u;
}

static void make_frame(uint8_t *f, uint32_t nch, uint32_t status, const int32_t *v) {
    put24(f, (int32_t)status);
    for (uint32_t c = 0; c < nch; c++) put24(f + 3 + 3 * c, v[c]);
}

static void test_decode(void) {
    uint8_t f[27];
    int32_t v[8] = {0, 1, -1, 0x7FFFFF, -0x800000, 123456, -654321, 42};
    make_frame(f, 8, 0xC12345u, v);
    uint32_t st;
    int32_t out[8];
    CHECK(bt_decode_frame(f, 8, &st, out) == 0);
    CHECK(st == 0xC12345u);
    for (int c = 0; c < 8; c++) CHECK(out[c] == v[c]);
    f[0] = 0x40;  /* sync nibble 0100: corrupt */
    CHECK(bt_decode_frame(f, 8, &st, out) == -1);
    CHECK(bt_frame_bytes(8) == 27 && bt_frame_bytes(4) == 15);
}

static void test_fill_drop_corrupt(void) {
    bt_ring *r = bt_ring_new(4, 2);
    CHECK(r != NULL);
    CHECK(bt_ring_new(0, 2) == NULL && bt_ring_new(4, 0) == NULL && bt_ring_new(4, 65) == NULL);
    uint8_t buf[9 * 6];
    for (int i = 0; i < 6; i++) {
        int32_t v[2] = {i, -i};
        make_frame(buf + 9 * i, 2, 0xC00000u, v);
    }
    buf[9 * 2] = 0x00;  /* frame 2 corrupt */
    CHECK(bt_ring_push_raw(r, buf, 5, 0, 0) == BT_ERR_LENGTH);
    CHECK(bt_ring_push_raw(NULL, buf, 9, 0, 0) == BT_ERR_ARGS);
    CHECK(bt_ring_push_raw(r, buf, sizeof buf, 1000, 10) == 4);  /* 5 valid, 4 fit, 1 dropped */
    bt_counters c;
    bt_ring_counters(r, &c);
    CHECK(c.pushed == 4 && c.dropped == 1 && c.corrupt == 1 && c.popped == 0);
    CHECK(bt_ring_available(r) == 4);
    int64_t idx[8], ts[8];
    uint32_t st[8];
    int32_t cnt[16];
    CHECK(bt_ring_pop(r, 3, idx, ts, st, cnt) == 3);
    CHECK(idx[0] == 0 && idx[1] == 1 && idx[2] == 2);
    CHECK(ts[0] == 1000 && ts[1] == 1010 && ts[2] == 1030);  /* frame 2 (corrupt) kept its time slot */
    CHECK(cnt[0] == 0 && cnt[2] == 1 && cnt[3] == -1 && cnt[4] == 3 && cnt[5] == -3);
    /* wrap-around */
    CHECK(bt_ring_push_raw(r, buf, 18, 2000, 10) == 2);
    CHECK(bt_ring_available(r) == 3);
    /* newest 4 would include seq 2, already popped and reusable by the producer: only 3 are safe */
    CHECK(bt_ring_peek_last(r, 10, idx, ts, st, cnt) == 3);
    CHECK(idx[0] == 3 && idx[1] == 5 && idx[2] == 6);  /* index 4 was the dropped one */
    CHECK(bt_ring_pop(r, 8, idx, ts, st, cnt) == 3);
    CHECK(idx[0] == 3 && idx[1] == 5 && idx[2] == 6);
    uint32_t run[2];
    uint64_t railed[2];
    uint32_t last;
    bt_ring_channel_health(r, run, railed, &last);
    CHECK(last == 0xC00000u && railed[0] == 0);
    bt_ring_free(r);
}

static void test_health(void) {
    bt_ring *r = bt_ring_new(64, 2);
    uint8_t f[9];
    int32_t v[2] = {0x7FFFFF, 5};
    for (int i = 0; i < 10; i++) {
        make_frame(f, 2, 0xC00000u, v);
        bt_ring_push_raw(r, f, 9, 0, 0);
        v[1] += 1;
    }
    uint32_t run[2];
    uint64_t railed[2];
    bt_ring_channel_health(r, run, railed, NULL);
    CHECK(run[0] == 9 && run[1] == 0 && railed[0] == 10 && railed[1] == 0);
    uint32_t mx[2];
    v[0] = 1;
    make_frame(f, 2, 0xC00000u, v);
    bt_ring_push_raw(r, f, 9, 0, 0);   /* channel 1 changes: its run restarts, the max remembers 9 */
    bt_ring_take_max_run(r, mx);
    CHECK(mx[0] == 9 && mx[1] == 0);
    bt_ring_take_max_run(r, mx);
    CHECK(mx[0] == 0);
    bt_ring_free(r);
}

/* Threaded: a producer pushes N frames (in bursts), a consumer pops; every index arrives once, in order. */
#define N_FRAMES 200000
static bt_ring *g_ring;
static void *producer(void *arg) {
    (void)arg;
    uint8_t buf[27 * 7];
    uint32_t sent = 0;
    while (sent < N_FRAMES) {
        uint32_t k = (N_FRAMES - sent) < 7 ? (N_FRAMES - sent) : 7;
        for (uint32_t i = 0; i < k; i++) {
            int32_t v[8];
            for (int c = 0; c < 8; c++) v[c] = (int32_t)((sent + i) * 8 + c) & 0x7FFFFF;
            make_frame(buf + 27 * i, 8, 0xC00000u, v);
        }
        /* never overrun: wait for room (spin) so the test can demand zero drops */
        while (bt_ring_capacity(g_ring) - bt_ring_available(g_ring) < k) {
        }
        CHECK(bt_ring_push_raw(g_ring, buf, 27 * k, sent, 1) == (int64_t)k);
        sent += k;
    }
    return NULL;
}

static void test_threads(void) {
    g_ring = bt_ring_new(1000, 8);
    pthread_t th;
    pthread_create(&th, NULL, producer, NULL);
    int64_t idx[64], ts[64];
    uint32_t st[64];
    int32_t cnt[64 * 8];
    int64_t expect = 0;
    while (expect < N_FRAMES) {
        size_t n = bt_ring_pop(g_ring, 64, idx, ts, st, cnt);
        for (size_t i = 0; i < n; i++, expect++) {
            if (idx[i] != expect || ts[i] != expect || cnt[i * 8 + 3] != (int32_t)((expect * 8 + 3) & 0x7FFFFF)) {
                CHECK(0);
                expect = N_FRAMES;
                break;
            }
        }
        /* peeking from the consumer thread while the producer runs must stay consistent */
        size_t m = bt_ring_peek_last(g_ring, 16, idx, ts, st, cnt);
        for (size_t i = 1; i < m; i++) CHECK(idx[i] == idx[i - 1] + 1);
    }
    pthread_join(th, NULL);
    bt_counters c;
    bt_ring_counters(g_ring, &c);
    CHECK(c.pushed == N_FRAMES && c.popped == N_FRAMES && c.dropped == 0 && c.corrupt == 0);
    bt_ring_free(g_ring);
}

int main(void) {
    test_decode();
    test_fill_drop_corrupt();
    test_health();
    test_threads();
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("native ring tests: all passed\n");
    return 0;
}
