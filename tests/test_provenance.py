"""An adapter knows its base: the fingerprint's properties and the load-time check."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minipeft as mp
from minipeft.models import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel
from minipeft.peft import LoraConfig, PeftModel, get_peft_model
from minipeft.peft.provenance import BaseModelMismatchWarning, base_fingerprint

SIZES = {"n_layer": 1, "n_head": 2, "n_embd": 16, "vocab_size": 32, "n_positions": 8}


def _model(seed: int = 0) -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(**SIZES), seed=seed)


@given(seed=st.integers(0, 2**16), pick=st.integers(0, 10**6), delta=st.sampled_from([1e-2, 1.0]))
def test_any_change_of_a_weight_changes_the_fingerprint(seed, pick, delta):
    model = _model(seed)
    before = base_fingerprint(model)
    assert base_fingerprint(model) == before  # a pure function of the weights
    params = [p for _, p in sorted(model.named_parameters())]
    p = params[pick % len(params)]
    flat = p.data.reshape(-1)
    with mp.no_grad():
        flat[pick % flat.size] += delta
    assert base_fingerprint(model) != before


@given(seed=st.integers(0, 2**16))
def test_a_float16_copy_is_the_same_base(seed):
    model = _model(seed)
    rounded = _model(seed)
    with mp.no_grad():
        for (_, p), (_, q) in zip(model.named_parameters(), rounded.named_parameters()):
            q.data[...] = p.data.astype(np.float16)  # the checkpoint stored in float16
    assert base_fingerprint(rounded.to(mp.float16)) == base_fingerprint(rounded)


def test_modules_to_save_are_left_out():
    cfg = GPT2Config(num_labels=3, pad_token_id=0, **SIZES)
    a, b = GPT2ForSequenceClassification(cfg, seed=0), GPT2ForSequenceClassification(cfg, seed=0)
    with mp.no_grad():
        b.score.weight.data[...] += 1.0  # a fresh head differs on every load
    assert base_fingerprint(a, ["score"]) == base_fingerprint(b, ["score"])
    assert base_fingerprint(a) != base_fingerprint(b)


def test_loading_on_another_base_warns_and_strict_raises(tmp_path):
    peft_model = get_peft_model(_model(0), LoraConfig(r=2, target_modules=["c_attn"]))
    peft_model.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PeftModel.from_pretrained(_model(0), tmp_path)  # the same base: silent
    with pytest.warns(BaseModelMismatchWarning, match="trained on a different base model"):
        PeftModel.from_pretrained(_model(1), tmp_path)
    other = _model(1)
    names = sorted(n for n, _ in other.named_modules())
    with pytest.raises(ValueError, match="trained on a different base model"):
        PeftModel.from_pretrained(other, tmp_path, strict=True)
    assert sorted(n for n, _ in other.named_modules()) == names  # left as it was


def test_the_fingerprint_is_taken_before_merging(tmp_path):
    model = _model(0)
    expected = base_fingerprint(model)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["c_attn"],
                                                  init_lora_weights=False))  # fmt: skip
    peft_model.merge_adapter()  # the weights now hold W + s·BA
    peft_model.save_pretrained(tmp_path)
    from minipeft.fileio import safetensors_metadata

    meta = safetensors_metadata(tmp_path / "adapter_model.safetensors")
    assert meta["minipeft.base_fingerprint"] == expected
