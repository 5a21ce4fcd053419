"""The agent's local HTTP endpoint under careless or hostile requests (issue 13): the body read is
bounded by what the limit allows, never by what the client claims, and every refusal is a JSON
reason with a 4xx status, never a dropped connection."""

from __future__ import annotations

import json
import socket
import time

import pytest

from edgeslm.telemetry.agent import Agent, AgentConfig
from edgeslm.telemetry.mqtt import BrokerConfig
from edgeslm.telemetry.serve import MAX_BODY, serve

from .fakes import FakeModel


@pytest.fixture
def endpoint():
    from edgeslm.telemetry.broker import free_port

    # the agent is not started: requests are served and counted whether or not a broker is there
    agent = Agent(AgentConfig("f", "dev-h", BrokerConfig(port=free_port()), interval_s=3600), FakeModel())
    server = serve(agent, "127.0.0.1", 0)
    yield server.server_address[1], agent
    server.shutdown()


def raw_request(port: int, head: str, body: bytes = b"", timeout: float = 10.0,
                half_close: bool = False) -> tuple[int, dict]:
    """Send bytes as they are (``half_close``: then end the sending side); return (status, JSON reply)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0:
                length = int(next((line.split(b":")[1] for line in data[:head_end].split(b"\r\n")
                                   if line.lower().startswith(b"content-length")), b"0"))
                if len(data) >= head_end + 4 + length:
                    break
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data[data.find(b"\r\n\r\n") + 4:] or b"{}")


def post(path: str, headers: dict[str, str]) -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: x"] + [f"{k}: {v}" for k, v in headers.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("length,status,reason", [
    ("-1", 400, "Content-Length must be a number"),
    ("+5", 400, "Content-Length must be a number"),
    ("1e3", 400, "Content-Length must be a number"),
    (str(MAX_BODY + 1), 413, "over the limit"),
    (str(10**12), 413, "over the limit"),
])
def test_content_length_is_checked_before_anything_is_read(endpoint, length, status, reason):
    port, agent = endpoint
    t0 = time.monotonic()
    code, reply = raw_request(port, post("/generate", {"Content-Length": length}), b'{"prompt": "x"}' + b" " * 100)
    assert (code, reason in reply["error"]) == (status, True), reply
    assert time.monotonic() - t0 < 5  # answered at once, not after reading "until the end"


def test_missing_length_and_chunked_bodies_are_refused(endpoint):
    port, _ = endpoint
    code, reply = raw_request(port, post("/generate", {}))
    assert code == 411 and "Content-Length" in reply["error"]
    code, reply = raw_request(port, post("/generate", {"Transfer-Encoding": "chunked"}), b"5\r\nhello\r\n0\r\n\r\n")
    assert code == 411 and "chunked" in reply["error"]


@pytest.mark.parametrize("body,reason", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),  # blew the decoder's stack: connection dropped
    (json.dumps({"prompt": "x", "stop": [[[[[[[[["a"]]]]]]]]]}).encode(), "nested too deeply"),
    (b"{not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"prompt": 5}', "string 'prompt'"),
    (b'{"prompt": "x", "max_new_tokens": "many"}', ""),
])
def test_bad_bodies_get_a_reason(endpoint, body, reason):
    port, _ = endpoint
    code, reply = raw_request(port, post("/generate", {"Content-Length": str(len(body))}), body)
    assert code == 400 and reason in reply["error"], reply


@pytest.mark.parametrize("messages", [None, "hi", [], [{"role": "user"}], [{"role": 1, "content": "x"}], [[1]]])
def test_chat_needs_a_list_of_role_and_content(endpoint, messages):
    port, _ = endpoint
    body = json.dumps({"messages": messages}).encode()
    code, reply = raw_request(port, post("/chat", {"Content-Length": str(len(body))}), body)
    assert code == 400 and "messages" in reply["error"], reply


def test_a_short_body_is_refused_and_good_requests_still_work(endpoint):
    port, agent = endpoint
    code, reply = raw_request(port, post("/generate", {"Content-Length": "50"}), b'{"prompt": "x"}', half_close=True)
    assert code == 400 and "ended after 15 of 50 bytes" in reply["error"], reply  # never parsed as complete
    body = json.dumps({"prompt": "the edge", "max_new_tokens": 3, "stop_on_eos": False}).encode()
    code, reply = raw_request(port, post("/generate", {"Content-Length": str(len(body))}), body)
    assert code == 200 and reply["metrics"]["output_tokens"] >= 1
    assert agent.aggregator.take()["gen_ai.server.request.duration"]["count"] == 1
