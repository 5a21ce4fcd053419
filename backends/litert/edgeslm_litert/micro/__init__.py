"""Micro language models for microcontrollers (TFLite Micro), built where a 135M model cannot go.

::

    text file / teacher bundle --CharVocab--> ids --train MicroLM (torch)--> float model
        --litert_torch.convert--> float .tflite
        --ai_edge_quantizer static_wi8_ai8 + representative windows--> FULL-int8 .tflite
           (int8 one-hot input, int8 logits, per-channel int8 weights, int32 biases)
        --flatbuffer_utils: weights inlined (TFLM cannot read offset buffers)--> micro_lm.tflite
        --tflite-micro interpreter (subprocess)--> top-1 agreement with the float model, arena
        --> micro_lm.h (aligned byte array + vocabulary + quantization constants)

No TensorFlow is needed: litert-torch, ai-edge-quantizer, ai_edge_litert and tflite-micro all
run with numpy 2. Entry point: :func:`build_micro_model`; CLI: ``edgeslm micro``.
"""

from .build import MicroConfig, build_micro_model  # noqa: F401
