"""The tuner seam: the registry, the base-weight protocol, all-or-nothing injection, and a new
method added exactly as ``minipeft.peft.tuners``' "How to add a tuner" says, with no change
outside its own (here: the test's) code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest

import minipeft as mp
from minipeft.models import GPT2Config, GPT2LMHeadModel
from minipeft.nn import Linear, Module, ParameterDict
from minipeft.peft import (
    LoraConfig,
    PeftConfig,
    PeftModel,
    PeftType,
    SeqBnConfig,
    get_peft_model,
    method_for,
    preset,
    preset_names,
    register_peft_method,
)
from minipeft.peft import registry as registry_module
from minipeft.peft.tuners.base import (
    BaseTuner,
    BaseTunerLayer,
    get_base_weight,
    inside_adapter,
    is_linear,
    set_base_weight,
)
from minipeft.peft.tuners.lora import LoraLayer

IDS = np.array([[1, 2, 3, 4, 5, 6]])


def gpt2() -> GPT2LMHeadModel:
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=16,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    return GPT2LMHeadModel(cfg, seed=0).eval()


def logits(model) -> np.ndarray:
    with mp.no_grad():
        return model(input_ids=IDS).logits.numpy()


# ---------------------------------------------------------------------------- registry
def test_the_registry_knows_every_built_in_method():
    assert {"lora", "seq_bn", "double_seq_bn", "par_bn"} <= set(preset_names())
    assert method_for(LoraConfig()).prefix == "lora_"
    assert method_for("BOTTLENECK").files == "adapterhub"
    assert method_for(SeqBnConfig).tuner_class().__name__ == "BottleneckModel"
    assert preset("par_bn", reduction_factor=4).reduction_factor == 4
    with pytest.raises(ValueError, match="'VERA' is a PEFT method that minipeft does not"):
        method_for("VERA")
    with pytest.raises(ValueError, match="unknown method 'qlora'; expected one of"):
        preset("qlora")
    with pytest.raises(ValueError, match="already registered to LoraConfig"):

        @dataclass
        class Other(PeftConfig):
            PEFT_TYPE: ClassVar[PeftType | None] = PeftType.LORA

        register_peft_method(config_class=Other, tuner="x:Y", prefix="x_")


def test_a_config_that_is_not_a_peft_config_is_refused():
    with pytest.raises(TypeError, match="expected a PeftConfig .* found dict"):
        get_peft_model(gpt2(), {"r": 8})


# ---------------------------------------------------------------------------- base-weight protocol
class Int8Linear(Module):
    """A frozen linear stored as int8 codes and one scale: the shape of a quantized layer. It
    takes part in merging only through get_base_weight / set_base_weight."""

    def __init__(self, linear: Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.numpy()
        self.scale = float(np.abs(w).max() / 127)
        self.codes = np.round(w / self.scale).astype(np.int8)
        self.weight = mp.nn.Parameter(mp.tensor(self.codes.astype(np.float32) * self.scale))
        self.weight.requires_grad_(False)
        self.calls = []

    def get_base_weight(self) -> Any:
        self.calls.append("get")
        return self.codes.astype(np.float32) * self.scale

    def set_base_weight(self, value: Any) -> None:
        self.calls.append("set")
        self.scale = float(np.abs(value).max() / 127)
        self.codes = np.round(value / self.scale).astype(np.int8)
        self.weight.data[...] = self.codes.astype(np.float32) * self.scale

    def forward(self, x):
        return x @ self.weight.T


def test_merging_goes_through_the_base_weight_protocol():
    layer = LoraLayer(Int8Linear(Linear(8, 6)))
    layer.update_layer("default", r=2, lora_alpha=2, init_lora_weights=False)
    x = mp.randn(3, 8)
    with mp.no_grad():
        unmerged = layer(x).numpy()
        layer.merge()
        merged = layer(x).numpy()
    assert layer.base_layer.calls == ["get", "set"]
    np.testing.assert_allclose(merged, unmerged, atol=0.05)  # requantized: int8 error
    assert layer.base_layer.codes.dtype == np.int8


def test_merging_into_a_layer_without_a_float_weight_is_a_clear_error():
    class CodesOnly(Module):
        in_features = out_features = 4

        def __init__(self) -> None:
            super().__init__()
            self.weight = mp.nn.Parameter(mp.tensor(np.zeros((4, 4)), dtype="float32"))
            self.weight.data = np.zeros((4, 4), dtype=np.int8)

        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="cannot merge into CodesOnly: .* found a int8 weight"):
        get_base_weight(CodesOnly())
    with pytest.raises(ValueError, match=r"expected shape \(4, 3\), found \(3, 4\)"):
        set_base_weight(Linear(3, 4), np.zeros((3, 4), dtype=np.float32))


# ---------------------------------------------------------------------------- injection
def test_inside_adapter_is_decided_by_the_modules_above():
    pm = get_peft_model(gpt2(), LoraConfig(r=2))
    pm.add_adapter("bn", SeqBnConfig())
    modules = dict(pm.get_base_model().named_modules())
    assert inside_adapter("transformer.h.0.attn.c_attn.base_layer", modules)
    assert inside_adapter("transformer.h.0.attn.c_attn.lora_A.default", modules)
    assert inside_adapter("transformer.h.0.mlp_residual.adapters.bn.adapter_up", modules)
    assert not inside_adapter("transformer.h.0.attn.c_attn", modules)
    assert not inside_adapter("transformer.h.0.mlp.c_fc", modules)


def test_a_failed_second_adapter_leaves_the_model_as_it_was():
    pm = get_peft_model(gpt2(), LoraConfig(r=2, target_modules=["c_attn"]))
    before = logits(pm)
    names = [n for n, _ in pm.named_modules()]
    flags = [p.requires_grad for p in pm.parameters()]
    with pytest.raises(ValueError, match="matched none"):
        pm.add_adapter("b", LoraConfig(target_modules=["nothing_here"]))
    with pytest.raises(ValueError, match="reduction_factor"):
        pm.add_adapter("c", SeqBnConfig(reduction_factor=1000))
    assert [n for n, _ in pm.named_modules()] == names
    assert [p.requires_grad for p in pm.parameters()] == flags
    assert list(pm.peft_config) == ["default"]
    np.testing.assert_array_equal(logits(pm), before)


# ---------------------------------------------------------------------------- a new method
@dataclass
class ToyBiasConfig(PeftConfig):
    """A toy method: a trainable vector added to each target's output (BitFit-like)."""

    PEFT_TYPE: ClassVar[PeftType | None] = PeftType.LN_TUNING  # any free PeftType will do
    target_modules: list[str] | str | None = None
    modules_to_save: list[str] | None = None


