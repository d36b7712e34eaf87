"""DoRA (``LoraConfig(use_dora=True)``): W' = m / ‖W + s·B A‖ ⊙ (W + s·B A), norm detached.

For random shapes, ranks, α, rsLoRA, dtypes and both layouts (``nn.Linear`` and GPT-2's Conv1D,
W stored (d_in, d_out)), and for embeddings (norm per feature, over the vocabulary):

* m starts at the row norms of W + s·B A, so at init the output is exactly the base's;
* the forward is PEFT's formula, including the bias and (in training with dropout) the base
  term recomputed on dropout(x);
* merged ≡ unmerged, and unmerge restores W (also with two DoRA adapters active);
* gradients (float64 gradcheck) are those of the formula with the norm held constant — the
  paper's §4.3 detach, PEFT's gradient — and differ from the full derivative;
* files round-trip under PEFT's key ``...lora_magnitude_vector``; mixed batches route rows.

PEFT interop is in test_lora_variants_interop.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import strategies as S
from hypothesis import given, settings
from toys import Conv1D, Toy, inputs, out, weights

import minipeft as mp
from minipeft import nn
from minipeft.autograd import is_grad_enabled
from minipeft.fileio import load_safetensors
from minipeft.peft import LoraConfig, LoraEmbedding, LoraLayer, PeftModel, get_peft_model
from minipeft.peft.tuners.lora import dora

pytestmark = pytest.mark.filterwarnings("ignore:fan_in_fan_out=True does not match")
TOL = {"float32": 1e-4, "float64": 1e-10}


def dora_layer(setup: dict, init=False, dropout: float = 0.0,
               device: str = "cpu") -> tuple[LoraLayer, np.ndarray]:  # fmt: skip
    """A DoRA layer on a random Linear or Conv1D, B random (init=False) and m ≠ ‖W + ΔW‖;
    returns it and W as (d_out, d_in)."""
    rng = np.random.default_rng(setup["seed"])
    d_in, d_out, dtype = setup["d_in"], setup["d_out"], setup["dtype"]
    w, b = rng.normal(size=(d_out, d_in)), rng.normal(size=d_out)
    if setup["conv"]:
        base = Conv1D(w.T.astype(dtype), b.astype(dtype))
    else:
        base = nn.Linear(d_in, d_out, dtype=dtype)
        base.weight.data[...], base.bias.data[...] = w, b
    base.requires_grad_(False)
    base.to(device)
    mp.manual_seed(setup["seed"])
    layer = LoraLayer(base, fan_in_fan_out=setup["conv"])
    layer.update_layer("default", setup["r"], setup["alpha"], lora_dropout=dropout,
                       init_lora_weights=init, use_rslora=setup["rslora"],
                       use_dora=True)  # fmt: skip
    if init is False:  # a "trained" magnitude
        m = layer.lora_magnitude_vector["default"].weight
        m.data[...] *= rng.uniform(0.5, 1.5, size=m.shape)
    return layer, base.weight.numpy().T if setup["conv"] else base.weight.numpy()


def formula(layer: LoraLayer, w: np.ndarray, x: np.ndarray, h: np.ndarray | None = None):
    """PEFT's DoRA output in NumPy, float64: x Wᵀ + b + (k−1)·h Wᵀ + k·s·h Aᵀ Bᵀ, with
    k = m / ‖W + s·B A‖ and h = x (no dropout) or dropout(x)."""
    x = x.numpy().astype(np.float64)
    h = x if h is None else h
    a = layer.lora_A["default"].weight.numpy().astype(np.float64)
    b = layer.lora_B["default"].weight.numpy().astype(np.float64)
    s, w = layer.scaling["default"], w.astype(np.float64)
    m = layer.lora_magnitude_vector["default"].weight.numpy().astype(np.float64)
    k = m / np.linalg.norm(w + s * b @ a, axis=1)
    bias = layer.base_layer.bias.numpy().astype(np.float64)
    return x @ w.T + bias + (k - 1) * (h @ w.T) + k * s * (h @ a.T @ b.T)


def run(module, x) -> np.ndarray:
    with mp.no_grad():
        return module(x).numpy()


def x_for(setup: dict, device: str = "cpu") -> mp.Tensor:
    rng = np.random.default_rng(setup["seed"] + 1)
    shape = (*setup["batch"], setup["d_in"])
    return mp.tensor(rng.normal(size=shape), dtype=setup["dtype"], device=device)


# ---------------------------------------------------------------------------- Linear, Conv1D
@settings(max_examples=25)
@given(setup=S.dora_setups())
def test_magnitude_starts_at_the_row_norms_and_the_output_at_the_base(setup: dict) -> None:
    layer, w = dora_layer(setup, init=True)
    m = layer.lora_magnitude_vector["default"].weight.numpy()
    np.testing.assert_allclose(m, np.linalg.norm(w, axis=1), rtol=TOL[setup["dtype"]])
    assert m.shape == (setup["d_out"],) and m.dtype == np.dtype(setup["dtype"])
    x = x_for(setup)
    np.testing.assert_array_equal(run(layer, x), run(layer.base_layer, x))  # k = 1 exactly
    # With B ≠ 0 from the start (init False), m is the norm of W + s·B A.
    layer, w = dora_layer({**setup, "seed": setup["seed"] + 7}, init=False)
    a, b = layer.lora_A["default"].weight.numpy(), layer.lora_B["default"].weight.numpy()
    fresh = dora.weight_norm(w, layer.scaling["default"] * b @ a, transposed=False)
    layer.update_layer("other", setup["r"], setup["alpha"], init_lora_weights=False,
                       use_rslora=setup["rslora"], use_dora=True)  # fmt: skip
    a, b = layer.lora_A["other"].weight.numpy(), layer.lora_B["other"].weight.numpy()
    np.testing.assert_allclose(
        layer.lora_magnitude_vector["other"].weight.numpy(),
        np.linalg.norm(w + layer.scaling["other"] * b @ a, axis=1),
        rtol=TOL[setup["dtype"]],
    )
    assert fresh.shape == (setup["d_out"],)


@settings(max_examples=25)
@given(setup=S.dora_setups())
def test_forward_is_pefts_formula(setup: dict, device: str) -> None:
    layer, w = dora_layer(setup, device=device)
    x, tol = x_for(setup, device), TOL[setup["dtype"]]
    np.testing.assert_allclose(run(layer, x), formula(layer, w, x), rtol=tol, atol=tol)
    layer.eval()  # eval or training without dropout: the same path (result − b)
    np.testing.assert_allclose(run(layer, x), formula(layer, w, x), rtol=tol, atol=tol)


@pytest.mark.parametrize("conv", [False, True])
def test_active_dropout_recomputes_the_base_term_on_the_dropped_input(conv: bool) -> None:
    setup = {"d_in": 6, "d_out": 4, "r": 2, "alpha": 4, "rslora": False, "conv": conv,
             "dtype": "float64", "batch": (5,), "seed": 3}  # fmt: skip
    layer, w = dora_layer(setup, dropout=0.5)
    x = x_for(setup)
    mp.manual_seed(11)
    got = run(layer, x)
    mp.manual_seed(11)  # the same mask: the forward draws nothing before its dropout
    h = run(layer.lora_dropout["default"], x)
    assert (h == 0).any() and not np.allclose(h, x.numpy())
    np.testing.assert_allclose(got, formula(layer, w, x, h), rtol=1e-10, atol=1e-10)
    layer.eval()  # dropout off: the base term comes from result − b again
    np.testing.assert_allclose(run(layer, x), formula(layer, w, x), rtol=1e-10, atol=1e-10)


@settings(max_examples=25)
@given(setup=S.dora_setups())
def test_merge_equals_unmerged_and_unmerge_restores_w(setup: dict, device: str) -> None:
    layer, _ = dora_layer(setup, device=device)
    x, tol = x_for(setup, device), TOL[setup["dtype"]]
    before, expected = layer.base_layer.weight.numpy().copy(), run(layer, x)
    layer.merge()
    np.testing.assert_allclose(run(layer, x), expected, rtol=tol, atol=tol)
    layer.unmerge()
    np.testing.assert_allclose(layer.base_layer.weight.numpy(), before, rtol=tol, atol=tol)
    np.testing.assert_allclose(run(layer, x), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("conv", [False, True])
def test_two_dora_adapters_and_a_lora_one_merge_like_the_forward(conv: bool) -> None:
    """PEFT's order: each DoRA norm from the base weight without the other adapters, while its
    factor also scales what the earlier adapters added (``result`` is accumulated)."""
    base, model = (Toy(3, 5, 4, "float64", conv, seed=2) for _ in range(2))
    kw = {"target_modules": ["fc1", "fc2"], "fan_in_fan_out": conv, "init_lora_weights": False}
    mp.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=2, use_dora=True, **kw), adapter_name="a")
    model.add_adapter("b", LoraConfig(r=3, lora_alpha=5, **kw))
    model.add_adapter("c", LoraConfig(r=1, use_dora=True, **kw))
    model.set_adapter(["a", "b", "c"])
    x, w0 = inputs({"dims": (3,), "dtype": "float64", "seed": 0}), weights(model)
    expected = out(model, x)
    assert np.abs(expected - out(base, x)).max() > 1e-3
    model.merge_adapter()
    np.testing.assert_allclose(out(model, x), expected, rtol=1e-10, atol=1e-10)
    model.unmerge_adapter()
    for key, value in weights(model).items():
        np.testing.assert_allclose(value, w0[key], rtol=1e-10, atol=1e-12, err_msg=key)
    merged = model.merge_and_unload()
    assert type(merged) is Toy
    np.testing.assert_allclose(out(merged, x), expected, rtol=1e-10, atol=1e-10)


def _frozen_norm(monkeypatch, layer) -> None:
    """Numerical differences (gradcheck runs them under no_grad) see the norm as a constant,
    its value at the point checked; the analytic gradient runs the real code."""
    frozen = dora._current_norm(layer, "default")
    real = dora._current_norm

    def norm(lay, name):
        return real(lay, name) if is_grad_enabled() else frozen

    monkeypatch.setattr(dora, "_current_norm", norm)


@settings(max_examples=10)
@given(setup=S.dora_setups())
def test_gradients_treat_the_norm_as_a_constant(setup: dict) -> None:
    setup = {**setup, "dtype": "float64"}
    layer, _ = dora_layer(setup)
    layer.base_layer.bias.requires_grad_(True)  # bias="lora_only": it trains too
    x = x_for(setup).requires_grad_(True)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    m = layer.lora_magnitude_vector["default"].weight
    with pytest.MonkeyPatch.context() as patch:
        _frozen_norm(patch, layer)
        assert mp.gradcheck(lambda *_: layer(x), x, m, a, b, layer.base_layer.bias)


def test_the_gradient_is_not_the_full_derivative() -> None:
    """Without the detach, ∂‖W + s·B A‖/∂A and ∂/∂B would enter: the full finite difference
    disagrees with the gradient, so the check above really tests the detach."""
    setup = {"d_in": 4, "d_out": 3, "r": 2, "alpha": 8, "rslora": False, "conv": False,
             "dtype": "float64", "batch": (2,), "seed": 5}  # fmt: skip
    layer, _ = dora_layer(setup)
    x = x_for(setup)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert not mp.gradcheck(lambda *_: layer(x), a, b, raise_exception=False)


def test_only_adapter_parameters_train_and_the_count_includes_m() -> None:
    model = get_peft_model(Toy(3, 5, 4, "float32"), LoraConfig(r=2, target_modules=["fc1",
                           "fc2"], use_dora=True))  # fmt: skip
    n_lora = 2 * (3 + 5) + 5 + 2 * (5 + 4) + 4  # Σ r·(d_in + d_out) + d_out
    assert model.get_nb_trainable_parameters()[0] == n_lora
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert "base_model.model.fc1.lora_magnitude_vector.default.weight" in trainable
    assert all(".lora_" in n for n in trainable)


# ---------------------------------------------------------------------------- embedding
def dora_embedding(v=7, c=4, r=3, alpha=6.0, init=False, padding_idx=None) -> LoraEmbedding:
    base = nn.Embedding(v, c, padding_idx=padding_idx, dtype=mp.float64)
    base.weight.requires_grad_(False)
    mp.manual_seed(1)
    layer = LoraEmbedding(base)
    layer.update_layer("default", r, alpha, init_lora_weights=init, use_dora=True)
    if init is False:
        layer.lora_magnitude_vector["default"].weight.data[...] *= np.linspace(0.5, 1.5, c)
    return layer


def embedding_formula(layer: LoraEmbedding, ids: np.ndarray) -> np.ndarray:
    """k ⊙ (E[ids] + s·Aᵀ[ids] Bᵀ), k = m / ‖E + s·(B A)ᵀ‖ over the vocabulary (per feature)."""
    e = layer.base_layer.weight.numpy()
    a, b = layer.lora_embedding_A["default"].numpy(), layer.lora_embedding_B["default"].numpy()
    delta = layer.scaling["default"] * (b @ a).T  # (V, C)
    k = layer.lora_magnitude_vector["default"].weight.numpy() / np.linalg.norm(e + delta, axis=0)
    return k * (e + delta)[ids]


@pytest.mark.parametrize("padding_idx", [None, 2])
def test_embedding_dora_formula_init_merge_and_gradients(padding_idx, monkeypatch) -> None:
    ids = np.array([[0, 2, 2, 6], [5, 1, 0, 3]])
    layer = dora_embedding(init=True, padding_idx=padding_idx)
    e = layer.base_layer.weight.numpy()
    m = layer.lora_magnitude_vector["default"].weight.numpy()
    np.testing.assert_allclose(m, np.linalg.norm(e, axis=0), rtol=1e-12)  # (C,), over V
    np.testing.assert_array_equal(run(layer, ids), run(layer.base_layer, ids))
    layer = dora_embedding(padding_idx=padding_idx)
    expected = run(layer, ids)
    np.testing.assert_allclose(expected, embedding_formula(layer, ids), rtol=1e-10, atol=1e-12)
    before = layer.base_layer.weight.numpy().copy()
    layer.merge()
    np.testing.assert_allclose(run(layer, ids), expected, rtol=1e-10, atol=1e-12)
    layer.unmerge()
    np.testing.assert_allclose(layer.base_layer.weight.numpy(), before, rtol=1e-10, atol=1e-12)
    if padding_idx is None:  # with one, A's padding column gets no gradient (LoRA's rule)
        a, b = layer.lora_embedding_A["default"], layer.lora_embedding_B["default"]
        m = layer.lora_magnitude_vector["default"].weight
        _frozen_norm(monkeypatch, layer)
        assert mp.gradcheck(lambda *_: layer(ids), a, b, m)


# ---------------------------------------------------------------------------- files, batches
def test_save_load_round_trip_under_pefts_key(tmp_path) -> None:
    kw = {"target_modules": ["fc1", "fc2"], "init_lora_weights": False, "use_dora": True}
    model = get_peft_model(Toy(3, 5, 4, "float64", conv=True), LoraConfig(fan_in_fan_out=True,
                           **kw))  # fmt: skip
    for layer in model.base_model.lora_layers():
        layer.lora_magnitude_vector["default"].weight.data[...] *= 1.25
    x = inputs({"dims": (3,), "dtype": "float64", "seed": 0})
    expected = out(model, x)
    model.save_pretrained(tmp_path)
    saved = load_safetensors(str(tmp_path / "adapter_model.safetensors"))
    assert saved["base_model.model.fc2.lora_magnitude_vector"].shape == (4,)
    assert not any(k.endswith(".weight") and "magnitude" in k for k in saved)
    loaded = PeftModel.from_pretrained(Toy(3, 5, 4, "float64", conv=True), tmp_path)
    assert loaded.peft_config["default"].use_dora
    np.testing.assert_array_equal(out(loaded, x), expected)


def test_mixed_batch_rows_equal_each_adapter_alone() -> None:
    """PEFT refuses DoRA in mixed batches; here each row's DoRA output only needs that row's
    base output, so it is routed like plain LoRA."""
    kw = {"target_modules": ["fc1", "fc2"], "init_lora_weights": False, "use_dora": True}
    mp.manual_seed(4)
    model = get_peft_model(Toy(3, 5, 4, "float64", seed=4), LoraConfig(r=2, **kw), "a")
    model.add_adapter("b", LoraConfig(r=3, **kw))
    model.eval()
    x = inputs({"dims": (3,), "dtype": "float64", "seed": 1, "batch": (3,)})
    names = ["b", "__base__", "a"]
    with mp.no_grad():
        mixed = model(x, adapter_names=names).numpy()
    for i, name in enumerate(names):
        if name == "__base__":
            with model.disable_adapter():
                alone = out(model, x)
        else:
            model.set_adapter(name)
            alone = out(model, x)
        np.testing.assert_allclose(mixed[i], alone[i], rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------- 4-bit, float16
def test_dora_on_a_4bit_base_uses_the_dequantized_weight() -> None:
    """QDoRA: the norm and (with dropout) the base term come from the dequantized weight
    (PEFT's ``dequantize_module_weight``); merge_and_unload(dequantize=True) is exact."""
    from minipeft.quant import Linear4bit
    from minipeft.quant.model import dequantize_model

    mp.manual_seed(0)
    model = nn.Sequential(Linear4bit(40, 6), nn.Tanh(), nn.Linear(6, 2))
    x = mp.randn(3, 40)
    base = run(model, x)
    pm = get_peft_model(model, LoraConfig(r=2, target_modules=["0"], use_dora=True))
    np.testing.assert_array_equal(run(pm, x), base)
    layer = pm.base_model.model[0]
    w = dora.get_base_weight(layer.base_layer)  # (out, in) float32
    np.testing.assert_allclose(layer.lora_magnitude_vector["default"].weight.numpy(),
                               np.linalg.norm(w, axis=1), rtol=1e-6)  # fmt: skip
    layer.lora_B["default"].weight.data[...] = 0.1
    expected = run(pm, x)
    assert np.abs(expected - base).max() > 1e-3
    merged = pm.merge_and_unload(dequantize=True)
    np.testing.assert_allclose(run(merged, x), expected, rtol=1e-5, atol=1e-5)
    assert dequantize_model is not None


def test_a_float16_base_keeps_float32_adapters_and_magnitude() -> None:
    base = nn.Linear(5, 3, dtype=mp.float16)
    base.requires_grad_(False)
    layer = LoraLayer(base)
    layer.update_layer("default", 2, 4, init_lora_weights=False, use_dora=True)
    assert layer.lora_magnitude_vector["default"].weight.dtype == np.float32
    x = mp.randn(4, 5).to(mp.float16)
    y = layer(x)
    assert y.dtype == np.float16
    w = base.weight.numpy().astype(np.float32)
    a, b = layer.lora_A["default"].weight.numpy(), layer.lora_B["default"].weight.numpy()
    full = w + layer.scaling["default"] * b @ a
    k = layer.lora_magnitude_vector["default"].weight.numpy() / np.linalg.norm(full, axis=1)
    expected = k * (x.numpy().astype(np.float32) @ full.T) + base.bias.numpy()
    np.testing.assert_allclose(y.numpy(), expected, rtol=2e-2, atol=2e-2)
