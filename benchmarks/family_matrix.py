"""Parity of every family x backend x precision on tiny random models (docs/models.md).

Each family's tiny config (edgeslm.testing.fake_config: sliding windows shorter than the
prompts, soft-caps, q/k norms, partial rotary...) is built with random weights, exported to
every installed backend at every precision it offers (context 128), and the bundle's parity
(teacher-forced top-1 agreement and KL against the transformers source, 3 prompts x 24 tokens)
is recorded. Random tiny models have many near-tied logits, so quantized rows are a smoke
signal; the real-model rows are SmolLM2's (docs/models.md).

    .venv/bin/python benchmarks/family_matrix.py [--families llama,gemma3] [--formats onnx]
writes benchmarks/results/family_matrix.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main() -> None:
    from edgeslm.arch.families import supported_names
    from edgeslm.exporting import export_model
    from edgeslm.plugins import EXPORTERS, available, get_exporter
    from edgeslm.sources import load_source
    from edgeslm.testing import make_tiny_hf_folder

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default=",".join(supported_names()))
    ap.add_argument("--formats", default=",".join(available(EXPORTERS)))
    ap.add_argument("--precisions", default="", help="only these (comma-separated); default: every one a backend offers")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "family_matrix.json"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fam in args.families.split(","):
            source = load_source(make_tiny_hf_folder(Path(tmp) / fam, architecture=fam))
            for fmt in args.formats.split(","):
                for precision in get_exporter(fmt).precisions:
                    if precision == "int4-gguf" or (args.precisions and precision not in args.precisions.split(",")):
                        continue  # needs a GGUF source (tests/test_gguf*.py cover it per family)
                    t0 = time.perf_counter()
                    row = {"family": fam, "format": fmt, "precision": precision}
                    try:
                        b = export_model(source, Path(tmp) / f"{fam}-{fmt}-{precision}", format=fmt,
                                         precision=precision, context_length=128, parity_tokens=24)
                        p = b.manifest["parity"]
                        row.update(top1=p["top1_agreement"], kl_mean=p["kl_mean"], passed=p.get("passed"))
                    except Exception as exc:  # a failed cell is a result too
                        row.update(error=f"{type(exc).__name__}: {str(exc)[:200]}")
                    row["seconds"] = round(time.perf_counter() - t0, 1)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))


def table(rows) -> str:
    cells: dict[tuple[str, str], list[str]] = {}
    fams = list(dict.fromkeys(r["family"] for r in rows))
    cols = list(dict.fromkeys((r["format"], r["precision"]) for r in rows))
    for r in rows:
        cells[(r["family"], f"{r['format']} {r['precision']}")] = \
            ["error"] if "error" in r else [f"{100 * r['top1']:.0f}%"]
    head = "| family | " + " | ".join(f"{f} {p}" for f, p in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for fam in fams:
        lines.append(f"| {fam} | " + " | ".join(cells.get((fam, f"{f} {p}"), ["-"])[0] for f, p in cols) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
