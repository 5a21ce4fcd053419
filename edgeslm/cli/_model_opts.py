"""Options shared by the verbs that open a bundle and generate (run, chat, serve)."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from ._common import parse_options


def engine_options(f):
    """--threads, --providers, --engine-option KEY=VALUE, --key -> ``open_model(...)`` arguments."""

    @click.option("--threads", default=None, type=int, help="Engine threads [default: runtime's choice].")
    @click.option("--providers", default=None, metavar="LIST",
                  help="ONNX execution providers in priority order, e.g. cuda,cpu (short or full names); "
                       "one this onnxruntime lacks is an error listing those it has.")
    @click.option("--engine-option", "engine_options", multiple=True, metavar="KEY=VALUE",
                  help="Engine option, e.g. device=GPU (openvino), io_binding=false (onnx), "
                       "providers=cuda,cpu (lists are comma-separated); unknown keys are refused "
                       "with the engine's known ones. Repeatable.")
    @click.option("--key", "keys", multiple=True, type=click.Path(path_type=Path),
                  help="Trusted public key: refuse the bundle unless it is signed by one (repeatable).")
    @functools.wraps(f)
    def wrapper(*args, threads, providers, engine_options, keys, **kw):
        options = collect_engine_options(engine_options, threads, providers)
        return f(*args, engine_options=options, keys=keys, **kw)

    return wrapper


def collect_engine_options(pairs, threads: int | None, providers: str | None) -> dict[str, str | int]:
    """Merge --engine-option pairs with the --threads/--providers shortcuts (given twice: refused).
    Values stay strings; the engine converts and checks them (Engine.coerce_options)."""
    try:
        options: dict[str, str | int] = dict(parse_options(pairs))
    except click.BadParameter as exc:
        raise click.BadParameter(exc.message, param_hint="--engine-option") from None
    for name, value in (("threads", threads), ("providers", providers)):
        if value is None:
            continue
        if name in options:
            raise click.UsageError(f"--{name} and --engine-option {name}=... both given; use one")
        options[name] = value
    return options


def generation_options(f):
    """-n, -t, --top-k, --top-p, --seed, --stop -> ``config=GenerationConfig``."""

    @click.option("--max-new-tokens", "-n", default=128, show_default=True, type=int)
    @click.option("--temperature", "-t", default=0.0, show_default=True, type=float, help="0 = greedy.")
    @click.option("--top-k", default=0, show_default=True, type=int, help="0 = off (with --temperature > 0).")
    @click.option("--top-p", default=1.0, show_default=True, type=float, help="1.0 = off (with --temperature > 0).")
    @click.option("--seed", default=None, type=int, help="Seed for sampling (with --temperature > 0).")
    @click.option("--stop", multiple=True, help="Stop string (repeatable).")
    @functools.wraps(f)
    def wrapper(*args, max_new_tokens, temperature, top_k, top_p, seed, stop, **kw):
        return f(*args, config=make_config(max_new_tokens, temperature, top_k, top_p, seed, stop), **kw)

    return wrapper


def make_config(max_new_tokens, temperature, top_k, top_p, seed, stop):
    """A GenerationConfig; sampling flags that greedy decoding would ignore, and values it refuses
    (a NaN temperature, a negative seed ...), are usage errors (exit 2), found before the bundle opens."""
    from ..errors import GenerationError
    from ..runtime.generator import GenerationConfig

    if temperature == 0:
        idle = [flag for flag, given in (("--top-k", top_k != 0), ("--top-p", top_p != 1.0),
                                         ("--seed", seed is not None)) if given]
        if idle:
            raise click.UsageError(f"{', '.join(idle)} only appl{'y' if len(idle) > 1 else 'ies'} when sampling; "
                                   f"add --temperature "
                                   f"(e.g. -t 0.8) or drop {'them' if len(idle) > 1 else 'it'}")
    try:
        return GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                seed=seed, stop=tuple(stop))
    except GenerationError as exc:
        raise click.UsageError(str(exc)) from None


def open_model(bundle, engine_options, keys, reuse_cache: bool = True):
    """The bundle opened for generation: files hashed, signature checked, engine started (one
    progress step on stderr: seconds for a large bundle)."""
    import edgeslm

    from ._output import current

    with current().steps().step(f"Opening {bundle}"):
        return edgeslm.load(bundle, engine_options=engine_options, trusted_keys=list(keys) or None,
                            reuse_cache=reuse_cache)
