"""LoRA's invariants, as properties over shapes, ranks, scalings, bias modes, layouts and dtypes.

A toy two-layer network (no HF ``config``, so targets are always named) is wrapped by
``get_peft_model``; for every drawn configuration:

* trainable count = Σ_targets r·(d_in + d_out) (+ the biases the ``bias`` mode makes trainable);
* B = 0 at init ⇒ exactly the base output; ``disable_adapter`` ⇒ exactly the base output;
* merged output ≡ unmerged output (float64 1e-10, float32 1e-4) and unmerge restores W;
* only adapter parameters get gradients, and SGD changes nothing else (bitwise);
* save → load reproduces the logits bit for bit; ``rank_pattern`` / ``alpha_pattern`` apply.

``fan_in_fan_out`` is exercised with an HF-style ``Conv1D`` (weight stored (d_in, d_out)).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from toys import Toy, inputs, out, weights

import minipeft as mp
from minipeft import nn
from minipeft.optim import SGD
from minipeft.peft import LoraConfig, LoraLayer, PeftModel, get_peft_model

TOL = {"float32": 1e-4, "float64": 1e-10}
# With a Conv1D fc2, fan_in_fan_out=True is also applied to the Linear fc1, which warns and fixes it
# (PEFT does the same); test_fan_in_fan_out_mismatch_warns_and_is_corrected checks that warning.
pytestmark = pytest.mark.filterwarnings("ignore:fan_in_fan_out=True does not match")


@st.composite
def lora_setups(draw: st.DrawFn) -> dict:
    """Layer sizes, a LoRA config (ranks/alphas per layer included) and a dtype."""
    d_in, d_hid, d_out = (draw(st.integers(1, 6)) for _ in range(3))
    r1, r2 = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    config = {
        "r": r1,
        "lora_alpha": draw(st.sampled_from([1, 4, 8, 16, 0.5])),
        "use_rslora": draw(st.booleans()),
        "bias": draw(st.sampled_from(["none", "all", "lora_only"])),
        "target_modules": ["fc1", "fc2"],
        "rank_pattern": {"fc2": r2},
        "alpha_pattern": draw(st.sampled_from([{}, {"fc1": 3}])),
    }
    return {
        "dims": (d_in, d_hid, d_out),
        "conv": draw(st.booleans()),
        "dtype": draw(st.sampled_from(["float32", "float64"])),
        "config": config,
        "seed": draw(st.integers(0, 2**16)),
        "batch": tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))),  # x (..., d_in)
    }


def build(setup: dict, device: str = "cpu", **overrides) -> tuple[Toy, PeftModel]:
    """(a fresh base model, a PEFT model around an identical copy) on ``device``."""
    d_in, d_hid, d_out = setup["dims"]
    args = (d_in, d_hid, d_out, setup["dtype"], setup["conv"], setup["seed"])
    mp.manual_seed(setup["seed"])
    config = LoraConfig(**{**setup["config"], "fan_in_fan_out": setup["conv"], **overrides})
    base = Toy(*args).to(device)
    return base, get_peft_model(Toy(*args).to(device), config)


# ---------------------------------------------------------------------------- counts, init
@settings(max_examples=25)
@given(setup=lora_setups())
def test_trainable_count_is_r_times_din_plus_dout(setup: dict) -> None:
    d_in, d_hid, d_out = setup["dims"]
    cfg = setup["config"]
    r1, r2, bias = cfg["r"], cfg["rank_pattern"]["fc2"], cfg["bias"]
    base, peft_model = build(setup)
    n_lora = r1 * (d_in + d_hid) + r2 * (d_hid + d_out)  # Σ r·(d_in + d_out)
    n_bias = {"none": 0, "lora_only": d_hid + d_out, "all": d_hid + d_out + 2}[bias]
    n_base = sum(p.numel() for p in base.parameters())
    assert peft_model.get_nb_trainable_parameters() == (n_lora + n_bias, n_base + n_lora)
    # Which tensors train is a name filter: lora_* always, biases per the `bias` mode.
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if ".lora_" in n}
    assert len(lora) == 4
    wrapped_bias = {f"base_model.model.{m}.base_layer.bias" for m in ("fc1", "fc2")}
    extra = {
        "none": set(),
        "lora_only": wrapped_bias,
        "all": wrapped_bias | {"base_model.model.head.bias"},
    }[bias]
    assert trainable - lora == extra


@settings(max_examples=25)
@given(setup=lora_setups())
def test_rank_and_alpha_patterns_set_shapes_and_scaling(setup: dict) -> None:
    cfg = setup["config"]
    _, peft_model = build(setup)
    d_in, d_hid, d_out = setup["dims"]
    fc1, fc2 = peft_model.base_model.model.fc1, peft_model.base_model.model.fc2
    assert isinstance(fc1, LoraLayer) and isinstance(fc2, LoraLayer)
    for layer, r, alpha, n_in, n_out in (
        (fc1, cfg["r"], cfg["alpha_pattern"].get("fc1", cfg["lora_alpha"]), d_in, d_hid),
        (fc2, cfg["rank_pattern"]["fc2"], cfg["lora_alpha"], d_hid, d_out),
    ):
        assert layer.lora_A["default"].weight.shape == (r, n_in)
        assert layer.lora_B["default"].weight.shape == (n_out, r)
        assert layer.r["default"] == r
        scale = alpha / math.sqrt(r) if cfg["use_rslora"] else alpha / r
        assert layer.scaling["default"] == pytest.approx(scale, rel=1e-12)
        assert layer.lora_A["default"].weight.dtype == np.dtype(setup["dtype"])


@settings(max_examples=15)
@given(setup=lora_setups(), init=st.sampled_from([True, "gaussian"]))
def test_zero_B_at_init_gives_the_base_output_exactly(setup: dict, init, device: str) -> None:
    base, peft_model = build(setup, device, init_lora_weights=init)
    x = inputs(setup, device)
    for layer in peft_model.base_model.lora_layers():
        assert not layer.lora_B["default"].weight.numpy().any()
        assert layer.lora_A["default"].weight.numpy().any()  # A is random: B A x = 0 via B
    np.testing.assert_array_equal(out(peft_model, x), out(base, x))


# ---------------------------------------------------------------------------- merging
@settings(max_examples=25)
@given(setup=lora_setups())
def test_merge_equals_unmerged_and_unmerge_restores_weights(setup: dict, device: str) -> None:
    base, peft_model = build(setup, device, init_lora_weights=False)
    x, tol = inputs(setup, device), TOL[setup["dtype"]]
    before = weights(peft_model)
    unmerged = out(peft_model, x)
    assert np.abs(unmerged - out(base, x)).max() > 0  # the random B makes a difference
    peft_model.merge_adapter()
    assert all(layer.merged for layer in peft_model.base_model.lora_layers())
    np.testing.assert_allclose(out(peft_model, x), unmerged, rtol=tol, atol=tol)
    peft_model.unmerge_adapter()
    for key, value in weights(peft_model).items():  # W + ΔW − ΔW: equal up to one rounding
        np.testing.assert_allclose(value, before[key], rtol=tol, atol=tol * 1e-2, err_msg=key)
    np.testing.assert_allclose(out(peft_model, x), unmerged, rtol=tol, atol=tol)
    # merge_and_unload: a plain Toy with the same function and no LoRA layer left
    merged = peft_model.merge_and_unload()
    assert type(merged) is Toy
    assert not any(isinstance(m, LoraLayer) for m in merged.modules())
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    np.testing.assert_allclose(out(merged, x), unmerged, rtol=tol, atol=tol)


@settings(max_examples=15)
@given(setup=lora_setups())
def test_disable_adapter_gives_base_output_then_restores(setup: dict, device: str) -> None:
    base, peft_model = build(setup, device, init_lora_weights=False)
    x = inputs(setup, device)
    adapted = out(peft_model, x)
    with peft_model.disable_adapter():
        np.testing.assert_array_equal(out(peft_model, x), out(base, x))
    np.testing.assert_array_equal(out(peft_model, x), adapted)


FIXED = {"dims": (3, 5, 4), "conv": False, "dtype": "float64", "seed": 0,
         "config": {"r": 2, "target_modules": ["fc1", "fc2"]}}  # fmt: skip


def test_safe_merge_with_nan_adapter_raises_and_changes_nothing() -> None:
    _, peft_model = build(FIXED, init_lora_weights=False)
    peft_model.base_model.model.fc2.lora_B["default"].weight.data[0, 0] = np.nan
    before = weights(peft_model)
    for merge in (peft_model.merge_adapter, peft_model.merge_and_unload):
        with pytest.raises(ValueError, match="'default'"):
            merge(safe_merge=True)  # fc1 (fine) comes first: it must not be merged either
        assert not any(layer.merged for layer in peft_model.base_model.lora_layers())
        assert isinstance(peft_model.base_model.model.fc1, LoraLayer)
        after = weights(peft_model)
        assert after.keys() == before.keys()
        for k in before:
            np.testing.assert_array_equal(after[k], before[k], err_msg=k)


def test_merging_twice_warns_and_changes_nothing() -> None:
    _, peft_model = build(FIXED, init_lora_weights=False)
    peft_model.merge_adapter()
    once = weights(peft_model)
    with pytest.warns(UserWarning, match="already merged"):
        peft_model.merge_adapter()
    for k, v in weights(peft_model).items():
        np.testing.assert_array_equal(v, once[k], err_msg=k)


def test_disable_adapter_unmerges_merged_weights() -> None:
    base, peft_model = build(FIXED, init_lora_weights=False)
    x = inputs(FIXED)
    adapted = out(peft_model, x)
    peft_model.merge_adapter()
    with peft_model.disable_adapter():
        np.testing.assert_allclose(out(peft_model, x), out(base, x), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out(peft_model, x), adapted, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------- training
@settings(max_examples=15)
@given(setup=lora_setups())
def test_only_adapter_params_get_grads_and_change(setup: dict, device: str) -> None:
    _, peft_model = build(setup, device, init_lora_weights=False)
    x = inputs(setup, device)
    before = {n: p.numpy().copy() for n, p in peft_model.named_parameters()}
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    # Every parameter goes to the optimizer, with weight decay: frozen ones must still not move.
    opt = SGD(list(peft_model.parameters()), lr=0.1, momentum=0.9, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        (peft_model(x) ** 2).mean().backward()  # a mean, so 3 steps cannot overflow to inf/NaN
        for name, p in peft_model.named_parameters():
            assert (p.grad is not None) == (name in trainable), name  # frozen means free
        opt.step()
    for name, p in peft_model.named_parameters():
        if name in trainable:
            assert np.isfinite(p.numpy()).all(), name  # NaN != NaN would pass the next check
            assert not np.array_equal(p.numpy(), before[name]), name
        else:
            np.testing.assert_array_equal(p.numpy(), before[name], err_msg=name)


# ---------------------------------------------------------------------------- files
@settings(max_examples=10)
@given(setup=lora_setups())
def test_save_load_round_trip_is_exact(setup: dict, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("adapter")
    _, peft_model = build(setup, init_lora_weights=False)
    x = inputs(setup)
    for p in peft_model.parameters():  # trained biases (bias="all"/"lora_only") must be saved too
        if p.requires_grad and p.ndim == 1:
            p.data[...] += 0.5
    expected = out(peft_model, x)
    peft_model.save_pretrained(folder)
    fresh, _ = build(setup)
    loaded = PeftModel.from_pretrained(fresh, folder)
    np.testing.assert_array_equal(out(loaded, x), expected)
    assert not any(p.requires_grad for p in loaded.parameters())  # frozen: inference_mode


# ---------------------------------------------------------------------------- fan_in_fan_out
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_conv1d_fan_in_fan_out_merges_with_the_transposed_delta(dtype: str) -> None:
    setup = {
        "dims": (3, 5, 4),
        "conv": True,
        "dtype": dtype,
        "seed": 3,
        "config": {"r": 2, "lora_alpha": 4, "target_modules": ["fc2"]},
    }
    base, peft_model = build(setup, init_lora_weights=False)
    layer = peft_model.base_model.model.fc2
    assert layer.fan_in_fan_out
    delta = layer.get_delta_weight("default")
    assert delta.shape == (5, 4) == layer.base_layer.weight.shape  # (d_in, d_out), like W
    x = inputs(setup)
    expected = out(peft_model, x)
    peft_model.merge_adapter()
    np.testing.assert_allclose(out(peft_model, x), expected, rtol=TOL[dtype], atol=TOL[dtype])


def test_fan_in_fan_out_mismatch_warns_and_is_corrected() -> None:
    # A Conv1D with fan_in_fan_out=False, and Linears (one square) with fan_in_fan_out=True.
    for conv, dims, flag, target in (
        (True, (3, 5, 4), False, "fc2"),
        (False, (3, 5, 4), True, "fc1"),
        (False, (4, 4, 4), True, "fc2"),  # square: only the layer type can tell
    ):
        setup = {
            "dims": dims,
            "conv": conv,
            "dtype": "float64",
            "seed": 1,
            "config": {"r": 2, "target_modules": [target]},
        }
        with pytest.warns(UserWarning, match="fan_in_fan_out"):
            _, peft_model = build(setup, fan_in_fan_out=flag, init_lora_weights=False)
        layer = peft_model.base_model.model.get_submodule(target)
        assert layer.fan_in_fan_out is (not flag)
        x = inputs(setup)
        expected = out(peft_model, x)
        peft_model.merge_adapter()
        np.testing.assert_allclose(out(peft_model, x), expected, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------- bad input
def test_rank_must_be_positive() -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError, match=r"\br\b"):
            LoraConfig(r=bad, target_modules=["fc1"])
        with pytest.raises(ValueError, match="rank_pattern"):
            LoraConfig(r=2, target_modules=["fc1"], rank_pattern={"fc1": bad})
    layer = LoraLayer(nn.Linear(3, 4))
    with pytest.raises(ValueError, match="rank"):
        layer.update_layer("default", r=0, lora_alpha=1)


def test_model_without_config_needs_target_modules() -> None:
    with pytest.raises(ValueError, match="target_modules"):
        get_peft_model(Toy(2, 3, 4, "float32"), LoraConfig(r=2))


def test_lora_wraps_only_linear_layers() -> None:
    with pytest.raises(TypeError, match="LayerNorm"):
        LoraLayer(nn.LayerNorm(4))
