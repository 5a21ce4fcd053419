"""SmolLM3's NoPE layers: the family added by the "Add a family" recipe (docs/DESIGN.md).

tests/arch/test_families.py already checks it against transformers (it lists every registered
family); this checks what is new in it: layers without rotary embedding.
"""

from edgeslm.testing import requires_export

pytestmark = requires_export


def test_nope_layers_have_no_rotary():
    from edgeslm.arch.families import decoder_config
    from edgeslm.testing import fake_config

    desc = decoder_config(fake_config("smollm3"))
    assert [b.attention.rope.scaling for b in desc.blocks] == ["default", "none", "default", "none"]


def test_nope_matters():
    """Giving the NoPE layers a rotary embedding changes the logits: the family's difference is real."""
    import dataclasses

    import torch

    from edgeslm.arch.config import RopeConfig
    from edgeslm.arch.decoder import from_state_dict
    from edgeslm.arch.families import decoder_config
    from edgeslm.testing import fake_config
    from tests.arch.test_families import hf_model

    cfg = fake_config("smollm3")
    model = hf_model(cfg)
    desc = decoder_config(model.config.to_dict())
    roped = desc.with_blocks(dataclasses.replace(b, attention=dataclasses.replace(b.attention, rope=RopeConfig()))
                             for b in desc.blocks)
    ids = torch.randint(3, cfg["vocab_size"], (1, 10))
    with torch.no_grad():
        want = model(ids).logits[0, -1]
        nope = from_state_dict(desc, model.state_dict())
        rope = from_state_dict(roped, model.state_dict())
        got = nope(ids, *nope.empty_cache())[0][0]
        other = rope(ids, *rope.empty_cache())[0][0]
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
    assert (other - want).abs().max() > 1e-2
