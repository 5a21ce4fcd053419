"""GGUF for every family: dequantization, llama.cpp's conventions undone, special tokens from the
metadata, and one-line refusals of files edgeslm cannot use, before any weight is read."""

import numpy as np
import pytest

from edgeslm.errors import ModelLoadError, UnsupportedArchitectureError
from edgeslm.testing import requires_export

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "smollm3"]
TEXT = "The capital of France is Paris. Why is the sky blue? Ünïcödé 🙂"


@pytest.fixture(scope="session")
def family_gguf(tmp_path_factory):
    """family_gguf(name) -> TinyGGUF of that family (mixed K-quant/legacy/F16/BF16 blocks), cached."""
    cache = {}

    def make(family: str):
        if family not in cache:
            from edgeslm.testing_gguf import make_family_gguf

            cache[family] = make_family_gguf(tmp_path_factory.mktemp("gguf") / f"tiny-{family}.gguf", family)
        return cache[family]

    return make


# -- dequantization ------------------------------------------------------------------------

@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
def test_every_block_type_decodes_bit_identical_to_gguf_py(type_name):
    gguf = pytest.importorskip("gguf")
    from edgeslm.sources.gguf_quants import dequantize
    from edgeslm.testing_kquants import random_blocks

    raw = random_blocks(type_name, 2048, seed=3)  # every bit pattern of the packed integers
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[type_name])
    got = dequantize(raw, type_name, ref.shape)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("type_name", ["F32", "F16", "BF16"])
def test_float_types_decode_like_gguf_py(type_name):
    gguf = pytest.importorskip("gguf")
    from edgeslm.sources.gguf_quants import dequantize

    x = np.random.default_rng(0).normal(0, 3, (8, 64)).astype(np.float32)
    qtype = gguf.GGMLQuantizationType[type_name]
    raw = {"F32": x, "F16": x.astype(np.float16)}.get(type_name)
    if raw is None:
        raw = gguf.quants.quantize(x, qtype)
    np.testing.assert_array_equal(dequantize(raw.view(np.uint8), type_name, x.shape),
                                  gguf.quants.dequantize(raw, qtype).astype(np.float32))


@pytest.mark.parametrize("type_name,bound", [("Q4_K", 0.12), ("Q5_K", 0.06), ("Q6_K", 0.04)])
def test_k_quant_encoder_writes_blocks_that_decode_close(type_name, bound):
    from edgeslm.sources.gguf_quants import dequantize
    from edgeslm.testing_kquants import ENCODERS

    x = np.random.default_rng(1).normal(0, 0.2, (32, 512)).astype(np.float32)
    back = dequantize(ENCODERS[type_name](x), type_name, x.shape)
    assert np.sqrt(np.mean((back - x) ** 2)) / x.std() < bound


# -- every family: file -> transformers model ----------------------------------------------

@requires_export
@pytest.mark.parametrize("family", FAMILIES)
def test_family_gguf_matches_transformers_on_the_same_dequantized_weights(family, family_gguf):
    import torch

    from edgeslm.sources import load_source
    from edgeslm.testing import make_tiny_tokenizer

    tg = family_gguf(family)
    kinds = set(tg.types.values())
    assert kinds & {"Q4_K", "Q5_K", "Q6_K"} and kinds & {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"}, kinds
    src = load_source(tg.path)
    assert src.kind == "gguf"
    ids = src.tokenizer.encode(TEXT)
    assert ids == make_tiny_tokenizer().encode(TEXT).ids  # the vocabulary came through the metadata
    ref = tg.reference_model()
    with torch.no_grad():
        got, want = src.module(torch.tensor([ids])).logits, ref(torch.tensor([ids])).logits
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5, rtol=1e-5)
    # special tokens from the metadata: eos (and eot) ids, then the template's turn end
    assert src.tokenizer.eos_token_ids == tg.eos_token_ids
    assert src.tokenizer.bos_token_id == 1 and src.tokenizer.add_bos is False
    assert src.spec.chat_template and "<|im_start|>" in src.spec.chat_template


