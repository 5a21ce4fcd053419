"""SQLite store (the default): one file in WAL mode, batched transactions.

WAL lets ``edgeslm fleet status`` read while the collector writes; ``synchronous=NORMAL``
keeps every committed batch across a collector crash (only an OS crash can lose the last
one, and the broker redelivers what the collector had not acknowledged). The collector
acknowledges a message to the broker only after its batch is committed.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from ...errors import TelemetryError
from .sql import DDL, SQLStore


class SQLiteStore(SQLStore):
    mark = "?"

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._lock = threading.RLock()  # one connection: reads and writes take turns
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.executescript(DDL.format(real="REAL", blob="BLOB", serial="INTEGER PRIMARY KEY AUTOINCREMENT"))
            self.conn.commit()
        except sqlite3.Error as exc:
            raise TelemetryError(f"cannot open the SQLite store {self.path}: {exc}") from exc
        self._statements = self._sql()
