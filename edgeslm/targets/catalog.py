"""Find target files on the search path; the first file named ``<name>.toml`` wins.

Search order (users can add a device, or override a shipped one, without forking)::

    1. every directory in $EDGESLM_TARGETS_PATH (os.pathsep-separated)
    2. the user config folder: $XDG_CONFIG_HOME/edgeslm/targets (default ~/.config/edgeslm/targets;
       %APPDATA%\\edgeslm\\targets on Windows)
    3. the targets shipped with edgeslm (top-level targets/ in the repository, packaged inside
       the wheel as edgeslm/targets/profiles/)
"""

from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path

from .profile import TargetProfile, UnknownTargetError, load_target_file

ENV_VAR = "EDGESLM_TARGETS_PATH"


def builtin_dir() -> Path:
    # `profiles` is a symlink to the repository's targets/ in a checkout (editable install) and a
    # real folder inside a built wheel (setuptools copies the files it points at).
    here = Path(__file__).resolve().parent / "profiles"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[2] / "targets"  # pragma: no cover - checkout without symlinks


def user_dir() -> Path:
    if sys.platform == "win32" and os.environ.get("APPDATA"):  # pragma: no cover
        return Path(os.environ["APPDATA"]) / "edgeslm" / "targets"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgeslm" / "targets"


def search_path() -> list[Path]:
    env = [Path(p).expanduser() for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]
    return [*env, user_dir(), builtin_dir()]


def target_files() -> dict[str, Path]:
    """{name: file} over the whole search path; earlier directories shadow later ones."""
    found: dict[str, Path] = {}
    for d in search_path():
        if d.is_dir():
            for f in sorted(d.glob("*.toml")):
                found.setdefault(f.stem, f)
    return dict(sorted(found.items()))


def list_targets() -> list[TargetProfile]:
    """Every target on the search path, validated (an invalid file raises, naming itself)."""
    return [load_target_file(f) for f in target_files().values()]


def load_target(name: str | Path | TargetProfile) -> TargetProfile:
    """A target by name (``raspberry-pi-5``) or by path to a .toml file."""
    if isinstance(name, TargetProfile):
        return name
    text = str(name)
    if text.endswith(".toml") and Path(text).expanduser().is_file():
        return load_target_file(Path(text).expanduser())
    files = target_files()
    key = text.strip().lower()
    if key in files:
        return load_target_file(files[key])
    close = difflib.get_close_matches(key, list(files), n=3, cutoff=0.5)
    close += [n for n in files if key and key in n and n not in close][:3 - len(close)]
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownTargetError(f"unknown target '{text}'.{hint} (`edgeslm targets list` shows all "
                             f"{len(files)}; add your own as <name>.toml in {user_dir()} or ${ENV_VAR})")
