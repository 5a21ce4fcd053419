"""Text renderings of the fleet views (rich tables) shared by the CLI and the demo."""

from __future__ import annotations

import time
from typing import Any, Iterable

from .stores.base import DeviceRow


def ago(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return "-"
    s = max(0.0, (now or time.time()) - ts)
    if s < 90:
        return f"{s:.0f}s ago"
    if s < 5400:
        return f"{s / 60:.0f}m ago"
    if s < 2 * 86400:
        return f"{s / 3600:.0f}h ago"
    return f"{s / 86400:.0f}d ago"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


def _num(v: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def online_text(row: DeviceRow, stale_after_s: float | None = None, now: float | None = None) -> str:
    if row.online is None:
        state = "?"
    else:
        state = "yes" if row.online else f"no ({row.reason})" if row.reason else "no"
    if row.online and stale_after_s and row.last_seen and (now or time.time()) - row.last_seen > stale_after_s:
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
        errors = "-" if r.errors is None else f"{r.errors}/{(r.requests or 0) + r.errors}"
        table.add_row(r.fleet, r.device, f"[{style}]{state}[/]" if style else state, r.model_id or "-",
                      ago(r.last_seen, now), _ms(r.ttft_p95_s), _num(r.tok_s_p50), errors, _num(r.temperature))
    return table


def history_table(rows: list[dict[str, Any]], title: str | None = None):
    from rich.table import Table

    table = Table(title=title, header_style="bold")
    for col in ("time", "seq", "requests", "errors", "p50 TTFT ms", "p95 TTFT ms", "p95 latency ms", "tok/s",
                "cpu %", "temp C", "model"):
        table.add_column(col, justify="left" if col in ("time", "model") else "right")
    for r in rows:
        table.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["ts"])), str(r["seq"]),
                      _num(r["requests"], "{}"), _num(r["errors"], "{}"), _ms(r["ttft_p50_s"]), _ms(r["ttft_p95_s"]),
                      _ms(r["duration_p95_s"]), _num(r["tok_s_p50"]),
                      _num(None if r["cpu"] is None else r["cpu"] * 100, "{:.0f}"), _num(r["temperature"]),
                      r["model_id"] or "-")
    return table


def event_line(e: dict[str, Any]) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(e["ts"]))
    return f"{when} {e['severity']:<8} {e['name']:<15} {e['fleet']}/{e['device']}: {e['message']}"


def console():
    """A rich Console; piped output gets a wide page instead of rich's 80-column default."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160, soft_wrap=True)
