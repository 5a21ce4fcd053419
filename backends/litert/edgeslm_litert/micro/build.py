"""build_micro_model: text -> trained MicroLM -> full-int8 .tflite -> TFLM check -> C header."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeslm._deps import require
from edgeslm.errors import ExportError
from edgeslm.outputs import make_dir
from edgeslm.progress import NULL_STEPS, Steps

from .model import CharVocab, make_module, onehot, train, windows

MODEL_FILE = "micro_lm.tflite"
FLOAT_FILE = "micro_lm_float.tflite"
HEADER_FILE = "micro_lm.h"
REPORT_FILE = "micro_report.json"
SAMPLE_PROMPT = "The "  # the firmware's greedy output for this prompt must equal the report's sample
SAMPLE_CHARS = 80


@dataclass
class MicroConfig:
    context: int = 24  # characters the model sees; the input is (1, context, vocab) int8
    embed: int = 32  # per-character embedding width
    hidden: int = 384  # width of the two hidden layers (params ~ context*embed*hidden + hidden^2)
    max_vocab: int = 96  # most frequent ASCII characters kept; others map to '?'
    steps: int = 3000  # training steps of 64 windows (the 500 KB default trains in ~2 min on 2 cores)
    lr: float = 3e-3
    label_smoothing: float = 0.1  # narrows the logit range, so int8 logits keep their top-1 (see train)
    calibration_windows: int = 1000  # representative dataset for int8 activation ranges (true min/max)
    eval_windows: int = 500  # held-out windows for the float vs TFLM top-1 agreement
    min_agreement: float = 0.95  # the bar for TFLM int8 vs float top-1
    max_model_bytes: int = 1 << 20  # must fit the target's flash budget for a model
    seed: int = 0


def build_micro_model(text: str, out_dir: str | Path, cfg: MicroConfig | None = None,
                      steps: Steps = NULL_STEPS) -> dict[str, Any]:
    """Train, convert to full int8, verify in TFLite Micro and write the C header into ``out_dir``.

    Returns the report (also written to ``micro_report.json``); raises ExportError when the int8
    model misses ``cfg.min_agreement`` or ``cfg.max_model_bytes``.
    """
    cfg = cfg or MicroConfig()
    torch = require("torch", "export", "training a micro model")
    out = Path(out_dir)
    make_dir(out)
    vocab, ids, train_ids, held = _split_text(text, cfg)
    t0 = time.perf_counter()
    module = make_module(vocab.size, cfg.context, cfg.embed, cfg.hidden)
    with steps.step(f"Training the micro model ({cfg.steps} steps on {len(train_ids)} characters)"):
        loss = train(module, train_ids, cfg.context, vocab.size, cfg.steps, lr=cfg.lr,
                     label_smoothing=cfg.label_smoothing, seed=cfg.seed)
    train_s = time.perf_counter() - t0

    calib, ev, ev_next = _calibration_and_eval_windows(train_ids, held, cfg)
    with torch.no_grad():
        float_logits = module(torch.from_numpy(onehot(ev, vocab.size))).numpy()  # (B, V)

    float_path, int8_path = out / FLOAT_FILE, out / MODEL_FILE
    with steps.step("Converting to a float .tflite (litert-torch)"):
        to_float_tflite(module, cfg.context, vocab.size, float_path)
    with steps.step(f"Quantizing to full int8 ({len(calib)} calibration windows)"):
        in_q, out_q = to_full_int8(float_path, int8_path, onehot(calib, vocab.size))

    from .tflm import greedy_generate, quantize_input, run_tflm

    q_in = quantize_input(onehot(ev, vocab.size), in_q)
    with steps.step(f"Checking {len(ev)} held-out windows in TFLite Micro"):
        q_logits, arena = run_tflm(int8_path, q_in)  # (B, V) int8
        sample = greedy_generate(int8_path, vocab, cfg.context, in_q, SAMPLE_PROMPT, SAMPLE_CHARS, arena)
    ops = _ops(int8_path)
    header = write_header_for(out / HEADER_FILE, int8_path, vocab, cfg.context, in_q, out_q, arena, ops)
    params = sum(p.numel() for p in module.parameters())
    report = {
        "schema_version": 1,
        "model": {"kind": "char-mlp", "parameters": int(params), "vocab": vocab.size, "chars": vocab.chars,
                  **{k: v for k, v in asdict(cfg).items() if k in ("context", "embed", "hidden")}},
        "training": {"steps": cfg.steps, "final_loss": round(loss, 4), "seconds": round(train_s, 1),
                     "characters": int(len(ids)),
                     "float_top1_next_char": float(np.mean(float_logits.argmax(-1) == ev_next))},
        "int8": _int8_record(int8_path, ops, cfg.context, vocab.size, in_q, out_q),
        "tflm": _tflm_record(q_logits, float_logits, arena, sample, cfg),
        "header": {"file": header.name, "bytes": header.stat().st_size},
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    torch.save({"state_dict": module.state_dict(), "chars": vocab.chars, "config": asdict(cfg)}, out / "micro_lm.pt")
    _check_limits(report, cfg, out)
    return report


def _split_text(text: str, cfg: MicroConfig) -> tuple[CharVocab, np.ndarray, np.ndarray, np.ndarray]:
    """(vocabulary, ids, the first 90% for training, the rest for evaluation with ``context``
    characters of lead-in); refuses a text too short to train on."""
    vocab = CharVocab.from_text(text, cfg.max_vocab)
    ids = vocab.encode(text)
    if len(ids) < 4 * cfg.context + 64:
        raise ExportError(f"the text is too short for context {cfg.context}: {len(ids)} characters")
    split = int(len(ids) * 0.9)
    return vocab, ids, ids[:split], ids[split - cfg.context:]


def _calibration_and_eval_windows(train_ids, held, cfg: MicroConfig):
    """(random training windows for int8 calibration, evenly spaced held-out windows, their next
    characters)."""
    rng = np.random.default_rng(cfg.seed + 1)
    calib, _ = windows(train_ids, cfg.context, rng.integers(0, len(train_ids) - cfg.context - 1,
                                                              cfg.calibration_windows))
    n_eval = min(cfg.eval_windows, len(held) - cfg.context - 1)
    ev, ev_next = windows(held, cfg.context, np.linspace(0, len(held) - cfg.context - 2, n_eval).astype(np.int64))
    return calib, ev, ev_next


def _int8_record(int8_path: Path, ops: list[str], context: int, vocab_size: int, in_q, out_q) -> dict[str, Any]:
    """The report's "int8" section: the file, its ops and its int8 input/output quantization."""
    return {"file": MODEL_FILE, "bytes": int8_path.stat().st_size, "ops": ops,
            "input": {"dtype": "int8", "shape": [1, context, vocab_size], "scale": in_q[0], "zero_point": in_q[1]},
            "output": {"dtype": "int8", "shape": [1, vocab_size], "scale": out_q[0], "zero_point": out_q[1]},
            "quantizer": "ai-edge-quantizer static_wi8_ai8 (per-channel int8 weights, int8 activations, "
                         "min/max calibration)"}


