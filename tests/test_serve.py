"""`edgeslm serve`: a real uvicorn server on a loopback port, the official openai client and curl."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from edgeslm.testing import requires_export

openai = pytest.importorskip("openai", reason="needs the openai client: pip install 'edgeslm[test]'")
uvicorn = pytest.importorskip("uvicorn", reason="needs the serve extra: pip install 'edgeslm[serve]'")
pytestmark = requires_export

MODEL = "tiny-llama"
HI = [{"role": "user", "content": "Why is the sky blue?"}]


class ServerThread:
    """uvicorn serving ``app`` on a free loopback port, in a thread of this process."""

    def __init__(self, app):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # log_config=None: uvicorn's loggers propagate instead of holding this test's (captured,
        # later closed) stderr; a server thread outliving a failed test cannot then kill pytest
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", log_config=None))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 120  # generous: CI machines can be loaded
        while not self.server.started:
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError("uvicorn did not start within 120 s")
            time.sleep(0.02)

    def client(self, api_key="none", **kw):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=300, **kw)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture(scope="module")
def model(onnx_bundle):
    import edgeslm

    with edgeslm.load(onnx_bundle, engine_options={"threads": 1}) as m:
        yield m


def make_server(model, telemetry=None, **kw):
    from edgeslm.server import Limits, ServeConfig, create_app

    limits = Limits(**{k: kw.pop(k) for k in ("max_tokens", "max_prompt_tokens", "max_body_bytes") if k in kw})
    return ServerThread(create_app(model, ServeConfig(model_id=MODEL, limits=limits, **kw), telemetry=telemetry))


@pytest.fixture(scope="module")
def server(model):
    s = make_server(model)
    yield s
    s.stop()


def test_chat_and_completion_equal_the_python_api(server, model):
    c = server.client()
    res = c.chat.completions.create(model=MODEL, messages=HI, max_tokens=8, temperature=0)
    direct = model.chat(HI, max_new_tokens=8)
    assert res.object == "chat.completion" and res.model == MODEL and res.id.startswith("chatcmpl-")
    assert res.choices[0].message.role == "assistant" and res.choices[0].message.content == direct.text
    assert res.choices[0].finish_reason == ("length" if direct.finish_reason == "length" else "stop")
    assert res.usage.prompt_tokens == direct.metrics.prompt_tokens
    assert res.usage.completion_tokens == direct.metrics.output_tokens
    assert res.usage.total_tokens == res.usage.prompt_tokens + res.usage.completion_tokens
    comp = c.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0)
    assert comp.object == "text_completion"
    assert comp.choices[0].text == model.generate("The capital of France is", max_new_tokens=6).text
    assert [m.id for m in c.models.list().data] == [MODEL] and c.models.retrieve(MODEL).id == MODEL


def test_streaming_equals_non_streaming(server):
    c = server.client()
    whole = c.chat.completions.create(model=MODEL, messages=HI, max_tokens=10, temperature=0)
    chunks = list(c.chat.completions.create(model=MODEL, messages=HI, max_tokens=10, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    plain = c.completions.create(model=MODEL, prompt="def fibonacci(n):", max_tokens=8, temperature=0)
    streamed = list(c.completions.create(model=MODEL, prompt="def fibonacci(n):", max_tokens=8, temperature=0,
                                         stream=True))
    assert "".join(ch.choices[0].text for ch in streamed) == plain.choices[0].text


def test_a_growing_conversation_reuses_the_cache(server):
    c = server.client()
    first = c.chat.completions.create(model=MODEL, messages=HI, max_tokens=6, temperature=0)
    history = HI + [{"role": "assistant", "content": first.choices[0].message.content},
                    {"role": "user", "content": "And the sea?"}]
    second = c.chat.completions.create(model=MODEL, messages=history, max_tokens=6, temperature=0)
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens


@pytest.mark.parametrize("kw, status, param, code", [
    ({"temperature": 3}, 400, "temperature", None),
    ({"n": 2}, 400, "n", "unsupported_parameter"),
    ({"extra_body": {"bogus": 1}}, 400, "bogus", None),
    ({"max_tokens": 100000}, 400, "max_tokens", None),
    ({"max_tokens": 0}, 400, "max_tokens", None),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop", None),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.[0].role", None),
    ({"messages": [{"role": "user", "content": "word " * 400}]}, 400, "messages", "context_length_exceeded"),
    ({"model": "gpt-4o"}, 404, "model", "model_not_found"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools", "unsupported_parameter"),
])
def test_bad_requests_get_openai_error_objects(server, kw, status, param, code):
    args = {"model": MODEL, "messages": HI, "max_tokens": 4, **kw}
    with pytest.raises(openai.APIStatusError) as info:
        server.client().chat.completions.create(**args)
    err = info.value
    assert err.status_code == status and err.body["param"] == param and err.body["code"] == code
    assert err.body["type"] == "invalid_request_error" and err.body["message"]


def test_malformed_http_with_curl(server, tmp_path):
    def curl(*args):
        out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", *args], capture_output=True, text=True, timeout=30)
        body, _, code = out.stdout.rpartition("\n")
        return int(code), json.loads(body) if body.startswith("{") else body

    url = server.url
    code, body = curl(f"{url}/v1/chat/completions", "-H", "Content-Type: application/json", "-d", "{not json")
    assert code == 400 and "not valid JSON" in body["error"]["message"]
    code, body = curl(f"{url}/v1/chat/completions", "-d", "[1, 2]")
    assert code == 400 and body["error"]["type"] == "invalid_request_error"
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"model": MODEL, "prompt": "x" * (2 << 20)}))
    code, body = curl(f"{url}/v1/completions", "--data-binary", f"@{big}")
    assert code == 413 and body["error"]["code"] == "request_too_large"
    code, body = curl(f"{url}/v1/nowhere")
    assert code == 404 and body["error"]["code"] == "not_found"
    code, body = curl("-X", "GET", f"{url}/v1/chat/completions")
    assert code == 405
    code, body = curl(f"{url}/v1/completions", "-d", json.dumps({"model": MODEL, "prompt": "Hello", "max_tokens": 3,
                                                                 "temperature": 0}))
    assert code == 200 and body["choices"][0]["finish_reason"] in ("stop", "length")
    out = subprocess.run(["curl", "-sN", f"{url}/v1/chat/completions", "-d", json.dumps(
        {"model": MODEL, "messages": HI, "max_tokens": 4, "stream": True})], capture_output=True, text=True, timeout=30)
    events = [line[6:] for line in out.stdout.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[0])["object"] == "chat.completion.chunk"
    code, body = curl(f"{url}/health")
    assert code == 200 and body["ok"] is True and body["model"] == MODEL


def test_api_key(model):
    s = make_server(model, api_key="s3cret")
    try:
        with pytest.raises(openai.AuthenticationError) as info:
            s.client(api_key="wrong").chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
        assert info.value.body["code"] == "invalid_api_key"
        res = s.client(api_key="s3cret").chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
        assert res.usage.completion_tokens >= 1
        with pytest.raises(openai.AuthenticationError):
            s.client(api_key="s3cret").with_options(default_headers={"Authorization": ""}).models.list()
        import urllib.request

        assert json.loads(urllib.request.urlopen(s.url + "/health").read())["ok"]  # health needs no key
    finally:
        s.stop()


@pytest.fixture
def slow_model(model, monkeypatch):
    """Each decode step takes >= 20 ms, so requests overlap deterministically."""
    decode = model.engine.decode

    def slow(token):
        time.sleep(0.02)
        return decode(token)

    monkeypatch.setattr(model.engine, "decode", slow)
    yield model


def test_queue_full_is_429_with_retry_after_and_counted(slow_model):
    from edgeslm.telemetry import Agent, AgentConfig, schema

    agent = Agent(AgentConfig(fleet="test", device="serve-01"))  # never started: only its aggregator is read
    agent.attach(slow_model)
    s = make_server(slow_model, telemetry=agent, max_queue=1, retry_after_s=2)
    try:
        agent.aggregator.take()

        def ask(i):
            try:
                r = s.client().with_raw_response.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"question {i}"}], max_tokens=25,
                    temperature=0)
                return 200, r.parse().usage.completion_tokens
            except openai.RateLimitError as exc:
                return 429, (exc.response.headers.get("retry-after"), exc.body["code"])

        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(ask, range(6)))
        ok = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] == 429]
        assert len(ok) + len(refused) == 6 and len(ok) >= 2 and refused
        assert all(r[1] == ("2", "rate_limit_exceeded") for r in refused)
        import urllib.request

        deadline = time.monotonic() + 5
        while (health := json.loads(urllib.request.urlopen(s.url + "/health").read()))["busy"]:
            assert time.monotonic() < deadline  # the worker releases its place just after answering
            time.sleep(0.01)
        assert health["rejected"] == len(refused) and health["served"] == len(ok)
        metrics = agent.aggregator.take()  # the agent's own telemetry saw the same requests
        assert metrics[schema.TOKEN_USAGE]["output"] == sum(r[1] for r in ok)
        assert metrics[schema.ERRORS]["by_type"] == {"QueueFull": len(refused)}
        assert metrics[schema.REQUEST_DURATION]["count"] == len(ok)
    finally:
        s.stop()
        slow_model.generator.listeners.remove(agent.record)


def test_a_client_leaving_mid_stream_stops_its_generation(slow_model):
    s = make_server(slow_model)
    try:
        stream = s.client().chat.completions.create(model=MODEL, messages=HI, max_tokens=100, stream=True,
                                                    temperature=0)
        next(iter(stream))
        t0 = time.monotonic()
        stream.close()
        import urllib.request

        while json.loads(urllib.request.urlopen(s.url + "/health").read())["busy"]:
            assert time.monotonic() - t0 < 1.5, "generation went on after the client left"  # 100 steps = 2 s
            time.sleep(0.02)
        res = s.client().chat.completions.create(model=MODEL, messages=HI, max_tokens=3, temperature=0)
        assert res.usage.completion_tokens >= 1
    finally:
        s.stop()


def test_cli_serves_and_stops_cleanly_on_sigterm(onnx_bundle, tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "EDGESLM_API_KEY": "k1"}
    proc = subprocess.Popen([sys.executable, "-m", "edgeslm", "serve", str(onnx_bundle), "--port", str(port),
                             "--max-tokens-limit", "8"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k1", max_retries=0)
        deadline = time.monotonic() + 60
        while True:
            try:
                models = client.models.list()
                break
            except openai.APIConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "server did not come up"
                time.sleep(0.2)
        assert [m.id for m in models.data] == [MODEL]
        with pytest.raises(openai.BadRequestError, match="over this server's limit 8"):
            client.completions.create(model=MODEL, prompt="hi", max_tokens=9)
        out = subprocess.run(["curl", "-s", f"http://127.0.0.1:{port}/v1/completions", "-H", "Authorization: Bearer k1",
                              "-d", json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 2})],
                             capture_output=True, text=True, timeout=30)
        assert json.loads(out.stdout)["object"] == "text_completion"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "server stopped" in err and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
    assert shutil.which("curl")


def test_agent_serves_openai_and_measures_it(onnx_bundle, tmp_path):
    """`edgeslm agent --openai`: the same server inside the agent; its requests reach the
    agent's telemetry (the final interval, flushed on SIGTERM, counts them)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen([sys.executable, "-m", "edgeslm", "agent", "--bundle", str(onnx_bundle), "--fleet", "t",
                             "--device", "serve-1", "--http", "off", "--openai", f"127.0.0.1:{port}",
                             "--buffer", str(tmp_path / "q.db"), "--broker", "mqtt://127.0.0.1:9"],
                            stderr=subprocess.PIPE, text=True)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)
        deadline = time.monotonic() + 60
        while True:
            try:
                res = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=3)
                break
            except openai.APIConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "agent did not come up"
                time.sleep(0.2)
        assert res.usage.completion_tokens >= 1
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "agent stopped" in err and "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
    from edgeslm.telemetry.buffer import DiskQueue

    queue = DiskQueue(tmp_path / "q.db", 100)  # broker unreachable: the telemetry waits on disk
    bodies = [json.loads(payload) for _, topic, payload in queue.peek(0, 100) if topic.endswith("/telemetry")]
    assert sum(b["metrics"]["gen_ai.client.token.usage"]["output"] for b in bodies) == res.usage.completion_tokens


