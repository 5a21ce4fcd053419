"""edgeslm micro: train a micro language model for microcontrollers (TFLite Micro, full int8)."""

from __future__ import annotations

from pathlib import Path

import click

from ..outputs import make_dir
from . import cli
from ._common import OutputDir, emit_json, json_option
from ._output import current


TEACHER_FILE = "teacher_text.txt"


@cli.command("micro")
@click.option("--text", "text_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Training text (repeatable).")
@click.option("--teacher", default=None,
              help="A bundle whose sampled generations are added to the training text (kept as teacher_text.txt).")
@click.option("--teacher-chars", default=20000, show_default=True, help="Characters to generate from the teacher.")
@click.option("-o", "--output", required=True, type=OutputDir(), help="Output directory.")
@click.option("--steps", default=3000, show_default=True, help="Training steps (batches of 64 windows).")
@click.option("--context", default=24, show_default=True, help="Characters the model sees.")
@click.option("--hidden", default=384, show_default=True, help="Hidden width (size grows ~ context*32*hidden).")
@click.option("--min-agreement", default=0.95, show_default=True,
              help="Required TFLite Micro int8 vs float top-1 agreement.")
@json_option
def micro(text_files, teacher, teacher_chars, output, steps, context, hidden, min_agreement, as_json):
    """Build a character-level micro model where a 135M model cannot go (ESP32-S3, Cortex-M).

    \b
    Trains a ~0.5M-parameter model on text (and/or a teacher's generations), converts it to a
    FULL-int8 .tflite (int8 in/out, per-channel weights, calibrated activations), checks it in
    the TFLite Micro interpreter against the float model, reports the arena it needs and writes
    micro_lm.h for firmware_examples/esp32-s3-tflm.

    Writes micro_lm.tflite (full int8), micro_lm.h, micro_report.json (agreement, arena, a greedy
    sample) and micro_lm.pt; exits 1 if the int8 file exceeds 1 MB or the agreement is below
    --min-agreement (the files stay for inspection). The defaults take ~1.5 min on 2 cores;
    sampling a teacher adds ~30 s per 1000 characters for SmolLM2 on LiteRT.

    \b
    Examples:
      edgeslm micro --text corpus.txt -o out/micro
      edgeslm micro --teacher out/smollm2-litert --text corpus.txt -o out/micro --steps 5000
    """
    from ..errors import ExportError

    try:
        from edgeslm_litert.micro import MicroConfig, build_micro_model
    except ImportError as exc:
        raise ExportError(f"the micro path is part of the LiteRT backend: pip install 'edgeslm-litert[export]' ({exc})")
    text = "".join(Path(f).read_text(errors="replace") for f in text_files)
    if teacher:
        generated = _teacher_text(teacher, teacher_chars)
        make_dir(output)
        (Path(output) / TEACHER_FILE).write_text(generated)  # kept: the training text is reproducible
        text += generated
    if not text:
        raise click.UsageError("give --text FILE and/or --teacher BUNDLE")
    cfg = MicroConfig(steps=steps, context=context, hidden=hidden, min_agreement=min_agreement)
    r = build_micro_model(text, output, cfg, steps=current().steps())
    if as_json:
        emit_json(r)
        return
    click.echo(f"model      {r['model']['parameters']} parameters, vocab {r['model']['vocab']}, "
               f"context {r['model']['context']}")
    click.echo(f"int8       {r['int8']['bytes']} bytes ({', '.join(r['int8']['ops'])})")
    click.echo(f"tflm       top-1 agreement with float {r['tflm']['top1_agreement_with_float']:.1%}, "
               f"arena {r['tflm']['arena_bytes']} bytes")
    sample = r["tflm"]["greedy_sample"]
    click.echo(f"sample     {(sample['prompt'] + sample['text'])!r} (greedy, TFLite Micro)")
    click.echo(f"header     {Path(output) / r['header']['file']}")


def _teacher_text(teacher: str, chars: int) -> str:
    """Sampled continuations of short prompts from the teacher bundle, ``chars`` characters in all."""
    from rich.console import Console
    from rich.progress import Progress

    import edgeslm

    prompts = ["Once upon a time", "The", "In a small town", "Q: What is", "Here is", "A"]
    parts: list[str] = []
    done = 0
    with edgeslm.load(teacher) as model, Progress(console=Console(stderr=True), transient=True,
                                                  disable=current().quiet) as progress:
        task = progress.add_task(f"generating text with {teacher}", total=chars)
        i = 0
        while done < chars:
            res = model.generate(prompts[i % len(prompts)], max_new_tokens=128, temperature=0.8, seed=i)
            parts.append(prompts[i % len(prompts)] + res.text + "\n")
            done += len(parts[-1])
            progress.update(task, completed=min(done, chars))
            i += 1
    return "".join(parts)
