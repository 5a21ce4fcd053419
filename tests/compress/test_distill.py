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
