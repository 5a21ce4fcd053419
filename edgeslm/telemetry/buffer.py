"""A bounded, on-disk FIFO for messages the broker has not acknowledged yet.

Store-and-forward: every telemetry message is written here first and deleted only when the
broker's PUBACK arrives, so an unreachable broker, a dropped link or an agent restart loses
nothing up to ``max_messages``. Beyond the bound the *oldest* messages are dropped (the
freshest state is the most useful after a long outage) and counted; the count is persisted
and reported in every telemetry message (``agent.dropped``), and the gap shows in ``seq``.

SQLite (WAL) is the storage: one file, crash-safe transactions, already on every device.
The per-device sequence number lives in the same file and is taken in the same transaction
as the insert, so numbers stay monotonic across restarts and are never reused.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Callable

from ..errors import TelemetryError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL,
                                  seq INTEGER);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class DiskQueue:
    """FIFO of (topic, payload) rows; thread-safe; ``path=":memory:"`` for tests that need no disk."""

    def __init__(self, path: str | Path, max_messages: int = 100_000):
        if max_messages < 1:
            raise TelemetryError("the buffer bound (max_messages) must be at least 1")
        self.path = str(path)
        self.max_messages = max_messages
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # durable across a process crash
            self._db.executescript(_SCHEMA)
            if "seq" not in {r[1] for r in self._db.execute("PRAGMA table_info(queue)")}:  # a file from 0.1
                self._db.execute("ALTER TABLE queue ADD COLUMN seq INTEGER")
                # its rows carry their seq in the payload (events: attributes.seq); collectors ack by seq
                self._db.execute("UPDATE queue SET seq = coalesce(json_extract(CAST(payload AS TEXT), '$.seq'), "
                                 "json_extract(CAST(payload AS TEXT), '$.attributes.seq')) WHERE seq IS NULL")
            self._db.execute("CREATE INDEX IF NOT EXISTS queue_seq ON queue (seq)")
        except (sqlite3.Error, OSError) as exc:
            raise TelemetryError(f"cannot open the telemetry buffer {self.path}: {exc}") from None
        self._lock = threading.Lock()
        self._count = self._db.execute("SELECT count(*) FROM queue").fetchone()[0]

    # -- meta counters (persisted) ---------------------------------------------------------
    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _bump(self, key: str, by: int) -> int:
        value = self._meta(key) + by
        self._db.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                         (key, value))
        return value

    @property
    def dropped(self) -> int:
        """Messages discarded because the buffer was full (since the file was created)."""
        with self._lock:
            return self._meta("dropped")

    @property
    def last_seq(self) -> int:
        """The last sequence number handed out; -1 before the first."""
        with self._lock:
            return self._meta("next_seq") - 1

    def __len__(self) -> int:
        return self._count

    # -- queue operations ------------------------------------------------------------------
    def put(self, topic: str, make_payload: Callable[[int], bytes]) -> int:
        """Take the next sequence number, build the payload with it, append; return the seq.

        If the queue is over its bound afterwards, the oldest rows are deleted and counted.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = self._meta("next_seq")
                self._bump("next_seq", 1)
                self._db.execute("INSERT INTO queue(topic, payload, seq) VALUES(?, ?, ?)",
                                 (topic, make_payload(seq), seq))
                self._count += 1
                over = self._count - self.max_messages
                if over > 0:
                    self._db.execute("DELETE FROM queue WHERE id IN (SELECT id FROM queue ORDER BY id LIMIT ?)", (over,))
                    self._bump("dropped", over)
                    self._count -= over
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return seq

    def peek(self, after_id: int, limit: int) -> list[tuple[int, str, bytes]]:
        """Up to ``limit`` rows with id > ``after_id``, oldest first: (id, topic, payload)."""
        with self._lock:
            return [(int(i), t, bytes(p)) for i, t, p in self._db.execute(
                "SELECT id, topic, payload FROM queue WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))]

    def rows(self, ids: list[int]) -> list[tuple[int, str, bytes]]:
        """The rows with these ids that are still queued, oldest first."""
        out: list[tuple[int, str, bytes]] = []
        with self._lock:
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                out += [(int(i), t, bytes(p)) for i, t, p in self._db.execute(
                    f"SELECT id, topic, payload FROM queue WHERE id IN ({','.join('?' * len(chunk))})", chunk)]
        return sorted(out)

    def remove_seqs(self, ranges: list[tuple[int, int]]) -> list[int]:
        """Delete the rows whose seq lies in one of the [first, last] ranges; return their ids."""
        gone: list[int] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for first, last in ranges:
                    ids = [r[0] for r in self._db.execute("SELECT id FROM queue WHERE seq BETWEEN ? AND ?",
                                                         (first, last))]
                    if ids:
                        self._db.execute("DELETE FROM queue WHERE seq BETWEEN ? AND ?", (first, last))
                        gone += ids
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._count -= len(gone)
        return gone

    def remove(self, ids: list[int]) -> None:
        """Delete acknowledged rows (ids already gone are ignored)."""
        if not ids:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            n = 0
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                cur = self._db.execute(f"DELETE FROM queue WHERE id IN ({','.join('?' * len(chunk))})", chunk)
                n += cur.rowcount
            self._db.execute("COMMIT")
            self._count -= n

    def close(self) -> None:
        with self._lock:
            self._db.close()
