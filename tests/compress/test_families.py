"""Every technique on a Llama and on a Gemma-shaped tiny model (sandwich (1+w) norms, q/k norms,
sliding/global layers, soft-capping): the result re-loads from its folder, its spec counts the
module's parameters, and it exports to ONNX with 100% fp32 parity against itself. Phi-3's fused
projections are cut the same way (structured pruning, student init)."""

import pytest
import torch

from edgeslm.compress.model import count_parameters, load_model, save_hf_folder
from edgeslm.testing import CORPUS, requires_export

from .conftest import logits

pytestmark = requires_export

FAMILIES = ["llama", "gemma3"]


def _structured(src):
    from edgeslm.compress.prune import StructuredPruneConfig, structured_prune

    return structured_prune(src, StructuredPruneConfig(head_ratio=0.5, mlp_ratio=0.5, multiple_of=8))


def _magnitude(src):
    from edgeslm.compress.prune import MagnitudePruneConfig, magnitude_prune

    return magnitude_prune(src, MagnitudePruneConfig(sparsity=0.5))


def _wanda(src):
    from edgeslm.compress.sparsity import SparsityConfig, activation_sparsify

    return activation_sparsify(src, SparsityConfig(sparsity=0.5, pattern="2:4"), calibration_tokens=64)


def _sparsegpt(src):
    from edgeslm.compress.sparsity import SparsityConfig, activation_sparsify

    return activation_sparsify(src, SparsityConfig(sparsity=0.5, method="sparsegpt"), calibration_tokens=64)


def _lowrank(src):
    from edgeslm.compress.lowrank import LowRankConfig, low_rank_factorize

    return low_rank_factorize(src, LowRankConfig(energy=None, size_ratio=0.5, targets=("mlp", "attention")))


def _whitened(src):
    from edgeslm.compress.lowrank import LowRankConfig, low_rank_factorize

    return low_rank_factorize(src, LowRankConfig(energy=None, size_ratio=0.5, whiten=True, calibration_tokens=64))


def _distilled(src):
    from edgeslm.compress.distill import DistillConfig, StudentConfig, distill, make_student

    data = [src.tokenizer.encode(t) for t in CORPUS * 2]
    student = make_student(src, StudentConfig(num_layers=2, intermediate_size=64, hidden_size=48, num_heads=2))
    return distill(src, student, data, DistillConfig(steps=2, seq_len=32, batch_size=2, checkpoint_every=0),
                   progress=False)


def _lora(src):
    pytest.importorskip("peft")
    from edgeslm.compress.lora import LoraConfig, lora_finetune

    chats = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]]
    return lora_finetune(src, chats, LoraConfig(rank=2, alpha=4, steps=2, batch_size=1), progress=False)


TECHNIQUES = {"structured_prune": _structured, "magnitude_prune": _magnitude, "wanda_2of4": _wanda, "sparsegpt": _sparsegpt,
              "low_rank": _lowrank, "low_rank_whitened": _whitened, "distill": _distilled, "lora": _lora}


@pytest.mark.parametrize("technique", list(TECHNIQUES))
@pytest.mark.parametrize("family", FAMILIES)
def test_technique_reloads_counts_and_exports(family_source, family, technique, tmp_path):
    pytest.importorskip("onnxruntime")
    from edgeslm.exporting import export_model

    src = family_source(family)
    out = TECHNIQUES[technique](src)
    assert out.spec.architecture == src.spec.architecture
    assert out.spec.num_parameters == count_parameters(out.module)
    again = load_model(save_hf_folder(out, tmp_path / "folder"))
    assert again.spec.num_parameters == out.spec.num_parameters == count_parameters(again.module)
    torch.testing.assert_close(logits(again), logits(out))
    bundle = export_model(out, tmp_path / "bundle", format="onnx", context_length=64, parity_tokens=8)
    assert bundle.manifest["parity"]["top1_agreement"] == 1.0  # the export computes the compressed model


