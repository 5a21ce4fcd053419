"""Loading Hugging Face-named weights into a module whose output head may be tied."""

from __future__ import annotations

from typing import Any, Mapping

TIED_HEAD = "lm_head.weight"


def load_weights(module, state_dict: Mapping[str, Any], tied: bool, what: str) -> None:
    """``module.load_state_dict`` that understands a tied head and names what does not fit.

    With ``tied`` the head is the embedding: a stored ``lm_head.weight`` is dropped (the
    embedding's is the one that counts) and its absence is not "missing". Any other missing or
    unexpected weight raises ModelLoadError: "``what``: missing [...], unexpected [...]".
    """
    from ..errors import ModelLoadError

    if tied:
        state_dict = {k: v for k, v in state_dict.items() if k != TIED_HEAD}
    missing, unexpected = module.load_state_dict(state_dict, strict=False)
    missing = [m for m in missing if not (tied and m == TIED_HEAD)]
    if missing or unexpected:
        raise ModelLoadError(f"{what}: missing {missing[:5]}, unexpected {list(unexpected)[:5]}")