@requires_export
@pytest.mark.parametrize("family", FAMILIES)
def test_family_gguf_weights_equal_transformers_own_gguf_loader(family, family_gguf):
    """transformers' GGUF loader knows llama.cpp's conventions too: both read the same weights."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES, load_gguf_checkpoint

    from edgeslm.sources import load_source
    from edgeslm.testing_gguf import GGUF_ARCH

    if GGUF_ARCH[family] not in GGUF_SUPPORTED_ARCHITECTURES:
        pytest.skip(f"transformers' GGUF loader has no '{GGUF_ARCH[family]}' architecture")
    tg = family_gguf(family)
    src = load_source(tg.path)
    theirs = load_gguf_checkpoint(str(tg.path), return_tensors=True, model_to_load=src.module)["tensors"]
    mine = src.module.state_dict()
    assert set(theirs) == set(mine) - {"lm_head.weight"} or set(theirs) == set(mine)
    for name, t in theirs.items():
        np.testing.assert_array_equal(t.float().numpy(), mine[name].numpy(), err_msg=name)


@requires_export
@pytest.mark.parametrize("family", ["qwen2"])
def test_logits_equal_transformers_gguf_path(family, family_gguf):
    """Where transformers' GGUF path reads every config key the tiny model uses. The other
    families' files carry keys it ignores (rope_freqs, soft-caps, partial rotary, the sliding
    pattern; qwen3's attention.key_length: it cannot even build the tiny qwen3), so for those
    the weights are compared instead (above)."""
    import torch
    import transformers

    from edgeslm.sources import load_source

    tg = family_gguf(family)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tg.path.parent), gguf_file=tg.path.name,
                                                               dtype=torch.float32).eval()
    src = load_source(tg.path)
    ids = torch.tensor([src.tokenizer.encode(TEXT)])
    with torch.no_grad():
        np.testing.assert_allclose(src.module(ids).logits.numpy(), theirs(ids).logits.numpy(), atol=1e-5)


@requires_export
def test_family_configs_carry_what_llama_cpp_wrote(family_gguf):
    from edgeslm.sources.gguf import gguf_config
    from edgeslm.sources.gguf_file import GGUFFile

    def cfg(family):
        return gguf_config(GGUFFile(family_gguf(family).path))[1]

    llama = cfg("llama")["rope_scaling"]  # Llama 3 parameters recovered from rope_freqs
    assert llama["rope_type"] == "llama3" and llama["factor"] == 8.0
    assert np.isclose(llama["original_max_position_embeddings"], 256) and np.isclose(llama["high_freq_factor"], 4.0)
    g2 = cfg("gemma2")
    assert (g2["attn_logit_softcapping"], g2["final_logit_softcapping"], g2["sliding_window"]) == (5.0, 8.0, 5)
    assert g2["layer_types"] == ["sliding_attention", "full_attention"] and g2["query_pre_attn_scalar"] == 24
    g3 = cfg("gemma3")
    assert g3["layer_types"] == ["sliding_attention", "sliding_attention", "full_attention"]
    assert g3["rope_local_base_freq"] == 10000.0 and g3["rope_theta"] == 1e6
    assert g3["rope_scaling"] == {"rope_type": "linear", "factor": 8.0}
    p3 = cfg("phi3")
    assert p3["partial_rotary_factor"] == 0.75 and p3["sliding_window"] == 7
    assert p3["rope_scaling"]["rope_type"] == "longrope" and len(p3["rope_scaling"]["long_factor"]) == 24
    assert cfg("qwen3")["head_dim"] == 24 and cfg("qwen2")["tie_word_embeddings"] is False


def test_llama_cpp_layer_patterns_and_gemma_27b_query_scale():
    from edgeslm.arch.families import for_gguf_arch
    from edgeslm.arch.gguf_common import sliding_layers

    assert sliding_layers({}, 7, 6) == [True] * 5 + [False, True]  # gemma3: five local, one global
    assert sliding_layers({}, 4, 2) == [True, False, True, False]
    meta = {"general.architecture": "gemma2", "gemma2.embedding_length": 4608, "gemma2.block_count": 46,
            "gemma2.attention.head_count": 32, "gemma2.attention.head_count_kv": 16, "gemma2.attention.key_length": 128,
            "gemma2.feed_forward_length": 36864, "gemma2.attention.sliding_window": 4096}
    assert for_gguf_arch("gemma2").gguf_config(meta)["query_pre_attn_scalar"] == 144  # Gemma 2 27B
    meta["gemma2.block_count"] = 42
    assert for_gguf_arch("gemma2").gguf_config(meta)["query_pre_attn_scalar"] == 128


# -- refusals: one line, from the header ---------------------------------------------------

def _write(path, arch="llama", tensors=(("token_embd.weight", np.zeros((4, 32), np.float32), None),), **meta):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    for k, v in meta.items():
        w.add_uint32(k, v)
    for name, data, raw in tensors:
        w.add_tensor(name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _refused(path, error=ModelLoadError):
    from edgeslm.sources import load_source

    with pytest.raises(error) as exc:
        load_source(path)
    assert "\n" not in str(exc.value)
    return str(exc.value)


@requires_export
def test_unsupported_architecture_refused_from_the_metadata(tmp_path, capsys):
    import gguf

    from edgeslm.cli import main

    # its only tensor is a type edgeslm cannot decode: the architecture is refused first
    iq = np.zeros((4, 66), np.uint8)
    path = _write(tmp_path / "mamba.gguf", "mamba", [("blk.0.ssm_in.weight", iq, gguf.GGMLQuantizationType.IQ2_XXS)])
    msg = _refused(path, UnsupportedArchitectureError)
    assert "'mamba'" in msg and "gemma3" in msg and "phi3" in msg
    for verb in (["export", str(path), "-o", str(tmp_path / "o")], ["fit", str(path), "--target", "raspberry-pi-5"]):
        code = main(verb)
        err = capsys.readouterr().err
        assert code == 1 and err.startswith("error: ") and "'mamba'" in err and err.count("\n") == 1, verb


@requires_export
def test_unsupported_quant_type_named(tmp_path):
    import gguf

    iq = np.zeros((4, 66), np.uint8)
    path = _write(tmp_path / "iq.gguf", "llama", [("token_embd.weight", iq, gguf.GGMLQuantizationType.IQ2_XXS)],
                  **{"llama.embedding_length": 256, "llama.block_count": 1, "llama.attention.head_count": 4,
                     "llama.feed_forward_length": 512})
    msg = _refused(path)
    assert "IQ2_XXS" in msg and "token_embd.weight" in msg and "Q4_K" in msg


def test_damaged_files_are_one_line(tmp_path):
    from edgeslm.sources.gguf_file import GGUFFile

    pytest.importorskip("gguf")
    good = _write(tmp_path / "good.gguf").read_bytes()
    cases = {
        "not a GGUF": b"PK\x03\x04" + good[4:],
        "version 7": good[:4] + (7).to_bytes(4, "little") + good[8:],
        "big-endian": good[:4] + (3).to_bytes(4, "big") + good[8:],
        "truncated": good[:20],
        "runs past the end": good[:60],
        "needs bytes": good[:-16],
    }
    for expect, data in cases.items():
        p = tmp_path / "bad.gguf"
        p.write_bytes(data)
        with pytest.raises(ModelLoadError) as exc:
            GGUFFile(p)
        assert expect in str(exc.value) and "\n" not in str(exc.value), (expect, exc.value)
    # arrays of arrays nested deeper than any real file (a crafted file would exhaust the stack)
    nested = b"GGUF" + (3).to_bytes(4, "little") + (0).to_bytes(8, "little") + (1).to_bytes(8, "little")
    nested += (1).to_bytes(8, "little") + b"k" + (9).to_bytes(4, "little") + ((9).to_bytes(4, "little") + (1).to_bytes(8, "little")) * 5000
    p.write_bytes(nested)
    with pytest.raises(ModelLoadError, match="nests arrays too deep"):
        GGUFFile(p)
    # a tensor whose ggml type id does not exist
    i = good.index(b"token_embd.weight") + len(b"token_embd.weight") + 4 + 16
    p.write_bytes(good[:i] + (99).to_bytes(4, "little") + good[i + 4:])
    with pytest.raises(ModelLoadError, match="unknown ggml type 99"):
        GGUFFile(p)
    # a tensor offset pointing outside the file
    p.write_bytes(good[:i + 4] + (1 << 40).to_bytes(8, "little") + good[i + 12:])
    with pytest.raises(ModelLoadError, match="needs bytes"):
        GGUFFile(p)


def test_metadata_read_skips_the_vocabulary_until_asked(tmp_path):
    from edgeslm.sources.gguf_file import GGUFFile, StringArray

    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(tmp_path / "v.gguf"), "llama")
    w.add_token_list([f"tok{i}" for i in range(5000)])
    w.add_array("test.floats", [0.5, 1.5])
    w.add_string("test.text", "héllo")
    w.add_float64("test.f64", 2.25)
    w.add_bool("test.flag", True)
    w.add_int64("test.i64", -3)
    w.add_tensor("token_embd.weight", np.ones((2, 32), np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f = GGUFFile(tmp_path / "v.gguf")
    assert isinstance(f.metadata["tokenizer.ggml.tokens"], StringArray)
    assert f.small_metadata()["tokenizer.ggml.tokens"] == 5000
    assert f.strings("tokenizer.ggml.tokens")[4999] == "tok4999"
    assert f.metadata["test.floats"].tolist() == [0.5, 1.5] and f.metadata["test.text"] == "héllo"
    assert (f.metadata["test.f64"], f.metadata["test.flag"], f.metadata["test.i64"]) == (2.25, True, -3)
    t = f.tensors["token_embd.weight"]
    assert (t.shape, t.type_name) == ((2, 32), "F16") and f.dequantize(t.name).sum() == 64


# -- every family through the CLI: export to ONNX, then run ----------------------------------

@requires_export
@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_family_gguf_exports_to_onnx_and_runs(family, family_gguf, tmp_path, capsys):
    """``edgeslm export tiny.gguf -f onnx`` at fp32 with 100% greedy parity, then ``edgeslm run``
    (~20-40 s per family on 2 cores)."""
    import json

    pytest.importorskip("edgeslm_onnx")
    from edgeslm.cli import main

    tg = family_gguf(family)
    out = tmp_path / "bundle"
    # Phi-3's LongRoPE: an export picks one factor set by its context length (long above the
    # original 256); transformers switches per sequence and runs the short prompts short.
    ctx = ["--context-length", "256"] if family == "phi3" else []
    assert main(["export", str(tg.path), "-f", "onnx", "-o", str(out), *ctx]) == 0, capsys.readouterr().err
    parity = json.loads((out / "manifest.json").read_text())["parity"]
    assert parity["passed"] and parity["top1_agreement"] == 1.0, parity
    capsys.readouterr()
    code = main(["run", str(out), "--raw", "--prompt", "The capital of France is", "-n", "8", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert code == 0 and len(res["token_ids"]) >= 1


# -- sentencepiece vocabularies (Gemma, Phi-3, Llama 2 files) ---------------------------------

@requires_export
@pytest.mark.parametrize("arch", ["gemma3", "phi3", "llama"])
def test_sentencepiece_vocabulary_tokenizes_like_transformers_gguf_tokenizer(arch, tmp_path):
    """A ``tokenizer.ggml.model = llama`` vocabulary (scores, byte tokens, no merges) gives the ids
    transformers' GGUF tokenizer gives, BOS included (llama.cpp adds it to sentencepiece
    vocabularies unless told otherwise), and the template's turn end joins EOS."""
    import gguf
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from edgeslm.sources.gguf import gguf_tokenizer
    from edgeslm.sources.gguf_file import GGUFFile
    from edgeslm.testing import CORPUS

    bpe = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                                            show_progress=False))
    learned = [t for t, _ in sorted(bpe.get_vocab().items(), key=lambda kv: kv[1]) if t not in ("<unk>", "<s>", "</s>")]
    tokens = ["<unk>", "<s>", "</s>", "<start_of_turn>", "<end_of_turn>", *(f"<0x{b:02X}>" for b in range(256)), *learned]
    path = tmp_path / f"spm-{arch}.gguf"
    w = gguf.GGUFWriter(str(path), arch)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * 261 + [-float(i) for i in range(len(learned))])
    w.add_token_types([2, 3, 3, 3, 3] + [6] * 256 + [1] * len(learned))  # unknown, control, byte, normal
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template("{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
                        "{% endfor %}")
    w.add_tensor("token_embd.weight", np.zeros((len(tokens), 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    mine = gguf_tokenizer(GGUFFile(path))
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in ["The capital of France is Paris.", " leading space", "Ünïcödé 🙂 x", "<start_of_turn>user\nhi<end_of_turn>"]:
        assert mine.encode(text) == theirs.encode(text), text
    assert mine.add_bos and mine.encode("x")[0] == 1
    assert mine.eos_token_ids == (2, 4)
