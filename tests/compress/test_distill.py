"""Distillation: the student starts from the teacher's weights and its KL to the teacher falls."""

import numpy as np
import pytest
import torch

from edgeslm.compress.distill import (DistillConfig, StudentConfig, distill, latest_checkpoint, make_student,
                                      windows)
from edgeslm.compress.model import count_parameters
from edgeslm.testing import CORPUS, requires_export
from edgeslm.verify.metrics import kl_divergence

pytestmark = requires_export


def _kl(teacher, student, batch):
    with torch.no_grad():
        t, s = teacher.module(batch).logits, student.module(batch).logits
    return float(kl_divergence(t.reshape(-1, t.shape[-1]).numpy(), s.reshape(-1, s.shape[-1]).numpy()).mean())


def _data(source):
    return [source.tokenizer.encode(text) for text in CORPUS * 3]


def test_student_shapes_and_initialization(tiny_source):
    st = make_student(tiny_source, StudentConfig(num_layers=1, intermediate_size=64, hidden_size=48, num_heads=2))
    s = st.spec
    assert (s.num_layers, s.hidden_size, s.intermediate_size, s.num_heads, s.num_kv_heads) == (1, 48, 64, 2, 2)
    assert count_parameters(st.module) == s.num_parameters < count_parameters(tiny_source.module)
    same = make_student(tiny_source, StudentConfig(num_layers=2))  # full size: an exact copy
    torch.testing.assert_close(same.module.model.embed_tokens.weight, tiny_source.module.model.embed_tokens.weight)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(same.module(ids).logits, tiny_source.module(ids).logits)


def test_distillation_reduces_kl_and_resumes(tiny_source, tmp_path):
    data = _data(tiny_source)
    held_out = windows(data, 32)[:6]
    student = make_student(tiny_source, StudentConfig(num_layers=1, intermediate_size=64))
    before = _kl(tiny_source, student, held_out)
    cfg = DistillConfig(steps=8, seq_len=32, batch_size=4, lr=3e-3, warmup=1, checkpoint_every=4)
    half = distill(tiny_source, student, data, DistillConfig(**{**cfg.__dict__, "steps": 4}), out_dir=tmp_path,
                   progress=False)
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-000004.pt"
    trained = distill(tiny_source, half, data, cfg, out_dir=tmp_path, resume=True, progress=False)
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-000008.pt"
    after = _kl(tiny_source, trained, held_out)
    assert after < 0.8 * before, (before, after)
    step = trained.spec.extra["compression"][-1]
    assert step["technique"] == "distill" and np.isfinite(step["loss_last"])


def test_too_little_text_is_a_clear_error(tiny_source):
    with pytest.raises(ValueError, match="training text"):
        windows([[1, 2, 3]], 32)


# -- hidden-state matching ------------------------------------------------------------------------
def _hidden(teacher, student, batch, pairs):
    from edgeslm.compress.distill import hidden_loss, layer_outputs

    with torch.no_grad(), layer_outputs(student.module, [s for s, _ in pairs]) as s_states, \
            layer_outputs(teacher.module, [t for _, t in pairs]) as t_states:
        student.module(batch)
        teacher.module(batch)
    return float(hidden_loss(s_states, t_states, pairs))


def test_hidden_loss_is_zero_for_a_copy_and_positive_for_a_pruned_model(tiny_source):
    from edgeslm.compress.distill import hidden_pairs
    from edgeslm.compress.prune import StructuredPruneConfig, structured_prune

    batch = windows(_data(tiny_source), 32)[:4]
    copy = make_student(tiny_source, StudentConfig(num_layers=2))  # every layer: an exact copy
    cfg = DistillConfig(hidden_weight=1.0)
    pairs = hidden_pairs(tiny_source, copy, cfg)
    assert pairs == [(0, 0), (1, 1)]
    assert _hidden(tiny_source, copy, batch, pairs) == pytest.approx(0.0, abs=1e-5)
    pruned = structured_prune(tiny_source, StructuredPruneConfig(head_ratio=0.5, mlp_ratio=0.5, multiple_of=8))
    assert hidden_pairs(tiny_source, pruned, cfg) == [(0, 0), (1, 1)]  # same depth: layer i <-> i
    assert _hidden(tiny_source, pruned, batch, pairs) > 0.01


def test_a_student_matches_the_teacher_layers_it_was_made_from(family_source):
    from edgeslm.compress.distill import hidden_pairs

    teacher = family_source("gemma3")  # 3 layers
    student = make_student(teacher, StudentConfig(num_layers=2))  # layers 0 and 2
    assert hidden_pairs(teacher, student, DistillConfig(hidden_weight=1.0)) == [(0, 0), (1, 2)]
    assert hidden_pairs(teacher, student, DistillConfig(hidden_weight=1.0, hidden_layers=((1, 1),))) == [(1, 1)]


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_hidden_matching_lowers_the_hidden_loss_more_than_kd_alone(family_source, family):
    from edgeslm.compress.distill import hidden_pairs

    teacher = family_source(family)
    data = _data(teacher)
    held_out = windows(data, 32)[:6]
    cfg = DistillConfig(steps=16, seq_len=32, batch_size=4, lr=3e-3, warmup=1, checkpoint_every=0, hidden_weight=1.0)
    after = {}
    for weight in (0.0, 1.0):
        student = make_student(teacher, StudentConfig(num_layers=2, intermediate_size=64))
        pairs = hidden_pairs(teacher, student, cfg)
        before = _hidden(teacher, student, held_out, pairs)
        trained = distill(teacher, student, data, DistillConfig(**{**cfg.__dict__, "hidden_weight": weight}),
                          progress=False)
        after[weight] = _hidden(teacher, trained, held_out, pairs)
    assert after[1.0] < 0.95 * before and after[1.0] < after[0.0], (before, after)
    step = trained.spec.extra["compression"][-1]
    assert step["hidden_pairs"] == pairs and np.isfinite([step["hidden_first"], step["hidden_last"]]).all()


