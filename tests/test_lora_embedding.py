"""LoRA on embedding tables (PEFT's ``lora.Embedding``): z = E[ids] + s·Aᵀ[ids] Bᵀ."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minipeft as mp
from minipeft.models import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel
from minipeft.nn import Embedding, ParameterDict
from minipeft.peft import LoraConfig, PeftModel, get_peft_model
from minipeft.peft.lora_embedding import LoraEmbedding

SIZES = {"n_layer": 1, "n_head": 2, "n_embd": 16, "vocab_size": 32, "n_positions": 8,
         "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}  # fmt: skip


def _layer(v=12, c=5, r=3, alpha=6.0, rslora=False, dtype=mp.float32, init=False):
    base = Embedding(v, c, dtype=dtype)
    layer = LoraEmbedding(base)
    layer.update_layer("default", r=r, lora_alpha=alpha, init_lora_weights=init,
                       use_rslora=rslora)  # fmt: skip
    return layer


def test_forward_is_the_formula():
    layer = _layer()
    ids = np.array([[0, 3, 11], [3, 3, 7]])
    e = layer.base_layer.weight.numpy()
    a, b = layer.lora_embedding_A["default"].numpy(), layer.lora_embedding_B["default"].numpy()
    want = e[ids] + (a.T[ids] @ b.T) * (6.0 / 3)
    with mp.no_grad():
        np.testing.assert_allclose(layer(ids).numpy(), want, rtol=1e-5, atol=1e-6)


def test_init_leaves_the_table_unchanged_and_is_peft_s():
    layer = _layer(init=True)
    assert not layer.lora_embedding_A["default"].numpy().any()  # A = 0
    assert layer.lora_embedding_B["default"].numpy().std() > 0.5  # B ~ N(0, 1)
    ids = np.array([1, 2, 3])
    with mp.no_grad():
        np.testing.assert_array_equal(layer(ids).numpy(), layer.base_layer(ids).numpy())


def test_gradcheck_float64():
    layer = _layer(dtype=mp.float64)
    a, b = layer.lora_embedding_A["default"], layer.lora_embedding_B["default"]
    ids = np.array([[0, 5, 5, 11]])  # a repeated id: its gradient rows add up
    assert a.dtype == np.float64 and b.dtype == np.float64
    assert mp.gradcheck(lambda a_, b_: layer(ids), a, b)


@settings(max_examples=25, deadline=None)
@given(v=st.integers(2, 20), c=st.integers(1, 8), r=st.integers(1, 4),
       alpha=st.floats(0.5, 32), rslora=st.booleans(), seed=st.integers(0, 2**16))  # fmt: skip
def test_merged_equals_unmerged(v, c, r, alpha, rslora, seed):
    mp.manual_seed(seed)
    layer = _layer(v, c, r, alpha, rslora)
    ids = np.random.default_rng(seed).integers(0, v, size=(2, 5))
    scale = alpha / (np.sqrt(r) if rslora else r)
    assert layer.scaling["default"] == pytest.approx(scale)
    with mp.no_grad():
        unmerged = layer(ids).numpy()
        before = layer.base_layer.weight.numpy().copy()
        layer.merge()
        np.testing.assert_allclose(layer(ids).numpy(), unmerged, rtol=1e-4, atol=1e-4)
        layer.unmerge()
        np.testing.assert_allclose(layer.base_layer.weight.numpy(), before, rtol=1e-4, atol=1e-4)


def test_injection_save_load_and_trainability(tmp_path):
    model = GPT2ForSequenceClassification(GPT2Config(num_labels=3, pad_token_id=0, **SIZES),
                                          seed=0)  # fmt: skip
    config = LoraConfig(r=2, target_modules=["c_attn", "wte"], task_type="SEQ_CLS",
                        init_lora_weights=False)  # fmt: skip
    pm = get_peft_model(model, config)
    trainable = sorted(n for n, p in pm.named_parameters() if p.requires_grad)
    assert "base_model.model.transformer.wte.lora_embedding_A.default" in trainable
    assert "base_model.model.transformer.wte.base_layer.weight" not in trainable
    ids = np.array([[3, 4, 5, 0], [6, 7, 8, 9]])
    out = pm(input_ids=ids, labels=np.array([0, 2]))
    out.loss.backward()
    wte = pm.base_model.model.transformer.wte
    assert wte.lora_embedding_A["default"].grad is not None
    assert wte.base_layer.weight.grad is None  # frozen means free
    with mp.no_grad():
        want = pm(input_ids=ids).logits.numpy()
    pm.save_pretrained(tmp_path)
    from minipeft.fileio import load_safetensors

    keys = sorted(load_safetensors(tmp_path / "adapter_model.safetensors"))
    assert "base_model.model.transformer.wte.lora_embedding_A" in keys  # PEFT's on-disk key
    again = GPT2ForSequenceClassification(GPT2Config(num_labels=3, pad_token_id=0, **SIZES),
                                          seed=0)  # fmt: skip
    loaded = PeftModel.from_pretrained(again, tmp_path)
    with mp.no_grad():
        np.testing.assert_allclose(loaded(input_ids=ids).logits.numpy(), want, atol=1e-6)
        merged = loaded.merge_and_unload()  # untied table (no lm_head): merging is exact
        np.testing.assert_allclose(merged(input_ids=ids).logits.numpy(), want, atol=1e-4)
    assert isinstance(merged.transformer.wte, Embedding)


def test_all_linear_leaves_embeddings_alone():
    pm = get_peft_model(GPT2LMHeadModel(GPT2Config(**SIZES), seed=0),
                        LoraConfig(r=2, target_modules="all-linear"))  # fmt: skip
    assert not isinstance(pm.base_model.model.transformer.wte, LoraEmbedding)


def test_merging_a_table_tied_to_lm_head_is_refused():
    pm = get_peft_model(GPT2LMHeadModel(GPT2Config(**SIZES), seed=0),
                        LoraConfig(r=2, target_modules=["wte"]))  # fmt: skip
    assert pm.base_model.model.transformer.wte.tied_to == "lm_head"
    with pytest.raises(ValueError, match="tied to 'lm_head'"):
        pm.merge_adapter()


def test_delete_and_set_adapter():
    layer = _layer()
    layer.update_layer("other", r=2, lora_alpha=2.0)
    layer.set_adapter("other")
    assert not layer.lora_embedding_A["default"].requires_grad
    assert layer.lora_embedding_A["other"].requires_grad
    layer.delete_adapter("default")
    assert layer.adapter_names() == ["other"] and layer.active_adapters == ["other"]


def test_parameter_dict():
    d = ParameterDict()
    d["x"] = mp.nn.Parameter(mp.zeros(2))
    assert "x" in d and len(d) == 1 and d.keys() == ["x"]
    assert [n for n, _ in d.named_parameters()] == ["x"]
    with pytest.raises(TypeError, match="expected a Parameter"):
        d["y"] = mp.zeros(2)
    with pytest.raises(KeyError, match="no key 'z'"):
        d["z"]
    del d["x"]
    assert len(d) == 0
