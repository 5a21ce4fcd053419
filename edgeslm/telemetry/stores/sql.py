"""SQL shared by the SQLite and PostgreSQL stores (the dialects differ only in a few type names)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from .rollouts import DDL as ROLLOUT_DDL
from .rollouts import SQLRollouts
from .base import (DEVICE_COLUMNS, EVENT_COLUMNS, TELEMETRY_COLUMNS, Batch, DeviceRow, Store, device_row, event_row,
                   newest_per_device, newest_status, telemetry_row)

DDL = """
CREATE TABLE IF NOT EXISTS telemetry (
  fleet TEXT NOT NULL, device TEXT NOT NULL, seq BIGINT NOT NULL, ts {real} NOT NULL, received_at {real} NOT NULL,
  model_id TEXT, model_hash TEXT, requests BIGINT, errors BIGINT,
  ttft_p50_s {real}, ttft_p95_s {real}, ttft_max_s {real}, duration_p95_s {real}, tpot_p95_s {real}, tok_s_p50 {real},
  input_tokens BIGINT, output_tokens BIGINT, cpu {real}, memory_util {real}, temperature {real}, dropped BIGINT,
  payload TEXT NOT NULL,
  PRIMARY KEY (fleet, device, seq));
CREATE TABLE IF NOT EXISTS devices (
  fleet TEXT NOT NULL, device TEXT NOT NULL, online BOOLEAN, reason TEXT, status_ts {real},
  last_seen {real}, last_seq BIGINT, model_id TEXT, model_hash TEXT, runtime TEXT, requests BIGINT, errors BIGINT,
  ttft_p95_s {real}, duration_p95_s {real}, tok_s_p50 {real}, cpu {real}, temperature {real},
  last_received_at {real}, status_received_at {real},
  PRIMARY KEY (fleet, device));
CREATE TABLE IF NOT EXISTS events (
  id TEXT PRIMARY KEY, fleet TEXT NOT NULL, device TEXT NOT NULL, ts {real} NOT NULL, received_at {real} NOT NULL,
  name TEXT NOT NULL, severity TEXT NOT NULL, source TEXT NOT NULL, message TEXT NOT NULL, attributes TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
  id {serial}, received_at {real} NOT NULL, topic TEXT NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL,
  size BIGINT NOT NULL, payload {blob});