@pytest.mark.slow
def test_smollm2_answers_through_run_and_serve(smollm2_onnx_bundle, capsys):
    """The real instruct model: `run` applies the chat template by default and answers, and so
    does the server through the openai client; the second turn comes from the cache."""
    import edgeslm
    from edgeslm.cli import main

    assert main(["run", str(smollm2_onnx_bundle), "--prompt", "What is the capital of France?", "-n", "16"]) == 0
    assert "Paris" in capsys.readouterr().out
    with edgeslm.load(smollm2_onnx_bundle) as m:
        from edgeslm.server import ServeConfig, create_app

        s = ServerThread(create_app(m, ServeConfig(model_id="smollm2-135m")))
        try:
            c = s.client()
            q = [{"role": "user", "content": "What is the capital of France?"}]
            first = c.chat.completions.create(model="smollm2-135m", messages=q, max_tokens=16, temperature=0)
            assert "Paris" in first.choices[0].message.content
            q += [{"role": "assistant", "content": first.choices[0].message.content},
                  {"role": "user", "content": "And of Italy?"}]
            second = c.chat.completions.create(model="smollm2-135m", messages=q, max_tokens=16, temperature=0)
            assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens
            assert "Rome" in second.choices[0].message.content
        finally:
            s.stop()


def test_the_agent_puts_back_the_sigterm_handler_it_replaced(onnx_bundle, tmp_path):
    """In-process (an embedding program, a test runner): SIGTERM stops the agent cleanly, and
    afterwards SIGTERM means what it meant before the agent started."""
    from edgeslm.cli import main

    def ours(*_):
        pass

    before = signal.signal(signal.SIGTERM, ours)

    def stop_when_installed():
        deadline = time.monotonic() + 60
        while signal.getsignal(signal.SIGTERM) is ours and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        threading.Thread(target=stop_when_installed, daemon=True).start()
        code = main(["agent", "--bundle", str(onnx_bundle), "--fleet", "t", "--device", "sig-1", "--http", "off",
                     "--buffer", str(tmp_path / "q.db"), "--broker", "mqtt://127.0.0.1:9"])
        assert code == 0
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, before)
