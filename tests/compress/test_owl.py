"""Per-layer sparsity (OWL, issue #19): the ratios average to the target, stay within +- lambda,
follow the layers' outlier shares, and bad options are refused before any work."""

import json

import pytest
import torch

from edgeslm.testing import requires_export

pytestmark = requires_export


def _layer_zeros(module, desc) -> dict[int, float]:
    """Measured fraction of zeros per decoder layer (its dense linears together)."""
    from edgeslm.compress import layout

    zeros: dict[int, list[int]] = {}
    for name, lin in layout.dense_linears(module, desc):
        z = zeros.setdefault(int(name.split(".")[2]), [0, 0])
        z[0] += int((lin.weight == 0).sum())
        z[1] += lin.weight.numel()
    return {i: z / n for i, (z, n) in zeros.items()}


def test_owl_ratios_average_to_the_target_within_the_bound():
    from edgeslm.compress.sparsity import owl_ratios

    shares = {0: 0.010, 1: 0.002, 2: 0.004, 3: 0.003}
    sizes = {0: 100, 1: 300, 2: 300, 3: 50}  # unequal layers: the mean is size-weighted
    r = owl_ratios(shares, sizes, 0.5, 0.08)
    assert sum(r[i] * sizes[i] for i in r) / sum(sizes.values()) == pytest.approx(0.5)
    assert max(abs(v - 0.5) for v in r.values()) == pytest.approx(0.08)  # the farthest layer at the bound
    assert sorted(r, key=r.get) == sorted(shares, key=shares.get, reverse=True)  # more outliers, fewer zeros
    assert owl_ratios({0: 0.1, 1: 0.1}, {0: 5, 1: 5}, 0.5, 0.08) == {0: 0.5, 1: 0.5}  # alike: uniform


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_owl_meets_the_overall_target_with_per_layer_ratios(family_source, family, method):
    from edgeslm.compress.prune import sparsity
    from edgeslm.compress.sparsity import SparsityConfig, activation_sparsify

    src = family_source(family)
    lam = 0.1
    out = activation_sparsify(src, SparsityConfig(0.5, method=method, layerwise="owl", owl_lambda=lam, owl_m=3.0),
                              calibration_tokens=64)
    step = out.spec.extra["compression"][-1]
    planned, shares = step["layer_sparsity"], step["layer_outlier_share"]
    assert len(planned) == src.spec.description.num_layers == len(shares)
    assert step["sparsity_achieved"] == pytest.approx(0.5, abs=1 / 64)  # per-row rounding (fan-in >= 64)
    assert sparsity(out.module) == pytest.approx(step["sparsity_achieved"], abs=0.01)  # norms/biases dense
    assert max(planned) - min(planned) >= lam - 1e-6  # the ratios differ ...
    assert all(abs(r - 0.5) <= lam + 1e-6 for r in planned)  # ... within the bound
    assert planned.index(min(planned)) == shares.index(max(shares))  # most outliers: fewest zeros
    measured = _layer_zeros(out.module, out.spec.description)
    for i, r in enumerate(planned):  # each layer got its own ratio
        assert measured[i] == pytest.approx(r, abs=1 / 64)


def test_owl_differs_from_uniform_and_uniform_is_unchanged(tiny_source):
    from edgeslm.compress.sparsity import SparsityConfig, activation_sparsify

    uni = activation_sparsify(tiny_source, SparsityConfig(0.5), calibration_tokens=64)
    assert "layer_sparsity" not in uni.spec.extra["compression"][-1]
    zeros = _layer_zeros(uni.module, uni.spec.description)
    assert all(z == pytest.approx(0.5) for z in zeros.values())
    owl = activation_sparsify(tiny_source, SparsityConfig(0.5, layerwise="owl", owl_m=3.0), calibration_tokens=64)
    assert any(not torch.equal(a, b) for a, b in zip(uni.module.parameters(), owl.module.parameters()))


