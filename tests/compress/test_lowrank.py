"""Low-rank factorization keeps the asked energy, matches the dense model, and round-trips."""

import pytest
import torch

from edgeslm.arch.lowrank import LowRankLinear
from edgeslm.compress.lowrank import LowRankConfig, low_rank_factorize
from edgeslm.compress.model import count_parameters, load_model, save_hf_folder

from edgeslm.testing import requires_export

from .conftest import logits

pytestmark = requires_export


def test_energy_rank_and_dense_agreement(lowrankish_source):
    lr = low_rank_factorize(lowrankish_source, LowRankConfig(energy=0.999, multiple_of=1))
    ranks = lr.spec.extra["low_rank"]
    assert len(ranks) == 6 and set(ranks.values()) == {8}  # 2 layers x gate/up/down
    assert all(e >= 0.999 for e in lr.spec.extra["energy_kept"].values())
    assert isinstance(lr.module.model.layers[0].mlp.up_proj, LowRankLinear)
    assert count_parameters(lr.module) == lr.spec.num_parameters < count_parameters(lowrankish_source.module)
    ref, out = logits(lowrankish_source), logits(lr)
    assert (ref - out).abs().max() < 0.05 * ref.abs().max()
    assert (ref.argmax(-1) == out.argmax(-1)).float().mean() >= 0.9


def test_energy_is_a_lower_bound_and_size_ratio_sets_rank(tiny_source):
    lr = low_rank_factorize(tiny_source, LowRankConfig(energy=0.5, multiple_of=1))
    assert all(0.5 <= e < 0.75 for e in lr.spec.extra["energy_kept"].values())
    sized = low_rank_factorize(tiny_source, LowRankConfig(energy=None, size_ratio=0.5, multiple_of=1,
                                                          targets=("down_proj",)))
    # down_proj is (64 out, 128 in): 0.5 * 64*128 / (64+128) = 21.3 -> rank 21
    assert set(sized.spec.extra["low_rank"].values()) == {21} and len(sized.spec.extra["low_rank"]) == 2


def test_export_module_builds_the_same_factorized_layers(lowrankish_source):
    lr = low_rank_factorize(lowrankish_source, LowRankConfig(energy=0.9, targets=("mlp", "attention")))
    m = lr.export_module()
    assert isinstance(m.model.layers[1].mlp.down_proj, LowRankLinear)
    ids = torch.tensor([lr.tokenizer.encode("Why is the sky blue?")])
    with torch.no_grad():
        torch.testing.assert_close(m(ids, *m.empty_cache())[0][0], lr.module(ids).logits[0, -1], atol=1e-4, rtol=1e-4)


def test_factorized_folder_round_trips(lowrankish_source, tmp_path):
    lr = low_rank_factorize(lowrankish_source, LowRankConfig(energy=0.99))
    q = load_model(save_hf_folder(lr, tmp_path / "lowrank"))
    assert q.spec.extra["low_rank"] == lr.spec.extra["low_rank"]
    assert q.spec.num_parameters == lr.spec.num_parameters
    torch.testing.assert_close(logits(q), logits(lr))


def test_nothing_to_factorize_is_an_error(tiny_source):
    with pytest.raises(ValueError):
        low_rank_factorize(tiny_source, LowRankConfig(energy=1.0, multiple_of=1))  # full rank saves nothing
