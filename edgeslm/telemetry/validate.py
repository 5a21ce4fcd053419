"""Field-by-field validation of v1 messages, before anything reaches a store.

Every field a store or a view uses has a type and a range here; everything else a device may
add (resource attributes, event attributes, unknown metrics or keys) passes one generic,
bounded check. What passes fits every store: integers within signed 64 bit, finite numbers,
strings that are valid UTF-8 without NUL and of bounded length, containers nested at most
:data:`MAX_DEPTH` deep, timestamps between 1970 and 2100. What fails raises :class:`Invalid`
naming the field, which the collector turns into one dead letter with its reason instead of
a store error.

Cost matters (every message passes here): the checks are exact type tests and comparisons,
and the NUL / lone-surrogate scan of strings runs only when the payload holds a ``\\u``
escape, the only way JSON can carry either (raw control characters are refused by the
decoder and the payload was decoded as strict UTF-8).
"""

from __future__ import annotations

import math
from typing import Any

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
TS_MIN, TS_MAX = 0.0, 4102444800.0  # 1970-01-01 .. 2100-01-01 (unix seconds)
MAX_DEPTH = 10  # container depth below the message object (0); v1 telemetry reaches 3 (metrics.errors.by_type)
MAX_ID = 256  # event ids, names, bundle ids, map keys
MAX_SHORT = 64  # status reason, severity, source, runtime
MAX_TEXT = 4096  # event messages
MAX_FREE_TEXT = 16384  # any other string (the payload itself is capped at 64 KiB)

#: flattened telemetry columns the checks extract, in order (see stores.base.TELEMETRY_COLUMNS)
METRIC_COLUMNS = ("model_id", "model_hash", "requests", "errors", "ttft_p50_s", "ttft_p95_s", "ttft_max_s",
                  "duration_p95_s", "tpot_p95_s", "tok_s_p50", "input_tokens", "output_tokens", "cpu", "memory_util",
                  "temperature", "dropped")


class Invalid(ValueError):
    """A field that does not pass; ``str()`` names the field and what was expected."""


