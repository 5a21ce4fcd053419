"""Device readings: CPU and memory utilization, agent RSS, temperature.

Read from /proc and /sys on Linux (every Pi, Jetson and Android device) so a device install
needs no psutil; elsewhere psutil is used when present, and a reading that cannot be taken is
``None`` (sent as JSON null) rather than a made-up zero.
"""

from __future__ import annotations

import glob
import os
from typing import Any

from . import schema


class SystemSampler:
    """Call :meth:`sample` once per interval; CPU utilization is over the time since the last call."""

    def __init__(self) -> None:
        self._last_cpu = _cpu_times()

    def sample(self) -> dict[str, Any]:
        now = _cpu_times()
        cpu = None
        if now and self._last_cpu:
            busy = now[0] - self._last_cpu[0]
            total = now[1] - self._last_cpu[1]
            cpu = round(busy / total, 4) if total > 0 else 0.0
        self._last_cpu = now
        used, util = _memory()
        return {schema.CPU: cpu, schema.MEMORY_USAGE: used, schema.MEMORY_UTIL: util,
                schema.PROCESS_MEMORY: _rss(), schema.TEMPERATURE: temperature_c()}


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies since boot, from the first line of /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user/nice
    return total - idle, total


def _memory() -> tuple[int | None, float | None]:
    try:
        info = {}
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                info[key] = int(rest.split()[0]) * 1024
        total, avail = info["MemTotal"], info.get("MemAvailable", info.get("MemFree", 0))
        return total - avail, round((total - avail) / total, 4)
    except (OSError, ValueError, KeyError, ZeroDivisionError):
        pass
    try:  # pragma: no cover - non-Linux hosts
        import psutil

        vm = psutil.virtual_memory()
        return int(vm.used), round(vm.percent / 100, 4)
    except Exception:  # pragma: no cover
        return None, None


def _rss() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # pragma: no cover
        return None


def temperature_c() -> float | None:
    """Hottest thermal zone in degrees Celsius, or None where the device exposes none."""
    best = None
    for path in glob.glob("/sys/class/thermal/thermal_zone*/temp"):
        try:
            with open(path) as f:
                value = int(f.read().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        if -50.0 < value < 200.0:  # ignore zones that report garbage
            best = value if best is None else max(best, value)
    return round(best, 1) if best is not None else None
