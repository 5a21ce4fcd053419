"""PostgreSQL store (psycopg 3): for fleets one SQLite file cannot take, or many collectors.

Telemetry rows arrive by ``COPY`` into a temporary staging table and move with one
``INSERT ... SELECT ... ON CONFLICT DO NOTHING``: COPY is several times faster than
row-by-row inserts (FINDINGS: ~65-100k rows/s) and the ON CONFLICT keeps it idempotent on
(fleet, device, seq) when the broker redelivers. ``schema=`` isolates a deployment (and tests).
A connection lost to a database restart is opened again by :meth:`healthy`, which the
collector calls before it retries a batch.
"""

from __future__ import annotations

import re
import threading

from ...errors import TelemetryError
from .base import TELEMETRY_COLUMNS
from .sql import SQLStore

_TYPES = {"real": "DOUBLE PRECISION", "blob": "BYTEA", "serial": "BIGSERIAL PRIMARY KEY"}
CONNECT_TIMEOUT_S = 10  # an unreachable server is an error after this, not a hang


class PostgresStore(SQLStore):
    mark = "%s"

    def __init__(self, dsn: str, schema: str | None = None, create: bool = True):
        try:
            import psycopg
        except ImportError:
            raise TelemetryError("PostgreSQL needs psycopg: pip install 'edgeslm[postgres]'") from None
        if schema is not None and not re.match(r"^[a-z_][a-z0-9_]{0,62}$", schema):
            raise TelemetryError(f"schema name {schema!r} must be lower-case letters, digits and _")
        self.dsn = dsn
        self.schema = schema
        self.transient_errors = (psycopg.OperationalError, psycopg.InterfaceError)
        self._lock = threading.RLock()  # one connection: reads and writes take turns
        try:
            self.conn = self._connect(create)
            with self.conn.cursor() as cur:
                self._prepare(cur, create, _TYPES, f"{_redact(dsn)}{f' schema {schema}' if schema else ''}")
            self.conn.commit()
        except psycopg.Error as exc:
            raise TelemetryError(f"cannot open the PostgreSQL store {_redact(dsn)}: {str(exc).strip()}") from None
        self._statements = self._sql()

    def _connect(self, create: bool = False):
        import psycopg

        conn = psycopg.connect(self.dsn, connect_timeout=CONNECT_TIMEOUT_S)
        if self.schema:
            with conn.cursor() as cur:
                if create:
                    cur.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
                cur.execute(f"SET search_path TO {self.schema}")
            conn.commit()
        return conn

    def healthy(self) -> bool:
        with self._lock:
            if self.conn.closed or self.conn.broken:
                try:
                    self.conn = self._connect()
                except Exception:
                    return False
        return super().healthy()

    def _existing_tables(self, cur) -> set[str]:
        cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")
        return {r[0] for r in cur.fetchall()}

    def _existing_columns(self, cur, table: str) -> set[str]:
        cur.execute("SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND table_name = %s", (table,))
        return {r[0] for r in cur.fetchall()}

    def _insert_telemetry(self, cur, rows: list[tuple]) -> int:
        if not rows:
            return 0
        cols = ", ".join(TELEMETRY_COLUMNS)
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS telemetry_stage (LIKE telemetry INCLUDING DEFAULTS) "
                    "ON COMMIT DELETE ROWS")
        with cur.copy(f"COPY telemetry_stage ({cols}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        # DISTINCT ON: a batch may itself hold a redelivered duplicate
        cur.execute(f"INSERT INTO telemetry ({cols}) SELECT DISTINCT ON (fleet, device, seq) {cols} "
                    "FROM telemetry_stage ON CONFLICT (fleet, device, seq) DO NOTHING")
        return max(cur.rowcount, 0)


def _redact(dsn: str) -> str:
    return re.sub(r"://([^:@/]+):[^@/]*@", r"://\1:***@", dsn)
