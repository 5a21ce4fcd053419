"""Structured pruning shrinks a standard Llama by the expected amount; magnitude pruning sparsifies."""

import pytest
import torch

from edgeslm.compress.model import count_parameters, load_model, save_hf_folder
from edgeslm.compress.prune import (MagnitudePruneConfig, StructuredPruneConfig, expected_parameters,
                                    magnitude_prune, sparsity, structured_prune)
from edgeslm.compress.report import module_sizes

from edgeslm.testing import requires_export

from .conftest import logits

pytestmark = requires_export


@pytest.mark.parametrize("mode, heads, kv", [("query", 2, 2), ("kv_group", 2, 1)])
def test_structured_prune_shrinks_by_the_expected_amount(tiny_source, mode, heads, kv):
    cfg = StructuredPruneConfig(head_ratio=0.5, mlp_ratio=0.5, heads_mode=mode, multiple_of=8)
    p = structured_prune(tiny_source, cfg)
    s = p.spec
    assert (s.num_heads, s.num_kv_heads, s.head_dim, s.intermediate_size) == (heads, kv, 16, 64)
    assert s.num_heads % s.num_kv_heads == 0  # GQA stays consistent
    n = count_parameters(p.module)
    assert n == s.num_parameters == expected_parameters(tiny_source.spec, cfg) < count_parameters(tiny_source.module)
    # the export module (our ONNX/OpenVINO graph) computes what the HF module computes
    m = p.export_module()
    ids = torch.tensor([tiny_source.tokenizer.encode("def fibonacci(n):")])
    with torch.no_grad():
        torch.testing.assert_close(m(ids, *m.empty_cache())[0][0], p.module(ids).logits[0, -1], atol=1e-4, rtol=1e-4)


def test_structured_prune_at_zero_is_identity(tiny_source):
    p = structured_prune(tiny_source, StructuredPruneConfig(head_ratio=0.0, mlp_ratio=0.0, multiple_of=1))
    torch.testing.assert_close(logits(p), logits(tiny_source))


@pytest.mark.parametrize("heads, mlp", [(1.5, 0.3), (0.3, 1.0), (-0.1, 0.0)])
def test_structured_prune_refuses_a_fraction_out_of_range(tiny_source, heads, mlp):
    with pytest.raises(ValueError, match=r"fraction of .* must be in \[0, 1\)"):
        structured_prune(tiny_source, StructuredPruneConfig(head_ratio=heads, mlp_ratio=mlp))


def test_pruned_model_saves_as_a_standard_hf_folder(tiny_source, tmp_path):
    p = structured_prune(tiny_source, StructuredPruneConfig(0.5, 0.5, multiple_of=8))
    q = load_model(save_hf_folder(p, tmp_path / "pruned"))
    assert q.spec.intermediate_size == 64 and q.spec.eos_token_ids == tiny_source.spec.eos_token_ids
    assert q.spec.bos_token_id == tiny_source.spec.bos_token_id
    assert q.tokenizer.chat_template == tiny_source.tokenizer.chat_template
    torch.testing.assert_close(logits(q), logits(p))


def test_magnitude_prune_reports_sparsity_and_only_zip_shrinks(tiny_source):
    p = magnitude_prune(tiny_source, MagnitudePruneConfig(sparsity=0.6))
    assert sparsity(p.module) == pytest.approx(0.6, abs=0.01)
    assert p.spec.extra["compression"][-1]["sparsity_achieved"] == pytest.approx(0.6, abs=0.01)
    assert count_parameters(p.module) == count_parameters(tiny_source.module)  # dense shapes
    (b0, z0), (b1, z1) = module_sizes(tiny_source.module), module_sizes(p.module)
    assert b1 == b0 and z1 < z0  # a dense file does not shrink; its zip does
    assert sparsity(tiny_source.module) == 0.0  # the source is untouched
