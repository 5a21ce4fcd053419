"""onnxruntime-genai as a peer: its own model builder's int4 model, wrapped in edgeslm's Engine.

The builder cannot read a Q4_1 GGUF (it reads HF folders and fp16/fp32 GGUF), so the peer is
built from the same weights dequantized: the GGUF's SmolLM2 written as a Hugging Face folder
(:func:`edgeslm.compress.model.save_hf_folder`), then ``python -m
onnxruntime_genai.models.builder -m HF -i HF -o OUT -p int4 -e cpu`` offline. It re-quantizes
those weights to its own int4 (so it is not the GGUF's arithmetic: agreement shows what that
costs). Built once into the cache folder, keyed on the source's sha256.

:func:`genai_model` is shared with ``vendor_runtimes.py`` (which runs onnxruntime-genai on our
bundle); :class:`OrtGenaiEngine` lets ``run.py`` measure it with the same loop as every engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from edgeslm.runtime.engine import Engine

STAMP = "edgeslm_build.json"


def genai_model(folder: Path, threads: int):
    """``og.Model`` on ``folder`` with ``threads`` intra-op threads (a config overlay)."""
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    return og.Model(config)


def build(source, out: Path, precision: str = "int4") -> Path:
    """Run onnxruntime-genai's builder on ``source`` dequantized to an HF folder; cached in ``out``."""
    stamp = out / STAMP
    if stamp.exists():
        meta = json.loads(stamp.read_text())
        if meta.get("source_sha256") == source.sha256 and meta.get("precision") == precision:
            return out
    from edgeslm.compress.model import save_hf_folder

    hf = out.parent / (out.name + "-hf")
    t0 = time.perf_counter()
    save_hf_folder(source, hf)
    t1 = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", str(hf), "-i", str(hf), "-o", str(out),
           "-p", precision, "-e", "cpu", "-c", str(out.parent / (out.name + "-cache"))]
    print("== building the onnxruntime-genai peer:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    t2 = time.perf_counter()
    stamp.write_text(json.dumps({"source_sha256": source.sha256, "precision": precision, "command": cmd,
                                 "hf_folder_s": round(t1 - t0, 1), "builder_s": round(t2 - t1, 1)}, indent=2) + "\n")
    return out


def model_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.suffix in (".onnx", ".data"))


class OrtGenaiEngine(Engine):
    """One og.Generator per sequence: prefill = append_tokens(prompt), decode = append_tokens([t]);
    logits of the last position from get_logits(). Greedy choice is the caller's, as for every engine."""

    name = "onnxruntime-genai"

    def __init__(self, folder: Path, spec, threads: int, n_ctx: int = 512):
        import onnxruntime_genai as og

        super().__init__(SimpleNamespace(spec=spec, manifest={"context_length": n_ctx}))
        self.og, self.n_ctx = og, n_ctx
        self.model = genai_model(Path(folder), threads)
        self.gen = None
        self.reset()

    def _logits(self) -> np.ndarray:
        return np.asarray(self.gen.get_logits(), dtype=np.float32).reshape(-1, self.spec.vocab_size)[-1].copy()

    def prefill(self, token_ids):
        ids = self.check_tokens(token_ids)
        self.gen.append_tokens(ids.astype(np.int32).reshape(1, -1))
        self.position += ids.size
        return self._logits()

    def decode(self, token_id):
        self.check_tokens([token_id])
        self.gen.append_tokens(np.array([[int(token_id)]], dtype=np.int32))
        self.position += 1
        return self._logits()

    def reset(self):
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=self.n_ctx, do_sample=False)
        self.gen = self.og.Generator(self.model, params)
        self.position = 0

    def close(self):
        self.gen = self.model = None
