"""Backend option values as they arrive from the command line (``--option stateful=false``).

One reading of a yes/no value for every exporter and engine, so ``true``/``1``/``yes``/``on``
mean the same everywhere and a typo (``ture``) is refused instead of silently read as false.
"""

from __future__ import annotations

from typing import Any

_BOOLS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def flag(value: Any, name: str = "option", error: type[Exception] = ValueError) -> bool:
    """``value`` as a bool: strings by :data:`_BOOLS` (any case), anything else by truth value;
    an unknown string raises ``error`` naming the option."""
    if not isinstance(value, str):
        return bool(value)
    try:
        return _BOOLS[value.strip().lower()]
    except KeyError:
        raise error(f"option {name}={value!r}: expected one of {', '.join(_BOOLS)}") from None