class Checker:
    """The checks for one message; ``escapes`` says whether its JSON text holds ``\\u`` escapes."""

    __slots__ = ("escapes",)

    def __init__(self, escapes: bool):
        self.escapes = escapes

    # -- scalars ----------------------------------------------------------------------------
    def text(self, v: Any, what: str, max_len: int = MAX_ID, empty: bool = True) -> str:
        if type(v) is not str or len(v) > max_len or (not empty and not v) or (self.escapes and not _clean(v)):
            raise Invalid(f"{what} must be {'non-empty ' if not empty else ''}text of at most {max_len} "
                          "characters (UTF-8, no NUL)")
        return v

    def opt_text(self, v: Any, what: str, max_len: int = MAX_ID) -> str | None:
        return None if v is None else self.text(v, what, max_len)

    @staticmethod
    def count(v: Any, what: str) -> int:
        if type(v) is not int or v < 0 or v > INT64_MAX:
            raise Invalid(f"{what} must be an integer from 0 to 2^63-1")
        return v

    def opt_count(self, v: Any, what: str) -> int | None:
        return None if v is None else self.count(v, what)

    @staticmethod
    def number(v: Any, what: str, lo: float = -math.inf, hi: float = math.inf) -> float | int:
        t = type(v)
        if (t is float and v - v == 0.0) or (t is int and INT64_MIN <= v <= INT64_MAX):  # v - v: NaN for inf/NaN
            if lo <= v <= hi:
                return v
        bounds = f" from {lo:g} to {hi:g}" if math.isfinite(lo) and math.isfinite(hi) else ""
        raise Invalid(f"{what} must be a finite number{bounds} (integers within 64 bit)")

    def opt_number(self, v: Any, what: str, lo: float = -math.inf, hi: float = math.inf) -> float | int | None:
        return None if v is None else self.number(v, what, lo, hi)

    # -- containers -------------------------------------------------------------------------
    @staticmethod
    def obj(v: Any, what: str, required: bool = False) -> dict:
        if v is None and not required:
            return {}
        if type(v) is not dict:
            raise Invalid(f"{what} must be an object")
        return v

    def free(self, v: Any, what: str, depth: int) -> None:
        """Any JSON value a device may add: bounded depth, 64-bit ints, finite floats, clean strings."""
        t = type(v)
        if t is str:
            if len(v) > MAX_FREE_TEXT or (self.escapes and not _clean(v)):
                raise Invalid(f"{what} must be text of at most {MAX_FREE_TEXT} characters (UTF-8, no NUL)")
        elif t is int:
            if not INT64_MIN <= v <= INT64_MAX:
                raise Invalid(f"{what}: integer outside signed 64 bit")
        elif t is float:
            if v - v != 0.0:
                raise Invalid(f"{what}: number is not finite")
        elif t is dict or t is list:
            if depth >= MAX_DEPTH:
                raise Invalid(f"{what}: nested deeper than {MAX_DEPTH}")
            if t is dict:
                for k, item in v.items():
                    self.key(k, what)
                    self.free(item, f"{what}.{k}", depth + 1)
            else:
                for i, item in enumerate(v):
                    self.free(item, f"{what}[{i}]", depth + 1)
        # bool and None are always fine

    def key(self, k: str, what: str) -> None:
        if len(k) > MAX_ID or (self.escapes and not _clean(k)):  # JSON keys are always str
            raise Invalid(f"a key in {what} must be text of at most {MAX_ID} characters (UTF-8, no NUL)")

    def rest(self, d: dict, known: frozenset, what: str, depth: int) -> None:
        """Generic check of the entries of ``d`` (at ``depth``) that the typed checks did not look at."""
        if len(d) > len(known) or not d.keys() <= known:
            for k in d.keys() - known:
                self.key(k, what)
                self.free(d[k], f"{what}.{k}", depth + 1)

    # -- v1 sections ------------------------------------------------------------------------
    def summary(self, v: Any, what: str) -> dict | None:
        """``{count, sum, p50, p95, max}`` (nearest-rank summary of one interval)."""
        if v is None:
            return None
        if type(v) is not dict or len(v) < 5:
            raise Invalid(f"metric {what} must be {{count, sum, p50, p95, max}}")
        try:
            n, values = v["count"], (v["sum"], v["p50"], v["p95"], v["max"])
        except KeyError:
            raise Invalid(f"metric {what} must be {{count, sum, p50, p95, max}}") from None
        if type(n) is not int or n < 0 or n > INT64_MAX:
            raise Invalid(f"{what}.count must be an integer from 0 to 2^63-1")
        for x in values:
            t = type(x)
            if not ((t is float and x - x == 0.0) or (t is int and INT64_MIN <= x <= INT64_MAX)):
                raise Invalid(f"metric {what}: sum, p50, p95 and max must be finite numbers")
        if len(v) != 5:
            self.rest(v, SUMMARY_KEYS, what, 2)
        return v

    def resource(self, v: Any) -> dict:
        r = self.obj(v, "resource")
        plain = not self.escapes
        for k, item in r.items():
            if plain and type(item) is str and len(item) <= MAX_SHORT and len(k) <= MAX_ID:
                continue  # the common case, fine for any key (the typed keys allow at least MAX_SHORT)
            limit = RESOURCE_TYPED.get(k)
            if limit is not None:
                self.opt_text(item, f"resource.{k}", limit)
            else:
                self.key(k, "resource")
                self.free(item, f"resource.{k}", 2)
        return r

    def errors(self, v: Any, what: str) -> int | None:
        e = self.obj(v, what)
        total = self.opt_count(e.get("total"), f"{what}.total")
        by_type = self.obj(e.get("by_type"), f"{what}.by_type")
        for k, n in by_type.items():
            self.key(k, f"{what}.by_type")
            self.count(n, f"{what}.by_type.{k}")
        self.rest(e, _ERROR_KEYS, what, 2)
        return total

    def tokens(self, v: Any, what: str) -> tuple[int | None, int | None]:
        t = self.obj(v, what)
        pair = self.opt_count(t.get("input"), f"{what}.input"), self.opt_count(t.get("output"), f"{what}.output")
        self.rest(t, _TOKEN_KEYS, what, 2)
        return pair

    def agent(self, v: Any) -> int | None:
        a = self.obj(v, "agent")
        for k, n in a.items():
            if k in _AGENT_KEYS:
                self.opt_count(n, f"agent.{k}")
            else:
                self.key(k, "agent")
                self.free(n, f"agent.{k}", 2)
        return a.get("dropped")


SUMMARY_KEYS = frozenset(("count", "sum", "p50", "p95", "max"))
RESOURCE_TYPED = {"edgeslm.bundle.id": MAX_ID, "edgeslm.bundle.sha256": MAX_SHORT * 2, "edgeslm.runtime": MAX_SHORT}
_ERROR_KEYS = frozenset(("total", "by_type"))
_TOKEN_KEYS = frozenset(("input", "output"))
_AGENT_KEYS = frozenset(("buffered", "dropped", "rejected"))


def _clean(s: str) -> bool:
    """No NUL and no lone surrogate (which no store can encode as UTF-8)."""
    if "\x00" in s:
        return False
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def timestamp(v: Any, what: str = "ts") -> float:
    """Unix seconds between 1970 and 2100 (a device clock beyond that is a bug, not a time)."""
    try:
        return float(Checker.number(v, what, TS_MIN, TS_MAX))
    except Invalid:
        raise Invalid(f"{what} must be unix seconds between 1970 and 2100") from None
