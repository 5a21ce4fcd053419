"""The command-line arguments and small helpers the side-by-side benchmarks share."""

from __future__ import annotations

import argparse
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parser(doc: str | None, *, rounds: int, cache: str, only_help: str) -> argparse.ArgumentParser:
    """--threads, --rounds, --prompt-tokens, --new-tokens, --only, --cache, --out."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2", help="comma list of thread counts, each measured in turn")
    ap.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds per thread count")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--only", default="", help=only_help)
    ap.add_argument("--cache", default=cache, help="exported bundles, reused when the source is unchanged")
    ap.add_argument("--out", default=str(HERE / "results"))
    return ap


def thread_counts(args) -> list[int]:
    return [int(t) for t in args.threads.split(",") if t]


def only_set(args) -> set[str]:
    return {x for x in args.only.split(",") if x}