def _tflm_record(q_logits, float_logits, arena: int, sample: str, cfg: MicroConfig) -> dict[str, Any]:
    """The report's "tflm" section: TFLite Micro's int8 top-1 agreement with the float model on the
    held-out windows, saturated outputs (clipped top logits tie; should be ~0), arena, sample."""
    return {"interpreter": "tflite-micro (PyPI)", "arena_bytes": arena,
            "top1_agreement_with_float": float(np.mean(q_logits.argmax(-1) == float_logits.argmax(-1))),
            "eval_windows": int(len(q_logits)), "saturated_outputs": float(np.mean((q_logits == 127).any(-1))),
            "greedy_sample": {"prompt": SAMPLE_PROMPT, "text": sample}, "min_agreement": cfg.min_agreement}


def _check_limits(report: dict[str, Any], cfg: MicroConfig, out: Path) -> None:
    """Refuse a model over the flash budget or under the agreement bar (its files stay for a look)."""
    size, agree = report["int8"]["bytes"], report["tflm"]["top1_agreement_with_float"]
    if size > cfg.max_model_bytes:
        raise ExportError(f"the int8 model is {size} bytes > {cfg.max_model_bytes}; lower --hidden or --context")
    if agree < cfg.min_agreement:
        raise ExportError(f"TFLite Micro int8 top-1 agreement {agree:.1%} < {cfg.min_agreement:.0%} "
                          f"(files kept in {out})")


