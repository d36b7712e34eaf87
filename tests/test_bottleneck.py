"""Bottleneck adapters: AdapterHub's numbers, files, counts, swapping, stacking and bad input.

AdapterHub ``adapters`` 1.3 pins its own transformers, so it cannot share the reference extra's
environment. Its outputs are committed instead (``tests/fixtures/adapterhub``, made by
``scripts/adapterhub/make_fixtures.py``): tiny GPT-2 and LLaMA bases, one adapter of each type
with random non-zero weights, input ids and float64 logits. Adapters saved here are loaded in
AdapterHub itself by ``scripts/adapterhub/check_load.py`` when a Python with ``adapters`` is
available (``MINIPEFT_ADAPTERHUB_PYTHON``, or ``.venv-adapters/`` made by ``.ci/run``).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

import minipeft as mp
from minipeft.fileio import load_safetensors
from minipeft.gradcheck import gradcheck
from minipeft.models import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)
from minipeft.peft import (
    AdapterConfig,
    BottleneckLayer,
    DoubleSeqBnConfig,
    ParBnConfig,
    PeftModel,
    SeqBnConfig,
    Stack,
    get_peft_model,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "adapterhub"
ADAPTERS = ["seq_bn", "double_seq_bn", "par_bn", "seq_bn_custom", "par_bn_channel"]
STACKS = [("seq_bn", "par_bn"), ("double_seq_bn", "seq_bn"), ("par_bn", "seq_bn")]
IDS = np.array([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]])
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def gpt2(n_embd: int = 32, n_layer: int = 2, seed: int = 0) -> GPT2LMHeadModel:
    cfg = GPT2Config(n_embd=n_embd, n_layer=n_layer, n_head=4, vocab_size=64, n_positions=16,
                     **NO_DROPOUT)  # fmt: skip
    return GPT2LMHeadModel(cfg, seed=seed).eval()


def llama(seed: int = 0) -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=16)  # fmt: skip
    return LlamaForCausalLM(cfg, seed=seed).eval()


def logits(model, ids: np.ndarray = IDS) -> np.ndarray:
    with mp.no_grad():
        return model(input_ids=ids).logits.numpy()


def randomize(peft_model, seed: int = 0, std: float = 0.2) -> None:
    """Random non-zero values in every trainable (adapter) parameter."""
    rng = np.random.default_rng(seed)
    for _, p in peft_model.named_parameters():
        if p.requires_grad:
            p.data[...] = rng.normal(0.0, std, p.shape).astype(p.dtype)


def fixture_base(arch: str):
    return AutoModelForCausalLM.from_pretrained(FIXTURES / arch / "base").to(mp.float64).eval()


# ---------------------------------------------------------------------------- AdapterHub's logits
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("name", ADAPTERS)
def test_adapterhub_adapters_give_adapterhubs_logits(arch, name):
    ref = load_safetensors(FIXTURES / arch / "reference.safetensors")
    pm = PeftModel.from_pretrained(fixture_base(arch), FIXTURES / arch / name, adapter_name=name)
    got = logits(pm, ref["input_ids"])
    np.testing.assert_allclose(got, ref[f"logits.{name}"], atol=1e-5, rtol=0)
    assert np.abs(ref[f"logits.{name}"] - ref["logits.base"]).max() > 1e-2  # it matters


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_stacks_give_adapterhubs_logits(arch):
    ref = load_safetensors(FIXTURES / arch / "reference.safetensors")
    pm = PeftModel.from_pretrained(fixture_base(arch), FIXTURES / arch / "seq_bn", "seq_bn")
    for name in ("double_seq_bn", "par_bn"):
        pm.load_adapter(FIXTURES / arch / name, name)
    for first, second in STACKS:
        pm.set_adapter(Stack(first, second))
        got = logits(pm, ref["input_ids"])
        np.testing.assert_allclose(got, ref[f"logits.stack.{first}.{second}"], atol=1e-5, rtol=0)
    # AdapterHub's semantics: a parallel adapter restarts from x, so seq_bn before it is lost.
    np.testing.assert_allclose(ref["logits.stack.seq_bn.par_bn"], ref["logits.par_bn"], atol=1e-12)


def test_the_fixture_config_reads_as_adapterhub_wrote_it():
    pm = PeftModel.from_pretrained(fixture_base("gpt2"), FIXTURES / "gpt2" / "seq_bn_custom")
    config = pm.peft_config["default"]
    assert (config.reduction_factor, config.non_linearity, config.scaling) == (8, "gelu", "learned")
    assert (config.mh_adapter, config.ln_after, config.leave_out) == (True, True, [1])
    layers = [n for n, m in pm.named_modules() if isinstance(m, BottleneckLayer)]
    assert layers == ["base_model.model.transformer.h.0.attn_residual",
                      "base_model.model.transformer.h.0.mlp_residual"]  # fmt: skip


# ---------------------------------------------------------------------------- files
def _adapterhub_python() -> str | None:
    found = os.environ.get("MINIPEFT_ADAPTERHUB_PYTHON") or str(ROOT / ".venv-adapters/bin/python")
    return found if os.path.exists(found) else None


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("kind", ["seq_bn", "double_seq_bn", "par_bn"])
def test_adapters_saved_here_load_in_adapterhub(arch, kind, tmp_path):
    python = _adapterhub_python()
    if python is None:
        pytest.skip("no Python with AdapterHub adapters (set MINIPEFT_ADAPTERHUB_PYTHON)")
    extra = {"seq_bn": {"ln_after": True, "scaling": "learned"},
             "double_seq_bn": {"non_linearity": "gelu", "leave_out": [0]},
             "par_bn": {"scaling": "channel", "reduction_factor": 4}}[kind]  # fmt: skip
    pm = get_peft_model(fixture_base(arch), AdapterConfig(adapter_type=kind, **extra), "task")
    randomize(pm)
    ref = load_safetensors(FIXTURES / arch / "reference.safetensors")
    save_file({"logits": logits(pm, ref["input_ids"])}, str(tmp_path / "expected.safetensors"))
    pm.save_pretrained(tmp_path / "saved")
    argv = [python, str(ROOT / "scripts/adapterhub/check_load.py"),
            "--base", str(FIXTURES / arch / "base"), "--adapter", str(tmp_path / "saved/task"),
            "--input", str(FIXTURES / arch / "reference.safetensors"),
            "--expected", str(tmp_path / "expected.safetensors"), "--key", "logits"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_save_and_load_round_trip_under_another_name(tmp_path):
    pm = get_peft_model(gpt2(), DoubleSeqBnConfig(ln_after=True, use_gating=True), "task_a")
    randomize(pm)
    expected = logits(pm)
    pm.save_pretrained(tmp_path / "out")
    folder = tmp_path / "out" / "task_a"
    saved = json.loads((folder / "adapter_config.json").read_text())
    assert saved["name"] == "task_a" and saved["version"] == "adapters.1.3.0"
    assert saved["model_class"] == "GPT2LMHeadModel" and saved["hidden_size"] == 32
    keys = load_safetensors(folder / "adapter.safetensors")
    assert "transformer.h.1.attention_adapters.adapters.task_a.adapter_down.0.weight" in keys
    assert "transformer.h.0.output_adapters.adapters.task_a.gate.weight" in keys
    loaded = PeftModel.from_pretrained(gpt2(), folder, adapter_name="other")
    np.testing.assert_array_equal(logits(loaded), expected)
    assert all(".adapters.other." in n for n, p in loaded.named_parameters() if "adapter" in n)


def test_a_pickle_is_refused_with_how_to_save_safetensors(tmp_path):
    pm = get_peft_model(gpt2(), SeqBnConfig())
    pm.save_pretrained(tmp_path)
    (tmp_path / "adapter.safetensors").rename(tmp_path / "pytorch_adapter.bin")
    with pytest.raises(ValueError, match="pickle.*use_safetensors=True"):
        PeftModel.from_pretrained(gpt2(), tmp_path)


def test_an_adapter_for_another_hidden_size_is_refused_and_nothing_changes(tmp_path):
    get_peft_model(gpt2(n_embd=64), SeqBnConfig()).save_pretrained(tmp_path)
    model = gpt2()
    before = logits(model)
    with pytest.raises(ValueError, match="hidden size 64.*has hidden size 32"):
        PeftModel.from_pretrained(model, tmp_path)
    assert not any(isinstance(m, BottleneckLayer) for m in model.modules())
    np.testing.assert_array_equal(logits(model), before)


def test_an_adapter_for_another_architecture_is_refused(tmp_path):
    get_peft_model(llama(), SeqBnConfig()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="made for a llama model.*this is a gpt2 model"):
        PeftModel.from_pretrained(gpt2(), tmp_path)
    (tmp_path / "adapter_config.json").write_text(  # without the record: the keys tell
        (tmp_path / "adapter_config.json").read_text().replace('"llama"', "null")
    )
    with pytest.raises(ValueError, match=r"missing keys(.|\n)*transformer.h.0.output_adapters"):
        PeftModel.from_pretrained(gpt2(), tmp_path)


# ---------------------------------------------------------------------------- counts
@settings(max_examples=12)
@given(
    n_embd=st.sampled_from([8, 16, 32, 48]),
    factor=st.sampled_from([1, 2, 3, 4, 8]),
    kind=st.sampled_from(["seq_bn", "double_seq_bn", "par_bn"]),
    n_layer=st.integers(1, 3),
)
def test_trainable_count_is_2dm_plus_d_plus_m_per_adapter(n_embd, factor, kind, n_layer):
    pm = get_peft_model(gpt2(n_embd, n_layer), AdapterConfig(adapter_type=kind,
                        reduction_factor=factor))  # fmt: skip
    m = n_embd // factor
    sites = n_layer * (2 if kind == "double_seq_bn" else 1)
    trainable, _ = pm.get_nb_trainable_parameters()
    assert trainable == sites * (2 * n_embd * m + n_embd + m)
    assert trainable == sum(p.numel() for p in pm.parameters() if p.requires_grad)


def test_optional_parts_add_their_parameters():
    d, m = 32, 2
    pm = get_peft_model(gpt2(), SeqBnConfig(ln_before=True, ln_after=True, use_gating=True,
                                            scaling="channel"))  # fmt: skip
    per_site = (2 * d * m + d + m) + 2 * d + 2 * d + (d + 1) + d
    assert pm.get_nb_trainable_parameters()[0] == 2 * per_site


# ---------------------------------------------------------------------------- behaviour
def test_the_seed_snippet_runs(capsys):
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=16, num_labels=3,
                     pad_token_id=0, **NO_DROPOUT)  # fmt: skip
    model = GPT2ForSequenceClassification(cfg, seed=0).eval()
    adapter_config = AdapterConfig(adapter_type="seq_bn", task_type="SEQ_CLS")
    peft_model = get_peft_model(model, adapter_config)
    peft_model.print_trainable_parameters()
    head = 3 * 32
    adapters = 2 * (2 * 32 * 2 + 32 + 2)
    assert f"trainable params: {adapters + head:,d} ||" in capsys.readouterr().out


def test_mam_adapter_init_and_disable_give_the_base_bit_for_bit():
    for make in (gpt2, llama):
        base = logits(make())
        pm = get_peft_model(make(), ParBnConfig())  # "mam_adapter": W_up = 0
        np.testing.assert_array_equal(logits(pm), base)
        randomize(pm)
        assert np.abs(logits(pm) - base).max() > 1e-3
        with pm.disable_adapter():
            np.testing.assert_array_equal(logits(pm), base)


def test_swapping_task_adapters_and_back_is_bit_for_bit():
    pm = get_peft_model(gpt2(), SeqBnConfig(), "a")
    pm.add_adapter("b", ParBnConfig())
    randomize(pm, seed=1)  # only a is trainable
    pm.set_adapter("b")
    randomize(pm, seed=2)
    only_b = logits(pm)
    pm.set_adapter("a")
    only_a = logits(pm)
    assert np.abs(only_a - only_b).max() > 1e-3
    pm.set_adapter("b")
    np.testing.assert_array_equal(logits(pm), only_b)
    pm.set_adapter("a")
    np.testing.assert_array_equal(logits(pm), only_a)
    assert pm.active_adapter == "a"
    trainable = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert trainable and all(".adapters.a." in n for n in trainable)


def test_a_stack_is_the_list_of_its_adapters():
    pm = get_peft_model(gpt2(), SeqBnConfig(), "a")
    pm.add_adapter("b", DoubleSeqBnConfig())
    pm.set_adapter(["a", "b"])
    randomize(pm)
    as_list = logits(pm)
    pm.set_adapter(Stack("a", "b"))
    np.testing.assert_array_equal(logits(pm), as_list)
    pm.set_adapter("a")
    assert np.abs(logits(pm) - as_list).max() > 1e-3


def test_only_adapter_parameters_get_gradients():
    pm = get_peft_model(llama(), DoubleSeqBnConfig(scaling="learned"))
    randomize(pm)
    pm(input_ids=IDS).logits.sum().backward()
    for name, p in pm.named_parameters():
        if ".adapters." in name:
            assert p.grad is not None and np.abs(mp.backend.to_numpy(p.grad)).max() > 0, name
        else:
            assert p.grad is None, name


@pytest.mark.parametrize("kind", ["seq_bn", "double_seq_bn", "par_bn"])
def test_bottleneck_layer_gradcheck(kind):
    config = AdapterConfig(adapter_type=kind, reduction_factor=2, ln_after=True, use_gating=True,
                           scaling="channel", non_linearity="gelu")  # fmt: skip
    layer = BottleneckLayer(mp.nn.Residual(), 8)
    layer.update_layer("a", config, 4, dtype="float64")
    for _, p in layer.named_parameters():
        p.data[...] = np.random.default_rng(0).normal(0, 0.5, p.shape)
    h = mp.randn(2, 3, 8, dtype=mp.float64, requires_grad=True)
    x = mp.randn(2, 3, 8, dtype=mp.float64, requires_grad=True)
    assert gradcheck(layer, h, x)


def test_merging_is_refused_with_the_reason():
    pm = get_peft_model(gpt2(), SeqBnConfig())
    with pytest.raises(TypeError, match="cannot be merged.*latency"):
        pm.merge_and_unload()
    base = pm.unload()
    assert not any(isinstance(m, BottleneckLayer) for m in base.modules())


def test_generation_with_an_adapter_matches_its_full_forward():
    pm = get_peft_model(gpt2(), DoubleSeqBnConfig())
    randomize(pm)
    out = pm.generate(IDS[:1, :3], max_new_tokens=4)
    ids = out if isinstance(out, np.ndarray) else np.asarray(out.numpy() if hasattr(out, "numpy")
                                                             else out)  # fmt: skip
    greedy = IDS[:1, :3]
    for _ in range(4):
        nxt = logits(pm, greedy)[:, -1].argmax(-1)
        greedy = np.concatenate([greedy, nxt[:, None]], axis=1)
    np.testing.assert_array_equal(ids[:, : greedy.shape[1]], greedy)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"reduction_factor": 64}, "expected at most 32 for hidden size 32.*found 64"),
        ({"non_linearity": "mish"}, "non_linearity: expected one of relu, swish"),
        ({"adapter_type": "lora"}, "adapter_type: expected one of seq_bn, double_seq_bn"),
        ({"leave_out": [0, 1]}, "leave_out: expected to keep at least one layer"),
        ({"phm_layer": True}, "does not implement PHM"),
        ({"scaling": "big"}, "scaling: expected a number, 'learned' or 'channel'"),
    ],
)
def test_bad_settings_are_refused_and_nothing_is_applied(fields, message):
    model = gpt2()
    before = logits(model)
    with pytest.raises(ValueError, match=message):
        get_peft_model(model, AdapterConfig(**fields))
    assert not any(isinstance(m, BottleneckLayer) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    np.testing.assert_array_equal(logits(model), before)


def test_a_model_without_residual_sites_is_refused():
    with pytest.raises(ValueError, match="attn_residual / mlp_residual.*found none in Linear"):
        get_peft_model(mp.nn.Linear(4, 4), DoubleSeqBnConfig())


def test_the_aliases_are_adapterhubs():
    assert AdapterConfig(adapter_type="pfeiffer").adapter_type == "seq_bn"
    assert AdapterConfig(adapter_type="houlsby").non_linearity == "swish"
    parallel = AdapterConfig(adapter_type="parallel")
    assert (parallel.reduction_factor, parallel.scaling, parallel.init_weights) == (
        2, 4.0, "mam_adapter")  # fmt: skip


def test_the_config_round_trips_through_a_dict():
    config = ParBnConfig(reduction_factor={"0": 4, "default": 2}, leave_out=[3, 1])
    data = config.to_dict()
    assert data["peft_type"] == "BOTTLENECK" and data["leave_out"] == [1, 3]
    again = AdapterConfig.from_dict(data)
    assert again.to_dict() == data and again.reduction_for(0) == 4 and again.reduction_for(5) == 2
