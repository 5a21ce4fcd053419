"""Compression techniques; each takes a SourceModel and returns a new SourceModel.

============================  ==========================================================
:mod:`.layout`                where heads/channels/hidden dims live, from the description
:mod:`.calibration`           per-linear input statistics (X^T X) on calibration text
:mod:`.prune`                 magnitude (unstructured) and structured (heads, MLP channels)
:mod:`.sparsity`              Wanda: activation-aware unstructured and N:M (2:4) sparsity
:mod:`.lowrank`               SVD factorization (plain or whitened, ranks uniform or global)
:mod:`.gptq`                  int4 weights on the ONNX int4 grid: GPTQ or round-to-nearest
:mod:`.distill`               smaller student trained on the teacher's logits
:mod:`.lora`                  LoRA fine-tuning on chat JSONL (peft), merged into the weights
:mod:`.evaluate`              top-1 / KL / perplexity vs a reference, via edgeslm.verify
:mod:`.report`                the params / bytes / tok/s / quality table
:mod:`.model`                 derive(), save_hf_folder(), load_model(): the shared contract
:mod:`.recipe`                a TOML list of steps (prune, lowrank, recover, quantize, export)
:mod:`.recipe_run`            runs a recipe step by step: state file, resume, report
============================  ==========================================================

Results are standard transformers models of the source's family (smaller, or with factorized
linears listed in ``spec.extra["low_rank"]``), so ``export_model(result, ...)`` works unchanged and
techniques compose: prune, then factorize, then fine-tune, then quantize at export.
Quantization is the exporters' work: each backend declares the precisions it writes
(``Exporter.precisions``) and runs its runtime's own quantizer (docs/compression.md).
Heavy imports (torch, peft) happen inside the functions.
"""
