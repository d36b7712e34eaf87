"""LoRA on embedding tables (PEFT's ``lora.Embedding``): z = E[ids] + s·Aᵀ[ids] Bᵀ.

E (V, C) is frozen; A (r, V) starts at zero and B (C, r) ~ N(0, 1), so ΔE = s·(B A)ᵀ = 0 at init.
Checked here: the formula (random shapes, ranks, α, rsLoRA, padding_idx), gradients (float64
gradcheck; no gradient for the padding column of A, as PEFT), merged ≡ unmerged and unmerge
restores E, safe_merge, disable_adapter, several adapters, float16 tables with float32 adapters,
injection (``"all-linear"`` skips embeddings, other non-linear targets still raise), PEFT's
on-disk keys, and, against PEFT 0.21 itself (skipped without torch/transformers/peft): SEQ_CLS
adapters both ways, gradients, rsLoRA and merged models. The plain GPT-2 (``c_attn``, ``wte``)
and LLaMA (``q_proj``, ``embed_tokens``) round trips both ways are in test_peft_interop.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import strategies as S
from hypothesis import given, settings

import minipeft as mp
from minipeft.fileio import load_safetensors
from minipeft.models import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
)
from minipeft.nn import Embedding, Linear, ParameterDict
from minipeft.peft import LoraConfig, LoraLayer, PeftModel, get_peft_model
from minipeft.peft.tuners.lora.embedding import LoraEmbedding

SIZES = {"n_layer": 1, "n_head": 2, "n_embd": 16, "vocab_size": 32, "n_positions": 8,
         "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}  # fmt: skip
IDS = np.array([[3, 4, 5, 0], [6, 7, 8, 9]])


def _layer(v=12, c=5, r=3, alpha=6.0, rslora=False, dtype=mp.float32, init=False,
           padding_idx=None, device="cpu") -> LoraEmbedding:  # fmt: skip
    base = Embedding(v, c, padding_idx=padding_idx, dtype=dtype, device=device)
    base.weight.requires_grad_(False)  # frozen, as the tuner leaves it
    layer = LoraEmbedding(base)
    layer.update_layer("default", r=r, lora_alpha=alpha, init_lora_weights=init,
                       use_rslora=rslora)  # fmt: skip
    return layer


def _ab(layer: LoraEmbedding, name: str = "default") -> tuple[np.ndarray, np.ndarray]:
    return layer.lora_embedding_A[name].numpy(), layer.lora_embedding_B[name].numpy()


def _formula(layer: LoraEmbedding, ids: np.ndarray, names=("default",)) -> np.ndarray:
    """E[ids] + Σ_adapters s·Aᵀ[ids] Bᵀ, in NumPy."""
    out = layer.base_layer.weight.numpy()[ids].astype(np.float64)
    for name in names:
        a, b = _ab(layer, name)
        out = out + (a.T[ids] @ b.T) * layer.scaling[name]
    return out


def _run(module, ids) -> np.ndarray:
    with mp.no_grad():
        return module(ids).numpy()


def _cls_model(seed: int = 0) -> GPT2ForSequenceClassification:
    return GPT2ForSequenceClassification(GPT2Config(num_labels=3, pad_token_id=0, **SIZES),
                                         seed=seed)  # fmt: skip


def _logits(model, ids=IDS) -> np.ndarray:
    with mp.no_grad():
        return model(input_ids=ids).logits.numpy()


# ---------------------------------------------------------------------------- the layer
def test_forward_is_the_formula(device):
    layer = _layer(device=device)
    ids = np.array([[0, 3, 11], [3, 3, 7]])
    e = layer.base_layer.weight.numpy()
    a, b = _ab(layer)
    want = e[ids] + (a.T[ids] @ b.T) * (6.0 / 3)
    np.testing.assert_allclose(_run(layer, ids), want, rtol=1e-5, atol=1e-6)
    assert layer.lora_embedding_A["default"].shape == (3, 12)  # (r, V)
    assert layer.lora_embedding_B["default"].shape == (5, 3)  # (C, r)


@pytest.mark.parametrize("init", [True, "gaussian"])
def test_init_is_peft_s_and_leaves_the_table_unchanged(init):
    layer = _layer(init=init)
    a, b = _ab(layer)
    assert not a.any()  # A = 0 (also for "gaussian": PEFT initialises every embedding so)
    assert 0.5 < b.std() < 1.5  # B ~ N(0, 1)
    ids = np.array([1, 2, 3])
    np.testing.assert_array_equal(_run(layer, ids), _run(layer.base_layer, ids))


def test_init_false_draws_both_at_random():
    a, b = _ab(_layer(init=False))
    assert a.std() > 0.5 and b.std() > 0.5


def test_gradcheck_float64():
    layer = _layer(dtype=mp.float64)
    a, b = layer.lora_embedding_A["default"], layer.lora_embedding_B["default"]
    ids = np.array([[0, 5, 5, 11]])  # a repeated id: its gradient rows add up
    assert a.dtype == np.float64 and b.dtype == np.float64
    assert mp.gradcheck(lambda a_, b_: layer(ids), a, b)


def test_rslora_gradcheck_float64():
    layer = _layer(v=7, c=3, r=4, alpha=2.0, rslora=True, dtype=mp.float64)
    assert layer.scaling["default"] == pytest.approx(2.0 / 2.0)  # α / √r
    a, b = layer.lora_embedding_A["default"], layer.lora_embedding_B["default"]
    assert mp.gradcheck(lambda a_, b_: layer(np.array([[6, 0], [2, 2]])), a, b)


def test_padding_column_of_A_gets_no_gradient(device):
    """PEFT looks Aᵀ up with the base layer's padding_idx (``F.embedding(..., padding_idx)``)."""
    ids = np.array([[0, 2, 2, 4], [4, 4, 1, 0]])
    grads = {}
    for pad in (None, 4):
        mp.manual_seed(0)
        layer = _layer(v=6, c=3, r=2, dtype=mp.float64, padding_idx=pad, device=device)
        table = mp.tensor(np.arange(18.0).reshape(6, 3), dtype=mp.float64, device=device)
        layer.base_layer.weight.data[...] = table.data  # the same table in both
        out = layer(ids)
        weight = np.linspace(-1, 1, out.numpy().size).reshape(out.shape)
        (out * mp.tensor(weight, device=device)).sum().backward()
        grads[pad] = _ab_grads(layer)
        np.testing.assert_allclose(out.numpy(), _formula(layer, ids), rtol=1e-12)
    (a0, b0), (a4, b4) = grads[None], grads[4]
    assert a0[:, 4].any() and not a4[:, 4].any()
    np.testing.assert_allclose(np.delete(a4, 4, axis=1), np.delete(a0, 4, axis=1), rtol=1e-12)
    np.testing.assert_allclose(b4, b0, rtol=1e-12)  # B still learns from padding positions


