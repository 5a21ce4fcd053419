// Runs the edgeslm micro language model (main/micro_lm.h, written by `edgeslm micro`) with
// TFLite Micro and prints generated text on the serial console.
//
// The same file builds on a host against TFLite Micro sources (host_test/Makefile, target
// `generate`): ESP_PLATFORM is defined only by ESP-IDF builds.
#include <cstdint>
#include <cstdio>
#include <cstring>

#ifdef ESP_PLATFORM
#include "esp_timer.h"
#include "freertos/FreeRTOS.h"
#include "freertos/task.h"
static int64_t now_us() { return esp_timer_get_time(); }
#else
#include <chrono>
static int64_t now_us() {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::steady_clock::now().time_since_epoch()).count();
}
#endif
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

#include "micro_lm.h"
#include "micro_text.h"

#ifndef PROMPT
#define PROMPT "The model "
#endif
#ifndef NEW_CHARS
#define NEW_CHARS 200
#endif
#ifndef SEED
#define SEED 0  // 0: seed the sampler from the clock
#endif
#ifndef TEMPERATURE
#define TEMPERATURE 0.7f  // 0: greedy
#endif
#ifndef TOP_K
#define TOP_K 8
#endif

// The arena the host measured (RecordingMicroAllocator) plus a margin; internal SRAM is plenty.
alignas(16) static uint8_t tensor_arena[EDGESLM_MICRO_ARENA_BYTES + 4096];
static char text[sizeof(PROMPT) + NEW_CHARS];

// Generates NEW_CHARS characters after PROMPT; 0 on success.
static int generate() {
    const tflite::Model *model = tflite::GetModel(edgeslm_micro_model);
    if (model->version() != TFLITE_SCHEMA_VERSION) {
        printf("model schema %lu != %d\n", (unsigned long)model->version(), TFLITE_SCHEMA_VERSION);
        return 1;
    }
    // The ops the int8 graph uses (listed in the header's comment): FULLY_CONNECTED, RESHAPE.
    static tflite::MicroMutableOpResolver<2> resolver;
    resolver.AddFullyConnected();
    resolver.AddReshape();
    static tflite::MicroInterpreter interpreter(model, resolver, tensor_arena, sizeof(tensor_arena));
    if (interpreter.AllocateTensors() != kTfLiteOk) {
        printf("AllocateTensors failed: arena too small?\n");
        return 1;
    }
    printf("arena used: %u bytes\n", (unsigned)interpreter.arena_used_bytes());
    TfLiteTensor *input = interpreter.input(0);    // int8 (1, CONTEXT, VOCAB)
    TfLiteTensor *output = interpreter.output(0);  // int8 (1, VOCAB)
    const int8_t on = micro_quantize(1.0f, EDGESLM_MICRO_INPUT_SCALE, EDGESLM_MICRO_INPUT_ZERO_POINT);
    const int8_t off = micro_quantize(0.0f, EDGESLM_MICRO_INPUT_SCALE, EDGESLM_MICRO_INPUT_ZERO_POINT);
    micro_sampler sampler = {TEMPERATURE, TOP_K, SEED ? (uint32_t)SEED : ((uint32_t)now_us() | 1u)};

    size_t len = strlen(PROMPT);
    memcpy(text, PROMPT, len);
    printf("%s", PROMPT);
    int ids[EDGESLM_MICRO_CONTEXT];
    int64_t t0 = now_us();
    for (int i = 0; i < NEW_CHARS; i++) {
        micro_window_ids(edgeslm_micro_vocab, EDGESLM_MICRO_VOCAB, text, len, EDGESLM_MICRO_CONTEXT, ids);
        micro_fill_onehot(ids, EDGESLM_MICRO_CONTEXT, EDGESLM_MICRO_VOCAB, on, off, input->data.int8);
        if (interpreter.Invoke() != kTfLiteOk) {
            printf("\nInvoke failed\n");
            return 1;
        }
        int id = micro_sample_i8(&sampler, output->data.int8, EDGESLM_MICRO_VOCAB, EDGESLM_MICRO_OUTPUT_SCALE,
                                 EDGESLM_MICRO_OUTPUT_ZERO_POINT);
        text[len++] = micro_decode_id(edgeslm_micro_vocab, EDGESLM_MICRO_VOCAB, id);
        putchar(text[len - 1]);
        fflush(stdout);
    }
    int64_t us = now_us() - t0;
    printf("\n%d chars in %lld ms (%.1f chars/s)\n", NEW_CHARS, (long long)(us / 1000), NEW_CHARS * 1e6 / us);
    return 0;
}

#ifdef ESP_PLATFORM
extern "C" void app_main(void) {
    generate();
    while (true) vTaskDelay(pdMS_TO_TICKS(1000));
}
#else
int main() { return generate(); }
#endif
