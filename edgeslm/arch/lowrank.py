"""Low-rank factorized linear layers, shared by the source module and the decoder."""

from __future__ import annotations

from torch import nn


class LowRankLinear(nn.Module):
    """A factorized linear layer ``W ~= up.weight @ down.weight`` (low-rank compression).

    ``down``: (rank, in) and ``up``: (out, rank); rank * (in + out) weights instead of in * out.
    The same class is placed inside the Hugging Face module and inside the decoder, so both
    hold the weights under identical names (``<layer>.down.weight``, ``<layer>.up.weight``).
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x):
        return self.up(self.down(x))  # (..., in) -> (..., rank) -> (..., out)


def apply_low_rank(module: nn.Module, ranks: dict[str, int]) -> nn.Module:
    """Replace each ``nn.Linear`` named in ``ranks`` (e.g. ``model.layers.0.mlp.up_proj``) by an
    untrained :class:`LowRankLinear` of that rank; weights are loaded afterwards."""
    for name, rank in ranks.items():
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name)
        dense = getattr(parent, attr)
        if isinstance(dense, LowRankLinear):
            continue
        setattr(parent, attr, LowRankLinear(dense.in_features, dense.out_features, int(rank),
                                            bias=dense.bias is not None))
    return module
