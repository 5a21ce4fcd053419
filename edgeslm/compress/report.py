"""The compression report: one row per model (source and results), measured, never estimated.

Columns: parameters, bytes on disk (and zlib-compressed bytes, which is where unstructured
sparsity shows), decode tokens/s, greedy top-1 agreement and KL vs the source, perplexity.
Rows are plain dicts so benchmarks and the CLI write the same markdown and JSON.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any, Iterable

from ..outputs import make_dir

COLUMNS = [  # (key, header, format)
    ("label", "model", "{}"),
    ("runner", "runs on", "{}"),
    ("parameters", "params", "{:,}"),
    ("bytes", "bytes", "{:,}"),
    ("zipped_bytes", "zipped bytes", "{:,}"),
    ("decode_tokens_per_s", "decode tok/s", "{:.1f}"),
    ("top1_agreement", "top-1 vs source", "{:.1%}"),
    ("kl_mean", "KL vs source (nats)", "{:.4f}"),
    ("perplexity", "perplexity", "{:.2f}"),
]


def zipped_size(chunks: Iterable[bytes], level: int = 1) -> int:
    """Size after zlib compression (level 1: fast; what a zip of the files would roughly be)."""
    z = zlib.compressobj(level)
    n = 0
    for c in chunks:
        n += len(z.compress(c))
    return n + len(z.flush())


def _file_chunks(paths, size: int = 1 << 24):
    for p in paths:
        with open(p, "rb") as f:
            while block := f.read(size):
                yield block


def bundle_sizes(bundle_dir: str | Path) -> tuple[int, int]:
    """(bytes, zipped bytes) of a bundle's model files (tokenizer and manifest excluded)."""
    from ..bundle import Bundle

    b = Bundle.open(bundle_dir, verify=False)
    skip = {"manifest.json", "tokenizer.json", "edgeslm_tokenizer.json"}
    paths = [b.path / n for n in sorted(b.manifest["files"]) if n not in skip and "signature" not in n]
    return sum(p.stat().st_size for p in paths), zipped_size(_file_chunks(paths))


def module_sizes(module) -> tuple[int, int]:
    """(bytes, zipped bytes) of a torch module's unique tensors as stored (float32 here)."""
    seen, tensors = set(), []
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen and t.numel() > 0:
            seen.add(id(t))
            tensors.append(t)
    total = sum(t.numel() * t.element_size() for t in tensors)
    return total, zipped_size(t.detach().contiguous().numpy().tobytes() for t in tensors)


def measure(label: str, model, evaluator, speed_tokens: int = 64, engine_options=None,
            note: str = "") -> dict[str, Any]:
    """One report row for a SourceModel or a bundle directory, scored by ``evaluator``."""
    from .evaluate import decode_speed, open_engine
    from .model import count_parameters

    engine, spec, kind = open_engine(model, engine_options)
    try:
        rep = evaluator.score(engine)
        speed = decode_speed(engine, evaluator.refs[0].prompt_ids, speed_tokens) if speed_tokens else None
    finally:
        engine.close()
    if hasattr(model, "module"):
        params = count_parameters(model.module)
        size, zipped = module_sizes(model.module)
    else:
        params = spec.num_parameters
        size, zipped = bundle_sizes(model)
    row = {"label": label, "runner": kind, "parameters": params, "bytes": size, "zipped_bytes": zipped,
           "decode_tokens_per_s": speed, "top1_agreement": rep.top1_agreement, "kl_mean": rep.kl_mean,
           "kl_max": rep.kl_max, "perplexity": rep.perplexity_export, "perplexity_source": rep.perplexity_source,
           "tokens_compared": rep.tokens, "note": note}
    if "compression" in spec.extra:
        row["compression"] = spec.extra["compression"]
    return row


def to_markdown(rows: list[dict[str, Any]], notes: bool = True, columns=None) -> str:
    """A markdown table of ``rows``; ``columns``: (key, header, format) triples [default: COLUMNS]."""
    columns = columns or COLUMNS
    head = "| " + " | ".join(h for _, h, _ in columns) + (" | note |" if notes else " |")
    sep = "|" + "---|" * (len(columns) + (1 if notes else 0))
    lines = [head, sep]
    for r in rows:
        cells = []
        for key, _, fmt in columns:
            v = r.get(key)
            cells.append("n/a" if v is None else fmt.format(v))
        if notes:
            cells.append(r.get("note", ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(rows: list[dict[str, Any]], out_md: str | Path, out_json: str | Path | None = None,
                 title: str = "Compression report", preamble: str = "", appendix: str = "") -> None:
    out_md = Path(out_md)
    make_dir(out_md.parent)
    out_md.write_text(f"# {title}\n\n{preamble}{to_markdown(rows)}{appendix}")
    if out_json:
        make_dir(Path(out_json).parent)
        Path(out_json).write_text(json.dumps(rows, indent=2, default=str) + "\n")