def to_float_tflite(module, context: int, vocab: int, path: Path) -> None:
    torch = require("torch", "export", "micro model conversion")
    from ..exporter import _litert_torch

    litert_torch = _litert_torch()
    with torch.no_grad():
        edge = litert_torch.signature("serving_default", module,
                                      sample_kwargs={"onehot": torch.zeros(1, context, vocab)}).convert()
    edge.export(str(path))


def to_full_int8(float_path: Path, path: Path, calib: np.ndarray) -> tuple[tuple[float, int], tuple[float, int]]:
    """Static int8 with a representative dataset; weights inlined for TFLite Micro.

    Returns ((input scale, zero point), (output scale, zero point)).
    """
    require("ai_edge_quantizer", "litert", "full-int8 quantization")
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.tools import flatbuffer_utils
    from ai_edge_quantizer import calibrator, quantizer, recipe, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    q = quantizer.Quantizer(str(float_path))
    q.load_quantization_recipe(recipe.static_wi8_ai8())
    # Quantizer.calibrate keeps a moving average (0.95) of each sample's min/max: fine for large
    # models, but here it put the logits' max at 1.7 where held-out windows reach 6.4, so a third
    # of the int8 outputs saturated at 127 and tied. The true min/max over the set keeps top-1.
    rm = recipe_manager.RecipeManager()
    rm.load_quantization_recipe(recipe.static_wi8_ai8())
    tmp = path.with_suffix(".offsets.tflite")
    with warnings.catch_warnings():  # calibration reads every intermediate tensor on purpose
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
        calib_run = calibrator.Calibrator(float_path.read_bytes(), num_threads=1,
                                          qsv_update_func=qsv_utils.min_max_update)
        calib_run.calibrate({"serving_default": [{"onehot": c[None]} for c in calib]}, rm)
        stats = calib_run.get_model_qsvs()
        with contextlib.redirect_stdout(sys.stderr):  # the quantizer prints a size summary
            q.quantize(stats).export_model(str(tmp), overwrite=True)
    # ai-edge-quantizer stores weights after the flatbuffer (buffer offsets); TFLite Micro only
    # reads weights stored inside it, else it copies them into the arena (~ the model's size).
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tmp.read_bytes()))
    path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    os.remove(tmp)
    it = Interpreter(str(path))
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    if i["dtype"] != np.int8 or o["dtype"] != np.int8:
        raise ExportError(f"the quantized model is not int8 in/out ({i['dtype']}, {o['dtype']})")
    return ((float(i["quantization"][0]), int(i["quantization"][1])),
            (float(o["quantization"][0]), int(o["quantization"][1])))


def _ops(path: Path) -> list[str]:
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    names = [flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) for op in model.subgraphs[0].operators]
    return sorted(set(str(n) for n in names))


def write_header_for(path: Path, model_path: Path, vocab: CharVocab, context: int, in_q, out_q, arena: int,
                     ops: list[str]) -> Path:
    from .header import write_header

    return write_header(path, model_path.read_bytes(), vocab.chars, context, in_q, out_q, arena, ops)
