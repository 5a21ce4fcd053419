"""Chat templates (Jinja, shipped inside bundles) rendered in a sandbox with resource limits.

Jinja's ``ImmutableSandboxedEnvironment`` stops escapes (no attribute walks to ``__globals__``,
no mutation of lists/dicts) but not exhaustion: ``{{ 'A' * 400000000 }}`` allocates gigabytes
and two nested ``range(100000)`` loops run for hours. A template comes with the bundle, so it
is bounded here like any other input:

======================  =======================================================================
limit                   what counts
======================  =======================================================================
max_output_chars        every character the template emits, summed over the render (also text
                        emitted into ``{% set %}`` blocks and macros that is later dropped)
max_value_chars         the longest string/list any single operation may produce; checked
                        *before* the operations that multiply size (``*``, ``join``,
                        ``replace``, ``center``/``ljust``/``format`` widths, ``indent`` ...)
                        and after every call, filter and operator
max_loop_iterations     ``{% for %}`` iterations summed over the render (recursive loops too)
max_range               the largest ``range()``
max_int_bits            the largest integer arithmetic may build (``9 ** 9 ** 9``)
max_seconds             wall time, checked at every loop iteration, call, operator and output
max_template_chars      length of the template source
======================  =======================================================================

A limit that is hit raises :class:`~edgeslm.errors.ChatTemplateLimitError` naming it; any other
template failure (syntax, undefined value, sandbox refusal, a type error) is a one-line
:class:`~edgeslm.errors.ChatTemplateError`. The limits sit far above what real templates need
(SmolLM2, Llama 3, Gemma, Qwen and Phi-3 templates render a 100-message chat in milliseconds).
"""

from __future__ import annotations

import functools
import itertools
import re
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Iterable

from .errors import ChatTemplateError, ChatTemplateLimitError


@dataclass(frozen=True)
class TemplateLimits:
    max_output_chars: int = 2_000_000  # ~500k tokens: more than any context edgeslm runs
    max_value_chars: int = 2_000_000  # one message may be that long, nothing may be longer
    max_loop_iterations: int = 100_000  # a 1000-message chat with tools uses a few thousand
    max_range: int = 10_000  # real templates use range() over messages, if at all
    max_int_bits: int = 4096  # token ids and counters need 64
    max_seconds: float = 2.0  # real templates take milliseconds
    max_template_chars: int = 200_000  # the largest real templates (tool calling) are ~10k


DEFAULT_LIMITS = TemplateLimits()
_BUDGET: ContextVar["_Budget | None"] = ContextVar("edgeslm_template_budget", default=None)
_NUMBER = re.compile(r"\d+")
_STAR_WIDTH = re.compile(r"%[-+ #0]*\*|%[-+ #0]*\d*\.\*")  # '%*d', '%.*f'


class _Budget:
    """What one render has used so far."""

    def __init__(self, limits: TemplateLimits):
        self.limits = limits
        self.deadline = time.monotonic() + limits.max_seconds
        self.iterations = 0
        self.output = 0

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            _limit("max_seconds", f"rendering took more than {self.limits.max_seconds:g} s")


def _budget(limits: TemplateLimits) -> _Budget:
    b = _BUDGET.get()
    return b if b is not None else _Budget(limits)


def _limit(name: str, what: str) -> None:
    raise ChatTemplateLimitError(f"chat template stopped: {what} (limit {name})", limit=name)


def render(source: str, limits: TemplateLimits = DEFAULT_LIMITS, **variables: Any) -> str:
    """Render ``source`` with ``variables`` under ``limits``; ChatTemplateError on any failure."""
    template = compile_template(source, limits)
    return render_compiled(template, **variables)


@functools.lru_cache(maxsize=16)
def compile_template(source: str, limits: TemplateLimits = DEFAULT_LIMITS):
    """The compiled template (cached per source); ChatTemplateError for a template that does not compile."""
    from jinja2 import TemplateError, TemplateSyntaxError

    if not isinstance(source, str):
        raise ChatTemplateError(f"chat template must be text, not {type(source).__name__}")
    if len(source) > limits.max_template_chars:
        _limit("max_template_chars", f"the template has {len(source):,} characters, "
                                     f"more than {limits.max_template_chars:,}")
    env = _environment(limits)
    try:
        return env.from_string(source)
    except TemplateSyntaxError as exc:
        raise ChatTemplateError(f"chat template has a syntax error at line {exc.lineno}: {_one_line(exc)}") from None
    except RecursionError:
        raise ChatTemplateError("chat template is nested too deeply to compile") from None
    except (TemplateError, MemoryError, ValueError, TypeError) as exc:
        raise ChatTemplateError(f"chat template does not compile: {type(exc).__name__}: {_one_line(exc)}") from None


