"""Mixed-adapter batches: ``model(x, adapter_names=[...])`` routes row i through its own adapter.

Each row must equal running that row alone with its adapter active (or the base model for
``"__base__"``), on a toy (Linear and Conv1D layouts), on GPT-2 / LLaMA with LoRA on attention
and the token embedding, through ``generate``, and with a per-adapter classifier head
(``modules_to_save``). Bad names, lengths, training mode and merged adapters are refused.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from toys import Toy

import minipeft as mp
from minipeft.models import (
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)
from minipeft.peft import LoraConfig, get_peft_model

pytestmark = pytest.mark.filterwarnings("ignore:fan_in_fan_out=True does not match")
NAMES = ("a", "b", "__base__")


def toy_model(conv: bool, seed: int):
    mp.manual_seed(seed)
    common = {"target_modules": ["fc1", "fc2"], "fan_in_fan_out": conv, "init_lora_weights": False}
    model = get_peft_model(
        Toy(3, 4, 5, "float64", conv, seed), LoraConfig(r=2, **common), adapter_name="a"
    )
    model.add_adapter("b", LoraConfig(r=3, lora_alpha=5, **{**common, "target_modules": ["fc2"]}))
    return model.eval()


def alone(model, x, name: str) -> np.ndarray:
    """Row(s) x through adapter ``name`` (or the base) as the only active one."""

    def run():
        y = model(x)
        return getattr(y, "logits", y).numpy()

    with mp.no_grad():
        if name == "__base__":
            with model.disable_adapter():
                return run()
        model.set_adapter(name)
        return run()


@settings(max_examples=20, deadline=None)
@given(
    names=st.lists(st.sampled_from(NAMES), min_size=1, max_size=6),
    conv=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_each_row_equals_that_row_alone(names: list[str], conv: bool, seed: int) -> None:
    model = toy_model(conv, seed)
    x = mp.tensor(np.random.default_rng(seed).normal(size=(len(names), 3)))
    with mp.no_grad():
        mixed = model(x, adapter_names=names).numpy()
    for i, name in enumerate(names):
        np.testing.assert_allclose(
            mixed[i], alone(model, x[i : i + 1], name)[0], atol=1e-12, rtol=0
        )


def lm(arch: str):
    if arch == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=32), seed=0
        )
        targets = ["c_attn", "wte"]
    else:
        model = LlamaForCausalLM(
            LlamaConfig(
                hidden_size=32,
                intermediate_size=48,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                vocab_size=64,
                max_position_embeddings=32,
            ),
            seed=0,
        )
        targets = ["q_proj", "v_proj", "embed_tokens"]
    mp.manual_seed(1)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
    peft.add_adapter(
        "other", LoraConfig(r=2, lora_alpha=7, target_modules=targets[:1], init_lora_weights=False)
    )
    return peft.eval()


IDS = np.array([[3, 14, 15, 9, 26], [35, 8, 9, 7, 9], [1, 2, 3, 4, 5], [6, 6, 6, 6, 6]])
ROWS = ["default", "__base__", "other", "default"]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_language_model_rows_and_generation(arch: str) -> None:
    model = lm(arch)
    with mp.no_grad():
        mixed = model(input_ids=IDS, adapter_names=ROWS).logits.numpy()
        generated = model.generate(IDS, max_new_tokens=4, adapter_names=ROWS).numpy()
    for i, name in enumerate(ROWS):
        row = IDS[i : i + 1]
        with mp.no_grad():
            if name == "__base__":
                with model.disable_adapter():
                    logits, gen = model(input_ids=row).logits, model.generate(row, max_new_tokens=4)
            else:
                model.set_adapter(name)
                logits, gen = model(input_ids=row).logits, model.generate(row, max_new_tokens=4)
        np.testing.assert_allclose(mixed[i], logits.numpy()[0], atol=1e-5, rtol=0)
        np.testing.assert_array_equal(generated[i], gen.numpy()[0])


def test_each_row_uses_its_own_classifier_head() -> None:
    cfg = GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=16, num_labels=3, pad_token_id=0
    )
    mp.manual_seed(2)
    model = get_peft_model(
        GPT2ForSequenceClassification(cfg, seed=0),
        LoraConfig(task_type="SEQ_CLS", r=2, init_lora_weights=False),
    )
    model.add_adapter("b", LoraConfig(task_type="SEQ_CLS", r=2, init_lora_weights=False))
    head = model.get_base_model().score
    head.modules_to_save["b"].weight.data[...] += 1.0  # b's head differs from default's
    model.eval()
    rows = ["b", "default", "__base__"]
    ids = IDS[:3]
    with mp.no_grad():
        mixed = model(input_ids=ids, adapter_names=rows).logits.numpy()
    for i, name in enumerate(rows):
        np.testing.assert_allclose(mixed[i], alone(model, ids[i : i + 1], name)[0], atol=1e-5)


def test_bad_adapter_names_are_refused() -> None:
    model = toy_model(False, 0)
    x = mp.tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match="expected 2 names \\(the batch size\\), found 3"):
        model(x, adapter_names=["a", "b", "a"])
    with pytest.raises(ValueError, match="unknown adapter 'zz'"):
        model(x, adapter_names=["a", "zz"])
    with pytest.raises(TypeError, match="a list of names"):
        model(x, adapter_names="a")
    model.train()
    with pytest.raises(ValueError, match="model.eval\\(\\)"):
        model(x, adapter_names=["a", "b"])
    model.eval()
    model.set_adapter("a")
    model.merge_adapter()
    with pytest.raises(ValueError, match="unmerge"):
        model(x, adapter_names=["a", "b"])
