#include "micro_text.h"

#include <math.h>

int micro_encode_char(const uint8_t *vocab, int vocab_size, char c) {
    for (int i = 1; i < vocab_size; i++) {
        if (vocab[i] == (uint8_t)c) return i;
    }
    return 0;
}

char micro_decode_id(const uint8_t *vocab, int vocab_size, int id) {
    if (id < 0 || id >= vocab_size) return '?';
    return (char)vocab[id];
}

void micro_window_ids(const uint8_t *vocab, int vocab_size, const char *text, size_t len, int context,
                      int *ids_out) {
    int pad = micro_encode_char(vocab, vocab_size, ' ');
    for (int i = 0; i < context; i++) {
        long src = (long)len - context + i;
        ids_out[i] = src < 0 ? pad : micro_encode_char(vocab, vocab_size, text[src]);
    }
}

void micro_fill_onehot(const int *ids, int context, int vocab_size, int8_t on, int8_t off, int8_t *input) {
    for (int i = 0; i < context; i++) {
        for (int v = 0; v < vocab_size; v++) input[i * vocab_size + v] = (ids[i] == v) ? on : off;
    }
}

int8_t micro_quantize(float x, float scale, int zero_point) {
    long q = lroundf(x / scale) + zero_point;
    if (q < -128) q = -128;
    if (q > 127) q = 127;
    return (int8_t)q;
}

int micro_argmax_i8(const int8_t *logits, int n) {
    int best = 0;
    for (int i = 1; i < n; i++) {
        if (logits[i] > logits[best]) best = i;
    }
    return best;
}

uint32_t micro_rand(micro_sampler *s) {
    uint32_t x = s->rng ? s->rng : 0x9E3779B9u;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    s->rng = x;
    return x;
}

int micro_sample_i8(micro_sampler *s, const int8_t *logits, int n, float scale, int zero_point) {
    if (s->temperature <= 0.0f) return micro_argmax_i8(logits, n);
    /* the k-th largest logit is the cut; ties at the cut are kept */
    int k = (s->top_k <= 0 || s->top_k > n) ? n : s->top_k;
    int8_t cut = -128;
    if (k < n) {
        int counts[256] = {0};
        for (int i = 0; i < n; i++) counts[logits[i] + 128]++;
        int seen = 0;
        for (int q = 255; q >= 0; q--) {
            seen += counts[q];
            if (seen >= k) { cut = (int8_t)(q - 128); break; }
        }
    }
    int8_t top = logits[micro_argmax_i8(logits, n)];
    float total = 0.0f;
    float weights[256];
    int m = n < 256 ? n : 256;
    for (int i = 0; i < m; i++) {
        weights[i] = logits[i] < cut ? 0.0f : expf(scale * (float)(logits[i] - top) / s->temperature);
        total += weights[i];
    }
    (void)zero_point; /* differences of logits do not depend on the zero point */
    float r = (float)(micro_rand(s) >> 8) / 16777216.0f * total;
    for (int i = 0; i < m; i++) {
        r -= weights[i];
        if (r < 0.0f && weights[i] > 0.0f) return i;
    }
    return micro_argmax_i8(logits, n);
}