def _ab_grads(layer: LoraEmbedding) -> tuple[np.ndarray, np.ndarray]:
    a, b = layer.lora_embedding_A["default"], layer.lora_embedding_B["default"]
    return mp.backend.to_numpy(a.grad), mp.backend.to_numpy(b.grad)


@settings(max_examples=40, deadline=None)
@given(setup=S.lora_embedding_setups())
def test_formula_merge_and_unmerge_over_random_setups(setup):
    mp.manual_seed(setup["seed"])
    layer = _layer(setup["v"], setup["c"], setup["r"], setup["alpha"], setup["rslora"],
                   dtype=mp.float64, padding_idx=setup["padding_idx"])  # fmt: skip
    ids, r, alpha = setup["ids"], setup["r"], setup["alpha"]
    assert layer.scaling["default"] == pytest.approx(alpha / (np.sqrt(r) if setup["rslora"] else r))
    unmerged = _run(layer, ids)
    np.testing.assert_allclose(unmerged, _formula(layer, ids), rtol=1e-10, atol=1e-10)
    before = layer.base_layer.weight.numpy().copy()
    layer.merge()
    assert layer.merged_adapters == ["default"]
    np.testing.assert_allclose(_run(layer, ids), unmerged, rtol=1e-10, atol=1e-10)
    a, b = _ab(layer)
    want_table = before + layer.scaling["default"] * (b @ a).T  # E + s·(B A)ᵀ
    np.testing.assert_allclose(layer.base_layer.weight.numpy(), want_table, rtol=1e-12)
    layer.unmerge()
    assert not layer.merged
    np.testing.assert_allclose(layer.base_layer.weight.numpy(), before, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(_run(layer, ids), unmerged, rtol=1e-10, atol=1e-10)


def test_disable_gives_the_base_table_and_unmerges():
    layer = _layer()
    ids = np.array([[1, 5, 9]])
    adapted, base = _run(layer, ids), _run(layer.base_layer, ids)
    assert np.abs(adapted - base).max() > 1e-2
    layer.disable_adapters = True
    np.testing.assert_array_equal(_run(layer, ids), base)
    layer.disable_adapters = False
    layer.merge()
    layer.disable_adapters = True
    np.testing.assert_allclose(_run(layer, ids), base, rtol=1e-5, atol=1e-5)
    assert not layer.merged  # a disabled layer unmerges itself, as PEFT's
    layer.disable_adapters = False
    np.testing.assert_allclose(_run(layer, ids), adapted, rtol=1e-5, atol=1e-5)


def test_two_active_adapters_add_up_merge_and_unmerge(device):
    layer = _layer(dtype=mp.float64, device=device)
    layer.update_layer("other", r=2, lora_alpha=3.0, init_lora_weights=False, use_rslora=True)
    ids = np.array([[0, 3, 11, 3]])
    assert layer.active_adapters == ["default"]  # a second adapter starts inactive
    np.testing.assert_allclose(_run(layer, ids), _formula(layer, ids), rtol=1e-12)
    layer.set_adapter(["default", "other"])
    both = _formula(layer, ids, ("default", "other"))
    np.testing.assert_allclose(_run(layer, ids), both, rtol=1e-12)
    before = layer.base_layer.weight.numpy().copy()
    layer.merge()
    assert layer.merged_adapters == ["default", "other"]
    np.testing.assert_allclose(_run(layer, ids), both, rtol=1e-10)
    with pytest.warns(UserWarning, match="already merged"):
        layer.merge()
    layer.unmerge()
    np.testing.assert_allclose(layer.base_layer.weight.numpy(), before, rtol=1e-12, atol=1e-12)
    with pytest.warns(UserWarning, match="Already unmerged"):
        layer.unmerge()


def test_safe_merge_of_a_broken_adapter_raises_and_changes_nothing():
    layer = _layer()
    layer.lora_embedding_B["default"].data[0, 0] = np.nan
    before = layer.base_layer.weight.numpy().copy()
    with pytest.raises(ValueError, match="NaNs or infs .* 'default'"):
        layer.merge(safe_merge=True)
    assert not layer.merged
    np.testing.assert_array_equal(layer.base_layer.weight.numpy(), before)


def test_float16_table_keeps_float32_adapters(device):
    layer = _layer(dtype=mp.float16, device=device)
    a, b = layer.lora_embedding_A["default"], layer.lora_embedding_B["default"]
    assert a.dtype == b.dtype == mp.float32
    ids = np.array([[2, 7, 7, 0]])
    out = layer(ids)
    assert out.dtype == mp.float16
    np.testing.assert_allclose(out.numpy(), _formula(layer, ids), rtol=2e-3, atol=2e-3)
    out.to(mp.float32).sum().backward()
    grad = mp.backend.to_numpy(a.grad)
    assert grad.dtype == np.float32 and np.isfinite(grad).all() and grad.any()
    assert layer.base_layer.weight.grad is None
    unmerged = _run(layer, ids)
    layer.merge()
    assert layer.base_layer.weight.dtype == mp.float16
    np.testing.assert_allclose(_run(layer, ids), unmerged, rtol=5e-3, atol=5e-3)


def test_set_and_delete_adapter():
    layer = _layer()
    layer.update_layer("other", r=2, lora_alpha=2.0)
    layer.set_adapter("other")
    assert not layer.lora_embedding_A["default"].requires_grad
    assert not layer.lora_embedding_B["default"].requires_grad
    assert layer.lora_embedding_A["other"].requires_grad
    assert layer.lora_embedding_B["other"].requires_grad
    layer.delete_adapter("default")
    assert layer.adapter_names() == ["other"] and layer.active_adapters == ["other"]
    assert sorted(layer.state_dict()) == [
        "base_layer.weight", "lora_embedding_A.other", "lora_embedding_B.other"]  # fmt: skip
    assert "default" not in layer.r and "default" not in layer.scaling


def test_wrapping_checks_the_layer_kind():
    with pytest.raises(TypeError, match="LoraEmbedding wraps embedding layers.*Linear"):
        LoraEmbedding(Linear(3, 4))
    with pytest.raises(TypeError, match="LoRA wraps linear layers.*Embedding"):
        LoraLayer(Embedding(3, 4))
    with pytest.raises(ValueError, match="positive int"):
        _layer(r=0)


def test_parameter_dict():
    d = ParameterDict()
    d["x"] = mp.nn.Parameter(mp.zeros(2))
    assert "x" in d and len(d) == 1 and d.keys() == ["x"] and list(d) == ["x"]
    assert [n for n, _ in d.named_parameters()] == ["x"]
    with pytest.raises(TypeError, match="expected a Parameter"):
        d["y"] = mp.zeros(2)
    with pytest.raises(KeyError, match="no key 'z'"):
        d["z"]
    with pytest.raises(NotImplementedError):
        d()
    del d["x"]
    assert len(d) == 0


# ---------------------------------------------------------------------------- in a model
def test_injection_save_load_and_trainability(tmp_path):
    config = LoraConfig(r=2, target_modules=["c_attn", "wte"], task_type="SEQ_CLS",
                        init_lora_weights=False)  # fmt: skip
    pm = get_peft_model(_cls_model(), config)
    assert isinstance(pm.base_model.model.transformer.wte, LoraEmbedding)
    assert not isinstance(pm.base_model.model.transformer.wpe, LoraEmbedding)  # "wte" only
    trainable = sorted(n for n, p in pm.named_parameters() if p.requires_grad)
    assert "base_model.model.transformer.wte.lora_embedding_A.default" in trainable
    assert "base_model.model.transformer.wte.lora_embedding_B.default" in trainable
    assert "base_model.model.transformer.wte.base_layer.weight" not in trainable
    out = pm(input_ids=IDS, labels=np.array([0, 2]))
    out.loss.backward()
    wte = pm.base_model.model.transformer.wte
    assert wte.lora_embedding_A["default"].grad is not None
    assert wte.lora_embedding_B["default"].grad is not None
    assert wte.base_layer.weight.grad is None  # frozen means free
    want = _logits(pm)
    pm.save_pretrained(tmp_path)
    keys = sorted(load_safetensors(tmp_path / "adapter_model.safetensors"))
    for ab in "AB":  # PEFT's on-disk keys: no adapter name
        assert f"base_model.model.transformer.wte.lora_embedding_{ab}" in keys
    assert not any(k.endswith(".default") for k in keys)
    loaded = PeftModel.from_pretrained(_cls_model(), tmp_path)
    np.testing.assert_array_equal(_logits(loaded), want)
    assert not any(p.requires_grad for p in loaded.parameters())  # inference mode
    merged = loaded.merge_and_unload()  # untied table (no lm_head): merging is exact
    np.testing.assert_allclose(_logits(merged), want, atol=1e-4)
    assert isinstance(merged.transformer.wte, Embedding)


def test_model_level_adapters_disable_and_safe_merge(tmp_path):
    kw = {"task_type": "SEQ_CLS", "init_lora_weights": False}
    pm = get_peft_model(_cls_model(), LoraConfig(r=2, target_modules=["c_attn", "wte"], **kw))
    pm.add_adapter("second", LoraConfig(r=3, lora_alpha=5, target_modules=["wte"], **kw))
    wte = pm.base_model.model.transformer.wte
    assert wte.adapter_names() == ["default", "second"]
    assert not wte.lora_embedding_A["second"].requires_grad  # inactive until set_adapter
    first = _logits(pm)
    pm.set_adapter("second")
    assert wte.lora_embedding_A["second"].requires_grad
    assert not wte.lora_embedding_A["default"].requires_grad
    assert np.abs(_logits(pm) - first).max() > 1e-3
    pm.save_pretrained(tmp_path)
    keys = load_safetensors(tmp_path / "second" / "adapter_model.safetensors")
    assert keys["base_model.model.transformer.wte.lora_embedding_A"].shape == (3, 32)
    pm.set_adapter("default")
    pm.delete_adapter("second")
    assert wte.adapter_names() == ["default"]
    assert not any(".second" in k for k in pm.state_dict())
    with pm.disable_adapter():
        np.testing.assert_array_equal(_logits(pm), _logits(_cls_model()))
    np.testing.assert_allclose(_logits(pm), first, rtol=1e-6, atol=1e-6)
    wte.lora_embedding_B["default"].data[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaNs or infs"):
        pm.merge_adapter(safe_merge=True)
    assert not any(layer.merged for layer in pm.base_model.lora_layers())  # c_attn untouched


def test_all_linear_leaves_embeddings_alone():
    pm = get_peft_model(GPT2LMHeadModel(GPT2Config(**SIZES), seed=0),
                        LoraConfig(r=2, target_modules="all-linear"))  # fmt: skip
    assert not isinstance(pm.base_model.model.transformer.wte, LoraEmbedding)
    assert not any(isinstance(m, LoraEmbedding) for m in pm.modules())
    assert any(isinstance(m, LoraLayer) for m in pm.modules())


def test_other_non_linear_targets_still_raise():
    model = GPT2LMHeadModel(GPT2Config(**SIZES), seed=0)
    with pytest.raises(TypeError, match="LayerNorm; LoRA supports linear layers.*embedding"):
        get_peft_model(model, LoraConfig(r=2, target_modules=["ln_f"]))
    assert isinstance(model.transformer.wte, Embedding)  # nothing was wrapped


def test_merging_a_table_tied_to_lm_head_is_refused_before_any_change():
    pm = get_peft_model(GPT2LMHeadModel(GPT2Config(**SIZES), seed=0),
                        LoraConfig(r=2, target_modules=["c_attn", "wte"]))  # fmt: skip
    assert pm.base_model.model.transformer.wte.tied_to == "lm_head"
    for merge in (pm.merge_adapter, pm.merge_and_unload):
        with pytest.raises(ValueError, match="tied to 'lm_head'"):
            merge()
        assert not any(layer.merged for layer in pm.base_model.lora_layers())
        assert isinstance(pm.base_model.model.transformer.wte, LoraEmbedding)


# ---------------------------------------------------------------------------- against PEFT
@pytest.fixture(scope="module")
def hf():
    """(torch, transformers, peft), or the interop tests skip."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    transformers.logging.set_verbosity_error()
    return torch, transformers, peft


def _save_hf(hf, model, folder) -> str:
    """HF's init (std 0.02) gives near-zero logits; larger weights make the checks meaningful."""
    torch = hf[0]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.15)
    model.eval().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def gpt2_cls_dir(hf, tmp_path_factory) -> str:
    transformers = hf[1]
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=16,
                                  pad_token_id=0, num_labels=3)  # fmt: skip
    model = transformers.GPT2ForSequenceClassification(cfg)
    return _save_hf(hf, model, tmp_path_factory.mktemp("gpt2_cls_emb"))


