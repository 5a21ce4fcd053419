"""`edgeslm chat` for real: a child process on a pseudo-terminal (prompt, commands, Ctrl-C,
Ctrl-D), piped stdin, and Ctrl-C in the middle of a reply (a real SIGINT) in-process."""

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import pytest

from edgeslm.testing import requires_export

pytestmark = requires_export


class PtyChild:
    """A child process whose stdin/stdout/stderr are one pseudo-terminal (its controlling tty,
    so writing Ctrl-C sends it SIGINT, as a terminal does)."""

    def __init__(self, argv):
        import warnings

        with warnings.catch_warnings():  # the child execs at once: fork's thread caveat does not apply
            warnings.simplefilter("ignore", RuntimeWarning)
            self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child
            os.environ["TERM"] = "dumb"
            os.execv(sys.executable, [sys.executable, *argv])
        self.seen = ""

    def expect(self, pattern: str, timeout: float = 60.0) -> str:
        """Read until ``pattern`` (a regex) appears in the output after the last match."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.seen, re.S)
            if m:
                before, self.seen = self.seen[:m.end()], self.seen[m.end():]
                return before
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {pattern!r}; output so far: {self.seen!r}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    data = os.read(self.fd, 4096)
                except OSError:  # the child closed the terminal
                    data = b""
                if not data:
                    raise AssertionError(f"child ended before {pattern!r}; output: {self.seen!r}")
                self.seen += data.decode(errors="replace").replace("\r\n", "\n")

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def interrupt(self, pattern: str, tries: int = 5, timeout: float = 10.0) -> str:
        """Ctrl-C until ``pattern`` appears. The prompt is written before readline waits for a key,
        and CPython's readline looks at a pending SIGINT only when that wait is interrupted: a
        Ctrl-C that lands in between shows at the next key, in a real terminal too. The test sees
        the prompt as soon as it is written, so on a busy machine it presses again, as a user would."""
        for _ in range(tries):
            self.send("\x03")
            try:
                return self.expect(pattern, timeout)
            except AssertionError as exc:
                if "child ended" in str(exc):
                    raise
        raise AssertionError(f"no {pattern!r} after {tries} Ctrl-C; output so far: {self.seen!r}")

    def wait(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            try:
                os.read(self.fd, 4096)  # drain, so the child never blocks on a full terminal
            except OSError:
                pass
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError("child did not exit")

    def close(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(self.fd)


STATS = r"\[(\d+) prompt(?: \((\d+) cached\))? \+ \d+ output tokens.*\]\n"


def test_repl_on_a_terminal(onnx_bundle):
    child = PtyChild(["-m", "edgeslm", "chat", str(onnx_bundle), "--stats", "-n", "6", "--threads", "1"])
    try:
        child.expect(r"Ctrl-D to leave\n")
        child.expect(r"> ")
        child.send("Why is the sky blue?\r")
        m1 = re.search(STATS, child.expect(STATS + ".*?> "))
        assert m1.group(2) is None  # turn 1: nothing cached
        child.send("And the sea?\r")
        m2 = re.search(STATS, child.expect(STATS + ".*?> "))
        assert int(m2.group(2)) > int(m1.group(1))  # turn 2 continues the cache: more than turn 1's prompt
        child.send("/history\r")
        hist = child.expect(r"> ")
        assert "user: Why is the sky blue?" in hist and "user: And the sea?" in hist and "assistant: " in hist
        child.interrupt(r"Ctrl-D or /exit to leave\)\n> ")  # Ctrl-C at the prompt: a hint, not an exit
        child.send("/system Answer in one word.\r")
        child.expect(r"\(system message set\)\n> ")
        child.send("/bogus\r")
        child.expect(r"unknown command /bogus.*?> ")
        child.send("/reset\r")
        child.expect(r"\(conversation forgotten\)\n> ")
        child.send("Hello\r")
        m3 = re.search(STATS, child.expect(STATS + ".*?> "))
        assert m3.group(2) is None or int(m3.group(2)) < int(m1.group(1))  # a new conversation
        child.send("\x04")  # Ctrl-D
        assert child.wait() == 0
    finally:
        child.close()


def test_piped_conversation(onnx_bundle):
    out = subprocess.run([sys.executable, "-m", "edgeslm", "chat", str(onnx_bundle), "-n", "4", "--stats"],
                         input="Hi!\nWhat did I say?\n/history\n/exit\nnever read\n", capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "> " not in out.stdout  # no prompt when stdin is not a terminal
    assert out.stdout.count("user: ") == 2 and "never read" not in out.stdout
    assert re.findall(STATS, out.stderr)[1][1]  # the second turn reused the cache


def test_chat_refuses_a_model_without_template(tmp_path, onnx_bundle, capsys):
    import json
    import shutil

    from edgeslm.bundle import hash_files
    from edgeslm.cli import main

    b = tmp_path / "b"
    shutil.copytree(onnx_bundle, b)
    cfg = json.loads((b / "edgeslm_tokenizer.json").read_text())
    cfg["chat_template"] = None
    (b / "edgeslm_tokenizer.json").write_text(json.dumps(cfg))
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["files"] = hash_files(b)
    (b / "manifest.json").write_text(json.dumps(manifest))
    assert main(["chat", str(b)]) == 1
    assert "no chat template" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["engine", "output"])
def test_ctrl_c_stops_a_reply_and_the_chat_goes_on(onnx_bundle, monkeypatch, capsys, where):
    """A real SIGINT lands inside the engine's decode step or while the reply is printed; the
    reply stops, the chat stays open, and the next turn equals a fresh model's answer."""
    import click

    import edgeslm
    from edgeslm.cli.chat_cmd import Repl
    from edgeslm.runtime.chat import ChatSession

    model = edgeslm.load(onnx_bundle)
    session = ChatSession(model, config=edgeslm.runtime.GenerationConfig(max_new_tokens=12, stop_on_eos=False))
    calls = {"n": 0}
    if where == "engine":
        decode = model.engine.decode

        def interrupted_decode(token):
            calls["n"] += 1
            if calls["n"] == 3:
                signal.raise_signal(signal.SIGINT)  # handled at the next bytecode: inside the engine step
            return decode(token)

        monkeypatch.setattr(model.engine, "decode", interrupted_decode)
    else:
        echo = click.echo

        def interrupted_echo(message=None, *a, **kw):
            if kw.get("nl") is False and message:
                calls["n"] += 1
                if calls["n"] == 3:
                    signal.raise_signal(signal.SIGINT)
            return echo(message, *a, **kw)

        monkeypatch.setattr(click, "echo", interrupted_echo)
    repl = Repl(session, interactive=False, stats=False)
    repl.reply("Why is the sky blue?")
    assert "(stopped)" in capsys.readouterr().err
    assert [m["role"] for m in session.history] == ["user", "assistant"]
    shown = session.history[1]["content"]
    monkeypatch.undo()
    repl.reply("And the sea?")
    last = session.history[-1]["content"]
    with edgeslm.load(onnx_bundle, reuse_cache=False) as fresh:
        expect = fresh.chat([{"role": "user", "content": "Why is the sky blue?"},
                             {"role": "assistant", "content": shown},
                             {"role": "user", "content": "And the sea?"}], max_new_tokens=12, stop_on_eos=False)
    assert last == expect.text
    model.close()


def test_a_long_conversation_drops_its_oldest_turns(onnx_bundle):
    import edgeslm
    from edgeslm.errors import GenerationError
    from edgeslm.runtime.chat import ChatSession
    from edgeslm.runtime.generator import GenerationConfig

    with edgeslm.load(onnx_bundle) as model:  # context 128
        chat = ChatSession(model, system="Be brief.", config=GenerationConfig(max_new_tokens=8, stop_on_eos=False))
        for i in range(8):
            reply = chat.ask(f"Question number {i}: why is the sky blue?")
            assert "".join(reply) == reply.result.text
        assert chat.dropped > 0 and chat.messages()[0]["role"] == "system"
        assert chat.history[-2]["content"].startswith("Question number 7")
        n = len(chat.history)
        with pytest.raises(GenerationError, match="context overflow"):
            list(chat.ask("word " * 200))  # one message longer than the context: refused, not kept
        assert len(chat.history) == n
        with pytest.raises(GenerationError, match="empty"):
            chat.ask("  ")
