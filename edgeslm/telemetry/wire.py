"""MQTT v5 packets, the few a collector needs, encoded and decoded by hand.

Why not paho here: a paho subscriber spends ~53 µs of CPU per QoS 1 message just receiving
and acknowledging it (measured on this project's 2-core machine: its v5 property objects, a
``MQTTMessage`` per message, locks and callbacks per packet), more than the collector's whole
budget at 10,000 msg/s. :class:`~.subscriber.Subscriber` reads the socket in large chunks, and
:func:`split_publishes` walks them with integer arithmetic, making one small tuple per message;
PUBACKs go out as one ``sendall`` per batch. Agents and the simulator keep using paho.

Only what the collector's client sends or receives is here: CONNECT / CONNACK, SUBSCRIBE /
SUBACK, PUBLISH (QoS 0 and 1 both ways), PUBACK, PINGREQ / PINGRESP, DISCONNECT. Reference:
MQTT Version 5.0, OASIS Standard (section numbers in the comments).
"""

from __future__ import annotations

import struct

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 1, 2, 3, 4, 8, 9, 12, 13, 14
PROP_SESSION_EXPIRY, PROP_RECEIVE_MAXIMUM, PROP_REASON_STRING = 0x11, 0x21, 0x1F
PINGREQ_BYTES = b"\xc0\x00"
MAX_PACKET = 268_435_455  # largest remaining length a 4-byte varint encodes (2.1.4)


class ProtocolError(Exception):
    """The broker sent something this client cannot read (the connection is then dropped)."""


def varint(n: int) -> bytes:
    """Variable byte integer (1.5.5)."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("!H", len(b)) + b


def packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([(kind << 4) | flags]) + varint(len(body)) + body


def connect(client_id: str, keepalive: int, clean_start: bool, session_expiry_s: int = 0,
            receive_maximum: int = 0, username: str | None = None, password: str | None = None) -> bytes:
    """CONNECT (3.1) with session expiry and receive maximum properties."""
    flags = (0x02 if clean_start else 0) | (0x80 if username is not None else 0) | \
        (0x40 if password is not None else 0)
    props = b""
    if session_expiry_s:
        props += bytes([PROP_SESSION_EXPIRY]) + struct.pack("!I", session_expiry_s)
    if receive_maximum:
        props += bytes([PROP_RECEIVE_MAXIMUM]) + struct.pack("!H", receive_maximum)
    body = utf8("MQTT") + bytes([5, flags]) + struct.pack("!H", keepalive) + varint(len(props)) + props
    body += utf8(client_id)
    if username is not None:
        body += utf8(username)
    if password is not None:
        pw = password.encode("utf-8")
        body += struct.pack("!H", len(pw)) + pw
    return packet(CONNECT, 0, body)


def subscribe(packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    """SUBSCRIBE (3.8): each filter with its maximum QoS (no-local, retain options 0)."""
    body = struct.pack("!H", packet_id) + b"\x00"
    for topic, qos in filters:
        body += utf8(topic) + bytes([qos])
    return packet(SUBSCRIBE, 0x02, body)


def publish(topic: str, payload: bytes, qos: int = 0, retain: bool = False, packet_id: int = 0,
            dup: bool = False) -> bytes:
    """PUBLISH (3.3), no properties."""
    body = utf8(topic) + (struct.pack("!H", packet_id) if qos else b"") + b"\x00" + payload
    return packet(PUBLISH, (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0), body)


_PUBACK = struct.Struct("!BBH")


def pubacks(packet_ids) -> bytes:
    """PUBACKs (3.4) for these packet ids, reason 0 (success) left out as the spec allows."""
    pack = _PUBACK.pack
    return b"".join([pack(0x40, 2, pid) for pid in packet_ids])


def disconnect(reason: int = 0) -> bytes:
    return packet(DISCONNECT, 0, bytes([reason, 0]) if reason else b"")


def read_varint(buf, pos: int, end: int) -> tuple[int, int]:
    """(value, position after it), or (-1, pos) if the buffer ends inside it."""
    value, shift = 0, 0
    while pos < end:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise ProtocolError("malformed variable byte integer")
    return -1, pos


def reason_string(buf: bytes, pos: int) -> str:
    """The Reason String property in a CONNACK/SUBACK/DISCONNECT property block at ``pos`` ('' if none)."""
    n, pos = read_varint(buf, pos, len(buf))
    end = pos + max(n, 0)
    while pos < end:
        ident = buf[pos]
        pos += 1
        if ident == PROP_REASON_STRING:
            size = struct.unpack_from("!H", buf, pos)[0]
            return bytes(buf[pos + 2:pos + 2 + size]).decode("utf-8", "replace")
        break  # other properties: not needed
    return ""


def split_packets(buf: bytearray, end: int, out_publish: list, out_other: list, now: float,
                  topics: dict) -> int:
    """Walk the complete packets in ``buf[:end]``; return where the first incomplete one starts.

    PUBLISH packets become ``(topic, payload, packet_id, qos, now)`` in ``out_publish`` (topic
    names decoded once per distinct name through ``topics``); every other packet is
    ``(type, flags, body bytes)`` in ``out_other``.
    """
    pos = 0
    while pos + 2 <= end:
        head = buf[pos]
        # remaining length: inline fast path for 1-2 byte lengths (every telemetry message)
        b1 = buf[pos + 1]
        if b1 < 0x80:
            length, start = b1, pos + 2
        else:
            length, start = read_varint(buf, pos + 1, end)
            if length < 0:
                return pos
        stop = start + length
        if stop > end:
            return pos
        if head >> 4 == PUBLISH:
            qos = (head >> 1) & 3
            tlen = (buf[start] << 8) | buf[start + 1]
            tend = start + 2 + tlen
            tb = bytes(buf[start + 2:tend])
            topic = topics.get(tb)
            if topic is None:
                topic = tb.decode("utf-8", "surrogateescape")
                if len(topics) < 200_000:
                    topics[tb] = topic
            if qos:
                pid = (buf[tend] << 8) | buf[tend + 1]
                tend += 2
            else:
                pid = 0
            plen = buf[tend]
            if plen < 0x80:
                data = tend + 1 + plen
            else:
                plen, data = read_varint(buf, tend, stop)
                data += plen
            out_publish.append((topic, bytes(buf[data:stop]), pid, qos, now))
        else:
            out_other.append((head >> 4, head & 0x0F, bytes(buf[start:stop])))
        pos = stop
    return pos
