"""What compression_useful.py and compression_recovery.py set up alike: torch's threads, the
results file (rows of earlier runs kept), the source model and its Evaluator on
compression_table.py's prompts and held-out paragraph; and the results file's write."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path


def setup(args, out: Path):
    """(results so far, source model, Evaluator) for ``args.model`` on ``args.threads`` threads."""
    import torch

    from compression_table import EVAL_TEXT
    from edgeslm.compress.evaluate import Evaluator
    from edgeslm.sources import load_source

    torch.set_num_threads(args.threads)
    results = json.loads(out.read_text()) if out.is_file() else {"rows": {}}
    source = load_source(args.model)
    return results, source, Evaluator(source, new_tokens=32, text=EVAL_TEXT)


def save(results: dict, out: Path) -> None:
    """Stamp ``results`` with the time and write it (after every row or point: a run cut short
    keeps what it measured)."""
    results["measured"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")
