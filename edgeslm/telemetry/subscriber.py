"""The collector's MQTT v5 client: a persistent session, subscriptions, QoS 1 in bulk.

::

    socket ──recv_into (256 KiB)──> wire.split_packets ──list of (topic, payload, pid, qos, t)──> on_messages
    ack(batch) ──one sendall of all its PUBACKs──> socket          (only for the connection that delivered them)

One network thread connects (TLS, credentials, session expiry, receive maximum), subscribes,
keeps the connection alive (PINGREQ) and reconnects with backoff (1 s doubling to 10 s) while
the broker is away. Messages are handed over one *chunk* at a time (one callback per socket
read, not per message). A PUBACK is sent only when the collector says so (after its store
commit), and only on the connection the message came on: after a reconnect the broker
delivers unacknowledged messages of the session again, and acknowledging an old packet id on
the new connection could acknowledge a different message. The ``generation`` in each
delivered item says which connection it came on.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from typing import Callable

from . import wire
from .mqtt import BrokerConfig

log = logging.getLogger("edgeslm.collector")
READ_CHUNK = 256 * 1024
CONNACK_TIMEOUT_S = 10.0

CONNACK_REASONS = {0x80: "unspecified error", 0x84: "unsupported protocol version", 0x85: "client id not valid",
                   0x86: "bad user name or password", 0x87: "not authorized", 0x88: "server unavailable",
                   0x89: "server busy", 0x8A: "banned", 0x8C: "bad authentication method",
                   0x95: "packet too large", 0x97: "quota exceeded", 0x9F: "connection rate exceeded"}


class Subscriber:
    """Callbacks run on the network thread: ``on_connect(reason_code, text)``,
    ``on_subscribe(reason_codes)``, ``on_messages(items, generation)``, ``on_disconnect()``."""

    def __init__(self, broker: BrokerConfig, client_id: str, filters: list[tuple[str, int]], *,
                 clean_start: bool = False, session_expiry_s: int = 0, receive_maximum: int = 0,
                 on_connect: Callable[[int, str], None] | None = None,
                 on_subscribe: Callable[[list[int]], None] | None = None,
                 on_messages: Callable[[list, int], None] | None = None,
                 on_disconnect: Callable[[], None] | None = None, on_error: Callable[[BaseException], None] | None = None):
        self.broker = broker
        self.client_id = client_id
        self.filters = filters
        self.clean_start = clean_start
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = receive_maximum
        self.on_connect, self.on_subscribe, self.on_messages = on_connect, on_subscribe, on_messages
        self.on_disconnect, self.on_error = on_disconnect, on_error
        self.generation = 0  # connections made so far; items carry the one they arrived on
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_send = 0.0
        self._ping_sent: float | None = None
        self._next_pid = 0
        self._pending: dict[int, bytes] = {}  # our QoS 1 publishes awaiting the broker's PUBACK
        self.connected = False

    # -- public --------------------------------------------------------------------------
    def start(self) -> "Subscriber":
        self._thread = threading.Thread(target=self._run, name="edgeslm-collector-net", daemon=True)
        self._thread.start()
        return self

    def ack(self, packet_ids: list[int], generation: int) -> None:
        """PUBACK these packet ids if they came on the current connection (else the broker resends them)."""
        if packet_ids and generation == self.generation and self.connected:
            self._send(wire.pubacks(packet_ids))

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """QoS 0: sent if connected, else dropped. QoS 1: kept until the broker's PUBACK, resent on reconnect."""
        if qos == 0:
            if self.connected:
                self._send(wire.publish(topic, payload, 0, retain))
            return
        with self._send_lock:
            pid = self._packet_id()
            pkt = wire.publish(topic, payload, 1, retain, pid)
            self._pending[pid] = pkt
        if self.connected:
            self._send(pkt)

    def disconnect(self, timeout: float = 5.0) -> None:
        """Send DISCONNECT (the session stays on the broker) and stop the network thread."""
        self._stop.set()
        if self.connected:
            try:
                self._send(wire.disconnect())
            except OSError:
                pass
        self._close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def kill(self) -> None:
        """Drop the connection without DISCONNECT (a crash, for tests): nothing more is acknowledged."""
        self._stop.set()
        self._close()

    # -- sending -------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            with self._send_lock:
                sock.sendall(data)
                self._last_send = time.monotonic()
        except OSError as exc:  # the reader notices the broken connection and reconnects
            log.debug("send failed: %s", exc)

    def _packet_id(self) -> int:
        for _ in range(65535):
            self._next_pid = self._next_pid % 65535 + 1
            if self._next_pid not in self._pending:
                return self._next_pid
        raise RuntimeError("65535 QoS 1 publishes await a PUBACK")

    def _close(self) -> None:
        sock, self._sock = self._sock, None
        if self.connected:
            self.connected = False
            if self.on_disconnect:
                self.on_disconnect()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    # -- the network thread --------------------------------------------------------------
    def _run(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            try:
                if self._session():
                    delay = 1.0
            except (OSError, wire.ProtocolError, ssl.SSLError) as exc:
                log.debug("connection to %s ended: %s", self.broker.url, exc)
            except BaseException as exc:  # a bug: report it, never die silently
                self._close()
                if self.on_error:
                    self.on_error(exc)
                return
            self._close()
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, 10.0)

    def _open(self) -> socket.socket:
        b = self.broker
        sock = socket.create_connection((b.host, b.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if b.tls:
            ctx = ssl.create_default_context(cafile=b.ca_file)
            if b.cert_file:
                ctx.load_cert_chain(b.cert_file, b.key_file)
            if b.insecure:
                ctx.check_hostname = False
            sock = ctx.wrap_socket(sock, server_hostname=b.host)
        sock.settimeout(0.5)
        return sock

    def _session(self) -> bool:
        """One connection: CONNECT, SUBSCRIBE, then read until it breaks. True if it got connected."""
        b = self.broker
        sock = self._open()
        self._sock = sock
        self._send(wire.connect(self.client_id, b.keepalive, self.clean_start, self.session_expiry_s,
                                self.receive_maximum, b.username, b.password))
        buf = bytearray(READ_CHUNK * 2)
        view = memoryview(buf)
        have, got_connack = 0, False
        topics: dict[bytes, str] = {}
        self._ping_sent = None
        while not self._stop.is_set():
            try:
                if have == len(buf):  # one packet larger than the buffer: grow it
                    buf.extend(bytes(len(buf)))
                    view = memoryview(buf)
                n = sock.recv_into(view[have:], min(READ_CHUNK, len(buf) - have))
            except (socket.timeout, ssl.SSLWantReadError):
                self._keepalive()
                continue
            if not n:
                return got_connack
            have += n
            publishes: list = []
            others: list = []
            used = wire.split_packets(buf, have, publishes, others, time.time(), topics)
            if used:
                buf[:have - used] = buf[used:have]
                have -= used
            for kind, flags, body in others:
                if not self._control(kind, body):
                    return got_connack
                got_connack = got_connack or kind == wire.CONNACK
            if publishes and self.on_messages:
                self.on_messages(publishes, self.generation)
            self._keepalive()
        return got_connack

    def _control(self, kind: int, body: bytes) -> bool:
        """Handle a packet that is not a PUBLISH; False ends the connection."""
        if kind == wire.CONNACK:
            code = body[1] if len(body) > 1 else 0x80
            if code >= 0x80:
                text = CONNACK_REASONS.get(code, f"reason {code}")
                if self.on_connect:
                    self.on_connect(code, text)
                return False
            self.generation += 1
            self.connected = True
            if self.on_connect:
                self.on_connect(0, "success")
            self._send(wire.subscribe(1, self.filters))
            for pid in sorted(self._pending):  # our unacknowledged QoS 1 publishes: again, marked DUP
                pkt = self._pending[pid]
                self._send(bytes([pkt[0] | 0x08]) + pkt[1:])
        elif kind == wire.SUBACK:
            plen, pos = wire.read_varint(body, 2, len(body))
            if self.on_subscribe:
                self.on_subscribe(list(body[pos + plen:]))
        elif kind == wire.PUBACK:
            pid = (body[0] << 8) | body[1]
            with self._send_lock:
                self._pending.pop(pid, None)
        elif kind == wire.PINGRESP:
            self._ping_sent = None
        elif kind == wire.DISCONNECT:
            log.warning("the broker %s disconnected the collector (reason %s)", self.broker.url,
                        body[0] if body else 0)
            return False
        return True

    def _keepalive(self) -> None:
        ka = self.broker.keepalive
        now = time.monotonic()
        if not self.connected:  # no PINGREQ before the CONNACK (3.1.4); give up on a silent broker
            if now - self._last_send > CONNACK_TIMEOUT_S:
                raise wire.ProtocolError(f"no CONNACK from {self.broker.url} in {CONNACK_TIMEOUT_S:g} s")
            return
        if not ka or self._sock is None:
            return
        if self._ping_sent is not None and now - self._ping_sent > ka:
            raise wire.ProtocolError(f"no PINGRESP from {self.broker.url} in {ka} s")
        if self._ping_sent is None and now - self._last_send >= ka / 2:
            self._ping_sent = now
            self._send(wire.PINGREQ_BYTES)