@pytest.fixture(scope="module")
def llama_pad_dir(hf, tmp_path_factory) -> str:
    """An untied LLaMA whose embed_tokens has padding_idx 0 (HF sets it from pad_token_id)."""
    transformers = hf[1]
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=16,
                                   pad_token_id=0, tie_word_embeddings=False)  # fmt: skip
    model = transformers.LlamaForCausalLM(cfg)
    return _save_hf(hf, model, tmp_path_factory.mktemp("llama_pad_emb"))


HF_IDS = np.array([[3, 14, 15, 9, 26, 5], [35, 8, 9, 0, 0, 0]])  # 0 is the padding token
HF_MASK = (HF_IDS != 0).astype(np.int64)


def _hf_logits(hf, model, mask=None) -> np.ndarray:
    torch = hf[0]
    kw = {} if mask is None else {"attention_mask": torch.tensor(mask)}
    with torch.no_grad():
        return model(input_ids=torch.tensor(HF_IDS), **kw).logits.float().numpy()


def _our_logits(model, mask=None) -> np.ndarray:
    kw = {} if mask is None else {"attention_mask": mask}
    with mp.no_grad():
        return model(input_ids=HF_IDS, **kw).logits.numpy()


def _fill_embedding_lora(model, torch=None, seed: int = 1) -> None:
    """Non-zero A and B in every LoRA embedding (A is zero at init), in either library."""
    gen = np.random.default_rng(seed)
    for module in model.modules():
        for attr in ("lora_embedding_A", "lora_embedding_B"):
            table = getattr(module, attr, None)
            for key in list(table.keys()) if table is not None else []:
                values = gen.normal(size=tuple(table[key].shape)).astype(np.float32) * 0.5
                if torch is None:
                    table[key].data[...] = values
                else:
                    with torch.no_grad():
                        table[key].copy_(torch.tensor(values))


