"""LoRA: training changes the model; merged weights equal base + adapters."""

import json

import pytest
import torch

from edgeslm.compress.data import read_chat_jsonl
from edgeslm.compress.lora import LoraConfig, encode_chat, lora_finetune
from edgeslm.testing import requires_export

from .conftest import logits

pytestmark = [requires_export, pytest.mark.filterwarnings("ignore::UserWarning")]
pytest.importorskip("peft", reason="needs the compress extra: pip install 'edgeslm[compress]'")

CHATS = [
    {"messages": [{"role": "user", "content": "What is the capital of France?"},
                  {"role": "assistant", "content": "Paris."}]},
    {"prompt": "Why is the sky blue?", "completion": "Air scatters blue light more than red light."},
]


def test_chat_jsonl_and_label_masking(tiny_source, tmp_path):
    f = tmp_path / "chat.jsonl"
    f.write_text("\n".join(json.dumps(c) for c in CHATS) + "\n")
    examples = read_chat_jsonl(f)
    assert len(examples) == 2 and examples[1][0]["role"] == "user"
    ids, labels = encode_chat(tiny_source, examples[0], 256)
    assert len(ids) == len(labels) and labels[0] == -100 and labels[-1] == ids[-1]


def test_merge_changes_outputs_and_equals_the_adapter_model(tiny_source):
    examples = [[{"role": "user", "content": c[0]}, {"role": "assistant", "content": c[1]}]
                for c in [("hi", "Paris is the capital of France."), ("sky?", "Blue light scatters.")]]
    cfg = LoraConfig(rank=4, alpha=8, steps=4, batch_size=2, lr=1e-2)
    merged, adapter = lora_finetune(tiny_source, examples, cfg, progress=False, return_adapter_model=True)
    ids = torch.tensor([tiny_source.tokenizer.encode("The capital of France is Paris.")])
    with torch.no_grad():
        unmerged = adapter(input_ids=ids).logits[0]
    base, out = logits(tiny_source), logits(merged)
    assert (out - base).abs().max() > 1e-3  # training changed the model
    torch.testing.assert_close(out, unmerged, atol=1e-4, rtol=1e-4)  # merge is exact
    assert type(merged.module).__name__ == "LlamaForCausalLM"  # plain model again, no peft layers
    assert not any("lora" in k for k in merged.module.state_dict())