def render_compiled(template, **variables: Any) -> str:
    from jinja2 import TemplateError, UndefinedError
    from jinja2.exceptions import SecurityError

    token = _BUDGET.set(_Budget(template.environment.limits))
    try:
        return template.render(**variables)
    except ChatTemplateError:
        raise
    except SecurityError as exc:
        raise ChatTemplateError(f"chat template tried an unsafe operation: {_one_line(exc)}") from None
    except UndefinedError as exc:
        raise ChatTemplateError(f"chat template uses an undefined value: {_one_line(exc)}") from None
    except RecursionError:
        raise ChatTemplateError("chat template recursed too deeply (a macro or recursive loop)") from None
    except MemoryError:
        raise ChatTemplateError("chat template ran out of memory") from None
    except TemplateError as exc:
        raise ChatTemplateError(f"chat template error: {_one_line(exc)}") from None
    except Exception as exc:  # a template is code: its TypeError, ZeroDivisionError ... are its own
        raise ChatTemplateError(f"chat template failed: {type(exc).__name__}: {_one_line(exc)}") from None
    finally:
        _BUDGET.reset(token)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


@functools.lru_cache(maxsize=4)
def _environment(limits: TemplateLimits):
    from .chat_template_env import BoundedEnvironment

    return BoundedEnvironment(limits)


# -- the checks the environment runs (kept here, next to the limits they enforce) ------------
def check_value(value: Any, limits: TemplateLimits) -> Any:
    """After an operation: refuse a result larger than the limits."""
    if isinstance(value, (str, bytes, list, tuple, dict, set, frozenset)) and len(value) > limits.max_value_chars:
        _limit("max_value_chars", f"a value of {len(value):,} items, more than {limits.max_value_chars:,}")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > limits.max_int_bits:
        _limit("max_int_bits", f"an integer of {value.bit_length():,} bits, more than {limits.max_int_bits:,}")
    return value


def check_args(args: Iterable[Any], limits: TemplateLimits) -> None:
    """Before a call: integer arguments are widths, counts and sizes; none may exceed the value limit."""
    for a in args:
        for v in (a.values() if isinstance(a, dict) else a if isinstance(a, (list, tuple)) else (a,)):
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) > limits.max_value_chars:
                _limit("max_value_chars", f"an argument of {v:,}, more than {limits.max_value_chars:,}")


def check_format(fmt: str, limits: TemplateLimits) -> None:
    """Widths and precisions inside a format string ('%400000000s', '{:>400000000}'); widths
    taken from the arguments ('%*s', '{:{}}') are refused outright: no real template needs them."""
    for m in _NUMBER.finditer(fmt):
        if len(m.group()) > 12 or int(m.group()) > limits.max_value_chars:
            _limit("max_value_chars", f"a format width of {m.group()[:20]}, more than {limits.max_value_chars:,}")
    if _STAR_WIDTH.search(fmt) or _nested_spec(fmt):
        raise ChatTemplateError("chat template: format widths taken from arguments ('%*s', '{:{}}') are not allowed")


def _nested_spec(fmt: str) -> bool:
    """True for str.format fields whose spec takes a value from the arguments ('{:{}}')."""
    import string

    try:
        return any(spec and "{" in spec for _, _, spec, _ in string.Formatter().parse(fmt))
    except ValueError:  # not a valid format string: str.format will say so itself
        return False


def check_product(n_items: int, each: int, limits: TemplateLimits, what: str) -> None:
    if n_items * each > limits.max_value_chars:
        _limit("max_value_chars", f"{what} would make {n_items * each:,} items, more than {limits.max_value_chars:,}")


def bounded_join(sep: str, items: Iterable[Any], limits: TemplateLimits) -> list:
    """The items of a join, materialized and checked so the joined string fits."""
    items = list(itertools.islice(items, limits.max_value_chars + 1))
    check_value(items, limits)
    total = sum(len(i) if isinstance(i, str) else len(str(i)) for i in items) + len(sep) * max(len(items) - 1, 0)
    if total > limits.max_value_chars:
        _limit("max_value_chars", f"a join of {total:,} characters, more than {limits.max_value_chars:,}")
    return items
