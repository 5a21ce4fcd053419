"""Every compression technique on SmolLM2-135M, exported to ONNX and measured.

    python benchmarks/compression_table.py                       # all rows (~30-60 min on 2 cores)
    python benchmarks/compression_table.py --only pruned,lowrank # some rows; others kept from the JSON
    python benchmarks/compression_table.py --model /tmp/tiny --student-layers 1 --student-intermediate 64 \
        --out-json /tmp/t.json --out-md /tmp/t.md                # smoke run on a tiny model

Rows: the source (fp32 ONNX), the ONNX quantizations the installed exporter declares (int8,
int4 re-quantized, int4 transcoded from the GGUF's Q4_1 blocks; a precision it does not declare
is skipped with a note), 30% structured pruning, low-rank at 50% energy of the MLPs, a distilled
student of <= 40M parameters, and a LoRA fine-tune. Every row is a real ONNX bundle made by
``export_model`` and scored by the same functions the parity check uses, against the source's
torch model: greedy top-1 agreement and KL (teacher-forced, 3 prompts x 32 tokens), perplexity
on a held-out paragraph, decode tokens/s through the ONNX engine, bytes and zipped bytes of the
bundle's model files, and a generation through ``edgeslm run``.

Writes benchmarks/results/compression.json after every row (so a partial run keeps its rows)
and the table between the markers in docs/compression.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- compression-table:begin -->", "<!-- compression-table:end -->"

#: Held-out text for perplexity: not the pruning calibration text, not a distillation prompt.
EVAL_TEXT = (
    "Lighthouses were built along dangerous coasts to warn ships at night. Early towers burned wood "
    "or coal in open fires; later ones used oil lamps with mirrors, and in the nineteenth century the "
    "Fresnel lens concentrated the light into a beam visible for more than twenty miles. Each "
    "lighthouse has its own pattern of flashes, so sailors can tell which one they see. Today most "
    "lights are automatic, powered by electricity or solar panels, and the keepers who once lived in "
    "them have gone. Many towers are now museums, and some can be rented as holiday homes."
)

#: Chat examples for the LoRA row: a consistent answer style the base model does not have.
LORA_CHATS = [
    ("What is an edge device?", "Edge device: a computer that runs close to where data is made, such as a phone, a camera or a Raspberry Pi."),
    ("What is a microcontroller?", "Microcontroller: a tiny computer on one chip, with its own memory, used to control machines."),
    ("What is quantization?", "Quantization: storing numbers with fewer bits, which makes a model smaller and faster."),
    ("What is a neural network?", "Neural network: a function made of many simple layers whose weights are learned from data."),
    ("What is a battery?", "Battery: a store of chemical energy that gives electric current when a circuit is closed."),
    ("What is a compiler?", "Compiler: a program that translates source code into machine code a processor can run."),
    ("What is bandwidth?", "Bandwidth: how much data can move through a connection each second."),
    ("What is a sensor?", "Sensor: a device that measures something physical, like heat, light or motion, and reports it."),
    ("What is latency?", "Latency: the time between asking for something and getting the answer."),
    ("What is Wi-Fi?", "Wi-Fi: a way for devices to talk to each other and to the internet by radio."),
    ("What is a GPU?", "GPU: a processor with many small cores that does the same math on lots of data at once."),
    ("What is firmware?", "Firmware: the software stored inside a device that makes its hardware work."),
]

ROWS = ["source", "int8", "int4", "int4-gguf", "pruned", "lowrank", "distilled", "lora", "sparse"]


def log(msg: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def edgeslm_run(bundle: Path, prompt: str, tokens: int = 16) -> dict:
    """Generate through the real CLI (`edgeslm run`), as a user would."""
    exe = Path(sys.executable).parent / "edgeslm"
    cmd = [str(exe), "run", str(bundle), "--raw", "--prompt", prompt, "-n", str(tokens), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return {"ok": False, "error": proc.stderr.strip()[-300:]}
    res = json.loads(proc.stdout)
    return {"ok": True, "text": res["text"], "output_tokens": len(res["token_ids"])}


def build(name: str, source, args, work: Path):
    """(model to export, precision, note, seconds spent compressing) for a row."""
    from edgeslm.compress import distill, lora, lowrank, prune
    from edgeslm.compress.data import SEED_PROMPTS

    t0 = time.perf_counter()
    if name in ("source", "int8", "int4", "int4-gguf"):
        return source, ("fp32" if name == "source" else name), "", 0.0
    if name == "pruned":
        cfg = prune.StructuredPruneConfig(head_ratio=0.3, mlp_ratio=0.3, heads_mode="query")
        m = prune.structured_prune(source, cfg)
        s = m.spec
        note = (f"heads {source.spec.num_heads}->{s.num_heads} (kv {s.num_kv_heads}), MLP "
                f"{source.spec.intermediate_size}->{s.intermediate_size}, scored on calibration text, no retraining")
    elif name == "lowrank":
        m = lowrank.low_rank_factorize(source, lowrank.LowRankConfig(energy=0.5, targets=("mlp",)))
        st = m.spec.extra["compression"][-1]
        note = (f"{st['layers']} MLP matrices, ranks {st['rank_min']}-{st['rank_max']}, "
                f"energy kept {st['energy_kept_mean']:.1%} (mean), no retraining")
    elif name == "sparse":
        m = prune.magnitude_prune(source, prune.MagnitudePruneConfig(sparsity=0.5))
        note = "50% of decoder linear weights zeroed; dense ONNX keeps the zeros (see zipped bytes)"
    elif name == "distilled" and args.student_folder:
        # a student made by `edgeslm distill` (same code path, run as its own process)
        from edgeslm.compress.model import load_model

        m = load_model(args.student_folder)
        hist = {h["technique"]: h for h in m.spec.extra.get("compression", [])}
        st = hist.get("distill", {})
        note = (f"`edgeslm distill`: {m.spec.num_layers} of {source.spec.num_layers} layers, MLP "
                f"{m.spec.intermediate_size}; KD {st.get('steps')} steps x {st.get('batch_size')} x "
                f"{st.get('seq_len')} tokens on {st.get('windows')} windows of teacher-written text; loss "
                f"{st.get('loss_first', float('nan')):.2f}->{st.get('loss_last', float('nan')):.2f} "
                f"({st.get('seconds')} s)")
    elif name == "distilled":
        student = distill.make_student(source, distill.StudentConfig(num_layers=args.student_layers,
                                                                     intermediate_size=args.student_intermediate))
        log(f"  student: {student.spec.num_layers} layers, MLP {student.spec.intermediate_size}, "
            f"{student.spec.num_parameters:,} params; teacher writes training text")
        data = distill.teacher_text(source, SEED_PROMPTS, new_tokens=args.gen_tokens, samples=args.samples)
        cfg = distill.DistillConfig(steps=args.distill_steps, seq_len=args.seq_len, batch_size=args.batch_size,
                                    lr=args.distill_lr, checkpoint_every=50)
        m = distill.distill(source, student, data, cfg, out_dir=work / "distill", resume=True,
                            progress=sys.stderr.isatty())
        st = m.spec.extra["compression"][-1]
        note = (f"{args.student_layers} of {source.spec.num_layers} layers, MLP {args.student_intermediate}; "
                f"KD {cfg.steps} steps x {cfg.batch_size} x {cfg.seq_len} tokens on "
                f"{len(data)} teacher samples; loss {st['loss_first']:.2f}->{st['loss_last']:.2f}")
    elif name == "lora":
        examples = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in LORA_CHATS]
        cfg = lora.LoraConfig(rank=8, alpha=16, steps=args.lora_steps, batch_size=4, lr=5e-4, max_len=128)
        m = lora.lora_finetune(source, examples, cfg, progress=sys.stderr.isatty())
        st = m.spec.extra["compression"][-1]
        note = (f"r=8 on all linears, {cfg.steps} steps on {len(examples)} chats, loss "
                f"{st['loss_first']:.2f}->{st['loss_last']:.2f}, merged; it is meant to change outputs")
    else:
        raise SystemExit(f"unknown row {name!r}; rows: {', '.join(ROWS)}")
    return m, "fp32", note, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--only", default=",".join(r for r in ROWS if r != "sparse"),
                    help=f"comma list of rows ({', '.join(ROWS)})")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgeslm-compression-bench")
    ap.add_argument("--out-json", type=Path, default=ROOT / "benchmarks/results/compression.json")
    ap.add_argument("--out-md", type=Path, default=ROOT / "docs/compression.md")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2, help="ONNX engine threads for the speed column")
    ap.add_argument("--speed-tokens", type=int, default=64)
    ap.add_argument("--student-layers", type=int, default=4)
    ap.add_argument("--student-intermediate", type=int, default=1024)
    ap.add_argument("--student-folder", type=Path, default=None,
                    help="use a student written by `edgeslm distill` instead of distilling here")
    ap.add_argument("--distill-steps", type=int, default=150)
    ap.add_argument("--distill-lr", type=float, default=5e-4)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--lora-steps", type=int, default=40)
    ap.add_argument("--merge", type=Path, nargs="*", default=[],
                    help="rows from other runs' JSON files (e.g. rows run in parallel) to merge in, then exit")
    args = ap.parse_args()
    if args.merge:
        merged = json.loads(args.out_json.read_text())
        rows = {r["key"]: r for r in merged["rows"]}
        for other in args.merge:
            rows.update({r["key"]: r for r in json.loads(other.read_text())["rows"]})
        save(args, merged["meta"], rows)
        log(f"merged {len(args.merge)} file(s) into {args.out_json} and {args.out_md}")
        return

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from edgeslm.compress.evaluate import Evaluator
    from edgeslm.compress.model import count_parameters
    from edgeslm.compress.report import measure
    from edgeslm.errors import ParityError
    from edgeslm.exporting import export_model
    from edgeslm.plugins import get_exporter
    from edgeslm.sources import load_source

    args.work.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out_json.read_text()) if args.out_json.is_file() else {}
    rows = {r["key"]: r for r in previous.get("rows", [])}
    declared = get_exporter("onnx").precisions
    log(f"loading {args.model}; ONNX exporter declares {declared}")
    source = load_source(args.model)
    ev = Evaluator(source, text=EVAL_TEXT, max_text_tokens=args.context)
    meta = {"model": args.model, "source_sha256": source.sha256, "machine": f"{platform.machine()}, "
            f"{os.cpu_count()} cores", "date": dt.date.today().isoformat(), "onnx_threads": args.threads,
            "load_average": os.getloadavg()[0], "eval": "3 parity prompts x 32 greedy source tokens, teacher-forced; "
            "perplexity on a held-out paragraph (%d tokens)" % len(ev.text_ids)}

    for key in [k.strip() for k in args.only.split(",") if k.strip()]:
        if key in ("int8", "int4", "int4-gguf") and key not in declared:
            log(f"skip {key}: the installed ONNX exporter does not declare it ({declared})")
            rows[key] = {"key": key, "label": key, "skipped": f"ONNX exporter does not declare {key}"}
            continue
        log(f"row {key}: building")
        model, precision, note, build_s = build(key, source, args, args.work)
        bundle = args.work / f"onnx-{key}"
        log(f"row {key}: exporting ONNX {precision} ({count_parameters(model.module):,} params)")
        t0 = time.perf_counter()
        parity_note = ""
        try:
            export_model(model, bundle, format="onnx", precision=precision, context_length=args.context,
                         parity_tokens=16, overwrite=True)
        except ParityError as exc:
            parity_note = f"export parity below the exporter's threshold: {exc}"
            log(f"  {parity_note}")
        export_s = time.perf_counter() - t0
        log(f"row {key}: measuring")
        row = measure(key if precision == "fp32" else f"{key} (ONNX {precision})", str(bundle), ev,
                      speed_tokens=args.speed_tokens, engine_options={"threads": args.threads},
                      note="; ".join(n for n in (note, parity_note) if n))
        row["label"] = LABELS.get(key, key)
        row["runner"] = f"onnx {precision}"
        row.update(key=key, precision=precision, compress_seconds=round(build_s, 1),
                   export_seconds=round(export_s, 1), edgeslm_run=edgeslm_run(bundle, "The capital of France is"))
        log(f"row {key}: top1 {row['top1_agreement']:.1%} KL {row['kl_mean']:.4f} ppl {row['perplexity']:.2f} "
            f"{row['decode_tokens_per_s']:.1f} tok/s {row['bytes']:,} B; run: {row['edgeslm_run']}")
        rows[key] = row
        save(args, meta, rows)
        del model
    save(args, meta, rows)
    log(f"wrote {args.out_json} and {args.out_md}")


LABELS = {"source": "source (fp32)", "int8": "int8 weight-only", "int4": "int4 re-quantized",
          "int4-gguf": "int4 transcoded from GGUF", "pruned": "30% structured pruning",
          "lowrank": "low-rank, 50% energy of MLPs", "distilled": "distilled student", "lora": "LoRA fine-tune (merged)",
          "sparse": "50% magnitude pruning"}


def save(args, meta: dict, rows: dict) -> None:
    from edgeslm.compress.report import to_markdown

    ordered = [rows[k] for k in ROWS if k in rows]
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps({"meta": meta, "rows": ordered}, indent=2, default=str) + "\n")
    measured = [r for r in ordered if "skipped" not in r]
    lines = [f"Measured {meta['date']} on {meta['machine']} (load average {meta['load_average']:.1f} at start; "
             f"other jobs shared the machine, so tok/s is +-2x), model `{meta['model']}`, ONNX Runtime with "
             f"{meta['onnx_threads']} threads. Quality vs the source's torch model: {meta['eval']}.", "",
             to_markdown(measured)]
    skipped = [r for r in ordered if "skipped" in r]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{r['key']} ({r['skipped']})" for r in skipped)]
    runs = [f"- {r['label']}: " + (f"`{r['edgeslm_run']['text']!r}`" if r["edgeslm_run"].get("ok")
                                   else f"FAILED: {r['edgeslm_run'].get('error')}") for r in measured]
    lines += ["", "`edgeslm run BUNDLE --prompt \"The capital of France is\" -n 16` on each bundle:", "", *runs]
    table = "\n".join(lines) + "\n"
    md = args.out_md
    if md.is_file() and BEGIN in md.read_text():
        head, rest = md.read_text().split(BEGIN, 1)
        tail = rest.split(END, 1)[1] if END in rest else ""
        md.write_text(f"{head}{BEGIN}\n{table}{END}{tail}")
    else:
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(f"# Compression results\n\n{BEGIN}\n{table}{END}\n")


if __name__ == "__main__":
    main()
