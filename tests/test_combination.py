"""One model carrying a LoRA adapter and a bottleneck adapter trained together (UniPELT-style,
without gates): two tuners on one model, the trainable count the sum of the two, saved and
loaded as two adapters, each in its own library's format."""

from __future__ import annotations

import json

import numpy as np

import minipeft as mp
from minipeft.models import GPT2Config, GPT2LMHeadModel
from minipeft.optim import AdamW
from minipeft.peft import LoraConfig, PeftModel, SeqBnConfig, get_peft_model

IDS = np.array([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]])


def gpt2() -> GPT2LMHeadModel:
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=16,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    return GPT2LMHeadModel(cfg, seed=0).eval()


def logits(model) -> np.ndarray:
    with mp.no_grad():
        return model(input_ids=IDS).logits.numpy()


def count(config) -> int:
    return get_peft_model(gpt2(), config).get_nb_trainable_parameters()[0]


def combined() -> PeftModel:
    pm = get_peft_model(gpt2(), LoraConfig(r=4, lora_alpha=8), "lora")
    pm.add_adapter("bottleneck", SeqBnConfig())
    pm.set_adapter(["lora", "bottleneck"])
    return pm


def test_both_train_together_and_the_count_is_the_sum(tmp_path):
    pm = combined()
    lora, bottleneck = count(LoraConfig(r=4, lora_alpha=8)), count(SeqBnConfig())
    assert lora == 2 * 4 * (32 + 96) and bottleneck == 2 * (2 * 32 * 2 + 32 + 2)
    assert pm.get_nb_trainable_parameters()[0] == lora + bottleneck
    assert pm.active_adapters == ["lora", "bottleneck"]
    start = {n: p.numpy().copy() for n, p in pm.named_parameters() if p.requires_grad}
    opt = AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        out = pm(input_ids=IDS, labels=IDS)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    moved = {n for n, p in pm.named_parameters() if p.requires_grad
             and np.abs(p.numpy() - start[n]).max() > 0}  # fmt: skip
    assert any("lora_B" in n for n in moved) and any(".adapters.bottleneck." in n for n in moved)
    frozen = [n for n, p in pm.named_parameters() if not p.requires_grad]
    assert frozen and not any("lora_" in n or ".adapters." in n for n in frozen)

    pm.save_pretrained(tmp_path)
    lora_config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert lora_config["peft_type"] == "LORA"
    assert (tmp_path / "bottleneck" / "adapter.safetensors").is_file()  # AdapterHub's layout
    loaded = PeftModel.from_pretrained(gpt2(), tmp_path / "lora", "lora")
    loaded.load_adapter(tmp_path / "bottleneck", "bottleneck")
    loaded.set_adapter(["lora", "bottleneck"])
    np.testing.assert_array_equal(logits(loaded), logits(pm))
    assert loaded.get_nb_trainable_parameters()[0] == 0  # loaded for inference


def test_each_adapter_alone_and_disabling_both():
    pm = combined()
    rng = np.random.default_rng(0)
    for _, p in pm.named_parameters():
        if p.requires_grad:
            p.data[...] = rng.normal(0, 0.2, p.shape).astype(p.dtype)
    both = logits(pm)
    pm.set_adapter("lora")
    only_lora = logits(pm)
    pm.set_adapter("bottleneck")
    only_bn = logits(pm)
    assert len({round(float(a.sum()), 6) for a in (both, only_lora, only_bn)}) == 3
    with pm.disable_adapter():
        np.testing.assert_array_equal(logits(pm), logits(gpt2()))
    pm.set_adapter(["lora", "bottleneck"])
    np.testing.assert_array_equal(logits(pm), both)
