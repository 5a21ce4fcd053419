"""The agent's sending state over its on-disk queue: what is on the wire, what waits for a collector.

A message leaves the :class:`~.buffer.DiskQueue` only when a **collector** says it has it
(end to end), not when the broker says PUBACK: a broker answers PUBACK 0 as soon as *any*
subscriber matched, e.g. a ``fleet status`` live view, while after a broker restart no
collector may be subscribed yet (Mosquitto 2.0 does not restore shared subscriptions), and a
broker killed between two persistence snapshots forgets what it had acknowledged. So:

::

    queue row ──publish──> in flight ──PUBACK 0──> awaiting ──collector ack (seq)──> deleted
                  ▲          │ no PUBACK in resend_after_s      │ a later-sent message was acked
                  │          │ PUBACK 16 (nobody subscribed)    │ while this one was not (gap), or
                  └──────────┴────────── resend <───────────────┘ nothing acked for a while (probe)

* **Gap**: collectors ack per device after each commit; an ack for a message sent at time T
  means every message sent before ``T - ack_grace_s`` that is still not acked was lost in
  between, so it is sent again (the store dedupes on (fleet, device, seq)).
* **Probe**: while messages await acks and none has come for ``probe_after_s`` (doubling), only
  the *oldest* one is sent again; when a collector takes it, its ack starts the gap rule for
  the rest. A long collector outage therefore costs one message per probe, not a flood.
* **Backoff per message**: each resend of the same row waits longer (``resend_after_s``
  doubling, at most an hour), so a message no collector ever accepts cannot loop.

With ``end_to_end=False`` a broker PUBACK 0 deletes the row (for collectors that do not ack).
"""

from __future__ import annotations

import logging
from typing import Callable

from .buffer import DiskQueue

log = logging.getLogger("edgeslm.agent")

NO_MATCHING_SUBSCRIBERS = 16  # MQTT v5 PUBACK reason: accepted, but nobody was subscribed -> dropped
MAX_BACKOFF_S = 3600.0


