"""Bundles: a directory holding an exported model, its tokenizer and ``manifest.json``.

The manifest records every file's sha256, so any change to any file is caught when the
bundle is opened; a signature over the manifest (see ``edgeslm.bundle.signing``) makes the
whole bundle tamper-evident. Layout::

    bundle/
      manifest.json            schema_version, format, precision, spec, files{name: sha256, bytes}, parity ...
      manifest.json.sig        optional ed25519 signature of manifest.json's bytes
      tokenizer.json           tokenizers' file
      edgeslm_tokenizer.json   bos/eos ids, add_bos, chat template
      <backend files>          model.onnx + model.onnx.data, model.xml + model.bin, ...
"""

from .manifest import MANIFEST_FILE, SCHEMA_VERSION, Bundle, hash_files, write_manifest

__all__ = ["MANIFEST_FILE", "SCHEMA_VERSION", "Bundle", "hash_files", "write_manifest"]
