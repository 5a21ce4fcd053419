"""Byte quantities with units, as target files write them ("8 GiB", "512 KiB", "16 MB").

A bare number is refused: "8" could be bytes, MB or GB, and a wrong guess makes a forecast
wrong by a factor of a million. Binary units (KiB, MiB, GiB) are what RAM and MCU memories
are sold in; decimal units (KB, MB, GB, TB) are what storage is sold in.
"""

from __future__ import annotations

import re

UNITS = {
    "B": 1,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]+)\s*$")


class UnitParseError(ValueError):
    """Raised by :func:`parse_bytes`; the target loader turns it into a named TargetError."""


def parse_bytes(value: object) -> int:
    """``"8 GiB"`` -> 8589934592. Raises UnitParseError for bare numbers and unknown units."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise UnitParseError(f"{value!r} has no unit; write it as a string with a unit, e.g. \"8 GiB\" or \"512 KiB\"")
    m = _QUANTITY.match(value)
    if not m:
        raise UnitParseError(f"{value!r} is not a quantity like \"8 GiB\"")
    number, unit = m.groups()
    factor = UNITS.get(unit.upper())
    if factor is None:
        raise UnitParseError(f"{value!r}: unknown unit '{unit}' (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)")
    return int(float(number) * factor)


def format_bytes(n: float) -> str:
    """Binary units, as memories are sold: 8589934592 -> '8.0 GiB', 135_449_140 -> '129.2 MiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def bytes_and_human(n: int) -> str:
    """'135,449,140 B (129.2 MiB)': exact figure for the record, rounded one for people."""
    return f"{n:,} B ({format_bytes(n)})"
