"""Parsing and validating manifest.json (version 1, documented in docs/bundle.md).

A manifest is untrusted input until its signature (if any) and its fields check out. Every way
it can be wrong becomes one :class:`~edgeslm.errors.BundleError` line naming the field: bytes
that are not UTF-8, JSON that is not an object, too large or too deep, duplicate keys, a
missing required field, a value of the wrong JSON type, and any path that is not a plain
relative path inside the bundle (:mod:`edgeslm.bundle.paths`). Fields this version does not
know are ignored, so optional fields can be added without a schema bump.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from ..errors import BundleError, SchemaVersionError
from .paths import check_name

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.json.sig"
#: a real manifest is a few KB (tens with per-prompt parity); anything near this is not one
MAX_MANIFEST_BYTES = 8 << 20
#: nesting depth of a real manifest is 5; deeper is refused before any field is read
MAX_DEPTH = 32
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FORMAT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# kinds: "int" (not bool), "count" (int >= 0), "pos" (int >= 1), "num" (finite int/float),
# "any_num" (int/float, NaN allowed: parity metrics may be NaN), "str", "bool", "obj", "list";
# a trailing "?" allows null.
SPEC_FIELDS: dict[str, tuple[str, bool]] = {
    "architecture": ("str", True), "vocab_size": ("pos", True), "hidden_size": ("pos", True),
    "num_layers": ("pos", True), "num_heads": ("pos", True), "num_kv_heads": ("pos", True),
    "head_dim": ("pos", True), "intermediate_size": ("pos", True), "context_length": ("pos", True),
    "rope_theta": ("num", False), "rms_norm_eps": ("num", False), "tie_word_embeddings": ("bool", False),
    "bos_token_id": ("count?", False), "eos_token_ids": ("list", False), "chat_template": ("str?", False),
    "name": ("str", False), "extra": ("obj", False),
}
TOP_FIELDS: dict[str, tuple[str, bool]] = {
    "edgeslm_version": ("str", False), "created": ("str", False), "precision": ("str", False),
    "context_length": ("pos?", False), "target": ("str?", False), "model": ("obj", False),
    "tokenizer": ("obj", False), "export": ("obj", False), "quantization": ("obj", False),
    "target_profile": ("obj", False), "forecast": ("obj", False), "parity": ("obj?", False),
}
MODEL_FIELDS = {"name": ("str", False), "source_kind": ("str", False), "source_sha256": ("str", False),
                "architecture": ("str", False), "parameters": ("count", False)}
PARITY_FIELDS = {"passed": ("bool", False), "tokens": ("count", False), "top1_agreement": ("any_num", False),
                 "kl_mean": ("any_num", False), "max_abs_logit_diff": ("any_num", False),
                 "perplexity_source": ("any_num?", False), "perplexity_export": ("any_num?", False),
                 "min_top1_agreement": ("any_num?", False)}


def parse_manifest(raw: bytes, where: str) -> dict[str, Any]:
    """The validated manifest from its exact bytes (the bytes a signature covers)."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{where}: {len(raw):,} bytes; a manifest is at most {MAX_MANIFEST_BYTES:,}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{where}: not UTF-8 text (invalid byte at offset {exc.start})") from None
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise BundleError(f"{where}: JSON nested too deeply (more than {MAX_DEPTH} levels)") from None
    except ValueError as exc:
        raise BundleError(f"{where}: not valid JSON ({_one_line(exc)})") from None
    depth = _depth(doc)
    if depth > MAX_DEPTH:
        raise BundleError(f"{where}: JSON nested too deeply ({depth} levels, at most {MAX_DEPTH})")
    return validate(doc, where)


def check_version(version: Any, newest: int, where: str) -> int:
    """``version`` if it is a positive integer this edgeslm reads (<= ``newest``): BundleError for
    a malformed one, SchemaVersionError for a newer one. Every versioned bundle file uses it."""
    if not _is_int(version) or version < 1:
        raise BundleError(f"{where}: schema_version must be a positive integer, got {_show(version)}")
    if version > newest:
        raise SchemaVersionError(f"{where}: schema_version {version} is newer than this edgeslm understands "
                                 f"({newest}); upgrade edgeslm")
    return version


def validate(m: Any, where: str) -> dict[str, Any]:
    """Check the fields edgeslm reads; BundleError (or SchemaVersionError) names the first bad one."""
    if not isinstance(m, dict):
        raise BundleError(f"{where}: the manifest must be a JSON object, not {_kind(m)}")
    version = m.get("schema_version")
    if "schema_version" not in m:
        raise BundleError(f"{where}: no schema_version")
    check_version(version, SCHEMA_VERSION, where)
    for key in ("format", "spec", "files", "artifacts"):
        if key not in m:
            raise BundleError(f"{where}: missing '{key}'")
    if not isinstance(m["format"], str) or not _FORMAT.match(m["format"]):
        raise BundleError(f"{where}: 'format' must be an engine name like 'onnx', got {_show(m['format'])}")
    _fields(m, TOP_FIELDS, "", where)
    _spec(m["spec"], where)
    files = _files(m["files"], where)
    _artifacts(m["artifacts"], files, where)
    if isinstance(m.get("model"), dict):
        _fields(m["model"], MODEL_FIELDS, "model.", where)
    if isinstance(m.get("parity"), dict):
        _fields(m["parity"], PARITY_FIELDS, "parity.", where)
    tokenizer_files = (m.get("tokenizer") or {}).get("files")
    if tokenizer_files is not None:
        _listed_paths(tokenizer_files, files, "tokenizer.files", where)
    return m


