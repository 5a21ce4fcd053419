"""Every technique composes and the result exports to ONNX and generates; the CLI verbs work."""

import json

import pytest

from edgeslm.testing import CORPUS, requires_export

pytestmark = requires_export


def test_all_techniques_compose_and_export_to_onnx(tiny_source, tmp_path):
    """distill -> structured prune -> low-rank -> magnitude -> LoRA, then one ONNX export."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("peft")
    import edgeslm
    from edgeslm.compress.distill import DistillConfig, StudentConfig, distill, make_student
    from edgeslm.compress.evaluate import Evaluator
    from edgeslm.compress.lora import LoraConfig, lora_finetune
    from edgeslm.compress.lowrank import LowRankConfig, low_rank_factorize
    from edgeslm.compress.prune import MagnitudePruneConfig, StructuredPruneConfig, magnitude_prune, structured_prune
    from edgeslm.compress.report import measure
    from edgeslm.exporting import export_model

    data = [tiny_source.tokenizer.encode(t) for t in CORPUS * 2]
    m = make_student(tiny_source, StudentConfig(num_layers=1))
    m = distill(tiny_source, m, data, DistillConfig(steps=2, seq_len=32, batch_size=2, checkpoint_every=0),
                progress=False)
    m = structured_prune(m, StructuredPruneConfig(head_ratio=0.5, mlp_ratio=0.25, multiple_of=8))
    m = low_rank_factorize(m, LowRankConfig(size_ratio=0.5, targets=("mlp",)))
    m = magnitude_prune(m, MagnitudePruneConfig(sparsity=0.3))
    m = lora_finetune(m, [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]],
                      LoraConfig(rank=2, alpha=4, steps=1, batch_size=1), progress=False)
    techniques = [s["technique"] for s in m.spec.extra["compression"]]
    assert techniques == ["student_init", "distill", "structured_prune", "low_rank", "magnitude_prune", "lora"]

    bundle = export_model(m, tmp_path / "bundle", format="onnx", context_length=128, parity_tokens=8)
    assert bundle.manifest["parity"]["top1_agreement"] == 1.0  # the export is the compressed model
    assert bundle.spec.extra["low_rank"] == m.spec.extra["low_rank"]
    with edgeslm.load(bundle.path) as loaded:
        result = loaded.generate("The capital of France is", max_new_tokens=4, stop_on_eos=False)
    assert len(result.token_ids) == 4

    ev = Evaluator(tiny_source, new_tokens=8)
    row = measure("composed", str(bundle.path), ev, speed_tokens=4)
    assert row["runner"] == "onnx" and row["parameters"] == m.spec.num_parameters
    assert 0.0 <= row["top1_agreement"] <= 1.0 and row["kl_mean"] > 0 and row["decode_tokens_per_s"] > 0


def test_cli_compress_report_then_eval(tiny_hf, tmp_path, capsys):
    from edgeslm.cli import main

    out = tmp_path / "pruned"
    assert main(["compress", str(tiny_hf), "--prune-heads", "0.5", "--prune-mlp", "0.5", "-o", str(out),
                 "--report", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["parameters"][1] < summary["parameters"][0]
    rows = json.loads((out / "report.json").read_text())
    assert [r["runner"] for r in rows] == ["torch", "torch"] and rows[0]["top1_agreement"] == 1.0
    assert "| model |" in (out / "report.md").read_text()
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()

    assert main(["eval", str(out), "--reference", str(tiny_hf), "--new-tokens", "4", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["tokens"] == 12 and 0 <= res["top1_agreement"] <= 1 and res["perplexity_export"] > 0


def test_cli_nothing_to_do_is_a_usage_error(tiny_hf, tmp_path):
    from edgeslm.cli import main

    assert main(["compress", str(tiny_hf), "-o", str(tmp_path / "x")]) == 2


def test_cli_prune_fraction_out_of_range_is_a_usage_error(tiny_hf, tmp_path, capsys):
    from edgeslm.cli import main

    assert main(["compress", str(tiny_hf), "--prune-heads", "1.5", "-o", str(tmp_path / "x")]) == 2
    assert "fraction of heads to remove must be in [0, 1), not 1.5" in capsys.readouterr().err


def test_cli_distill_with_checkpoints_and_finetune(tiny_hf, tmp_path, capsys):
    pytest.importorskip("peft")
    from edgeslm.cli import main

    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(CORPUS * 3))
    out = tmp_path / "student"
    assert main(["distill", str(tiny_hf), "-o", str(out), "--layers", "1", "--intermediate", "64", "--text", str(text),
                 "--steps", "2", "--seq-len", "32", "--checkpoint-every", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["parameters"][1] < summary["parameters"][0]
    assert [p.name for p in sorted((out / "checkpoints").glob("*.pt"))] == ["step-000001.pt", "step-000002.pt"]
    # the agreement curve: step 0 and the last step (default interval 50 > 2 steps), on disk and in the summary
    curve = json.loads((out / "curve.json").read_text())["points"]
    assert [p["step"] for p in curve] == [0, 2] and [p["tokens"] for p in curve] == [0, 2 * 4 * 32]
    assert curve == summary["curve"]["points"] and 0 < curve[1]["cpu_seconds"]
    assert all(0 <= p["top1_agreement"] <= 1 and p["kl_mean"] > 0 for p in curve)

    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"prompt": "hi", "completion": "hello there"}) + "\n")
    tuned = tmp_path / "tuned"
    assert main(["finetune", str(out), "--data", str(chats), "-o", str(tuned), "--steps", "2", "--rank", "2",
                 "--json"]) == 0
    history = json.loads((tuned / "edgeslm_compression.json").read_text())
    assert [h["technique"] for h in history] == ["student_init", "distill", "lora"]