class ToyBiasLayer(BaseTunerLayer):
    adapter_layer_names = ("toy_bias",)

    def __init__(self, base_layer: Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.toy_bias = ParameterDict()
        self._init_adapter_state()

    def update_layer(self, adapter_name: str) -> None:
        self.toy_bias[adapter_name] = mp.nn.Parameter(mp.zeros(self.base_layer.out_features))
        self._activate_first(adapter_name)

    def merge_weight(self, weight, adapter_name):
        return weight

    def merge_bias(self, bias, adapter_name):
        return bias + self.toy_bias[adapter_name].data

    def unmerge_bias(self, bias, adapter_name):
        return bias - self.toy_bias[adapter_name].data

    def forward(self, x):
        base_only = self._disabled_or_merged()
        out = self.base_layer(x)
        if base_only:
            return out
        for name in self.active_adapters:
            out = out + self.toy_bias[name]
        return out


class ToyBiasModel(BaseTuner):
    prefix = "toy_"
    layer_class = ToyBiasLayer
    config_class = ToyBiasConfig

    def _check_target(self, name, module, config):
        if not is_linear(module) and not isinstance(module, ToyBiasLayer):
            raise TypeError(f"{name} is not linear")

    def _create_and_replace(self, config, adapter_name, target_name, target):
        layer = target
        if not isinstance(layer, ToyBiasLayer):
            layer = ToyBiasLayer(target)
            self.model.set_submodule(target_name, layer)
        layer.update_layer(adapter_name)


@pytest.fixture
def toy_method():
    register_peft_method(config_class=ToyBiasConfig, tuner=f"{__name__}:ToyBiasModel",
                         prefix="toy_", default_targets={"gpt2": ["c_proj"]},
                         presets={"toy_bias": {}})  # fmt: skip
    yield
    del registry_module._METHODS[PeftType.LN_TUNING]


def test_a_new_method_needs_only_its_own_code(toy_method, tmp_path):
    pm = get_peft_model(gpt2(), preset("toy_bias"))
    assert pm.get_nb_trainable_parameters()[0] == 4 * 32  # attn.c_proj + mlp.c_proj, 2 layers
    base = logits(pm)
    for _, p in pm.named_parameters():
        if p.requires_grad:
            p.data[...] = np.random.default_rng(0).normal(0, 0.5, p.shape)
    tuned = logits(pm)
    assert np.abs(tuned - base).max() > 1e-3
    pm.save_pretrained(tmp_path)  # PEFT's layout, with the toy_ prefix
    loaded = PeftModel.from_pretrained(gpt2(), tmp_path)
    np.testing.assert_array_equal(logits(loaded), tuned)
    merged = loaded.merge_and_unload()
    np.testing.assert_allclose(logits(merged), tuned, atol=1e-5)
    assert not any(isinstance(m, ToyBiasLayer) for m in merged.modules())
