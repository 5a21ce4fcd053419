"""A/B bundle slots on the device, with a state file that survives power loss at any instant.

::

    STATE_DIR/
      state.json        {"current": "a", "previous": "b" | null, "slots": {...}, "trial": {...} | null,
                         "job": {...} | null, "done": [command ids]}
      current -> slots/a   symlink for other tools (e.g. a service running `edgeslm serve`)
      slots/a/          the running bundle (complete, verified)
      slots/b/          the previous bundle, or the one being downloaded (then "incomplete")

Every change is a new ``state.json`` written to a temporary file, fsynced, renamed over the
old one and the folder fsynced: after a power loss the file is the old state or the new one,
never half of each. A slot is marked ``incomplete`` in the state *before* its files are
touched and ``verified`` only after every file matched the signed manifest, so the state
never names a slot to run that is not complete. The swap is one such write (current and
previous exchange, ``trial`` opens); the symlink follows it and is repaired at boot.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ...errors import TelemetryError

SLOTS = ("a", "b")
STATE_FILE = "state.json"
MAX_DONE = 200  # command ids remembered (a retained command comes again on every reconnect)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class Slots:
    """The state of one device's slots; every mutation is persisted before it returns."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        try:
            (self.root / "slots").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TelemetryError(f"cannot use the OTA state folder {self.root}: {exc.strerror or exc}") from None
        self.state: dict[str, Any] = self._load()

    # -- persistence ------------------------------------------------------------------------
    def _load(self) -> dict[str, Any]:
        path = self.root / STATE_FILE
        if not path.exists():
            return {"current": None, "previous": None, "slots": {}, "trial": None, "job": None, "done": []}
        try:
            state = json.loads(path.read_text())
            if type(state) is not dict or state.get("current") not in (None, *SLOTS):
                raise ValueError("not an OTA state")
        except (OSError, ValueError) as exc:
            raise TelemetryError(f"{path} is unreadable ({exc}); move it away to start the slots afresh") from None
        return state

    def save(self) -> None:
        self.state["saved_at"] = time.time()
        write_atomic(self.root / STATE_FILE, (json.dumps(self.state, indent=1) + "\n").encode())

    # -- reading ----------------------------------------------------------------------------
    def path(self, slot: str) -> Path:
        return self.root / "slots" / slot

    @property
    def current(self) -> str | None:
        return self.state["current"]

    @property
    def previous(self) -> str | None:
        return self.state["previous"]

    def inactive(self) -> str:
        return "b" if self.current == "a" else "a"

    def info(self, slot: str | None) -> dict[str, Any]:
        return dict(self.state["slots"].get(slot) or {}) if slot else {}

    # -- changes ----------------------------------------------------------------------------
    def install_initial(self, bundle_dir: Path, manifest_sha256: str, bundle_id: str) -> None:
        """First start: copy the agent's --bundle into slot a (the copy is verified by the caller's load)."""
        dst = self.path("a")
        self.state["slots"]["a"] = {"state": "incomplete"}
        self.save()
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(bundle_dir, dst, symlinks=False)
        self.state["slots"]["a"] = {"state": "verified", "manifest_sha256": manifest_sha256, "bundle_id": bundle_id,
                                    "rollout": None, "installed_at": time.time()}
        self.state["current"] = "a"
        self.save()
        self.link()

    def begin_download(self, slot: str) -> None:
        """Mark ``slot`` incomplete (and no longer a previous bundle) before touching its files."""
        if slot == self.current:
            raise TelemetryError("refusing to download into the running slot")
        self.state["slots"][slot] = {"state": "incomplete"}
        if self.previous == slot:
            self.state["previous"] = None
        self.save()
        shutil.rmtree(self.path(slot), ignore_errors=True)  # an old bundle's files never pass for the new one's

    def mark_verified(self, slot: str, manifest_sha256: str, bundle_id: str, rollout: str) -> None:
        self.state["slots"][slot] = {"state": "verified", "manifest_sha256": manifest_sha256, "bundle_id": bundle_id,
                                     "rollout": rollout, "installed_at": time.time()}
        self.save()

    def swap(self, slot: str, rollout: str, command_id: str) -> None:
        """Make ``slot`` current and open its trial (boots counted until :meth:`commit`)."""
        if self.info(slot).get("state") != "verified":
            raise TelemetryError(f"slot {slot} is not verified: not swapping to it")
        self.state["previous"], self.state["current"] = self.current, slot
        self.state["trial"] = {"slot": slot, "rollout": rollout, "command": command_id, "boots": 0,
                               "since": time.time(), "healthy_at": None}
        self.save()
        self.link()

    def revert(self) -> str:
        """Back to the previous slot (after a failed trial, a crash loop, or a rollback command)."""
        prev = self.previous
        if prev is None or self.info(prev).get("state") != "verified":
            raise TelemetryError("no verified previous bundle to go back to")
        self.state["current"], self.state["previous"] = prev, self.current
        self.state["trial"] = None
        self.save()
        self.link()
        return prev

    def commit(self) -> None:
        self.state["trial"] = None
        self.save()

    def remember(self, command_id: str) -> None:
        done = self.state.setdefault("done", [])
        if command_id not in done:
            done.append(command_id)
            del done[:-MAX_DONE]
        self.save()

    def link(self) -> None:
        """Point ``current`` at the current slot (rename over the old link: atomic)."""
        if self.current is None:
            return
        tmp = self.root / ".current.tmp"
        try:
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            os.symlink(Path("slots") / self.current, tmp)
            os.replace(tmp, self.root / "current")
        except OSError:  # a filesystem without links: state.json is the truth anyway
            pass
