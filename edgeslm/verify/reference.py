"""The parity reference a bundle carries, and the on-device check that replays it.

The parity number in a manifest was measured on the exporting machine; a device's kernels
differ (ARM vs x86 int8 paths, another runtime build). So the export also stores what it
compared against, small enough to ship in every bundle (kilobytes):

    parity_reference.npz   (listed with its sha256 in the manifest like any other file)
      prompt_ids       int32 (sum of prompt lengths,)   the parity prompts' token ids, concatenated
      prompt_lengths   int32 (prompts,)
      continuation     int32 (prompts, tokens)           the source's greedy tokens
      topk_ids         int32 (prompts * tokens, k)       the source's k largest logits per position
      topk_logits      float32 (prompts * tokens, k)     ... their values, descending
      logsumexp        float64 (prompts * tokens,)       log of the source's softmax denominator
      text_ids         int32 (n,)                        perplexity text (may be empty)
      text_nll         float64 ()                        the source's mean NLL over it (nan if none)

:func:`check_on_device` replays it through the bundle's own engine (teacher forcing: prefill
the prompt, decode the source's tokens), with neither torch nor the source model: top-1
agreement with the source's greedy tokens is exact; KL(source || device) is computed over the
stored top-k plus one bucket for the rest of the vocabulary, a lower bound of the full KL
(close to it: the top 32 of a 49k vocabulary hold nearly all the probability mass).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import BundleError
from ..sources.base import sha256_file
from .metrics import log_softmax, nll

REFERENCE_FILE = "parity_reference.npz"
REFERENCE_VERSION = 1
TOP_K = 32
#: when the exporter sets no threshold for a precision: the agreement measured at export, less this
DEFAULT_MARGIN = 0.05


def save_reference(directory: Path, references: Sequence[Any], text_ids: Sequence[int] | None = None,
                   text_nll: float | None = None, top_k: int = TOP_K) -> Path:
    """Write ``parity_reference.npz`` from :func:`~edgeslm.verify.parity.reference_run`'s output."""
    logits = np.concatenate([np.asarray(r.logits, dtype=np.float32) for r in references])  # (N, vocab)
    k = min(top_k, logits.shape[1])
    ids = np.argpartition(-logits, k - 1, axis=1)[:, :k]  # (N, k) unordered
    vals = np.take_along_axis(logits, ids, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    x = logits.astype(np.float64)
    lse = x.max(1) + np.log(np.exp(x - x.max(1, keepdims=True)).sum(1))  # (N,)
    path = Path(directory) / REFERENCE_FILE
    np.savez_compressed(
        path,
        prompt_ids=np.concatenate([np.asarray(r.prompt_ids, dtype=np.int32) for r in references]),
        prompt_lengths=np.array([len(r.prompt_ids) for r in references], dtype=np.int32),
        continuation=np.array([r.continuation for r in references], dtype=np.int32),
        topk_ids=np.take_along_axis(ids, order, axis=1).astype(np.int32),
        topk_logits=np.take_along_axis(vals, order, axis=1).astype(np.float32),
        logsumexp=lse,  # float64: float32 would put a ~1e-8 floor under the KL
        text_ids=np.asarray(text_ids or [], dtype=np.int32),
        text_nll=np.float64(np.nan if text_nll is None else text_nll),
    )
    return path


def add_to_manifest(manifest: dict, directory: Path, min_top1_agreement: float | None) -> None:
    """List the reference file (sha256, bytes) and describe it under ``parity_reference``."""
    path = Path(directory) / REFERENCE_FILE
    ref = load_reference_file(path)
    manifest["files"][REFERENCE_FILE] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest["parity_reference"] = {
        "file": REFERENCE_FILE, "version": REFERENCE_VERSION, "prompts": int(len(ref["prompt_lengths"])),
        "tokens": int(ref["continuation"].size), "top_k": int(ref["topk_ids"].shape[1]),
        "perplexity_text_tokens": int(len(ref["text_ids"])), "min_top1_agreement": min_top1_agreement,
    }


def load_reference_file(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {name: z[name] for name in z.files}


@dataclass
class OnDeviceReport:
    prompts: int = 0
    tokens: int = 0
    top1_agreement: float = 0.0
    kl_topk_mean: float = 0.0  # KL(source || device) over the stored top-k + a rest bucket, nats
    kl_topk_max: float = 0.0
    top_k: int = 0
    perplexity_source: float | None = None
    perplexity_device: float | None = None
    export_top1_agreement: float | None = None  # what the exporting machine measured
    min_top1_agreement: float = 0.0
    threshold_from: str = ""  # "exporter", "export measurement - 0.05" or "--min-agreement"
    passed: bool = True
    per_prompt: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def load_reference(bundle) -> dict[str, np.ndarray]:
    """The bundle's stored reference; a one-line BundleError when it has none."""
    info = bundle.manifest.get("parity_reference")
    if not info:
        raise BundleError(
            f"{bundle.source}: carries no parity reference (exported with --no-parity or by an older "
            "edgeslm); re-export it, or compare with the source: edgeslm verify BUNDLE --parity")
    where = bundle.source
    if not isinstance(info, dict):
        raise BundleError(f"{where}: 'parity_reference' must be an object, got {type(info).__name__}")
    version, name = info.get("version"), info.get("file")
    if not isinstance(version, int) or version > REFERENCE_VERSION:
        raise BundleError(f"{where}: parity reference version {version!r} is not one this edgeslm understands "
                          f"({REFERENCE_VERSION}); upgrade edgeslm")
    if not isinstance(name, str) or name not in bundle.manifest["files"]:  # listed = path-checked and hashed
        raise BundleError(f"{where}: 'parity_reference.file' must name a file listed in 'files', got {name!r}")
    try:
        ref = load_reference_file(bundle.path / name)
        _check_shapes(ref)
    except (OSError, ValueError, KeyError) as exc:
        raise BundleError(f"{where}: {name} is not a valid parity reference ({exc})") from None
    return ref


_ARRAYS = ("prompt_ids", "prompt_lengths", "continuation", "topk_ids", "topk_logits", "logsumexp", "text_ids",
           "text_nll")


def _check_shapes(ref: dict[str, np.ndarray]) -> None:
    missing = [a for a in _ARRAYS if a not in ref]
    if missing:
        raise KeyError(f"no array '{missing[0]}'")
    n = ref["continuation"].size
    if (ref["continuation"].ndim != 2 or ref["prompt_lengths"].shape != (ref["continuation"].shape[0],)
            or int(ref["prompt_lengths"].sum()) != ref["prompt_ids"].size or ref["topk_ids"].ndim != 2
            or ref["topk_ids"].shape[0] != n or ref["topk_logits"].shape != ref["topk_ids"].shape
            or ref["logsumexp"].shape != (n,)):
        raise ValueError("array shapes do not fit together")


def threshold(bundle, override: float | None) -> tuple[float, str]:
    """The top-1 agreement the device must reach, and where the figure comes from."""
    if override is not None:
        return override, "--min-agreement"
    info = bundle.manifest.get("parity_reference") or {}
    if info.get("min_top1_agreement") is not None:
        return float(info["min_top1_agreement"]), "exporter"
    measured = (bundle.manifest.get("parity") or {}).get("top1_agreement", 1.0)
    return max(0.0, float(measured) - DEFAULT_MARGIN), f"export measurement - {DEFAULT_MARGIN:g}"


def teacher_forced(engine, prompt_ids: Sequence[int], continuation: Sequence[int]) -> np.ndarray:
    """Logits after the prompt and after each of the continuation's tokens but the last."""
    engine.reset()
    rows = [engine.prefill([int(t) for t in prompt_ids])]
    for tok in continuation[:-1]:
        rows.append(engine.decode(int(tok)))
    engine.reset()
    return np.stack(rows).astype(np.float64)  # (len(continuation), vocab)


def topk_kl(ref: dict[str, np.ndarray], rows: slice, test: np.ndarray) -> np.ndarray:
    """KL(source || device) per position over the stored top-k ids plus one 'rest' bucket."""
    ids = ref["topk_ids"][rows]
    lp = ref["topk_logits"][rows].astype(np.float64) - ref["logsumexp"][rows, None].astype(np.float64)
    lq = np.take_along_axis(log_softmax(test), ids, axis=1)
    p, q = np.exp(lp), np.exp(lq)
    kl = (p * (lp - lq)).sum(1)
    rest_p = np.clip(1.0 - p.sum(1), 0.0, 1.0)
    rest_q = np.clip(1.0 - q.sum(1), 1e-300, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl += np.where(rest_p > 1e-12, rest_p * (np.log(np.maximum(rest_p, 1e-300)) - np.log(rest_q)), 0.0)
    return np.maximum(kl, 0.0)


def check_on_device(bundle, engine, min_agreement: float | None = None) -> OnDeviceReport:
    """Replay the bundle's reference through ``engine``; ``passed`` is False below the threshold."""
    ref = load_reference(bundle)
    limit, origin = threshold(bundle, min_agreement)
    rep = OnDeviceReport(top_k=int(ref["topk_ids"].shape[1]), min_top1_agreement=limit, threshold_from=origin,
                         export_top1_agreement=(bundle.manifest.get("parity") or {}).get("top1_agreement"))
    starts = np.concatenate([[0], np.cumsum(ref["prompt_lengths"])])
    agree, kls, pos = [], [], 0
    for i, cont in enumerate(ref["continuation"]):
        test = teacher_forced(engine, ref["prompt_ids"][starts[i]:starts[i + 1]], cont)
        ok = test.argmax(1) == cont
        kl = topk_kl(ref, slice(pos, pos + len(cont)), test)
        pos += len(cont)
        agree.append(ok)
        kls.append(kl)
        rep.per_prompt.append({"prompt_tokens": int(starts[i + 1] - starts[i]), "tokens": len(cont),
                               "top1_agreement": float(ok.mean()), "kl_topk_mean": float(kl.mean())})
    ok, kl = np.concatenate(agree), np.concatenate(kls)
    rep.prompts, rep.tokens = len(ref["continuation"]), int(ok.size)
    rep.top1_agreement, rep.kl_topk_mean, rep.kl_topk_max = float(ok.mean()), float(kl.mean()), float(kl.max())
    text = ref["text_ids"]
    if len(text) > 1 and np.isfinite(ref["text_nll"]):
        rows = teacher_forced(engine, text[:1], text[1:])
        rep.perplexity_source = float(np.exp(ref["text_nll"]))
        rep.perplexity_device = float(np.exp(nll(rows, text[1:]).mean()))
    rep.passed = rep.top1_agreement >= limit
    return rep


def describe(rep: OnDeviceReport) -> str:
    """One paragraph for the terminal."""
    ppl = ""
    if rep.perplexity_device is not None:
        ppl = f", perplexity {rep.perplexity_device:.2f} (source {rep.perplexity_source:.2f})"
    at_export = "" if rep.export_top1_agreement is None else f"; at export {rep.export_top1_agreement:.1%}"
    verdict = "passed" if rep.passed else "FAILED"
    hits = round(rep.top1_agreement * rep.tokens)
    return (f"on-device parity {verdict}: top-1 agreement {rep.top1_agreement:.1%} ({hits}/{rep.tokens} of the "
            f"source's greedy tokens{at_export}), KL(top-{rep.top_k}) mean {rep.kl_topk_mean:.2e} "
            f"max {rep.kl_topk_max:.2e}{ppl}; threshold {rep.min_top1_agreement:.1%} ({rep.threshold_from})")

