"""The Jinja environment behind :mod:`edgeslm.chat_template`: Jinja's immutable sandbox plus limits.

How the limits get into a template:

* The parsed tree is rewritten before it is compiled: every ``{% for %}`` iterable passes
  through ``environment.edgeslm_loop`` (counts iterations), every piece of output through
  ``environment.edgeslm_emit`` (counts characters) and every ``~`` concatenation through
  ``environment.edgeslm_concat`` (checks the size first). ``environment.X`` is an attribute of
  the environment, not a template variable, so a template cannot shadow or call around it.
* Calls (methods, macros, ``loop(...)``), the operators ``* ** + %`` and every filter run
  through checks before and after (``edgeslm.chat_template.check_*``).
* ``range`` is capped at ``max_range``; ``lipsum`` (a text generator) is removed.
"""

from __future__ import annotations

import functools
from typing import Any

from jinja2 import nodes
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg
from jinja2.visitor import NodeTransformer

from . import chat_template as ct
from .errors import ChatTemplateError

_SIZED = (str, bytes, list, tuple)


class _Guard(NodeTransformer):
    """Routes loops, output and concatenation of a parsed template through the environment's guards."""

    @staticmethod
    def _call(name: str, args: list, lineno: int) -> nodes.Call:
        return nodes.Call(nodes.EnvironmentAttribute(name, lineno=lineno), args, [], None, None, lineno=lineno)

    def visit_For(self, node: nodes.For) -> nodes.For:
        self.generic_visit(node)
        node.iter = self._call("edgeslm_loop", [node.iter], node.lineno)
        return node

    def visit_Output(self, node: nodes.Output) -> nodes.Output:
        self.generic_visit(node)
        node.nodes = [self._call("edgeslm_emit", [child], child.lineno) for child in node.nodes]
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Call:
        self.generic_visit(node)
        return self._call("edgeslm_concat", list(node.nodes), node.lineno)


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset(["*", "**", "+", "%"])

    def __init__(self, limits: "ct.TemplateLimits"):
        super().__init__(trim_blocks=True, lstrip_blocks=True, autoescape=False)
        self.limits = limits
        self.globals["range"] = self._range
        self.globals["raise_exception"] = _raise_exception  # the helper Hugging Face templates call
        self.globals.pop("lipsum", None)
        self.filters = {name: self._guard_filter(name, f) for name, f in self.filters.items()}

    # -- the tree rewrite ------------------------------------------------------------------
    def _parse(self, source, name, filename):
        tree = _Guard().visit(super()._parse(source, name, filename))
        tree.set_environment(self)
        return tree

    # -- guards the rewritten tree calls ---------------------------------------------------
    def edgeslm_loop(self, iterable):
        budget = ct._budget(self.limits)
        cap = self.limits.max_loop_iterations
        for item in iterable:
            budget.iterations += 1
            if budget.iterations > cap:
                ct._limit("max_loop_iterations", f"more than {cap:,} loop iterations")
            budget.tick()
            yield item

    def edgeslm_emit(self, value):
        text = value if isinstance(value, str) else str(value)
        budget = ct._budget(self.limits)
        budget.output += len(text)
        if budget.output > self.limits.max_output_chars:
            ct._limit("max_output_chars", f"output of more than {self.limits.max_output_chars:,} characters")
        budget.tick()
        return text

    def edgeslm_concat(self, *values):
        parts = [v if isinstance(v, str) else str(v) for v in values]
        ct.check_product(1, sum(map(len, parts)), self.limits, "a '~' concatenation")
        return "".join(parts)

    def _range(self, *args):
        ct.check_args(args, self.limits)
        r = range(*args)
        if len(r) > self.limits.max_range:
            ct._limit("max_range", f"range of {len(r):,} numbers, more than {self.limits.max_range:,}")
        return r

    # -- calls and operators -----------------------------------------------------------------
    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's own signature
        # Jinja's own bookkeeping (variables set in loops/blocks), not arguments: passed on untouched
        internal = {k: kwargs.pop(k) for k in ("_loop_vars", "_block_vars") if k in kwargs}
        if getattr(__obj, "__self__", None) is __self:  # our own guards (emit, loop, concat, range)
            return __obj(*args, **kwargs)
        limits = __self.limits
        ct._budget(limits).tick()
        if not _is_format(__obj):  # a number to format is data; widths in the format are checked
            ct.check_args(args, limits)
            ct.check_args(kwargs.values(), limits)
        if isinstance(__obj, LoopContext) and args:  # loop(children) in a recursive loop
            args = (__self.edgeslm_loop(args[0]), *args[1:])
        args = _check_str_method(__obj, args, limits)
        return ct.check_value(super().call(__context, __obj, *args, **kwargs, **internal), limits)

    def call_binop(self, context, operator, left, right):
        limits = self.limits
        ct._budget(limits).tick()
        if operator == "*":
            seq, n = (left, right) if _is_int(right) else (right, left)
            if _is_int(n) and isinstance(seq, _SIZED):
                ct.check_product(len(seq), max(n, 0), limits, "a '*' repetition")
            elif _is_int(left) and _is_int(right) and left.bit_length() + right.bit_length() > limits.max_int_bits:
                ct._limit("max_int_bits", f"a product of more than {limits.max_int_bits:,} bits")
        elif operator == "**" and _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1:
            if left.bit_length() * min(right, 1 << 40) > limits.max_int_bits:
                ct._limit("max_int_bits", f"a power of more than {limits.max_int_bits:,} bits")
        elif operator == "+" and isinstance(left, _SIZED) and isinstance(right, _SIZED):
            ct.check_product(1, len(left) + len(right), limits, "a '+' concatenation")
        elif operator == "%" and isinstance(left, str):
            ct.check_format(left, limits)
        return ct.check_value(super().call_binop(context, operator, left, right), limits)

    # -- filters -----------------------------------------------------------------------------
    def _guard_filter(self, name: str, f):
        skip = 1 if _PassArg.from_obj(f) is not None else 0  # context/environment argument first
        limits = self.limits

        @functools.wraps(f)  # keeps jinja_pass_arg, so Jinja still passes the same first argument
        def guarded(*args, **kwargs):
            ct._budget(limits).tick()
            if len(args) > skip:
                value, rest = args[skip], args[skip + 1:]
                if name != "format":  # format's arguments are data; its widths are checked
                    ct.check_args(rest, limits)
                    ct.check_args(kwargs.values(), limits)
                value = _check_filter(self, name, value, rest, kwargs)
                args = (*args[:skip], value, *rest)
            return ct.check_value(f(*args, **kwargs), limits)

        return guarded