# Expected: both libraries warn, and fix it, when fan_in_fan_out does not fit GPT-2's c_attn.
@pytest.mark.filterwarnings("ignore:fan_in_fan_out")
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_seq_cls_embedding_lora_moves_both_ways(hf, gpt2_cls_dir, tmp_path):
    torch, transformers, peft = hf
    auto = transformers.AutoModelForSequenceClassification
    base = _hf_logits(hf, auto.from_pretrained(gpt2_cls_dir).eval(), HF_MASK)
    kw = {"r": 4, "lora_alpha": 8, "task_type": "SEQ_CLS", "target_modules": ["c_attn", "wte"]}
    # minipeft -> PEFT
    ours = get_peft_model(AutoModelForSequenceClassification.from_pretrained(gpt2_cls_dir),
                          LoraConfig(**kw))  # fmt: skip
    _fill_embedding_lora(ours)
    expected = _our_logits(ours, HF_MASK)
    assert np.abs(expected - base).max() > 1e-2  # the embedding update matters
    ours.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(auto.from_pretrained(gpt2_cls_dir).eval(),
                                            str(tmp_path / "ours"))  # fmt: skip
    assert isinstance(theirs.base_model.model.transformer.wte, peft.tuners.lora.Embedding)
    np.testing.assert_allclose(_hf_logits(hf, theirs, HF_MASK), expected, atol=1e-4, rtol=0)
    # PEFT -> minipeft
    theirs = peft.get_peft_model(auto.from_pretrained(gpt2_cls_dir).eval(),
                                 peft.LoraConfig(**{**kw, "lora_alpha": 16}))  # fmt: skip
    _fill_embedding_lora(theirs, torch)
    with torch.no_grad():  # PEFT's fresh score head: give it values to carry over
        theirs.base_model.model.score.modules_to_save["default"].weight.normal_()
    expected = _hf_logits(hf, theirs.eval(), HF_MASK)
    theirs.save_pretrained(str(tmp_path / "theirs"))
    loaded = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(gpt2_cls_dir), tmp_path / "theirs"
    )
    assert isinstance(loaded.base_model.model.transformer.wte, LoraEmbedding)
    np.testing.assert_allclose(_our_logits(loaded, HF_MASK), expected, atol=1e-4, rtol=0)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_llama_rslora_gradients_and_merge_match_peft(hf, llama_pad_dir, tmp_path):
    """Same adapter in both: equal logits, equal gradients of A and B (the padding column of A
    gets none in both), and equal merged models."""
    torch, transformers, peft = hf
    auto = transformers.AutoModelForCausalLM
    config = LoraConfig(r=3, lora_alpha=6, use_rslora=True,
                        target_modules=["q_proj", "embed_tokens"])  # fmt: skip
    ours = get_peft_model(AutoModelForCausalLM.from_pretrained(llama_pad_dir), config)
    _fill_embedding_lora(ours)
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(auto.from_pretrained(llama_pad_dir).eval(),
                                            str(tmp_path), is_trainable=True)  # fmt: skip
    assert theirs.base_model.model.model.embed_tokens.scaling["default"] == pytest.approx(
        6 / np.sqrt(3)
    )
    weight = np.random.default_rng(2).normal(size=(2, 6, 64)).astype(np.float32)
    our_out = ours(input_ids=HF_IDS)
    (our_out.logits * mp.tensor(weight)).sum().backward()
    their_out = theirs(input_ids=torch.tensor(HF_IDS))
    (their_out.logits * torch.tensor(weight)).sum().backward()
    np.testing.assert_allclose(our_out.logits.numpy(), their_out.logits.detach().numpy(),
                               atol=1e-4, rtol=0)  # fmt: skip
    ours_emb = ours.base_model.model.model.embed_tokens
    theirs_emb = theirs.base_model.model.model.embed_tokens
    for attr in ("lora_embedding_A", "lora_embedding_B"):
        got = np.asarray(getattr(ours_emb, attr)["default"].grad)
        want = getattr(theirs_emb, attr)["default"].grad.numpy()
        np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-3, err_msg=attr)
    assert not theirs_emb.lora_embedding_A["default"].grad[:, 0].any()  # the padding token
    their_merged = theirs.merge_and_unload()
    our_merged = ours.merge_and_unload()
    np.testing.assert_allclose(
        our_merged.model.embed_tokens.weight.numpy(),
        their_merged.model.embed_tokens.weight.detach().numpy(), atol=1e-5, rtol=0,
    )  # fmt: skip
    np.testing.assert_allclose(_our_logits(our_merged), _hf_logits(hf, their_merged),
                               atol=1e-4, rtol=0)  # fmt: skip