def test_gemma_sandwich_norms_survive_a_narrower_student(family_source):
    """Hidden dims cut from every norm role (pre, post-attention, pre/post-feedforward) and the
    (1 + w) offset kept: the student's norm weights are the teacher's, sliced."""
    from edgeslm.compress.distill import StudentConfig, make_student

    src = family_source("gemma3")
    norms = src.spec.description.blocks[0].norms
    assert set(norms) == {"attn_pre", "attn_post", "mlp_pre", "mlp_post"}
    student = make_student(src, StudentConfig(num_layers=3, hidden_size=48))
    emb = src.module.model.embed_tokens.weight
    kept = emb.norm(dim=0).topk(48).indices.sort().values
    for attr in norms.values():
        torch.testing.assert_close(getattr(student.module.model.layers[1], attr).weight,
                                   getattr(src.module.model.layers[1], attr).weight[kept])
    assert student.spec.description.norm.offset == 1.0
    assert [b.is_sliding for b in student.spec.description.blocks] == [True, True, False]


def test_two_layer_gemma_student_keeps_the_chosen_layers_types(family_source):
    from edgeslm.compress.distill import StudentConfig, make_student

    student = make_student(family_source("gemma3"), StudentConfig(num_layers=2))  # layers 0 and 2
    assert [b.is_sliding for b in student.spec.description.blocks] == [True, False]


def test_fused_projections_are_cut_consistently(family_source):
    """Phi-3: qkv_proj rows [q | k | v] and gate_up_proj rows [gate | up] are cut per head and
    channel; at ratio 0 the model is unchanged, at 0.5 the export module agrees with transformers."""
    from edgeslm.compress.prune import StructuredPruneConfig, structured_prune

    src = family_source("phi3")
    same = structured_prune(src, StructuredPruneConfig(head_ratio=0.0, mlp_ratio=0.0, multiple_of=1))
    torch.testing.assert_close(logits(same), logits(src))
    p = structured_prune(src, StructuredPruneConfig(head_ratio=0.5, mlp_ratio=0.5, multiple_of=8))
    assert (p.spec.num_heads, p.spec.intermediate_size) == (2, 64)
    assert p.spec.num_parameters == count_parameters(p.module)
    m = p.export_module()
    ids = torch.tensor([src.tokenizer.encode("def fibonacci(n):")])
    with torch.no_grad():
        torch.testing.assert_close(m(ids, *m.empty_cache())[0][0], p.module(ids).logits[0, -1], atol=1e-4, rtol=1e-4)


def test_factorized_layers_are_refused_by_structured_pruning(family_source):
    from edgeslm.compress.prune import StructuredPruneConfig, structured_prune

    lr = _lowrank(family_source("llama"))
    with pytest.raises(ValueError, match="factorized layer"):
        structured_prune(lr, StructuredPruneConfig(0.5, 0.5, multiple_of=8))