def _raise_exception(message: Any = "") -> None:
    raise ChatTemplateError(f"chat template refused the messages: {' '.join(str(message).split())[:300]}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_format(obj) -> bool:
    bound = getattr(obj, "__wrapped__", obj)
    return isinstance(getattr(bound, "__self__", None), str) and getattr(bound, "__name__", "") in (
        "format", "format_map")


def _check_str_method(obj, args: tuple, limits) -> tuple:
    """Size checks for the str methods whose result is not bounded by their inputs."""
    bound = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format in its own function
    owner, name = getattr(bound, "__self__", None), getattr(bound, "__name__", "")
    if not isinstance(owner, str):
        return args
    if name in ("format", "format_map"):
        ct.check_format(owner, limits)
    elif name == "join" and args:
        return (ct.bounded_join(owner, args[0], limits), *args[1:])
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        _check_replace(owner, args[0], args[1], limits)
    elif name == "expandtabs":
        ct.check_product(owner.count("\t") + 1, int(args[0]) if args and _is_int(args[0]) else 8, limits, "expandtabs")
    return args


def _check_replace(s: str, old: str, new: str, limits) -> None:
    hits = s.count(old) if old else len(s) + 1
    ct.check_product(1, len(s) + hits * max(len(new) - len(old), 0), limits, "a replace")


def _check_filter(env, name: str, value, rest: tuple, kwargs: dict):
    """Filter-specific checks before the call; returns the value (materialized for join)."""
    limits = env.limits
    if name == "join" and not isinstance(value, str):
        sep = rest[0] if rest else kwargs.get("d", "")
        attribute = rest[1] if len(rest) > 1 else kwargs.get("attribute")
        value = list(ct.bounded_join("", value, limits) if attribute is None else value)  # count first
        if attribute is not None:
            from jinja2.filters import make_attrgetter

            ct.bounded_join(str(sep), map(make_attrgetter(env, attribute), value), limits)
        else:
            ct.bounded_join(str(sep), value, limits)
    elif name in ("slice", "batch") and rest and _is_int(rest[0]) and rest[0] > limits.max_range:
        ct._limit("max_range", f"{name} into {rest[0]:,} parts, more than {limits.max_range:,}")
    elif name == "replace" and isinstance(value, str) and len(rest) >= 2:
        _check_replace(value, str(rest[0]), str(rest[1]), limits)
    elif name == "format" and isinstance(value, str):
        ct.check_format(value, limits)
    elif name == "indent" and isinstance(value, str):
        width = rest[0] if rest else kwargs.get("width", 4)
        each = len(width) if isinstance(width, str) else int(width) if _is_int(width) else 4
        ct.check_product(value.count("\n") + 1, each, limits, "an indent")
    elif name == "wordwrap" and isinstance(value, str):
        width = rest[0] if rest else kwargs.get("width", 79)
        wrap = rest[2] if len(rest) > 2 else kwargs.get("wrapstring") or "\n"
        lines = len(value) // max(int(width) if _is_int(width) else 79, 1) + 1
        ct.check_product(lines, len(str(wrap)), limits, "a wordwrap")
    elif name == "tojson":
        indent = rest[0] if rest else kwargs.get("indent")
        if indent is not None and (not _is_int(indent) or not 0 <= indent <= 16):
            raise ChatTemplateError(f"chat template: tojson indent must be 0..16, got {indent!r}")
    return value
