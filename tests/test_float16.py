"""float16 storage: a model cast to float16 still runs, saves and takes float32 LoRA adapters."""

from __future__ import annotations

import numpy as np

import minipeft as mp
from minipeft.models import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel
from minipeft.peft import LoraConfig, get_peft_model


def _model() -> GPT2LMHeadModel:
    cfg = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    return GPT2LMHeadModel(cfg, seed=0).eval()


def test_float16_forward_is_close_to_float32():
    ids = mp.tensor(np.arange(12).reshape(2, 6) % 64)
    model = _model()
    ref = model(input_ids=ids, labels=ids)
    model.to(mp.float16)
    assert {p.dtype for p in model.parameters()} == {mp.float16}
    out = model(input_ids=ids, labels=ids)
    assert out.logits.dtype == mp.float16
    logits = out.logits.numpy().astype(np.float32)
    assert np.isfinite(logits).all()
    assert np.abs(logits - ref.logits.numpy()).max() < 2e-2
    assert abs(out.loss.item() - ref.loss.item()) < 1e-2


def test_float16_checkpoint_round_trip(tmp_path):
    model = _model().to(mp.float16)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=mp.float16)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert a.dtype == b.dtype == mp.float16, name
        assert np.array_equal(a.numpy(), b.numpy()), name


def test_lora_on_a_float16_base_keeps_float32_adapters_and_trains():
    model = _model().to(mp.float16)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False))
    adapters = [p for n, p in peft_model.named_parameters() if "lora_" in n]
    assert adapters and all(p.dtype == mp.float32 for p in adapters)
    ids = mp.tensor(np.arange(12).reshape(2, 6) % 64)
    out = peft_model(input_ids=ids, labels=ids)
    assert out.logits.dtype == mp.float16
    out.loss.backward()
    assert all(p.grad is not None and np.isfinite(p.grad).all() for p in adapters)
    frozen = [p for n, p in peft_model.named_parameters() if "lora_" not in n]
    assert all(p.grad is None for p in frozen)