def test_cli_compress_and_distill_a_gemma_folder(family_source, tmp_path, capsys):
    import json

    from edgeslm.cli import main

    folder = str(family_source("gemma3").path)
    out = tmp_path / "c"
    assert main(["compress", folder, "--prune-heads", "0.5", "--prune-mlp", "0.5", "--sparsity-method", "wanda",
                 "--sparsity-pattern", "2:4", "--int4", "gptq", "-o", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["parameters"][1] < summary["parameters"][0]
    history = json.loads((out / "edgeslm_compression.json").read_text())
    assert [h["technique"] for h in history] == ["structured_prune", "wanda", "int4_gptq"]
    assert load_model(out).spec.architecture == "gemma3"
    lr = tmp_path / "lr"
    assert main(["compress", folder, "--low-rank-size", "0.6", "--low-rank-targets", "mlp,attention",
                 "--low-rank-whiten", "--low-rank-global", "-o", str(lr), "--json"]) == 0
    capsys.readouterr()
    text = tmp_path / "t.txt"
    text.write_text("\n".join(CORPUS * 3))
    student = tmp_path / "s"
    assert main(["distill", folder, "--layers", "2", "--intermediate", "64", "--text", str(text), "--steps", "2",
                 "--seq-len", "32", "--checkpoint-every", "0", "--hidden-weight", "1", "-o", str(student),
                 "--json"]) == 0
    assert load_model(student).spec.num_layers == 2
    step = json.loads((student / "edgeslm_compression.json").read_text())[-1]
    assert step["hidden_weight"] == 1.0 and step["hidden_pairs"] == [[0, 0], [1, 2]]  # layers 0 and 2 of 3


# -- what the table above does not run per family (issue #19): Wanda unstructured, whitened low-rank
# with global ranks, int4 round-to-nearest, and recovery (distillation from the original model) of a
# structured-pruned and of a sparse model. Their export paths are the ones tested above (zeros, factor
# pairs, a smaller model); int4 exports per family are in test_activation_aware.py.
def _wanda50(src):
    from edgeslm.compress.sparsity import SparsityConfig, activation_sparsify

    return activation_sparsify(src, SparsityConfig(sparsity=0.5), calibration_tokens=64)


def _whitened_global(src):
    from edgeslm.compress.lowrank import LowRankConfig, low_rank_factorize

    return low_rank_factorize(src, LowRankConfig(energy=None, size_ratio=0.6, targets=("mlp", "attention"),
                                                 whiten=True, allocation="global", calibration_tokens=64))


def _rtn(src):
    from edgeslm.compress.gptq import QuantizeConfig, quantize_weights

    return quantize_weights(src, QuantizeConfig(method="rtn"))


def _recover(src, damaged, keep_zeros=False):
    """Distillation from the original model into the damaged one; returns (before, after, model):
    the KL to the original on the training windows before and after 12 steps."""
    from edgeslm.compress.distill import DistillConfig, distill, windows

    from .test_distill import _kl

    data = [src.tokenizer.encode(t) for t in CORPUS * 3]
    held = windows(data, 32)[:6]
    before = _kl(src, damaged, held)
    out = distill(src, damaged, data, DistillConfig(steps=12, seq_len=32, batch_size=4, lr=3e-3, warmup=1,
                                                    checkpoint_every=0, keep_zeros=keep_zeros), progress=False)
    return before, _kl(src, out, held), out


MORE = {"wanda_50": _wanda50, "low_rank_whitened_global": _whitened_global, "int4_rtn": _rtn}


@pytest.mark.parametrize("technique", list(MORE))
@pytest.mark.parametrize("family", FAMILIES)
def test_more_techniques_reload_and_count(family_source, family, technique, tmp_path):
    from edgeslm.compress import layout
    from edgeslm.compress.gptq import rtn
    from edgeslm.compress.prune import sparsity

    src = family_source(family)
    out = MORE[technique](src)
    assert out.spec.num_parameters == count_parameters(out.module)
    again = load_model(save_hf_folder(out, tmp_path / "folder"))
    torch.testing.assert_close(logits(again), logits(out))
    if technique == "wanda_50":
        assert sparsity(out.module) == pytest.approx(0.5)
    elif technique == "low_rank_whitened_global":
        assert out.spec.extra["low_rank"] and out.spec.num_parameters < src.spec.num_parameters
    else:  # every decoder weight on the int4 grid: rounding again changes nothing
        for _, lin in layout.dense_linears(out.module, out.spec.description):
            torch.testing.assert_close(rtn(lin.weight.detach()), lin.weight.detach())


@pytest.mark.parametrize("damage", ["structured_prune", "wanda_50"])
@pytest.mark.parametrize("family", FAMILIES)
def test_recovery_from_the_original_lowers_kl(family_source, family, damage, tmp_path):
    """The recipe's `recover` step: the pruned (smaller) or sparse model learns from the unpruned one;
    a sparse model keeps its zeros; the result re-loads."""
    from edgeslm.compress.prune import sparsity

    src = family_source(family)
    damaged = _structured(src) if damage == "structured_prune" else _wanda50(src)
    before, after, out = _recover(src, damaged, keep_zeros=damage == "wanda_50")
    assert after < 0.8 * before, (before, after)
    if damage == "wanda_50":
        assert sparsity(out.module) == pytest.approx(0.5)
    assert [h["technique"] for h in out.spec.extra["compression"]][-2:] == [damage.replace("_50", ""), "distill"]
    torch.testing.assert_close(logits(load_model(save_hf_folder(out, tmp_path / "f"))), logits(out))
