"""Time to first token per chat turn, with and without KV-cache prefix reuse.

    python benchmarks/chat_ttft.py BUNDLE [--turns 8] [--new 48] [--rounds 2] [--threads 2]

Runs the same greedy conversation (fixed user messages) through ``ChatSession`` with reuse on
and off, interleaved, ``--rounds`` times, and prints per turn: prompt tokens, tokens taken from
the cache, and the median time to first token of each mode. Without reuse every turn prefills
the whole conversation, so its TTFT grows with the history; with reuse only the new turn is
prefilled. Writes the table as JSON with --json FILE.
"""

from __future__ import annotations

import argparse
import json
import statistics

QUESTIONS = [
    "What is an edge device?",
    "Give one example of an edge device.",
    "Why run a language model on it instead of in the cloud?",
    "What limits the size of the model it can run?",
    "How does quantization help?",
    "What does a KV cache store?",
    "Why does the time to the first token matter in a chat?",
    "Summarize our conversation in one sentence.",
    "Thank you. Anything else I should know?",
    "Goodbye!",
]


def converse(bundle: str, reuse: bool, turns: int, new: int, threads: int | None) -> list[dict]:
    import edgeslm
    from edgeslm.runtime.chat import ChatSession
    from edgeslm.runtime.generator import GenerationConfig

    options = {"threads": threads} if threads else {}
    rows = []
    with edgeslm.load(bundle, engine_options=options, reuse_cache=reuse) as model:
        chat = ChatSession(model, config=GenerationConfig(max_new_tokens=new))
        for q in QUESTIONS[:turns]:
            stream = chat.ask(q)
            for _ in stream:
                pass
            m = stream.result.metrics
            rows.append({"prompt_tokens": m.prompt_tokens, "cached_tokens": m.cached_tokens,
                         "ttft_s": m.time_to_first_token_s, "output_tokens": m.output_tokens,
                         "text": stream.result.text})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--new", type=int, default=48, help="max new tokens per reply")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args()
    runs: dict[bool, list[list[dict]]] = {True: [], False: []}
    for _ in range(args.rounds):
        for reuse in (True, False):  # interleaved, so machine load hits both modes alike
            runs[reuse].append(converse(args.bundle, reuse, args.turns, args.new, args.threads))
    on, off = runs[True], runs[False]
    same = all(a["text"] == b["text"] for r1, r2 in zip(on, off) for a, b in zip(r1, r2))
    table = []
    print(f"{'turn':>4} {'prompt':>7} {'cached':>7} {'TTFT reuse ms':>14} {'TTFT no reuse ms':>17}")
    for t in range(args.turns):
        row = {"turn": t + 1, "prompt_tokens": on[0][t]["prompt_tokens"], "cached_tokens": on[0][t]["cached_tokens"],
               "ttft_reuse_ms": 1000 * statistics.median(r[t]["ttft_s"] for r in on),
               "ttft_no_reuse_ms": 1000 * statistics.median(r[t]["ttft_s"] for r in off)}
        table.append(row)
        print(f"{row['turn']:>4} {row['prompt_tokens']:>7} {row['cached_tokens']:>7} {row['ttft_reuse_ms']:>14.0f} "
              f"{row['ttft_no_reuse_ms']:>17.0f}")
    print(f"replies identical with and without reuse: {same}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"bundle": args.bundle, "threads": args.threads, "new_tokens": args.new, "rounds": args.rounds,
                       "identical_replies": same, "turns": table}, f, indent=2)


if __name__ == "__main__":
    main()
