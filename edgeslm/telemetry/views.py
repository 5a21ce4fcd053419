"""Text renderings of the fleet views (rich tables) shared by the CLI and the demo.

Everything a device sent is untrusted text here: it goes into the tables as plain
``rich.text.Text`` (never parsed as markup, so ``[/bold]`` in a model id is just text), with
control characters (terminal escape sequences) and bidi overrides shown escaped, cut to a
sane width. Timestamps outside what the platform can format print as numbers, not tracebacks.
"""

from __future__ import annotations

import re
import time
from typing import Any, Iterable

from .stores.base import DeviceRow

# C0/C1 controls (ESC starts terminal escape sequences), DEL, and bidi overrides/isolates
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def safe(value: Any, max_len: int = 80) -> str:
    """Device-supplied ``value`` as one printable line: controls escaped, at most ``max_len`` characters."""
    if value is None:
        return "-"
    text = _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value))
    return text if len(text) <= max_len else text[:max_len - 1] + "…"


def when(ts: Any, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """Local time of unix seconds ``ts``; the raw number when it cannot be a date (1e300, NaN)."""
    try:
        return time.strftime(fmt, time.localtime(ts))
    except (OverflowError, OSError, ValueError, TypeError):
        return safe(ts, 24)


def _cell(value: Any, style: str = "", max_len: int = 80):
    from rich.text import Text

    return Text(safe(value, max_len), style=style)


def ago(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return "-"
    try:
        s = max(0.0, float((now or time.time()) - ts))
    except (TypeError, ValueError, OverflowError):
        return "?"
    if s != s:  # NaN
        return "?"
    if s < 90:
        return f"{s:.0f}s ago"
    if s < 5400:
        return f"{s / 60:.0f}m ago"
    if s < 2 * 86400:
        return f"{s / 3600:.0f}h ago"
    return f"{s / 86400:.0f}d ago"


def _ms(v: float | None) -> str:
    return _num(v, "{:.0f}", 1000)


def _num(v: Any, fmt: str = "{:.1f}", scale: float = 1) -> str:
    """A stored number for display; whatever an older store holds instead (text, NaN) printed safely."""
    if v is None:
        return "-"
    try:
        return fmt.format(v * scale)
    except (TypeError, ValueError, OverflowError):
        return safe(v, 20)


def _errors(r: DeviceRow) -> str:
    if r.errors is None:
        return "-"
    try:
        return f"{r.errors}/{(r.requests or 0) + r.errors}"
    except TypeError:
        return safe(r.errors, 20)


def online_text(row: DeviceRow, stale_after_s: float | None = None, now: float | None = None) -> str:
    if row.online is None:
        state = "?"
    else:
        state = "yes" if row.online else f"no ({safe(row.reason, 40)})" if row.reason else "no"
    seen = row.last_received_at or row.last_seen  # the collector's clock, not the device's
    if row.online and stale_after_s and seen and (now or time.time()) - seen > stale_after_s:
        state = "stale"
    return state


def status_table(rows: Iterable[DeviceRow], stale_after_s: float | None = None, title: str | None = None):
    from rich.table import Table

    now = time.time()
    table = Table(title=title, header_style="bold")
    for col, justify in (("fleet", "left"), ("device", "left"), ("online", "left"), ("model", "left"),
                         ("last seen", "right"), ("p95 TTFT ms", "right"), ("tok/s", "right"),
                         ("errors", "right"), ("temp C", "right")):
        table.add_column(col, justify=justify)
    for r in rows:
        state = online_text(r, stale_after_s, now)
        style = {"yes": "green", "stale": "yellow"}.get(state, "red" if state.startswith("no") else "")
        table.add_row(_cell(r.fleet), _cell(r.device), _cell(state, style), _cell(r.model_id),
                      ago(r.last_received_at or r.last_seen, now), _ms(r.ttft_p95_s), _num(r.tok_s_p50), _errors(r),
                      _num(r.temperature))
    return table


def history_table(rows: list[dict[str, Any]], title: str | None = None):
    from rich.table import Table

    table = Table(title=title, header_style="bold")
    for col in ("time", "seq", "requests", "errors", "p50 TTFT ms", "p95 TTFT ms", "p95 latency ms", "tok/s",
                "cpu %", "temp C", "model"):
        table.add_column(col, justify="left" if col in ("time", "model") else "right")
    for r in rows:
        table.add_row(when(r["ts"]), safe(r["seq"], 20),
                      _num(r["requests"], "{}"), _num(r["errors"], "{}"), _ms(r["ttft_p50_s"]), _ms(r["ttft_p95_s"]),
                      _ms(r["duration_p95_s"]), _num(r["tok_s_p50"]),
                      _num(r["cpu"], "{:.0f}", 100), _num(r["temperature"]), _cell(r["model_id"]))
    return table


def event_line(e: dict[str, Any]) -> str:
    """One plain line per event (printed with click, never as markup), device text made safe."""
    return (f"{when(e['ts'], '%H:%M:%S')} {safe(e['severity'], 16):<8} {safe(e['name'], 40):<15} "
            f"{safe(e['fleet'], 128)}/{safe(e['device'], 128)}: {safe(e['message'], 300)}")


def console():
    """A rich Console; piped output gets a wide page instead of rich's 80-column default."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160, soft_wrap=True)
