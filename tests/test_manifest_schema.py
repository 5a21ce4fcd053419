"""Malformed manifests: every one a one-line BundleError naming the problem, never a traceback.

A table of hand-made malformations (run through ``Bundle.open``, ``edgeslm info`` and
``edgeslm verify``), and two property tests that mutate a real bundle's manifest (fields, then
raw bytes) and require either a clean ``edgeslm.load`` or an EdgeSLMError.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from pathlib import Path

import pytest

import edgeslm
from edgeslm.bundle import Bundle, write_manifest
from edgeslm.cli import main
from edgeslm.errors import BundleError, EdgeSLMError, SchemaVersionError
from edgeslm.testing import requires_export

hypothesis = pytest.importorskip("hypothesis", reason="property tests need: pip install 'edgeslm[test]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SPEC = {"architecture": "llama", "vocab_size": 320, "hidden_size": 64, "num_layers": 2, "num_heads": 4,
        "num_kv_heads": 2, "head_dim": 16, "intermediate_size": 128, "context_length": 256,
        "eos_token_ids": [2], "bos_token_id": 1, "chat_template": None}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("schema") / "b"
    root.mkdir()
    (root / "model.onnx").write_bytes(b"graph")
    (root / "tokenizer.json").write_bytes(b"{}")
    m = write_manifest(root, {"format": "onnx", "precision": "fp32", "context_length": 128, "spec": SPEC,
                              "model": {"name": "tiny", "parameters": 1000},
                              "tokenizer": {"files": ["tokenizer.json"]},
                              "artifacts": {"model": "model.onnx", "files": ["model.onnx"]},
                              "parity": {"passed": True, "top1_agreement": 1.0, "tokens": 8, "kl_mean": 0.0,
                                         "max_abs_logit_diff": 0.0}})
    return root, m


def _set(m: dict, dotted: str, value) -> dict:
    m = copy.deepcopy(m)
    *parents, last = dotted.split("|")
    node = m
    for p in parents:
        node = node[p]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return m


DELETE = object()
# (case id, field path with '|' separators, new value, fragment the one-line error must contain)
FIELD_CASES = [
    ("no-schema-version", "schema_version", DELETE, "no schema_version"),
    ("schema-version-str", "schema_version", "1", "schema_version must be a positive integer"),
    ("schema-version-float", "schema_version", 1.0, "schema_version must be a positive integer"),
    ("schema-version-bool", "schema_version", True, "schema_version must be a positive integer"),
    ("schema-version-0", "schema_version", 0, "schema_version must be a positive integer"),
    ("schema-version-neg", "schema_version", -1, "schema_version must be a positive integer"),
    ("no-format", "format", DELETE, "missing 'format'"),
    ("format-int", "format", 1, "'format' must be an engine name"),
    ("format-empty", "format", "", "'format' must be an engine name"),
    ("format-path", "format", "../onnx", "'format' must be an engine name"),
    ("no-spec", "spec", DELETE, "missing 'spec'"),
    ("spec-empty", "spec", {}, "'spec' must be a non-empty object"),
    ("spec-list", "spec", [1], "'spec' must be a non-empty object"),
    ("spec-str", "spec", "llama", "'spec' must be a non-empty object"),
    ("spec-no-vocab", "spec|vocab_size", DELETE, "missing 'spec.vocab_size'"),
    ("spec-vocab-str", "spec|vocab_size", "320", "'spec.vocab_size' must be an integer >= 1"),
    ("spec-vocab-zero", "spec|vocab_size", 0, "'spec.vocab_size' must be an integer >= 1"),
    ("spec-vocab-float", "spec|vocab_size", 320.5, "'spec.vocab_size' must be an integer >= 1"),
    ("spec-vocab-bool", "spec|vocab_size", True, "'spec.vocab_size' must be an integer >= 1"),
    ("spec-heads-not-multiple", "spec|num_kv_heads", 3, "is not a multiple of"),
    ("spec-eos-str", "spec|eos_token_ids", "2", "'spec.eos_token_ids' must be a list"),
    ("spec-eos-neg", "spec|eos_token_ids", [-1], "'spec.eos_token_ids[0]'"),
    ("spec-eos-item-str", "spec|eos_token_ids", ["2"], "'spec.eos_token_ids[0]'"),
    ("spec-rope-str", "spec|rope_theta", "big", "'spec.rope_theta' must be a finite number"),
    ("spec-template-int", "spec|chat_template", 5, "'spec.chat_template' must be a string or null"),
    ("spec-extra-list", "spec|extra", [], "'spec.extra' must be an object"),
    ("no-files", "files", DELETE, "missing 'files'"),
    ("files-empty", "files", {}, "'files' must be a non-empty object"),
    ("files-list", "files", ["model.onnx"], "'files' must be a non-empty object"),
    ("file-entry-str", "files|model.onnx", "abc", "'files.model.onnx' must be an object"),
    ("file-no-sha", "files|model.onnx|sha256", DELETE, "'files.model.onnx.sha256' must be 64 lowercase hex"),
    ("file-no-bytes", "files|model.onnx|bytes", DELETE, "'files.model.onnx.bytes' must be an integer >= 0"),
    ("file-bytes-str", "files|model.onnx|bytes", "5", "'files.model.onnx.bytes' must be an integer >= 0"),
    ("file-bytes-neg", "files|model.onnx|bytes", -5, "'files.model.onnx.bytes' must be an integer >= 0"),
    ("file-bytes-float", "files|model.onnx|bytes", 5.0, "'files.model.onnx.bytes' must be an integer >= 0"),
    ("file-bytes-bool", "files|model.onnx|bytes", True, "'files.model.onnx.bytes' must be an integer >= 0"),
    ("file-bytes-null", "files|model.onnx|bytes", None, "'files.model.onnx.bytes' must be an integer >= 0"),
    ("file-sha-upper", "files|model.onnx|sha256", "A" * 64, "must be 64 lowercase hex"),
    ("file-sha-short", "files|model.onnx|sha256", "abc", "must be 64 lowercase hex"),
    ("file-sha-int", "files|model.onnx|sha256", 123, "must be 64 lowercase hex"),
    ("file-lists-manifest", "files|manifest.json", {"sha256": "0" * 64, "bytes": 1}, "describes the bundle"),
    ("no-artifacts", "artifacts", DELETE, "missing 'artifacts'"),
    ("artifacts-list", "artifacts", ["model.onnx"], "'artifacts' must be an object"),
    ("artifacts-no-model", "artifacts", {}, "missing 'artifacts.model'"),
    ("artifacts-model-int", "artifacts|model", 5, "must be a string"),
    ("artifacts-model-null", "artifacts|model", None, "must be a string"),
    ("artifacts-model-unlisted", "artifacts|model", "other.onnx", "not listed in 'files'"),
    ("artifacts-files-str", "artifacts|files", "model.onnx", "'artifacts.files' must be a list"),
    ("context-str", "context_length", "128", "'context_length' must be an integer >= 1 or null"),
    ("context-zero", "context_length", 0, "'context_length' must be an integer >= 1 or null"),
    ("target-int", "target", 5, "'target' must be a string or null"),
    ("precision-list", "precision", ["fp32"], "'precision' must be a string"),
    ("model-list", "model", [], "'model' must be an object"),
    ("model-params-str", "model|parameters", "1M", "'model.parameters' must be an integer >= 0"),
    ("parity-agreement-str", "parity|top1_agreement", "100%", "'parity.top1_agreement' must be a number"),
    ("parity-passed-str", "parity|passed", "yes", "'parity.passed' must be true or false"),
    ("tokenizer-list", "tokenizer", ["tokenizer.json"], "'tokenizer' must be an object"),
    ("tokenizer-files-str", "tokenizer|files", "tokenizer.json", "'tokenizer.files' must be a list"),
    ("tokenizer-files-escape", "tokenizer|files", ["../../etc/passwd"], "'tokenizer.files': path"),
]
RAW_CASES = [
    ("list", b"[]", "must be a JSON object, not a list"),
    ("string", b'"manifest"', "must be a JSON object, not a string"),
    ("number", b"1", "must be a JSON object, not a number"),
    ("null", b"null", "must be a JSON object, not null"),
    ("empty", b"", "not valid JSON"),
    ("truncated", b'{"schema_version": 1, "format": "on', "not valid JSON"),
    ("invalid-utf8", b'{"schema_version": 1, "format": "\xff\xfe"}', "not UTF-8 text"),
    ("latin1", '{"schema_version": 1, "name": "caf\u00e9"}'.encode("latin-1"), "not UTF-8 text"),
    ("duplicate-key", b'{"schema_version": 1, "schema_version": 1}', "duplicate key 'schema_version'"),
    ("deep-list", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ("deep-object", b'{"a":' * 40 + b"1" + b"}" * 40, "nested too deeply"),
    ("huge", b'{"schema_version": 1, "pad": "' + b"x" * (9 << 20) + b'"}', "is larger than 8,388,608 bytes"),
    ("nan-bytes", None, "'files.model.onnx.bytes' must be an integer >= 0"),
    ("int-too-long", b'{"schema_version": 1' + b"0" * 5000 + b"}", "not valid JSON"),
]


def _write_raw(root: Path, raw: bytes) -> None:
    (root / "manifest.json").write_bytes(raw)


def _assert_one_line_everywhere(root: Path, fragment: str, capsys, exc_type=BundleError) -> None:
    with pytest.raises(exc_type) as exc:
        Bundle.open(root, verify=False)
    assert fragment in str(exc.value) and "\n" not in str(exc.value)
    for verb in ("info", "verify"):
        code = main([verb, str(root)])
        out = capsys.readouterr()
        assert code == 1 and out.err.startswith("error: ") and out.err.count("\n") == 1, (verb, out.err)
        assert fragment in out.err


@pytest.mark.parametrize("case", FIELD_CASES, ids=[c[0] for c in FIELD_CASES])
def test_malformed_field_is_one_line_error(base, tmp_path, capsys, case):
    _, dotted, value, fragment = case
    root, m = base
    b = tmp_path / "b"
    shutil.copytree(root, b)
    _write_raw(b, json.dumps(_set(m, dotted, value)).encode())
    _assert_one_line_everywhere(b, fragment, capsys)


@pytest.mark.parametrize("case", RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_malformed_bytes_are_one_line_error(base, tmp_path, capsys, case):
    _, raw, fragment = case
    root, m = base
    b = tmp_path / "b"
    shutil.copytree(root, b)
    if raw is None:  # JSON's NaN literal where a byte count belongs
        raw = json.dumps(_set(m, "files|model.onnx|bytes", float("nan"))).encode()
    _write_raw(b, raw)
    _assert_one_line_everywhere(b, fragment, capsys)


def test_newer_schema_is_its_own_error(base, tmp_path, capsys):
    root, m = base
    b = tmp_path / "b"
    shutil.copytree(root, b)
    _write_raw(b, json.dumps(_set(m, "schema_version", 2)).encode())
    _assert_one_line_everywhere(b, "upgrade edgeslm", capsys, SchemaVersionError)


@pytest.mark.parametrize("config, field", [
    ([1, 2], "must be a JSON object"), ({"eos_token_ids": 2}, "'eos_token_ids'"),
    ({"eos_token_ids": ["2"]}, "'eos_token_ids'"), ({"bos_token_id": "1"}, "'bos_token_id'"),
    ({"add_bos": "yes"}, "'add_bos'"), ({"chat_template": ["x"]}, "'chat_template'"),
    ({"schema_version": "1"}, "schema_version must be a positive integer"),
    ({"schema_version": 2}, "schema_version 2 is newer than this edgeslm understands"),
])
def test_malformed_tokenizer_config_is_one_line_error(tmp_path, config, field):
    from edgeslm.testing import make_tiny_tokenizer

    b = tmp_path / "b"
    b.mkdir()
    make_tiny_tokenizer().save(str(b / "tokenizer.json"))
    (b / "edgeslm_tokenizer.json").write_text(json.dumps(config))
    (b / "model.onnx").write_bytes(b"g")
    write_manifest(b, {"format": "onnx", "spec": SPEC, "artifacts": {"model": "model.onnx"}})
    with pytest.raises(BundleError, match=field) as exc:
        Bundle.open(b).load_tokenizer()
    assert "\n" not in str(exc.value)


def test_tokenizer_config_carries_its_version_and_old_files_still_read(tmp_path):
    from edgeslm.testing import make_tiny_tokenizer
    from edgeslm.tokenizer import CONFIG_SCHEMA_VERSION, Tokenizer

    tok = Tokenizer(backend=make_tiny_tokenizer(), bos_token_id=1, eos_token_ids=(2,), add_bos=True)
    tok.save(tmp_path)
    cfg = json.loads((tmp_path / "edgeslm_tokenizer.json").read_text())
    assert cfg["schema_version"] == CONFIG_SCHEMA_VERSION == 1
    del cfg["schema_version"]  # as written before the field existed
    (tmp_path / "edgeslm_tokenizer.json").write_text(json.dumps(cfg))
    old = Tokenizer.load(tmp_path)
    assert (old.bos_token_id, old.eos_token_ids, old.add_bos) == (1, (2,), True)


# -- property tests over a real bundle -----------------------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats()
    | st.text(max_size=12) | st.sampled_from(["../x", "/etc/passwd", "model.onnx", "", "C:\\x", "a/../b"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8)
EDGE = st.sampled_from([None, 0, -1, 1, 2**64, 1.5, float("nan"), "", "x", [], {}, True, "../model.onnx"])
STATS: dict[str, list] = {}
#: examples per property test; raise it for a longer fuzz run (EDGESLM_FUZZ_EXAMPLES=5000)
EXAMPLES = int(os.environ.get("EDGESLM_FUZZ_EXAMPLES", "300"))


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _mutate(m, path, op, value):
    if not path:
        return value if op != "delete" else {}
    node = m
    for p in path[:-1]:
        node = node[p]
    if op == "delete":
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return m


@pytest.fixture(scope="module")
def real(onnx_bundle, tmp_path_factory):
    b = tmp_path_factory.mktemp("prop") / "b"
    shutil.copytree(onnx_bundle, b)
    return b, json.loads((b / "manifest.json").read_text())


def _load_or_edgeslm_error(b: Path, kind: str) -> None:
    t0 = time.perf_counter()
    try:
        with edgeslm.load(b) as model:  # a manifest that loads must also run (or refuse in one line)
            model.generate([1, 2, 3], max_new_tokens=2)
        outcome = "loaded"
    except EdgeSLMError as exc:
        assert "\n" not in str(exc), str(exc)
        outcome = type(exc).__name__
    STATS.setdefault(kind, []).append((outcome, time.perf_counter() - t0))


@requires_export
@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_manifest_fields_load_cleanly_or_raise_edgeslm_error(real, data):
    b, manifest = real
    m = copy.deepcopy(manifest)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        path = data.draw(st.sampled_from(list(_paths(m))), label="path")
        op = data.draw(st.sampled_from(["replace", "edge", "delete"]) if path else st.just("replace"), label="op")
        value = data.draw(EDGE if op == "edge" else JSON, label="value")
        m = _mutate(m, path, op, value)
    (b / "manifest.json").write_text(json.dumps(m))
    _load_or_edgeslm_error(b, "fields")


@requires_export
@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_manifest_bytes_load_cleanly_or_raise_edgeslm_error(real, data):
    b, manifest = real
    raw = bytearray(json.dumps(manifest, indent=2).encode())
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        i = data.draw(st.integers(0, len(raw)), label="at")
        edit = data.draw(st.sampled_from(["flip", "insert", "delete"]), label="edit")
        if edit == "flip" and i < len(raw):
            raw[i] ^= data.draw(st.integers(1, 255), label="mask")
        elif edit == "insert":
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=8), label="bytes")
        else:
            del raw[i:i + data.draw(st.integers(1, 16), label="n")]
    (b / "manifest.json").write_bytes(bytes(raw))
    _load_or_edgeslm_error(b, "bytes")


def teardown_module(module):
    for kind, runs in STATS.items():  # shown with -s: how many examples ran, how they ended, how long
        outcomes: dict[str, int] = {}
        for outcome, _ in runs:
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        print(f"\nproperty[{kind}]: {len(runs)} examples in {sum(t for _, t in runs):.1f} s: {outcomes}")


@requires_export
@pytest.mark.parametrize("field, value", [("num_kv_heads", 1), ("head_dim", 8), ("vocab_size", 1000)])
def test_spec_that_disagrees_with_the_graph_is_refused_at_load(real, tmp_path, field, value):
    """Well-typed but wrong for the graph: the property test reaches this rarely, so it is pinned here."""
    b, manifest = real
    c = tmp_path / "c"
    shutil.copytree(b, c)
    m = copy.deepcopy(manifest)
    m["spec"][field] = value
    (c / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="but the manifest's spec implies") as exc:
        edgeslm.load(c)
    assert "\n" not in str(exc.value)