@pytest.mark.parametrize("kw, message", [
    ({"layerwise": "owls"}, "layerwise must be 'uniform' or 'owl'"),
    ({"layerwise": "owl", "pattern": "2:4"}, "keeps 2 of every 4 weights in every layer by definition"),
    ({"layerwise": "owl", "owl_lambda": 0.6}, r"sparsity \+- owl_lambda inside \[0, 1\)"),
    ({"layerwise": "owl", "owl_lambda": 0.0}, "owl_lambda must be > 0"),
    ({"layerwise": "owl", "owl_m": 0.0}, "owl_m .* must be > 0"),
])
def test_bad_owl_options_are_refused_before_any_work(kw, message):
    from edgeslm.compress.sparsity import SparsityConfig, activation_sparsify

    with pytest.raises(ValueError, match=message):
        activation_sparsify(None, SparsityConfig(0.5, **kw))  # refused before the model is touched


@pytest.mark.parametrize("body, message", [
    ('method = "wanda"\namount = 0.5\nlayerwise = "owl"\npattern = "2:4"', "is for unstructured wanda or sparsegpt"),
    ('method = "magnitude"\namount = 0.5\nlayerwise = "owl"', "is for unstructured wanda or sparsegpt"),
    ('method = "structured"\nheads = 0.5\nlayerwise = "owl"', "is for unstructured wanda or sparsegpt"),
    ('method = "wanda"\namount = 0.5\nlayerwise = "OWL"', "layerwise must be one of uniform, owl"),
    ('method = "wanda"\namount = 0.5\nlayerwise = "owl"\nowl_lambda = 0.5', "owl_lambda must be > 0 with amount"),
    ('method = "sparsegpt"\namount = 0.5\nlayerwise = "owl"\nowl_m = -1', "owl_m must be > 0"),
])
def test_recipe_refuses_bad_owl_steps(body, message):
    from edgeslm.compress.recipe import RecipeError, parse_recipe
    from edgeslm.compress.recipe import tomllib

    with pytest.raises(RecipeError, match=message):
        parse_recipe(tomllib.loads('[[step]]\nkind = "prune"\n' + body))


def test_recipe_and_cli_run_owl(tiny_hf, tmp_path, capsys):
    from edgeslm.cli import main
    from edgeslm.compress.recipe import parse_recipe

    step = {"kind": "prune", "method": "sparsegpt", "amount": 0.5, "layerwise": "owl", "owl_lambda": 0.1,
            "calibration_tokens": 64}
    rec = parse_recipe({"step": [step]})
    assert rec.steps[0].params.describe() == "sparsegpt sparsity 50% (OWL per-layer, +-0.1)"
    f = tmp_path / "owl.toml"
    f.write_text(rec.to_toml())
    assert main(["recipe", "run", str(f), "-m", str(tiny_hf), "-o", str(tmp_path / "r"), "--no-eval"]) == 0
    history = json.loads((tmp_path / "r" / "01-prune" / "edgeslm_compression.json").read_text())
    assert history[-1]["layerwise"] == "owl" and len(history[-1]["layer_sparsity"]) == 2
    assert history[-1]["calibration_tokens"] == 64
    out = tmp_path / "c"
    assert main(["compress", str(tiny_hf), "--sparsity", "0.5", "--sparsity-method", "wanda", "--sparsity-layerwise",
                 "owl", "--owl-lambda", "0.05", "--calibration-tokens", "32", "-o", str(out), "--json"]) == 0
    step = json.loads((out / "edgeslm_compression.json").read_text())[-1]
    assert step["owl_lambda"] == 0.05 and step["calibration_tokens"] == 32 and len(step["layer_sparsity"]) == 2
    capsys.readouterr()
    assert main(["compress", str(tiny_hf), "--sparsity", "0.5", "--sparsity-layerwise", "owl",
                 "-o", str(tmp_path / "m")]) == 2  # magnitude has no per-layer option
    assert "need --sparsity-method wanda or sparsegpt" in capsys.readouterr().err
