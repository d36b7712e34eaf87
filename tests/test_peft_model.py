"""The PEFT model API on minipeft's GPT-2 and LLaMA: targets, merging, several adapters, files,
sequence classification and training with :class:`minipeft.train.Trainer`.

Everything here mirrors Hugging Face PEFT 0.21.2 (names, printed line, file layout); the
comparisons against PEFT itself live in ``test_peft_interop.py``.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import minipeft as mp
from minipeft.models import (
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)
from minipeft.peft import LoraConfig, LoraLayer, ModulesToSaveWrapper, PeftModel, get_peft_model
from minipeft.train import TrainConfig, Trainer

IDS = np.array([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]])
P = "base_model.model."


GPT2_SIZES = {"n_layer": 2, "n_head": 4, "vocab_size": 64, "n_positions": 16}
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
LLAMA_SIZES = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 48}
GQA = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}


def gpt2(seed: int = 0, n_embd: int = 32) -> GPT2LMHeadModel:
    cfg = GPT2Config(n_embd=n_embd, **GPT2_SIZES, **NO_DROPOUT)
    return GPT2LMHeadModel(cfg, seed=seed).eval()


def llama(seed: int = 0) -> LlamaForCausalLM:
    cfg = LlamaConfig(max_position_embeddings=16, **LLAMA_SIZES, **GQA)
    return LlamaForCausalLM(cfg, seed=seed).eval()


def gpt2_cls(seed: int = 0) -> GPT2ForSequenceClassification:
    cfg = GPT2Config(n_embd=32, num_labels=3, pad_token_id=0, **GPT2_SIZES, **NO_DROPOUT)
    return GPT2ForSequenceClassification(cfg, seed=seed).eval()


def logits(model, ids: np.ndarray = IDS) -> np.ndarray:
    with mp.no_grad():
        return model(input_ids=ids).logits.numpy()


def targets(peft_model: PeftModel) -> list[str]:
    return [n for n, m in peft_model.get_base_model().named_modules() if isinstance(m, LoraLayer)]


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def snapshot(model) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def randomize_B(peft_model: PeftModel, adapter: str = "default", seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for layer in peft_model.base_model.lora_layers():
        if adapter in layer.lora_B:
            w = layer.lora_B[adapter].weight
            w.data[...] = rng.normal(0, 0.5, size=w.shape)


# ---------------------------------------------------------------------------- parameter counts
def test_print_trainable_parameters_prints_peft_line(capsys) -> None:
    model = gpt2()
    base_total = n_params(model)  # the tied lm_head counts once
    peft_model = get_peft_model(model, LoraConfig(r=4))
    n_lora = 2 * 4 * (32 + 96)  # c_attn: Linear(32, 96) in 2 blocks
    total = base_total + n_lora
    assert peft_model.get_nb_trainable_parameters() == (n_lora, total)
    peft_model.print_trainable_parameters()
    line = (
        f"trainable params: {n_lora:,d} || all params: {total:,d} || "
        f"trainable%: {100 * n_lora / total:.4f}\n"
    )
    assert capsys.readouterr().out == line


def test_llama_default_targets_and_count() -> None:
    model = llama()
    base_total = n_params(model)
    peft_model = get_peft_model(model, LoraConfig(r=4))
    assert targets(peft_model) == [
        f"model.layers.{i}.self_attn.{m}" for i in (0, 1) for m in ("q_proj", "v_proj")
    ]
    n_lora = 2 * (4 * (32 + 32) + 4 * (32 + 16))  # GQA: v_proj is (32 -> 2 heads * 8)
    assert peft_model.get_nb_trainable_parameters() == (n_lora, base_total + n_lora)


# ---------------------------------------------------------------------------- target_modules
TARGET_CASES = [  # (LoraConfig kwargs, the targeted modules under transformer.h.)
    ({}, "0.attn.c_attn 1.attn.c_attn"),  # GPT-2's default
    ({"target_modules": ["c_proj"]}, "0.attn.c_proj 0.mlp.c_proj 1.attn.c_proj 1.mlp.c_proj"),
    ({"target_modules": ["attn.c_proj"]}, "0.attn.c_proj 1.attn.c_proj"),  # dotted suffix
    ({"target_modules": r".*\.1\.mlp\.c_(fc|proj)"}, "1.mlp.c_fc 1.mlp.c_proj"),  # full match
    (
        {"target_modules": ["c_attn", "c_fc"], "layers_to_transform": [1]},
        "1.attn.c_attn 1.mlp.c_fc",
    ),
    (
        {"target_modules": ["c_proj"], "exclude_modules": ["mlp.c_proj"]},
        "0.attn.c_proj 1.attn.c_proj",
    ),
    (
        {"target_modules": "all-linear", "exclude_modules": r".*\.0\..*"},
        "1.attn.c_attn 1.attn.c_proj 1.mlp.c_fc 1.mlp.c_proj",
    ),
]


@pytest.mark.parametrize(("kwargs", "expected"), TARGET_CASES)
def test_gpt2_target_modules(kwargs: dict, expected: str) -> None:
    peft_model = get_peft_model(gpt2(), LoraConfig(r=2, **kwargs))
    assert targets(peft_model) == [f"transformer.h.{n}" for n in expected.split()]


def test_all_linear_excludes_the_output_head() -> None:
    names = targets(get_peft_model(gpt2(), LoraConfig(r=2, target_modules="all-linear")))
    assert len(names) == 8 and "lm_head" not in names
    names = targets(get_peft_model(llama(), LoraConfig(r=2, target_modules="all-linear")))
    assert len(names) == 14 and "lm_head" not in names
    config = LoraConfig(r=2, target_modules="all-linear", task_type="SEQ_CLS")
    names = targets(get_peft_model(gpt2_cls(), config))
    assert len(names) == 8 and not any("score" in n for n in names)


@pytest.mark.parametrize("bad", [["c_atn"], r"c_attn", ["proj"], ["mlp.c_attn"]])
def test_unknown_targets_raise_naming_what_was_searched(bad) -> None:
    model = gpt2()
    before = logits(model)
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        get_peft_model(model, LoraConfig(r=2, target_modules=bad))
    assert not any(isinstance(m, LoraLayer) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    np.testing.assert_array_equal(logits(model), before)


def test_non_linear_target_raises_before_any_change() -> None:
    model = gpt2()
    with pytest.raises(TypeError, match="GPT2Attention"):
        get_peft_model(model, LoraConfig(r=2, target_modules=["c_attn", "attn"]))
    assert not any(isinstance(m, LoraLayer) for m in model.modules())


def test_llama_targets_on_gpt2_raise() -> None:
    with pytest.raises(ValueError, match="q_proj"):
        get_peft_model(gpt2(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))


# ---------------------------------------------------------------------------- merging
def test_merge_unmerge_and_merge_and_unload() -> None:
    base = logits(gpt2())
    peft_model = get_peft_model(gpt2(), LoraConfig(r=4, target_modules=["c_attn", "c_proj"]))
    randomize_B(peft_model)
    adapted = logits(peft_model)
    assert np.abs(adapted - base).max() > 1e-3
    peft_model.merge_adapter()
    np.testing.assert_allclose(logits(peft_model), adapted, atol=1e-4)
    peft_model.unmerge_adapter()
    np.testing.assert_allclose(logits(peft_model), adapted, atol=1e-4)
    merged = peft_model.merge_and_unload(safe_merge=True)
    assert type(merged) is GPT2LMHeadModel
    assert not any(isinstance(m, (LoraLayer, ModulesToSaveWrapper)) for m in merged.modules())
    assert [k for k in merged.state_dict() if "lora" in k or "base_layer" in k] == []
    assert set(merged.state_dict()) == set(gpt2().state_dict())
    np.testing.assert_allclose(logits(merged), adapted, atol=1e-4)


def test_unmerge_with_nothing_merged_warns_once_like_peft() -> None:
    peft_model = get_peft_model(gpt2(), LoraConfig(r=2, target_modules=["c_attn", "c_proj"]))
    randomize_B(peft_model)
    adapted = logits(peft_model)
    with pytest.warns(UserWarning, match="Already unmerged. Nothing to do.") as record:
        peft_model.unmerge_adapter()  # never merged
    assert len(record) == 1  # once per call, not once per LoRA layer
    peft_model.merge_adapter()
    peft_model.unmerge_adapter()
    with pytest.warns(UserWarning, match="Already unmerged") as record:
        peft_model.unmerge_adapter()  # a second unmerge
    assert len(record) == 1
    np.testing.assert_allclose(logits(peft_model), adapted, atol=1e-4)  # W untouched


def test_unload_gives_back_the_exact_base() -> None:
    base = logits(gpt2())
    peft_model = get_peft_model(gpt2(), LoraConfig(r=2, target_modules="all-linear"))
    randomize_B(peft_model)
    plain = peft_model.unload()
    assert type(plain) is GPT2LMHeadModel
    assert not any(isinstance(m, LoraLayer) for m in plain.modules())
    np.testing.assert_array_equal(logits(plain), base)


# ---------------------------------------------------------------------------- several adapters
def test_add_set_delete_adapter() -> None:
    peft_model = get_peft_model(gpt2(), LoraConfig(r=2))
    randomize_B(peft_model, "default", seed=1)
    first = logits(peft_model)
    peft_model.add_adapter("other", LoraConfig(r=3, target_modules=["c_attn", "c_fc"]))
    randomize_B(peft_model, "other", seed=2)
    assert peft_model.active_adapter == "default"  # a new adapter starts inactive
    np.testing.assert_array_equal(logits(peft_model), first)

    assert trainable(peft_model) and all(".default." in n for n in trainable(peft_model))
    peft_model.set_adapter("other")
    assert trainable(peft_model) and all(".other." in n for n in trainable(peft_model))
    assert len(trainable(peft_model)) == 2 * 2 * 2  # lora_A, lora_B on c_attn and c_fc in 2 blocks
    second = logits(peft_model)
    assert np.abs(second - first).max() > 1e-3
    with pytest.raises(ValueError, match="not found"):
        peft_model.set_adapter("missing")

    # Refusals leave everything in place.
    with pytest.raises(ValueError, match="active"):
        peft_model.delete_adapter("other")
    for layer in peft_model.base_model.lora_layers():  # merge the inactive adapter by hand
        if "default" in layer.lora_A:
            layer.merge(adapter_names=["default"])
    with pytest.raises(ValueError, match="merged"):
        peft_model.delete_adapter("default")
    assert set(peft_model.peft_config) == {"default", "other"}
    assert sum(".default." in n for n, _ in peft_model.named_parameters()) == 4
    for layer in peft_model.base_model.lora_layers():
        if layer.merged:  # unmerging a layer with nothing merged warns, as in PEFT
            layer.unmerge()
    np.testing.assert_allclose(logits(peft_model), second, atol=1e-5)

    peft_model.delete_adapter("default")
    assert list(peft_model.peft_config) == ["other"]
    assert not any(".default." in n for n, _ in peft_model.named_parameters())
    np.testing.assert_allclose(logits(peft_model), second, atol=1e-6)


def test_failed_add_adapter_changes_nothing() -> None:
    peft_model = get_peft_model(gpt2(), LoraConfig(r=2))
    names = snapshot(peft_model).keys()
    for bad in (
        LoraConfig(r=2, target_modules=["nope"]),
        LoraConfig(r=2, target_modules=["c_fc"], modules_to_save=["nope"]),
    ):
        with pytest.raises(ValueError, match="nope"):
            peft_model.add_adapter("other", bad)
        assert list(peft_model.peft_config) == ["default"]
        assert snapshot(peft_model).keys() == names
    with pytest.raises(ValueError, match="already exists"):
        peft_model.add_adapter("default", LoraConfig(r=2))


def test_set_adapter_without_own_copy_uses_the_original_module() -> None:
    base = logits(gpt2())
    peft_model = get_peft_model(gpt2(), LoraConfig(r=2, modules_to_save=["ln_f"]))
    ln_f = peft_model.get_base_model().transformer.ln_f
    assert isinstance(ln_f, ModulesToSaveWrapper)
    ln_f.modules_to_save["default"].weight.data[...] *= 2.0  # "trained"
    assert np.abs(logits(peft_model) - base).max() > 1e-3
    peft_model.add_adapter("other", LoraConfig(r=2, target_modules=["c_fc"]))  # no ln_f copy
    peft_model.set_adapter("other")
    np.testing.assert_array_equal(logits(peft_model), base)  # B = 0 and the original ln_f
    assert trainable(peft_model)
    assert all(".lora_" in n and ".other." in n for n in trainable(peft_model))
    peft_model.set_adapter("default")
    assert ln_f.modules_to_save["default"].weight.requires_grad
    assert np.abs(logits(peft_model) - base).max() > 1e-3


def test_failed_load_adapter_leaves_the_peft_model_as_it_was(tmp_path) -> None:
    get_peft_model(
        gpt2(n_embd=16), LoraConfig(r=2, target_modules=["c_fc"], bias="all")
    ).save_pretrained(tmp_path)
    peft_model = get_peft_model(gpt2(), LoraConfig(r=2))
    randomize_B(peft_model)
    before = logits(peft_model)
    before_trainable = trainable(peft_model)
    keys = set(snapshot(peft_model))  # c_fc must not stay wrapped (its keys would change)
    with pytest.raises(ValueError, match="shape mismatches"):
        peft_model.load_adapter(tmp_path, "other", is_trainable=True)
    assert list(peft_model.peft_config) == ["default"]
    assert not any(".other." in n for n, _ in peft_model.named_parameters())
    assert trainable(peft_model) == before_trainable
    np.testing.assert_array_equal(logits(peft_model), before)
    assert set(snapshot(peft_model)) == keys


def test_set_adapter_refuses_while_merged_and_changes_nothing() -> None:
    peft_model = get_peft_model(gpt2(), LoraConfig(r=2, target_modules=["c_fc"]))
    randomize_B(peft_model)
    peft_model.add_adapter("other", LoraConfig(r=2, target_modules=["c_attn"]))
    randomize_B(peft_model, "other", seed=3)
    peft_model.merge_adapter()
    merged = logits(peft_model)
    before_trainable = trainable(peft_model)
    with pytest.raises(ValueError, match="unmerge"):
        peft_model.set_adapter("other")  # c_attn (only "other") comes before the merged c_fc
    assert peft_model.active_adapter == "default"
    assert trainable(peft_model) == before_trainable
    np.testing.assert_array_equal(logits(peft_model), merged)
    peft_model.add_adapter("third", LoraConfig(r=2, target_modules=["c_proj"]))  # allowed
    assert peft_model.active_adapter == "default"
    np.testing.assert_array_equal(logits(peft_model), merged)


# ---------------------------------------------------------------------------- files
def test_save_pretrained_writes_peft_files(tmp_path) -> None:
    peft_model = get_peft_model(gpt2(), LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM"))
    peft_model.add_adapter("other", LoraConfig(r=2, target_modules=["c_fc"]))
    peft_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["inference_mode"] is True
    assert config["target_modules"] == ["c_attn"]
    assert set(config) == set(LoraConfig().to_dict())
    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert keys == {
        f"{P}transformer.h.{i}.attn.c_attn.lora_{ab}.weight" for i in (0, 1) for ab in "AB"
    }
    other = set(load_file(tmp_path / "other" / "adapter_model.safetensors"))
    assert other == {
        f"{P}transformer.h.{i}.mlp.c_fc.lora_{ab}.weight" for i in (0, 1) for ab in "AB"
    }
    assert json.loads((tmp_path / "other" / "adapter_config.json").read_text())["r"] == 2


@pytest.mark.parametrize("bias", ["none", "all", "lora_only"])
def test_from_pretrained_round_trip(tmp_path, bias: str) -> None:
    peft_model = get_peft_model(
        gpt2(), LoraConfig(r=4, target_modules=["c_attn", "c_fc"], bias=bias)
    )
    randomize_B(peft_model)
    for name, p in peft_model.named_parameters():
        if p.requires_grad and name.endswith("bias"):
            p.data[...] += 0.1  # a trained bias must travel with the adapter
    expected = logits(peft_model)
    peft_model.save_pretrained(tmp_path)
    biases = [k for k in load_file(tmp_path / "adapter_model.safetensors") if k.endswith("bias")]
    # "all": 6 biases per block + ln_f; "lora_only": c_attn and c_fc (as base_layer.bias)
    assert len(biases) == {"none": 0, "lora_only": 4, "all": 2 * 6 + 1}[bias]
    assert bias != "lora_only" or all(k.endswith(".base_layer.bias") for k in biases)

    loaded = PeftModel.from_pretrained(gpt2(), tmp_path)
    np.testing.assert_array_equal(logits(loaded), expected)
    assert not any(p.requires_grad for p in loaded.parameters())
    loaded = PeftModel.from_pretrained(gpt2(), tmp_path, is_trainable=True)
    assert trainable(loaded) == trainable(peft_model)


def test_non_default_adapter_round_trip(tmp_path) -> None:
    peft_model = get_peft_model(gpt2(), LoraConfig(r=4, target_modules=["c_attn", "c_fc"]))
    randomize_B(peft_model)
    peft_model.add_adapter("other", LoraConfig(r=2, target_modules=["c_proj"]))
    randomize_B(peft_model, "other", seed=5)
    expected = logits(peft_model)
    peft_model.set_adapter("other")
    expected_other = logits(peft_model)
    peft_model.save_pretrained(tmp_path)

    loaded = PeftModel.from_pretrained(gpt2(), tmp_path, adapter_name="other", is_trainable=True)
    np.testing.assert_array_equal(logits(loaded), expected_other)
    assert len(trainable(loaded)) == 8
    assert all(".lora_" in n and ".other." in n for n in trainable(loaded))
    loaded.load_adapter(tmp_path, "default")
    assert not any(p.requires_grad for n, p in loaded.named_parameters() if ".default." in n)
    loaded.set_adapter("default")
    np.testing.assert_allclose(logits(loaded), expected, atol=1e-6)


def _assert_untouched(model, before_logits, flags) -> None:
    assert not any(isinstance(m, (LoraLayer, ModulesToSaveWrapper)) for m in model.modules())
    np.testing.assert_array_equal(logits(model), before_logits)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_adapter_for_another_model_raises_and_leaves_model_unchanged(tmp_path) -> None:
    peft_model = get_peft_model(gpt2(n_embd=32), LoraConfig(r=4))
    peft_model.save_pretrained(tmp_path)
    model = gpt2(n_embd=16)
    before, flags = logits(model), {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"shape mismatches(.|\n)*c_attn\.lora_A\.weight") as info:
        PeftModel.from_pretrained(model, tmp_path)
    message = str(info.value)
    assert "the adapter was made for a model with another hidden size" in message
    assert "another rank" not in message  # r = 4 on both sides; only the width differs
    _assert_untouched(model, before, flags)
    model = llama()
    before, flags = logits(model), {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="c_attn"):
        PeftModel.from_pretrained(model, tmp_path)
    _assert_untouched(model, before, flags)


def test_adapter_with_another_rank_raises(tmp_path) -> None:
    get_peft_model(gpt2(), LoraConfig(r=4)).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**cfg, "r": 2}))
    model = gpt2()
    before, flags = logits(model), {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"r=2 vs r=4"):
        PeftModel.from_pretrained(model, tmp_path)
    _assert_untouched(model, before, flags)
    # Missing and unexpected keys are listed too.
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    tensors = {k.replace("h.1.", "h.7."): v for k, v in tensors.items()}
    save_file(tensors, tmp_path / "adapter_model.safetensors")
    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"missing keys(.|\n)*unexpected keys(.|\n)*h\.7\."):
        PeftModel.from_pretrained(model, tmp_path)
    _assert_untouched(model, before, flags)


# ---------------------------------------------------------------------------- SEQ_CLS
def test_seq_cls_trains_and_saves_the_score_head(tmp_path) -> None:
    peft_model = get_peft_model(gpt2_cls(), LoraConfig(r=2, task_type="SEQ_CLS"))
    score = peft_model.get_base_model().score
    assert isinstance(score, ModulesToSaveWrapper)
    assert f"{P}score.modules_to_save.default.weight" in trainable(peft_model)
    assert f"{P}score.original_module.weight" not in trainable(peft_model)
    score.modules_to_save["default"].weight.data[...] += 0.3  # "trained"
    randomize_B(peft_model)
    expected = logits(peft_model)
    peft_model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert f"{P}score.weight" in saved
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert "score" in cfg["modules_to_save"] and cfg["task_type"] == "SEQ_CLS"
    with peft_model.disable_adapter():  # the original head and no LoRA: the base model
        np.testing.assert_array_equal(logits(peft_model), logits(gpt2_cls()))

    loaded = PeftModel.from_pretrained(gpt2_cls(), tmp_path)
    np.testing.assert_array_equal(logits(loaded), expected)
    np.testing.assert_array_equal(
        loaded.get_base_model().score.modules_to_save["default"].weight.numpy(),
        saved[f"{P}score.weight"],
    )
    merged = loaded.merge_and_unload()
    assert type(merged.score).__name__ == "Linear"
    np.testing.assert_allclose(logits(merged), expected, atol=1e-5)


# ---------------------------------------------------------------------------- training
def test_trainer_updates_only_the_adapter() -> None:
    peft_model = get_peft_model(gpt2(), LoraConfig(r=2, target_modules=["c_attn", "c_proj"]))
    adapter = [p for p in peft_model.parameters() if p.requires_grad]
    frozen = {n: p.numpy().copy() for n, p in peft_model.named_parameters() if not p.requires_grad}
    batches = [{"input_ids": IDS, "labels": IDS}]
    trainer = Trainer(peft_model, TrainConfig(max_steps=3, lr=1e-2, progress=False), batches)
    assert {id(p) for p in trainer.params} == {id(p) for p in adapter}
    trainer.train()
    state = trainer.optimizer.state
    assert len(state) == len(adapter) == 2 * 2 * 3  # A, B × c_attn + 2 c_proj × 2 blocks
    assert {id(p) for p in state} == {id(p) for p in adapter}
    for name, p in peft_model.named_parameters():
        if name in frozen:
            np.testing.assert_array_equal(p.numpy(), frozen[name], err_msg=name)
            assert p.grad is None
    B = [p for n, p in peft_model.named_parameters() if ".lora_B." in n]
    assert all(np.abs(b.numpy()).max() > 0 for b in B)  # B left zero: learning happened
