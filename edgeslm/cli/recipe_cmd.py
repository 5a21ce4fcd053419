"""edgeslm recipe run / list / show"""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

import click

from ..compress import recipe as recipe_module
from . import cli
from ._common import OutputDir, emit_json, json_option
from ._output import current


def _literal_block(doc: str) -> str:
    """The first ``::`` literal block of ``doc`` as a click help paragraph: behind ``\\b`` (no
    rewrapping), indented two spaces, without blank lines (one would end the paragraph)."""
    block = []
    for line in doc.split("::\n", 1)[1].splitlines():
        if line.strip() and not line.startswith(" "):
            break
        block.append(line)
    lines = textwrap.dedent("\n".join(block)).splitlines()
    return "\b\n" + "".join(f"  {line}\n" for line in lines if line.strip())


#: the example recipe of the help texts: the one in edgeslm/compress/recipe.py's docstring
EXAMPLE = _literal_block(recipe_module.__doc__)


HELP = """Compression recipes: several techniques and an export in one resumable command.

\b
A recipe is a small TOML list of steps, or a built-in name (`edgeslm recipe list`):
""" + EXAMPLE + """
\b
Examples:
  edgeslm recipe list
  edgeslm recipe show prune25-recover-int4 > my.toml     # start from a built-in one
  edgeslm recipe run prune25-recover-int4 -m smollm2-135m -o out/p25
  edgeslm recipe run my.toml -m smollm2-135m -o out/mine --target raspberry-pi-5
  edgeslm recipe run my.toml -o out/mine --resume         # after an interruption

docs/compression.md ("One command") lists every step kind and its keys."""


@cli.group("recipe", help=HELP)
def recipe_group():
    pass


@recipe_group.command("run")
@click.argument("recipe")
@click.option("-m", "--model", default=None,
              help="Source model: a built-in name, a .gguf file or a Hugging Face folder [default: the recipe's "
                   "model, or on --resume the one OUT was started from].")
@click.option("-o", "--output", "out_dir", required=True, type=OutputDir("recipe output folder"),
              help="Folder for every step's output (NN-kind/), the state file and the report.")
@click.option("-t", "--target", default=None,
              help="Export for this device target (the last export step's target; one is added if the recipe "
                   "has none).")
@click.option("--resume", is_flag=True,
              help="Continue a run in OUT: finished steps with unchanged parameters are kept, an interrupted "
                   "recover step continues from its last checkpoint.")
@click.option("--stop-after", type=int, default=None, metavar="N",
              help="Stop after step N (e.g. to inspect it); --resume continues from there.")
@click.option("--no-eval", is_flag=True, help="Skip measuring each step against the source (no quality report).")
@click.option("--speed", "speed_tokens", type=int, default=0, show_default=True, metavar="TOKENS",
              help="Also measure decode tok/s over this many tokens per step (0: off; noisy on a busy machine).")
@json_option
def recipe_run(recipe, model, out_dir, target, resume, stop_after, no_eval, speed_tokens, as_json):
    """Run RECIPE (a .toml file or a built-in name) on a model into OUT.

    \b
    Each step writes OUT/NN-kind/ (a model folder, or the bundle of an export step) and
    records itself in OUT/recipe_state.json; the whole recipe is checked (kinds, keys,
    values, files, exporters, targets) before any work. Progress goes to stderr; the
    report (OUT/report.md and report.json: params, bytes, top-1 / KL / perplexity vs the
    source, CPU-minutes per step) is printed at the end. Ctrl-C stops cleanly; --resume
    continues. A recipe file (`edgeslm recipe show NAME` prints any built-in one in full):
    """
    from ..compress.recipe import load_recipe
    from ..compress.recipe_run import Runner, with_target

    rec = load_recipe(recipe)
    if target:
        rec = with_target(rec, target)
    base = Path(recipe).resolve().parent if Path(recipe).is_file() else None
    out = current()
    runner = Runner(rec, model or rec.model, out_dir, resume=resume, stop_after=stop_after, evaluate=not no_eval,
                    speed_tokens=speed_tokens, steps=out.steps(), progress=not out.quiet, note=out.note, base=base)
    summary = runner.run()
    if as_json:
        emit_json(summary)
        return
    if summary["report"]:
        from ..compress.recipe_run import REPORT_COLUMNS
        from ..compress.report import to_markdown

        click.echo(to_markdown(summary["report"], notes=False, columns=REPORT_COLUMNS))
    done = sum(1 for s in summary["steps"] if s["status"] == "done")
    tail = f"; bundle {summary['bundle']}" if summary["bundle"] else ""
    click.echo(f"{out_dir}: {done} of {len(summary['steps'])} steps done{tail}"
               + ("" if summary["complete"] else " (--resume continues)"))


recipe_run.help = inspect.cleandoc(recipe_run.help) + "\n\n" + EXAMPLE + """
\b
Examples:
  edgeslm recipe run prune25-recover-int4 -m smollm2-135m -o out/p25
  edgeslm recipe run my.toml -m smollm2-135m -o out/mine --target raspberry-pi-5
  edgeslm recipe run my.toml -o out/mine --stop-after 1      # look at step 1, then:
  edgeslm recipe run my.toml -o out/mine --resume
  edgeslm run out/p25/04-export --prompt "What is an edge device?"
"""


@recipe_group.command("list")
@json_option
def recipe_list(as_json):
    """The built-in recipes."""
    from ..compress.recipe import builtin_recipes, load_recipe

    recipes = [load_recipe(name) for name in builtin_recipes()]
    if as_json:
        emit_json([{"name": r.name, "description": r.description, "steps": [s.kind for s in r.steps]}
                   for r in recipes])
        return
    chains = [" -> ".join(s.kind for s in r.steps) for r in recipes]
    width, cw = max(len(r.name) for r in recipes), max(len(c) for c in chains)
    for r, chain in zip(recipes, chains):
        click.echo(f"{r.name:<{width}}  {chain:<{cw}}  {r.description}")


@recipe_group.command("show")
@click.argument("recipe")
@json_option
def recipe_show(recipe, as_json):
    """Print RECIPE (a built-in name or a file) with every default written out: a starting point to edit."""
    from ..compress.recipe import load_recipe

    rec = load_recipe(recipe)
    if as_json:
        emit_json({"name": rec.name, "description": rec.description, "steps": [s.to_dict() for s in rec.steps]})
        return
    click.echo(rec.to_toml(), nl=False)