class Outbox:
    """Single-threaded: the agent's sender thread calls every method (callbacks only queue events)."""

    def __init__(self, queue: DiskQueue, publish: Callable[[str, bytes], tuple[int, int]], *, window: int = 200,
                 resend_after_s: float = 30.0, unrouted_retry_s: tuple[float, float] = (1.0, 10.0),
                 end_to_end: bool = True, ack_grace_s: float = 5.0, probe_after_s: tuple[float, float] = (30.0, 600.0),
                 where: str = ""):
        self.queue = queue
        self.publish = publish  # (topic, payload) -> (paho rc, mid)
        self.window = window
        self.resend_after_s = resend_after_s
        self.unrouted_retry_s = unrouted_retry_s
        self.end_to_end = end_to_end
        self.ack_grace_s = ack_grace_s
        self.probe_after_s = probe_after_s
        self.where = where  # broker URL and topic, for log lines
        self.acked = 0  # broker PUBACKs with success
        self.delivered = 0  # rows a collector acknowledged (end to end)
        self.rejected = 0  # refused by the broker (e.g. ACL, reason 135): not retried
        self.unrouted = 0  # PUBACK 16: nobody subscribed, kept and sent again
        self.resent = 0  # rows published more than once
        self._inflight: dict[int, tuple[int, float]] = {}  # mid -> (row, sent at)
        self._awaiting: dict[int, float] = {}  # row -> sent at (broker has it, no collector ack yet)
        self._resend: set[int] = set()
        self._tries: dict[int, tuple[int, float]] = {}  # row -> (resends so far, not before)
        self._cursor = 0  # highest row id published at least once (new rows come after it)
        self._hold_until = 0.0  # after PUBACK 16: send nothing before this
        self._unrouted_wait = unrouted_retry_s[0]
        self._last_progress: float | None = None  # last collector ack (or probe)
        self._probe_wait = probe_after_s[0]

    @property
    def awaiting(self) -> int:
        """Rows the broker took that no collector has confirmed yet."""
        return len(self._awaiting)

    # -- events ---------------------------------------------------------------------------
    def puback(self, mid: int, code: int, now: float) -> None:
        entry = self._inflight.pop(mid, None)
        if entry is None:
            return  # the status message, or a PUBACK for a message already given up on
        row, sent = entry
        if code == NO_MATCHING_SUBSCRIBERS:
            self._unrouted(row, now)
        elif code < 128:
            self.acked += 1
            self._hold_until, self._unrouted_wait = 0.0, self.unrouted_retry_s[0]
            if self.end_to_end:
                self._awaiting[row] = sent
                if self._last_progress is None:
                    self._last_progress = now
            else:
                self._forget([row])
                self.queue.remove([row])
        else:
            self.rejected += 1
            log.warning("broker refused a telemetry message (reason %d, not retried)", code)
            self._forget([row])
            self.queue.remove([row])

    def collector_acked(self, ranges: list[tuple[int, int]], now: float) -> None:
        """A collector holds these sequence numbers: delete them; resend what was lost before them."""
        rows = self.queue.remove_seqs(ranges)
        if not rows:
            return
        newest = max((self._awaiting.get(r, 0.0) for r in rows), default=0.0)
        self.delivered += len(rows)
        self._forget(rows)
        self._last_progress, self._probe_wait = now, self.probe_after_s[0]
        if newest:
            lost = [r for r, sent in self._awaiting.items() if sent < newest - self.ack_grace_s]
            self._schedule(lost, now)

    def reconnected(self, now: float) -> None:
        """Paho sends its in-flight messages again itself on reconnect: restart their clocks."""
        self._inflight = {mid: (row, now) for mid, (row, _) in self._inflight.items()}

    # -- sending --------------------------------------------------------------------------
    def pump(self, now: float) -> None:
        """Publish what is due, within the in-flight window."""
        if now < self._hold_until:
            return
        stale = [mid for mid, (_, t) in self._inflight.items() if now - t > self.resend_after_s]
        if stale:  # lost PUBACKs: send those rows again
            self._schedule([self._inflight.pop(mid)[0] for mid in stale], now)
        self._probe(now)
        room = self.window - len(self._inflight)
        if room > 0 and self._resend:
            due = sorted(r for r in self._resend if self._tries.get(r, (0, 0.0))[1] <= now)[:room]
            if due:
                found = self.queue.rows(due)
                self._resend.difference_update(due)
                for row in set(due) - {r for r, _, _ in found}:  # no longer queued: acked meanwhile
                    self._tries.pop(row, None)
                room -= self._send(found, now, again=True)
        if room > 0:
            rows = self.queue.peek(self._cursor, room)
            self._send(rows, now, again=False)

    def _send(self, rows: list[tuple[int, str, bytes]], now: float, again: bool) -> int:
        sent = 0
        for row, topic, payload in rows:
            rc, mid = self.publish(topic, payload)
            if rc not in (0, 4):  # 4 = not connected: paho keeps the message and sends it on reconnect
                if again:
                    self._resend.add(row)
                break
            self._inflight[mid] = (row, now)
            self._cursor = max(self._cursor, row)
            self.resent += again
            sent += 1
        if again:  # keep the ones not reached this time
            self._resend.update(r for r, _, _ in rows[sent:])
        return sent

    def _schedule(self, rows: list[int], now: float, now_please: bool = False) -> None:
        """Send these rows again: the first resend at once, later ones each after a doubling wait
        (``now_please``: at once anyway; the probe has its own doubling interval)."""
        for row in rows:
            self._awaiting.pop(row, None)
            n, _ = self._tries.get(row, (0, 0.0))
            wait = 0.0 if n == 0 or now_please else min(self.resend_after_s * 2 ** (n - 1), MAX_BACKOFF_S)
            self._tries[row] = (n + 1, now + wait)
            self._resend.add(row)

    def _probe(self, now: float) -> None:
        if not self._awaiting or self._last_progress is None or now - self._last_progress < self._probe_wait:
            return
        oldest = min(self._awaiting)
        log.info("no collector ack for %.0f s: sending the oldest unconfirmed message again", now - self._last_progress)
        self._schedule([oldest], now, now_please=True)
        self._last_progress = now
        self._probe_wait = min(self._probe_wait * 2, self.probe_after_s[1])

    def _unrouted(self, row: int, now: float) -> None:
        self.unrouted += 1
        self._resend.add(row)
        if self._hold_until <= now:  # one hold (and one log line) per burst of such PUBACKs
            log.warning("broker %s has no subscriber (collector not subscribed yet?): keeping %d message(s) "
                        "buffered, resending in %.0f s", self.where, len(self.queue), self._unrouted_wait)
            self._hold_until = now + self._unrouted_wait
            self._unrouted_wait = min(self._unrouted_wait * 2, self.unrouted_retry_s[1])

    def _forget(self, rows: list[int]) -> None:
        gone = set(rows)
        for row in gone:
            self._awaiting.pop(row, None)
            self._tries.pop(row, None)
        self._resend.difference_update(gone)
        if any(r in gone for r, _ in self._inflight.values()):
            self._inflight = {mid: e for mid, e in self._inflight.items() if e[0] not in gone}
