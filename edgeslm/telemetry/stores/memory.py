"""MemoryStore: the in-process fake of the store contract (tests, live ``fleet status --broker``).

Same semantics as the SQL stores — idempotent on (fleet, device, seq), newest seq wins on
the device row, dead letters counted by reason — in plain dicts.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from .rollouts import MemoryRollouts
from .base import (DEVICE_COLUMNS, EVENT_COLUMNS, TELEMETRY_COLUMNS, Batch, DeadLetter, DeviceRow, Store, device_row,
                   event_row, telemetry_row)


class MemoryStore(MemoryRollouts, Store):
    def __init__(self) -> None:
        self._rollout_init()
        self._lock = threading.Lock()
        self.telemetry: dict[tuple[str, str, int], dict[str, Any]] = {}
        self._devices: dict[tuple[str, str], DeviceRow] = {}
        self._events: dict[str, dict[str, Any]] = {}
        self.dead: list[DeadLetter] = []
        self.writes = 0  # batches written; tests use it to check batching

    def write(self, batch: Batch) -> int:
        now = time.time()
        new = 0
        with self._lock:
            self.writes += 1
            for msg in batch.telemetry:
                key = (msg.fleet, msg.device, msg.seq)
                if key in self.telemetry:
                    continue
                self.telemetry[key] = dict(zip(TELEMETRY_COLUMNS, telemetry_row(msg, now)))
                new += 1
                row = self._device(msg.fleet, msg.device)
                if row.last_seq is None or msg.seq > row.last_seq:
                    for col, value in zip(DEVICE_COLUMNS[2:], device_row(msg, now)[2:]):
                        setattr(row, col, value)
            for msg in batch.status:  # newest by broker arrival, not by the device's clock
                row = self._device(msg.fleet, msg.device)
                received = msg.received_at or now
                if row.status_received_at is None or received >= row.status_received_at:
                    row.online, row.reason = bool(msg.body["online"]), msg.body.get("reason")
                    row.status_ts, row.status_received_at = msg.ts, received
            for msg in batch.events:
                e = dict(zip(EVENT_COLUMNS, event_row(msg, now)))
                e["attributes"] = msg.body.get("attributes") or {}
                self._events.setdefault(e["id"], e)
            self.dead.extend(batch.dead)
        return new

    def _device(self, fleet: str, device: str) -> DeviceRow:
        return self._devices.setdefault((fleet, device), DeviceRow(fleet=fleet, device=device))

    def devices(self, fleet: str | None = None) -> list[DeviceRow]:
        with self._lock:
            return [DeviceRow(**r.to_dict()) for k, r in sorted(self._devices.items()) if not fleet or k[0] == fleet]

    def history(self, fleet: str | None, device: str, limit: int = 50) -> list[dict[str, Any]]:
        with self._lock:
            rows = [{k: v for k, v in r.items() if k != "payload"} for (f, d, _), r in self.telemetry.items()
                    if d == device and (not fleet or f == fleet)]
        return sorted(rows, key=lambda r: r["seq"], reverse=True)[:limit]

    def events(self, fleet: str | None = None, device: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        with self._lock:
            rows = [e for e in self._events.values()
                    if (not fleet or e["fleet"] == fleet) and (not device or e["device"] == device)]
        return sorted(rows, key=lambda e: e["ts"], reverse=True)[:limit]

    def dead_letter_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(Counter(d.reason for d in self.dead))

    def telemetry_count(self, fleet: str | None = None) -> int:
        with self._lock:
            return sum(1 for k in self.telemetry if not fleet or k[0] == fleet)