@pytest.mark.parametrize("config, student, match", [
    ({"hidden_weight": -1.0}, {}, "must be >= 0"),
    ({"kd_weight": 0.0}, {}, "nothing to train on"),
    ({"hidden_weight": 1.0}, {"hidden_size": 48}, "needs the teacher's hidden size"),
    ({"hidden_weight": 1.0, "hidden_layers": ((0, 5),)}, {}, "hidden_layers must be"),
])
def test_bad_hidden_matching_configs_are_clear_errors(tiny_source, config, student, match):
    st = make_student(tiny_source, StudentConfig(num_layers=1, **student))
    with pytest.raises(ValueError, match=match):
        distill(tiny_source, st, _data(tiny_source), DistillConfig(steps=1, seq_len=32, **config), progress=False)


def test_a_shallower_model_without_history_needs_explicit_layers(tiny_source):
    from edgeslm.compress.distill import hidden_pairs
    from edgeslm.compress.model import derive

    st = make_student(tiny_source, StudentConfig(num_layers=1))
    bare = derive(tiny_source, st.module, {"technique": "unknown"})  # no student_init in its history
    bare.spec.extra["compression"] = [{"technique": "unknown"}]
    with pytest.raises(ValueError, match="give hidden_layers"):
        hidden_pairs(tiny_source, bare, DistillConfig(hidden_weight=1.0))


def test_resumed_hidden_matching_equals_an_uninterrupted_run(tiny_source, tmp_path):
    data = _data(tiny_source)
    cfg = DistillConfig(steps=6, seq_len=32, batch_size=2, lr=3e-3, warmup=1, checkpoint_every=3, hidden_weight=0.5)
    whole = distill(tiny_source, make_student(tiny_source, StudentConfig(num_layers=1)), data, cfg,
                    out_dir=tmp_path / "a", progress=False)

    class Stop(Exception):
        pass

    def interrupt(done, _module):
        if done == 4:  # after the step-3 checkpoint
            raise Stop

    with pytest.raises(Stop):
        distill(tiny_source, make_student(tiny_source, StudentConfig(num_layers=1)), data, cfg,
                out_dir=tmp_path / "b", progress=False, on_step=interrupt)
    assert latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step-000003.pt"
    resumed = distill(tiny_source, make_student(tiny_source, StudentConfig(num_layers=1)), data, cfg,
                      out_dir=tmp_path / "b", resume=True, progress=False)
    for a, b in zip(whole.module.state_dict().values(), resumed.module.state_dict().values()):
        torch.testing.assert_close(a, b)
    w, r = whole.spec.extra["compression"][-1], resumed.spec.extra["compression"][-1]
    keys = ("hidden_first", "hidden_last", "loss_last")
    assert [w[k] for k in keys] == [r[k] for k in keys]


def test_the_curve_is_scored_at_its_interval_and_a_resumed_run_continues_it(tiny_source, tmp_path):
    from edgeslm.compress.curve import Curve
    from edgeslm.compress.evaluate import Evaluator

    data, ev = _data(tiny_source), Evaluator(tiny_source, new_tokens=8)
    cfg = DistillConfig(steps=6, seq_len=32, batch_size=2, lr=3e-3, warmup=1, checkpoint_every=3)
    whole = Curve(ev, 3, tmp_path / "a" / "curve.json")
    distill(tiny_source, make_student(tiny_source, StudentConfig(num_layers=1)), data, cfg, out_dir=tmp_path / "a",
            progress=False, curve=whole)
    assert [p["step"] for p in whole.points] == [0, 3, 6]
    assert [p["tokens"] for p in whole.points] == [0, 3 * 2 * 32, 6 * 2 * 32]
    assert whole.points[-1]["kl_mean"] < whole.points[0]["kl_mean"]  # the student learns the teacher
    cpu = [p["cpu_seconds"] for p in whole.points]
    assert cpu[0] == 0 < cpu[1] < cpu[2]

    class Stop(Exception):
        pass

    def interrupt(done, _module):
        if done == 5:  # after the step-3 checkpoint and point
            raise Stop

    with pytest.raises(Stop):
        distill(tiny_source, make_student(tiny_source, StudentConfig(num_layers=1)), data, cfg,
                out_dir=tmp_path / "b", progress=False, on_step=interrupt, curve=Curve(ev, 3, tmp_path / "b" / "c.json"))
    resumed = Curve(ev, 3, tmp_path / "b" / "c.json")
    distill(tiny_source, make_student(tiny_source, StudentConfig(num_layers=1)), data, cfg, out_dir=tmp_path / "b",
            resume=True, progress=False, curve=resumed)
    keys = ("step", "tokens", "top1_agreement", "kl_mean", "perplexity")
    assert [[p[k] for k in keys] for p in resumed.points] == [[p[k] for k in keys] for p in whole.points]
    assert resumed.points[1]["cpu_seconds"] < resumed.points[2]["cpu_seconds"]  # the checkpoint's CPU carried on
    assert "| 6 | 384 |" in resumed.to_markdown()


def test_a_negative_curve_interval_is_refused(tiny_source):
    from edgeslm.compress.curve import Curve

    with pytest.raises(ValueError, match=">= 0"):
        Curve(None, -1)
