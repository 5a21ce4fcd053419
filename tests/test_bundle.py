"""Bundle manifests: hashes, tampering, schema versions, missing pieces."""

import json
import shutil

import pytest

import edgeslm
from edgeslm.testing import requires_export
from edgeslm.bundle import Bundle
from edgeslm.errors import BundleError, BundleIntegrityError, SchemaVersionError

pytestmark = requires_export


@pytest.fixture
def copy(onnx_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(onnx_bundle, dst)
    return dst


def flip_byte(path, offset=None):
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["model.onnx", "tokenizer.json", "edgeslm_tokenizer.json"])
def test_flipped_byte_names_the_file(copy, name):
    flip_byte(copy / name)
    with pytest.raises(BundleIntegrityError, match=name):
        edgeslm.load(copy)


def test_missing_file(copy):
    (copy / "tokenizer.json").unlink()
    with pytest.raises(BundleIntegrityError, match="tokenizer.json.*missing"):
        Bundle.open(copy)


def test_unlisted_file(copy):
    (copy / "extra.bin").write_bytes(b"x")
    with pytest.raises(BundleIntegrityError, match="extra.bin"):
        Bundle.open(copy)


def test_newer_schema_is_refused(copy):
    m = json.loads((copy / "manifest.json").read_text())
    m["schema_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(SchemaVersionError, match="upgrade edgeslm"):
        Bundle.open(copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="no manifest.json"):
        Bundle.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.open(tmp_path)
