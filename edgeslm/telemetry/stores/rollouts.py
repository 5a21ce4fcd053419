"""Rollouts in the store: one row per rollout, one per (rollout, device); the same in SQL and in memory.

A rollout's row holds its spec (bundle, stages, thresholds, health reference) as JSON and its
state; ``rollout_devices`` holds each device's stage and newest state. The controller writes
both after every change, so a controller that restarts (or another one) carries on from the
store: see :mod:`edgeslm.telemetry.ota.controller`.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

DDL = """
CREATE TABLE IF NOT EXISTS rollouts (
  id TEXT PRIMARY KEY, fleet TEXT NOT NULL, state TEXT NOT NULL, stage BIGINT NOT NULL, spec TEXT NOT NULL,
  detail TEXT NOT NULL, created_at {real} NOT NULL, updated_at {real} NOT NULL, unwind_at {real});
CREATE TABLE IF NOT EXISTS rollout_devices (
  rollout TEXT NOT NULL, device TEXT NOT NULL, stage BIGINT NOT NULL, state TEXT NOT NULL, detail TEXT NOT NULL,
  updated_at {real} NOT NULL, PRIMARY KEY (rollout, device));
"""
ROLLOUT_COLUMNS = ("id", "fleet", "state", "stage", "spec", "detail", "created_at", "updated_at", "unwind_at")
DEVICE_COLUMNS = ("rollout", "device", "stage", "state", "detail", "updated_at")


def _rollout(row: tuple) -> dict[str, Any]:
    r = dict(zip(ROLLOUT_COLUMNS, row))
    r["spec"] = json.loads(r["spec"])
    r["stage"] = int(r["stage"])
    return r


class SQLRollouts:
    """Mixed into SQLStore: needs ``_query`` and ``_execute`` (one transaction) of the store."""

    def save_rollout(self, r: dict[str, Any]) -> None:
        row = (r["id"], r["fleet"], r["state"], int(r["stage"]), json.dumps(r["spec"], sort_keys=True),
               r.get("detail") or "", r["created_at"], time.time(), r.get("unwind_at"))
        self._execute("INSERT INTO rollouts (id, fleet, state, stage, spec, detail, created_at, updated_at, unwind_at) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET state=excluded.state, "
                      "stage=excluded.stage, spec=excluded.spec, detail=excluded.detail, "
                      "updated_at=excluded.updated_at, unwind_at=excluded.unwind_at", [row])

    def rollout(self, rollout_id: str) -> dict[str, Any] | None:
        rows = self._query(f"SELECT {', '.join(ROLLOUT_COLUMNS)} FROM rollouts WHERE id = ?", (rollout_id,))
        return _rollout(rows[0]) if rows else None

    def rollouts(self, fleet: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        where, params = ("WHERE fleet = ?", (fleet,)) if fleet else ("", ())
        try:
            rows = self._query(f"SELECT {', '.join(ROLLOUT_COLUMNS)} FROM rollouts {where} "
                               "ORDER BY created_at DESC LIMIT ?", params + (int(limit),))
        except Exception:  # a store made before rollouts existed (opened read-only)
            return []
        return [_rollout(r) for r in rows]

    def save_rollout_devices(self, rollout_id: str, rows: list[tuple[str, int, str, str]]) -> None:
        """Upsert (device, stage, state, detail) rows of one rollout."""
        now = time.time()
        self._execute("INSERT INTO rollout_devices (rollout, device, stage, state, detail, updated_at) "
                      "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (rollout, device) DO UPDATE SET stage=excluded.stage, "
                      "state=excluded.state, detail=excluded.detail, updated_at=excluded.updated_at",
                      [(rollout_id, d, int(st), state, detail, now) for d, st, state, detail in rows])

    def rollout_devices(self, rollout_id: str) -> list[dict[str, Any]]:
        rows = self._query(f"SELECT {', '.join(DEVICE_COLUMNS)} FROM rollout_devices WHERE rollout = ? "
                           "ORDER BY stage, device", (rollout_id,))
        return [dict(zip(DEVICE_COLUMNS, r), stage=int(r[2])) for r in rows]

    def ota_events(self, fleet: str, after: float, limit: int = 10000) -> list[dict[str, Any]]:
        """Device ``ota.*`` events received after ``after`` (collector time), oldest first."""
        rows = self._query("SELECT id, device, received_at, name, message, attributes FROM events "
                           "WHERE fleet = ? AND received_at > ? AND name LIKE ? ORDER BY received_at LIMIT ?",
                           (fleet, float(after), "ota.%", int(limit)))  # (the pattern as a parameter: psycopg
        # reads a literal % in the SQL text as a placeholder)
        return [{"id": i, "device": d, "received_at": t, "name": n, "message": m, "attributes": json.loads(a or "{}")}
                for i, d, t, n, m, a in rows]


class MemoryRollouts:
    """The same contract in plain dicts (MemoryStore)."""

    def _rollout_init(self) -> None:
        self._rlock = threading.Lock()
        self._rollouts: dict[str, dict[str, Any]] = {}
        self._rdevices: dict[tuple[str, str], dict[str, Any]] = {}

    def save_rollout(self, r: dict[str, Any]) -> None:
        with self._rlock:
            self._rollouts[r["id"]] = json.loads(json.dumps(dict(r, updated_at=time.time())))

    def rollout(self, rollout_id: str) -> dict[str, Any] | None:
        with self._rlock:
            r = self._rollouts.get(rollout_id)
            return json.loads(json.dumps(r)) if r else None

    def rollouts(self, fleet: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        with self._rlock:
            rows = [json.loads(json.dumps(r)) for r in self._rollouts.values() if not fleet or r["fleet"] == fleet]
        return sorted(rows, key=lambda r: r["created_at"], reverse=True)[:limit]

    def save_rollout_devices(self, rollout_id: str, rows: list[tuple[str, int, str, str]]) -> None:
        now = time.time()
        with self._rlock:
            for d, st, state, detail in rows:
                self._rdevices[(rollout_id, d)] = {"rollout": rollout_id, "device": d, "stage": int(st),
                                                   "state": state, "detail": detail, "updated_at": now}

    def rollout_devices(self, rollout_id: str) -> list[dict[str, Any]]:
        with self._rlock:
            rows = [dict(v) for (r, _), v in self._rdevices.items() if r == rollout_id]
        return sorted(rows, key=lambda v: (v["stage"], v["device"]))

    def ota_events(self, fleet: str, after: float, limit: int = 10000) -> list[dict[str, Any]]:
        with self._lock:
            rows = [e for e in self._events.values() if e["fleet"] == fleet and e["received_at"] > after
                    and e["name"].startswith("ota.")]
        rows.sort(key=lambda e: e["received_at"])
        return [{k: e[k] for k in ("id", "device", "received_at", "name", "message", "attributes")} for e in rows[:limit]]
