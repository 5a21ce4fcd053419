/* Host-testable text helpers for the edgeslm micro model: character tokenizer, int8 one-hot
 * window, sampling. Pure C99, no TFLite Micro, no ESP-IDF: host_test/ compiles them with gcc. */
#ifndef MICRO_TEXT_H
#define MICRO_TEXT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Character <-> id through the model's vocabulary (vocab[id] = byte; id 0 = unknown). */
int micro_encode_char(const uint8_t *vocab, int vocab_size, char c);
char micro_decode_id(const uint8_t *vocab, int vocab_size, int id);
/* Encode the last `context` characters of `text` into ids (left-padded with the id of ' ' or 0). */
void micro_window_ids(const uint8_t *vocab, int vocab_size, const char *text, size_t len, int context,
                      int *ids_out);
/* Write the int8 one-hot input (context x vocab): `on` where id matches, `off` elsewhere. */
void micro_fill_onehot(const int *ids, int context, int vocab_size, int8_t on, int8_t off, int8_t *input);
/* Quantized value of a real number for a tensor with the given scale / zero point (saturated). */
int8_t micro_quantize(float x, float scale, int zero_point);

/* Sampling over int8 logits (real = scale * (q - zero_point)). */
typedef struct {
    float temperature; /* <= 0: greedy */
    int top_k;         /* <= 0 or >= vocab: all */
    uint32_t rng;      /* xorshift32 state, non-zero */
} micro_sampler;

int micro_argmax_i8(const int8_t *logits, int n);
uint32_t micro_rand(micro_sampler *s);
int micro_sample_i8(micro_sampler *s, const int8_t *logits, int n, float scale, int zero_point);

#ifdef __cplusplus
}
#endif
#endif /* MICRO_TEXT_H */