"""
# (no index on (fleet, device, ts): no query used it, and it cost ~20 % of the insert's CPU; per-device
# reads go by the primary key (fleet, device, seq). Stores made before keep theirs.)
#: columns added after the first release: (table, column, type key); opening a store adds them
ADDED_COLUMNS = (("devices", "last_received_at", "real"), ("devices", "status_received_at", "real"))
TABLES = ("telemetry", "devices", "events", "dead_letters")


def _cols(cols: tuple[str, ...]) -> str:
    return ", ".join(cols)


def _marks(n: int, mark: str) -> str:
    return ", ".join([mark] * n)


class SQLStore(SQLRollouts, Store):
    """A DB-API store; subclasses set ``mark`` (placeholder), open ``self.conn`` and may override inserts.

    Thread-safe: one connection, so a read (``fleet status``, a test, a dashboard thread) and the
    collector's batch write are serialized by ``_lock``. Without it a read on the same connection
    runs inside the writer's open transaction and its ``commit()`` ends that transaction half way:
    PostgreSQL then empties the ``ON COMMIT DELETE ROWS`` staging table between ``COPY`` and
    ``INSERT ... SELECT``, and the batch's telemetry is silently lost although it gets acknowledged.
    """

    mark = "?"
    _lock: threading.RLock  # subclasses create it before opening ``conn``

    # -- statements -------------------------------------------------------------------------
    def _sql(self) -> dict[str, str]:
        m = self.mark
        dev_updates = ", ".join(f"{c}=excluded.{c}" for c in DEVICE_COLUMNS[2:])
        return {
            "telemetry": f"INSERT INTO telemetry ({_cols(TELEMETRY_COLUMNS)}) VALUES ({_marks(len(TELEMETRY_COLUMNS), m)}) "
                         "ON CONFLICT (fleet, device, seq) DO NOTHING",
            "device": f"INSERT INTO devices ({_cols(DEVICE_COLUMNS)}) VALUES ({_marks(len(DEVICE_COLUMNS), m)}) "
                      f"ON CONFLICT (fleet, device) DO UPDATE SET {dev_updates} "
                      "WHERE devices.last_seq IS NULL OR excluded.last_seq > devices.last_seq",
            # newest by broker arrival (collector receive time), never by the device's own clock
            "status": f"INSERT INTO devices (fleet, device, online, reason, status_ts, status_received_at) "
                      f"VALUES ({_marks(6, m)}) "
                      "ON CONFLICT (fleet, device) DO UPDATE SET online=excluded.online, reason=excluded.reason, "
                      "status_ts=excluded.status_ts, status_received_at=excluded.status_received_at "
                      "WHERE devices.status_received_at IS NULL "
                      "OR excluded.status_received_at >= devices.status_received_at",
            "event": f"INSERT INTO events ({_cols(EVENT_COLUMNS)}) VALUES ({_marks(len(EVENT_COLUMNS), m)}) "
                     "ON CONFLICT (id) DO NOTHING",
            "dead": "INSERT INTO dead_letters (received_at, topic, reason, detail, size, payload) "
                    f"VALUES ({_marks(6, m)})",
        }

    # -- writing ----------------------------------------------------------------------------
    def write(self, batch: Batch) -> int:
        with self._lock:
            return self._write(batch)

    def _write(self, batch: Batch) -> int:
        now = time.time()
        sql = self._statements
        cur = self.conn.cursor()
        try:
            new = self._insert_telemetry(cur, [telemetry_row(msg, now) for msg in batch.telemetry])
            if batch.telemetry:
                cur.executemany(sql["device"], [device_row(msg, now) for msg in newest_per_device(batch.telemetry)])
            if batch.status:
                cur.executemany(sql["status"], [(s.fleet, s.device, bool(s.body["online"]), s.body.get("reason"), s.ts,
                                                 s.received_at or now) for s in newest_status(batch.status)])
            if batch.events:
                cur.executemany(sql["event"], [event_row(e, now) for e in batch.events])
            if batch.dead:
                cur.executemany(sql["dead"], [(d.received_at, d.topic, d.reason, d.detail, d.size, d.payload)
                                              for d in batch.dead])
            self.conn.commit()
        except BaseException:
            self.conn.rollback()
            raise
        finally:
            cur.close()
        return new

    def _insert_telemetry(self, cur, rows: list[tuple]) -> int:
        if not rows:
            return 0
        cur.executemany(self._statements["telemetry"], rows)
        return max(cur.rowcount, 0)

    # -- health ---------------------------------------------------------------------------
    #: exception types that mean "the database is unavailable", not "this data is bad"
    transient_errors: tuple[type[BaseException], ...] = ()

    def healthy(self) -> bool:
        """True when a trivial query succeeds (a store that lost its connection reconnects here)."""
        try:
            self._query("SELECT 1")
            return True
        except Exception:
            return False

    def is_transient(self, exc: BaseException) -> bool:
        """Retry the whole batch later (True) or look for the message that caused ``exc`` (False)."""
        return isinstance(exc, self.transient_errors) or not self.healthy()

    # -- opening ----------------------------------------------------------------------------
    def _existing_tables(self, cur) -> set[str]:
        raise NotImplementedError

    def _existing_columns(self, cur, table: str) -> set[str]:
        raise NotImplementedError

    def _prepare(self, cur, create: bool, types: dict[str, str], where: str) -> None:
        """Create the tables (``create``) or require them; add columns newer releases use."""
        from ...errors import TelemetryError

        if create:
            for stmt in (DDL + ROLLOUT_DDL).format(**types).split(";"):
                if stmt.strip():
                    cur.execute(stmt)
        else:
            missing = [t for t in TABLES if t not in self._existing_tables(cur)]
            if missing:
                raise TelemetryError(f"{where} is not an edgeslm fleet store (no {', '.join(missing)} table); "
                                     "check --db, or let `edgeslm fleet collect --db ...` create it")
        for table, col, kind in ADDED_COLUMNS:
            if col not in self._existing_columns(cur, table):
                cur.execute(f"ALTER TABLE {table} ADD COLUMN {col} {types[kind]}")

    # -- reading ----------------------------------------------------------------------------
    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            cur = self.conn.cursor()
            try:
                cur.execute(sql.replace("?", self.mark), params)
                rows = cur.fetchall()
            finally:
                cur.close()
            self.conn.commit()  # end the read transaction so the next read sees new rows
            return rows

    def _execute(self, sql: str, rows: list[tuple]) -> None:
        """``sql`` for each of ``rows``, in one transaction."""
        with self._lock:
            cur = self.conn.cursor()
            try:
                cur.executemany(sql.replace("?", self.mark), rows)
                self.conn.commit()
            except BaseException:
                self.conn.rollback()
                raise
            finally:
                cur.close()

    def devices(self, fleet: str | None = None) -> list[DeviceRow]:
        cols = ("fleet", "device", "online", "reason", "status_ts", "status_received_at") + DEVICE_COLUMNS[2:]
        where, params = ("WHERE fleet = ?", (fleet,)) if fleet else ("", ())
        rows = self._query(f"SELECT {_cols(cols)} FROM devices {where} ORDER BY fleet, device", params)
        out = []
        for row in rows:
            d = dict(zip(cols, row))
            d["online"] = None if d["online"] is None else bool(d["online"])
            out.append(DeviceRow(**{k: v for k, v in d.items() if k in DeviceRow.__dataclass_fields__}))
        return out

    def history(self, fleet: str | None, device: str, limit: int = 50) -> list[dict[str, Any]]:
        cols = TELEMETRY_COLUMNS[:-1]
        where, params = ("fleet = ? AND device = ?", (fleet, device)) if fleet else ("device = ?", (device,))
        rows = self._query(f"SELECT {_cols(cols)} FROM telemetry WHERE {where} ORDER BY seq DESC LIMIT ?",
                           params + (int(limit),))
        return [dict(zip(cols, r)) for r in rows]

    def events(self, fleet: str | None = None, device: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        clauses, params = [], []
        if fleet:
            clauses.append("fleet = ?")
            params.append(fleet)
        if device:
            clauses.append("device = ?")
            params.append(device)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._query(f"SELECT {_cols(EVENT_COLUMNS)} FROM events {where} ORDER BY ts DESC LIMIT ?",
                           tuple(params) + (int(limit),))
        out = [dict(zip(EVENT_COLUMNS, r)) for r in rows]
        for e in out:
            e["attributes"] = json.loads(e["attributes"] or "{}")
        return out

    def dead_letter_counts(self) -> dict[str, int]:
        return {r: int(n) for r, n in self._query("SELECT reason, count(*) FROM dead_letters GROUP BY reason")}

    def telemetry_count(self, fleet: str | None = None) -> int:
        if fleet:
            return int(self._query("SELECT count(*) FROM telemetry WHERE fleet = ?", (fleet,))[0][0])
        return int(self._query("SELECT count(*) FROM telemetry")[0][0])

    def close(self) -> None:
        """Close the connection; does not wait more than a few seconds for a write stuck in the database."""
        locked = self._lock.acquire(timeout=5)
        try:
            self.conn.close()
        except Exception:  # pragma: no cover - already closed
            pass
        finally:
            if locked:
                self._lock.release()
