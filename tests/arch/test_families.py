"""Every family's decoder against transformers' own implementation, on tiny random configs.

For each registered family: full-sequence logits, and prefill-then-decode through the KV cache
token by token, equal the transformers model's logits on the same weights.
"""

from __future__ import annotations

import pytest

from edgeslm.testing import requires_export

pytestmark = requires_export

SEQ = 12  # longer than every tiny sliding window (5-6), so windows are exercised


def family_names():
    from edgeslm.arch.families import supported_names

    return supported_names()


def hf_model(cfg: dict, seed: int = 0):
    import torch
    import transformers

    config = transformers.AutoConfig.for_model(**cfg)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
            elif "norm" in name:
                p.normal_(0.0 if cfg["model_type"].startswith("gemma") else 1.0, 0.1)
            else:
                p.normal_(0.0, 0.1)  # biases
    return model


def check_against_transformers(cfg: dict, atol: float = 2e-4, context_length: int | None = None):
    import torch

    from edgeslm.arch.concat import ConcatCache
    from edgeslm.arch.decoder import from_state_dict
    from edgeslm.arch.families import decoder_config

    model = hf_model(cfg)
    dec = from_state_dict(decoder_config(model.config.to_dict()), model.state_dict(), context_length=context_length)
    ids = torch.randint(3, cfg["vocab_size"], (1, SEQ))
    with torch.no_grad():
        want = model(ids).logits[0]  # (S, V)
        got = dec.run(ids, ConcatCache(dec.empty_cache()), last_only=False)[0]
        torch.testing.assert_close(got, want, atol=atol, rtol=1e-4)
        # prefill 5, then one token at a time through the cache
        out = dec(ids[:, :5], *dec.empty_cache())
        torch.testing.assert_close(out[0][0], want[4], atol=atol, rtol=1e-4)
        past = list(out[1:])
        for t in range(5, SEQ):
            out = dec(ids[:, t:t + 1], *past)
            past = list(out[1:])
            torch.testing.assert_close(out[0][0], want[t], atol=atol, rtol=1e-4)
    assert past[0].shape[2] == SEQ


@pytest.mark.parametrize("family", family_names())
def test_family_matches_transformers(family):
    from edgeslm.testing import fake_config

    check_against_transformers(fake_config(family))


@pytest.mark.parametrize("rope", [
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
], ids=lambda r: r["rope_type"])
def test_llama_rope_scalings(rope):
    from edgeslm.testing import fake_config

    cfg = fake_config("llama")
    cfg["rope_parameters"] = {**rope, "rope_theta": 500000.0}
    check_against_transformers(cfg)


def test_phi3_longrope():
    from edgeslm.testing import fake_config

    cfg = fake_config("phi3")
    rd = int(cfg["head_dim"] * cfg["partial_rotary_factor"]) // 2
    cfg["original_max_position_embeddings"] = 64
    cfg["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
                              "short_factor": [1.0 + 0.1 * i for i in range(rd)],
                              "long_factor": [2.0 + 0.3 * i for i in range(rd)]}
    check_against_transformers(cfg, context_length=64)  # an export within the original length: short factors


@pytest.mark.parametrize("family", family_names())
def test_description_round_trips_and_counts(family):
    from edgeslm.arch.config import DecoderConfig
    from edgeslm.arch.families import decoder_config
    from edgeslm.testing import fake_config

    model = hf_model(fake_config(family))
    desc = decoder_config(model.config.to_dict())
    assert DecoderConfig.from_dict(desc.to_dict()) == desc
    assert desc.num_parameters() == sum(p.numel() for p in model.parameters())


def test_unknown_architecture_names_the_supported_ones():
    from edgeslm.arch.families import decoder_config
    from edgeslm.errors import UnsupportedArchitectureError

    with pytest.raises(UnsupportedArchitectureError, match="gemma3.*llama"):
        decoder_config({"model_type": "mamba"})
