/* Host unit tests for main/micro_text.c (gcc): make -C host_test test */
#include <stdio.h>
#include <string.h>

#include "../main/micro_text.h"

static int failures = 0, passed = 0;
#define CHECK(cond) do { if (cond) passed++; else { failures++; printf("FAIL %s:%d %s\n", __FILE__, __LINE__, #cond); } } while (0)

static const uint8_t vocab[] = {'?', '\n', ' ', 'a', 'b', 'c'};
#define V 6

int main(void) {
    CHECK(micro_encode_char(vocab, V, 'a') == 3);
    CHECK(micro_encode_char(vocab, V, 'z') == 0);
    CHECK(micro_decode_id(vocab, V, 5) == 'c');
    CHECK(micro_decode_id(vocab, V, 99) == '?');

    int ids[4];
    micro_window_ids(vocab, V, "ab", 2, 4, ids);  /* left-padded with ' ' */
    CHECK(ids[0] == 2 && ids[1] == 2 && ids[2] == 3 && ids[3] == 4);
    micro_window_ids(vocab, V, "cabcab", 6, 4, ids);
    CHECK(ids[0] == 4 && ids[1] == 5 && ids[2] == 3 && ids[3] == 4);

    int8_t in[4 * V];
    micro_fill_onehot(ids, 4, V, 127, -128, in);
    CHECK(in[0 * V + 4] == 127 && in[0 * V + 3] == -128 && in[3 * V + 4] == 127);
    int ones = 0;
    for (int i = 0; i < 4 * V; i++) ones += in[i] == 127;
    CHECK(ones == 4);

    /* one-hot 1.0 with scale 1/255 and zero point -128 is 127; 0.0 is -128 */
    CHECK(micro_quantize(1.0f, 1.0f / 255.0f, -128) == 127);
    CHECK(micro_quantize(0.0f, 1.0f / 255.0f, -128) == -128);
    CHECK(micro_quantize(1e9f, 0.1f, 0) == 127);

    int8_t logits[V] = {-5, 10, 3, 42, 41, -128};
    CHECK(micro_argmax_i8(logits, V) == 3);
    micro_sampler greedy = {0.0f, 0, 1};
    CHECK(micro_sample_i8(&greedy, logits, V, 0.1f, 0) == 3);

    /* top-k 2 only ever returns the two largest; temperature spreads between them */
    micro_sampler s = {1.0f, 2, 12345};
    int hits[V] = {0};
    for (int i = 0; i < 2000; i++) hits[micro_sample_i8(&s, logits, V, 0.5f, 0)]++;
    CHECK(hits[3] + hits[4] == 2000);
    CHECK(hits[3] > hits[4] && hits[4] > 300);

    /* a sharp distribution is effectively greedy */
    micro_sampler sharp = {0.05f, 0, 7};
    int same = 0;
    for (int i = 0; i < 200; i++) same += micro_sample_i8(&sharp, logits, V, 1.0f, 0) == 3;
    CHECK(same == 200);

    micro_sampler r = {1.0f, 0, 1};
    uint32_t a = micro_rand(&r), b = micro_rand(&r);
    CHECK(a != b && a != 0);

    printf("%d passed, %d failed\n", passed, failures);
    return failures ? 1 : 0;
}
