"""The ONNX bundle opened by onnxruntime-genai (genai_config.json + model_genai.onnx): same greedy
tokens as our engine, on tiny models of every family (fast) and SmolLM2 int4-gguf (slow), for
both graphs: the torch.onnx graph (concat cache) and the graph writer's (GroupQueryAttention,
shared KV buffer, attention_mask front-end in model_genai.onnx)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_genai", reason="needs: pip install 'edgeslm-onnx[vendor]'")
pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("torch", "transformers", "onnxscript")),
    reason="needs the export extra: pip install 'edgeslm-onnx[export]'")

#: onnxruntime-genai opens both graphs; writer families: those the graph writer writes (others fall back to torch)
GENAI = {"graph": "torch"}
WRITER = {"graph": "writer"}
GRAPHS = {"torch": GENAI, "writer": WRITER}
FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"]


def genai_greedy(bundle_dir, prompt_ids, n):
    import onnxruntime_genai as og

    model = og.Model(str(bundle_dir))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt_ids) + n, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(np.array([prompt_ids], dtype=np.int32))
    out: list[int] = []
    while not gen.is_done() and len(out) < n:
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    return out


def _ours(bundle_dir, prompt_ids, n):
    import edgeslm
    from edgeslm.testing import engine_greedy

    with edgeslm.load(bundle_dir) as m:
        return engine_greedy(m.engine, prompt_ids, n)


@pytest.mark.parametrize("graph", list(GRAPHS))
@pytest.mark.parametrize("family", FAMILIES)
def test_genai_greedy_equals_engine(bundle_factory, family, graph):
    try:
        bundle = bundle_factory("onnx", family=family, options=GRAPHS[graph])
    except Exception as exc:
        if graph == "writer" and "graph writer cannot export" in str(exc):
            pytest.skip(str(exc))
        raise
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["artifacts"]["graph"]["kind"] == graph
    genai = manifest["interop"]["onnxruntime-genai"]
    assert genai["written"], genai
    assert set(genai["files"]) <= set(manifest["files"])  # hashed like every file
    prompt = [5, 17, 42, 99, 7, 3, 250]  # no EOS (id 2) in the prompt: genai would stop there
    ours = _ours(bundle, prompt, 12)
    theirs = genai_greedy(bundle, prompt, 12)
    cut = ours.index(2) + 1 if 2 in ours else len(ours)  # genai stops at EOS; ours runs on
    assert theirs == ours[:cut]


def test_writer_genai_graph_shares_the_weights(bundle_factory):
    """model_genai.onnx of a graph-writer bundle: attention_mask in, length inputs computed in-graph,
    KV dims symbolic, every weight read from model.onnx's external data file (no second copy)."""
    import onnx

    bundle = bundle_factory("onnx", options=WRITER)
    config = json.loads((bundle / "genai_config.json").read_text())
    assert config["search"]["past_present_share_buffer"] is True
    assert config["search"]["max_length"] == config["model"]["context_length"] == 128
    assert config["model"]["decoder"]["inputs"]["attention_mask"] == "attention_mask"
    g = onnx.load(str(bundle / "model_genai.onnx"), load_external_data=False).graph
    names = [i.name for i in g.input]
    assert names[:2] == ["input_ids", "attention_mask"] and "seqlens_k" not in names
    assert {i.type.tensor_type.shape.dim[2].dim_param for i in g.input if i.name.startswith("past_")} == {"max_length"}
    locations = {e.value for t in g.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"model.onnx.data"}
    weights = (bundle / "model.onnx.data").stat().st_size
    graphs = sum((bundle / f).stat().st_size for f in ("model.onnx", "model_genai.onnx"))
    assert sorted(p.name for p in bundle.glob("*.data")) == ["model.onnx.data"] and graphs < weights


@pytest.mark.parametrize("graph", list(GRAPHS))
def test_genai_tokenizer_matches_ours(bundle_factory, graph):
    import onnxruntime_genai as og

    import edgeslm

    bundle = bundle_factory("onnx", options=GRAPHS[graph])
    with edgeslm.load(bundle) as m:
        text = m.tokenizer.apply_chat_template([{"role": "user", "content": "the quick brown fox"}])
        ours = m.tokenizer.encode(text)
    tok = og.Tokenizer(og.Model(str(bundle)))
    assert list(tok.encode(text)) == ours


@pytest.mark.slow
@pytest.mark.parametrize("graph", list(GRAPHS))
def test_smollm2_in_onnxruntime_genai(smollm2_source, tmp_path_factory, graph):
    """SmolLM2 int4-gguf: genai's greedy answer to a chat prompt equals our engine's, ids and text;
    writer: the default export (graph=auto writes the graph writer's graph for int4-gguf)."""
    import onnxruntime_genai as og

    import edgeslm
    from edgeslm.exporting import export_model
    from edgeslm.testing import engine_greedy

    out = tmp_path_factory.mktemp("smollm2-ortg") / "int4"
    export_model(smollm2_source, out, format="onnx", precision="int4-gguf", context_length=256, parity=False,
                 options=GENAI if graph == "torch" else None)
    assert json.loads((out / "manifest.json").read_text())["artifacts"]["graph"]["kind"] == graph
    with edgeslm.load(out) as m:
        text = m.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
        prompt = m.tokenizer.encode(text)
        ours = engine_greedy(m.engine, prompt, 16)
    assert list(og.Tokenizer(og.Model(str(out))).encode(text)) == prompt
    theirs = genai_greedy(out, prompt, 16)
    eos = set(m.tokenizer.eos_token_ids)
    cut = next((i + 1 for i, t in enumerate(ours) if t in eos), len(ours))
    assert theirs == ours[:cut]


@pytest.mark.parametrize("graph", list(GRAPHS))
def test_verify_vendor_runs_onnxruntime_genai(bundle_factory, verify_vendor, graph):
    """`edgeslm verify --vendor` opens the bundle in onnxruntime-genai and finds the same greedy tokens."""
    verify_vendor(bundle_factory("onnx", options=GRAPHS[graph]), "onnxruntime-genai")