def _spec(spec: Any, where: str) -> None:
    if not isinstance(spec, dict) or not spec:
        raise BundleError(f"{where}: 'spec' must be a non-empty object, got {_show(spec)}")
    _fields(spec, SPEC_FIELDS, "spec.", where)
    for i, tid in enumerate(spec.get("eos_token_ids") or ()):
        if not _is_int(tid) or tid < 0:
            raise BundleError(f"{where}: 'spec.eos_token_ids[{i}]' must be a token id (integer >= 0), got {_show(tid)}")
    if spec["num_heads"] % spec["num_kv_heads"]:
        raise BundleError(f"{where}: 'spec.num_heads' ({spec['num_heads']}) is not a multiple of "
                          f"'spec.num_kv_heads' ({spec['num_kv_heads']})")


def _files(files: Any, where: str) -> set[str]:
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{where}: 'files' must be a non-empty object {{path: {{sha256, bytes}}}}, got {_show(files)}")
    for name, info in files.items():
        _path(name, "files", where)
        if name in (MANIFEST_FILE, SIGNATURE_FILE):
            raise BundleError(f"{where}: 'files' lists '{name}', which describes the bundle and is not hashed")
        if not isinstance(info, dict):
            raise BundleError(f"{where}: 'files.{name}' must be an object {{sha256, bytes}}, got {_show(info)}")
        if not isinstance(info.get("sha256"), str) or not _SHA256.match(info["sha256"]):
            raise BundleError(f"{where}: 'files.{name}.sha256' must be 64 lowercase hex digits, "
                              f"got {_show(info.get('sha256'))}")
        if not _is_int(info.get("bytes")) or info["bytes"] < 0:
            raise BundleError(f"{where}: 'files.{name}.bytes' must be an integer >= 0, got {_show(info.get('bytes'))}")
    return set(files)


def _artifacts(art: Any, files: set[str], where: str) -> None:
    if not isinstance(art, dict):
        raise BundleError(f"{where}: 'artifacts' must be an object, got {_show(art)}")
    if "model" not in art:
        raise BundleError(f"{where}: missing 'artifacts.model' (the file the engine opens)")
    for key in ("model", "weights"):
        if key in art:
            _listed_paths([art[key]], files, f"artifacts.{key}", where)
    if "files" in art:
        _listed_paths(art["files"], files, "artifacts.files", where)


def _listed_paths(names: Any, files: set[str], field: str, where: str) -> None:
    """Each name must be a safe path that is a listed file or a folder holding listed files."""
    if not isinstance(names, list):
        raise BundleError(f"{where}: '{field}' must be a list of paths, got {_show(names)}")
    folders = {n.rsplit("/", i)[0] for n in files for i in range(1, n.count("/") + 1)}
    for name in names:
        _path(name, field, where)
        if name not in files and name not in folders:
            raise BundleError(f"{where}: '{field}' names '{name}', which is not listed in 'files' "
                              f"(only hashed files may be loaded)")


def _path(name: Any, field: str, where: str) -> None:
    try:
        check_name(name, field)
    except BundleError as exc:
        raise BundleError(f"{where}: {exc}") from None


def _fields(obj: dict, table: dict[str, tuple[str, bool]], prefix: str, where: str) -> None:
    for key, (kind, required) in table.items():
        if key not in obj:
            if required:
                raise BundleError(f"{where}: missing '{prefix}{key}'")
            continue
        if not _has_kind(obj[key], kind):
            raise BundleError(f"{where}: '{prefix}{key}' must be {_KIND_WORDS[kind.rstrip('?')]}"
                              f"{' or null' if kind.endswith('?') else ''}, got {_show(obj[key])}")


def _has_kind(v: Any, kind: str) -> bool:
    if kind.endswith("?"):
        return v is None or _has_kind(v, kind[:-1])
    return {
        "int": lambda: _is_int(v), "count": lambda: _is_int(v) and v >= 0, "pos": lambda: _is_int(v) and v >= 1,
        "num": lambda: _is_num(v) and math.isfinite(v), "any_num": lambda: _is_num(v),
        "str": lambda: isinstance(v, str), "bool": lambda: isinstance(v, bool),
        "obj": lambda: isinstance(v, dict), "list": lambda: isinstance(v, list),
    }[kind]()


_KIND_WORDS = {"int": "an integer", "count": "an integer >= 0", "pos": "an integer >= 1", "num": "a finite number",
               "any_num": "a number", "str": "a string", "bool": "true or false", "obj": "an object", "list": "a list"}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(v), type(v).__name__)


def _show(v: Any) -> str:
    """A short description of a JSON value for an error message."""
    if isinstance(v, (dict, list)) or v is None:
        return _kind(v)
    text = repr(v)
    return f"{_kind(v)} {text if len(text) <= 40 else text[:40] + '...'}"


def _depth(doc: Any) -> int:
    deepest, stack = 0, [(doc, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if d > MAX_DEPTH:
            break
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((c, d + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:  # readers that keep the first copy would see another manifest than we verify
            raise ValueError(f"duplicate key {key[:40]!r}")
        out[key] = value
    return out


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200]
