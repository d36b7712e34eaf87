"""AdaLoRA's layer, config and files, as properties over sizes, layouts and dtypes.

A toy network (tests/toys.py) is wrapped by ``get_peft_model``; for every drawn setup:

* trainable count = Σ_targets init_r (d_in + d_out + 1) (A, E, B), plus one frozen ``ranknum``;
* E = 0 (PEFT's init) ⇒ exactly the base output; merged ≡ unmerged, unmerge restores W;
* a float64 gradcheck of the layer in x, A, E and B, and of the orthogonality penalty;
* the penalty is 0 for orthonormal A (rows) and B (columns), and PEFT's formula otherwise;
* the config's fields, defaults and errors (each naming its field); save → load with the
  adapter cut to ``rank_pattern`` (keys saved without the adapter name, ``ranknum`` kept).

The schedule, the pruning and training live in test_adalora_allocation.py; PEFT interop in
test_adalora_interop.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from strategies import adalora_setups
from toys import Toy, inputs, out, weights

import minipeft as mp
from minipeft import nn
from minipeft.gradcheck import gradcheck
from minipeft.peft import AdaLoraConfig, AdaLoraLayer, AdaLoraModel, PeftModel, get_peft_model
from minipeft.peft.config import PeftConfig
from minipeft.peft.registry import method_for, preset_class

TOL = {"float32": 1e-5, "float64": 1e-10}
pytestmark = pytest.mark.filterwarnings("ignore:fan_in_fan_out")


def config_of(setup: dict, **overrides) -> AdaLoraConfig:
    kw = {"target_modules": ["fc1", "fc2"], "init_r": setup["init_r"], "target_r": 1,
          "lora_alpha": setup["alpha"], "total_step": 10,
          "fan_in_fan_out": setup["conv"]}  # fmt: skip
    return AdaLoraConfig(**{**kw, **overrides})


def build(setup: dict, device: str = "cpu", **overrides) -> tuple[Toy, PeftModel]:
    """(a fresh base model, a PEFT model around an identical copy) on ``device``."""
    args = (*setup["dims"], setup["dtype"], setup["conv"], setup["seed"])
    return Toy(*args).to(device), get_peft_model(
        Toy(*args).to(device), config_of(setup, **overrides)
    )


def randomize(model: nn.Module, seed: int = 0, scale: float = 1.0) -> None:
    """Every A, E, B entry to N(0, scale²) (E = 0 would hide every bug)."""
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if any(f".{f}." in name for f in ("lora_A", "lora_E", "lora_B")):
            p.data[...] = mp.tensor(rng.normal(size=p.shape) * scale, dtype=p.dtype,
                                    device=p.device).data  # fmt: skip


def fixed(**overrides) -> dict:
    setup = {"dims": (3, 5, 4), "init_r": 3, "alpha": 8, "conv": False, "dtype": "float64"}
    return {**setup, "seed": 0, "batch": (2,), **overrides}


# ---------------------------------------------------------------------------- counts, init
@settings(max_examples=20)
@given(setup=adalora_setups())
def test_trainable_count_and_shapes_are_peft_s(setup: dict) -> None:
    d_in, d_hid, d_out = setup["dims"]
    r = setup["init_r"]
    base, pm = build(setup)
    n_base = sum(p.numel() for p in base.parameters())
    n_ada = r * (d_in + d_hid + 1) + r * (d_hid + d_out + 1)
    assert pm.get_nb_trainable_parameters() == (n_ada, n_base + n_ada + 2)  # + 2 ranknum
    shapes = {n: tuple(p.shape) for n, p in pm.named_parameters() if p.requires_grad}
    for m, (i, o) in {"fc1": (d_in, d_hid), "fc2": (d_hid, d_out)}.items():
        assert shapes[f"base_model.model.{m}.lora_A.default"] == (r, i)
        assert shapes[f"base_model.model.{m}.lora_E.default"] == (r, 1)
        assert shapes[f"base_model.model.{m}.lora_B.default"] == (o, r)
        layer = pm.get_base_model().get_submodule(m)
        assert layer.ranknum["default"].numpy().tolist() == [float(r)]
        assert layer.scaling["default"] == setup["alpha"]


@settings(max_examples=15)
@given(setup=adalora_setups())
def test_zero_E_gives_the_base_output_bit_for_bit(setup: dict, device: str) -> None:
    base, pm = build(setup, device)
    x = inputs(setup, device)
    for layer in pm.base_model.tuner_layers():
        assert not layer.lora_E["default"].numpy().any()  # PEFT's init: E = 0
        assert 0 < np.abs(layer.lora_A["default"].numpy()).max() < 0.2  # A, B ~ N(0, 0.02²)
    np.testing.assert_array_equal(out(pm, x), out(base, x))
    randomize(pm, setup["seed"])
    for layer in pm.base_model.tuner_layers():  # A, B random, E = 0: still the base
        layer.lora_E["default"].data[...] = 0
    np.testing.assert_array_equal(out(pm, x), out(base, x))


def test_init_lora_weights_false_draws_every_factor() -> None:
    _, pm = build(fixed(), init_lora_weights=False)
    e = pm.base_model.model.fc1.lora_E["default"].numpy()
    assert np.abs(e).min() > 0  # PEFT: torch.randn for A, E and B


# ---------------------------------------------------------------------------- merging
@settings(max_examples=20)
@given(setup=adalora_setups())
def test_merge_equals_unmerged_and_unmerge_restores_weights(setup: dict, device: str) -> None:
    base, pm = build(setup, device)
    randomize(pm, setup["seed"])
    x, tol = inputs(setup, device), TOL[setup["dtype"]]
    before = weights(pm)
    unmerged = out(pm, x)
    assert np.abs(unmerged - out(base, x)).max() > 0
    pm.merge_adapter()
    np.testing.assert_allclose(out(pm, x), unmerged, rtol=tol, atol=tol)
    pm.unmerge_adapter()
    for key, value in weights(pm).items():
        np.testing.assert_allclose(value, before[key], rtol=tol, atol=tol, err_msg=key)
    merged = pm.merge_and_unload()
    assert type(merged) is Toy
    np.testing.assert_allclose(out(merged, x), unmerged, rtol=tol, atol=tol)


def test_delta_weight_is_peft_s_formula() -> None:
    for conv in (False, True):
        _, pm = build(fixed(conv=conv, alpha=4))
        randomize(pm, 1)
        layer = pm.base_model.model.fc2
        a, e, b = (layer.__getattr__(f)["default"].numpy() for f in ("lora_A", "lora_E", "lora_B"))
        expected = b @ (a * e) * 4 / (3 + 1e-5)  # α / (ranknum + 1e-5), ranknum = init_r = 3
        got = layer.get_delta_weight("default")
        np.testing.assert_allclose(got, expected.T if conv else expected, rtol=1e-12)
        assert got.shape == layer.base_layer.weight.shape


# ---------------------------------------------------------------------------- gradients
@settings(max_examples=10)
@given(setup=adalora_setups())
def test_adalora_layer_gradcheck(setup: dict) -> None:
    rng = np.random.default_rng(setup["seed"])
    d_in, d_out = setup["dims"][:2]
    layer = AdaLoraLayer(nn.Linear(d_in, d_out, dtype="float64"))
    layer.update_layer("default", r=setup["init_r"], lora_alpha=setup["alpha"],
                       init_lora_weights=False)  # fmt: skip
    params = [getattr(layer, f)["default"] for f in ("lora_A", "lora_E", "lora_B")]
    x = mp.tensor(rng.normal(size=(*setup["batch"], d_in)), dtype="float64", requires_grad=True)
    assert gradcheck(lambda x_, a, e, b: layer(x_), x, *params)


def test_penalty_gradcheck() -> None:
    _, pm = build(fixed(), init_lora_weights=False)
    params = [p for n, p in pm.named_parameters() if ".lora_A." in n or ".lora_B." in n]
    assert gradcheck(lambda *_: pm.base_model.regularization_loss(), *params)


# ---------------------------------------------------------------------------- the penalty
def _orthonormal(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(max(rows, cols), min(rows, cols))))
    return q.T if rows < cols else q  # orthonormal rows (rows ≤ cols) or columns


@settings(max_examples=15)
@given(setup=adalora_setups())
def test_penalty_is_zero_for_orthonormal_factors_and_peft_s_formula_otherwise(setup: dict) -> None:
    setup = {
        **setup,
        "dtype": "float64",
        "dims": tuple(max(d, setup["init_r"]) for d in setup["dims"]),
    }
    _, pm = build(setup, orth_reg_weight=0.7)
    rng = np.random.default_rng(setup["seed"])
    layers = list(pm.base_model.tuner_layers())
    for layer in layers:
        r = layer.r["default"]
        layer.lora_A["default"].data[...] = _orthonormal(rng, r, layer.in_features)  # A Aᵀ = I
        layer.lora_B["default"].data[...] = _orthonormal(rng, layer.out_features, r)  # Bᵀ B = I
    penalty = pm.base_model.regularization_loss()
    assert abs(penalty.item()) < 1e-12
    penalty.backward()  # ‖0‖_F: a zero gradient, as torch.norm's, not NaN
    assert all(np.isfinite(p.grad).all() for p in pm.parameters() if p.grad is not None)
    randomize(pm, setup["seed"])
    norms = []
    for layer in layers:
        a, b = layer.lora_A["default"].numpy(), layer.lora_B["default"].numpy()
        r = a.shape[0]
        norms += [np.linalg.norm(a @ a.T - np.eye(r)), np.linalg.norm(b.T @ b - np.eye(r))]
    expected = 0.7 * np.mean(norms)  # PEFT: the Frobenius norms (not squared), averaged
    np.testing.assert_allclose(pm.base_model.regularization_loss().item(), expected, rtol=1e-12)


def test_penalty_joins_the_loss_except_in_held_out_metrics() -> None:
    from minipeft.evaluation import evaluate

    class Head(nn.Module):  # the toy with a loss, like a model given labels
        def __init__(self, toy: Toy) -> None:
            super().__init__()
            self.toy = toy

        def forward(self, x, labels=None):
            y = self.toy(x)
            return type("Out", (), {"loss": (y * y).mean(), "logits": y})()

    setup, x = fixed(), inputs(fixed())
    config = config_of(setup, target_modules=["fc1"], task_type="CAUSAL_LM")
    pm = get_peft_model(Head(Toy(3, 5, 4, "float64")), config)
    with mp.no_grad():
        data = (pm.base_model.model(x).loss.item(), pm.base_model.regularization_loss().item())
        assert pm(x, labels=1).loss.item() == pytest.approx(data[0] + data[1], rel=1e-12)
        with pm.without_regularization():
            assert pm(x, labels=1).loss.item() == data[0]
    batch = {"x": x.numpy(), "labels": np.zeros((2, 3), dtype=np.int64)}
    assert evaluate(pm, [batch])["loss"] == pytest.approx(data[0], rel=1e-12)
    # PEFT's plain PeftModel (no task_type) runs the base model past AdaLoraModel.forward.
    plain = get_peft_model(Head(Toy(3, 5, 4, "float64")), config_of(setup, target_modules=["fc1"]))
    with mp.no_grad():
        assert plain(x).loss.item() == plain.base_model.model(x).loss.item()


# ---------------------------------------------------------------------------- config
def test_config_keys_defaults_and_registry() -> None:
    config = AdaLoraConfig(total_step=100)
    data = json.loads(config.to_json_string())
    assert data["peft_type"] == "ADALORA" and data["rank_pattern"] is None
    defaults = {"init_r": 12, "target_r": 8, "tinit": 0, "tfinal": 0, "deltaT": 1,
                "beta1": 0.85, "beta2": 0.85, "orth_reg_weight": 0.5,
                "total_step": 100}  # fmt: skip
    assert {k: data[k] for k in defaults} == defaults
    again = PeftConfig.from_dict(data)
    assert type(again) is AdaLoraConfig and again.to_dict() == config.to_dict()
    method = method_for(config)
    assert method.prefix == "lora_" and method.tuner_class() is AdaLoraModel
    assert method.default_target_modules("gpt2") == ["c_attn"]
    assert method.default_target_modules("llama") == ["q_proj", "v_proj"]
    assert preset_class("adalora") is AdaLoraConfig
    peft = pytest.importorskip("peft")
    theirs = peft.AdaLoraConfig(total_step=100).to_dict()
    assert set(theirs) == set(data)
    assert {k: theirs[k] for k in defaults} == defaults


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "AdaLoraConfig.total_step: expected a positive integer"),
        ({"total_step": 0}, "AdaLoraConfig.total_step: expected a positive integer"),
        ({"total_step": 10, "tinit": 6, "tfinal": 4}, "AdaLoraConfig.tinit: expected less than"),
        ({"total_step": 10, "target_r": 13}, "AdaLoraConfig.target_r: expected at most init_r=12"),
        ({"total_step": 10, "beta1": 1.0}, r"AdaLoraConfig.beta1: expected a number in \[0, 1\)"),
        ({"total_step": 10, "beta2": -0.1}, r"AdaLoraConfig.beta2: expected a number in \[0, 1\)"),
        ({"total_step": 10, "use_dora": True}, "AdaLoraConfig.use_dora: expected False"),
        ({"total_step": 10, "orth_reg_weight": -1}, "AdaLoraConfig.orth_reg_weight: expected"),
        ({"total_step": 10, "init_r": 0}, "AdaLoraConfig.init_r: expected an integer >= 1"),
        ({"total_step": 10, "deltaT": 0}, "AdaLoraConfig.deltaT: expected an integer >= 1"),
        ({"total_step": 10, "rank_pattern": {"a": [1, 0]}}, r"AdaLoraConfig.rank_pattern\['a'\]"),
        ({"total_step": 10, "loftq_config": {"bits": 4}}, "AdaLoraConfig.loftq_config"),
    ],
)
def test_config_errors_name_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdaLoraConfig(**kwargs)


def test_setting_r_warns_like_peft() -> None:
    with pytest.warns(UserWarning, match="`r` is not used by AdaLoRA"):
        AdaLoraConfig(total_step=10, r=4)


def test_one_trainable_adapter_at_most_and_non_linear_targets_refused() -> None:
    _, pm = build(fixed())
    with pytest.raises(ValueError, match="supports only 1 trainable adapter"):
        pm.add_adapter("other", config_of(fixed()))
    pm.add_adapter("other", config_of(fixed(), inference_mode=True))  # for inference: fine
    with pytest.raises(TypeError, match="AdaLoRA supports linear layers"):
        get_peft_model(nn.Sequential(nn.Embedding(5, 3)), config_of(fixed(), target_modules=["0"]))


def test_a_mixed_batch_routes_each_row_through_its_adapter() -> None:
    _, pm = build(fixed(), init_lora_weights=False)
    pm.add_adapter("other", config_of(fixed(), init_r=2, inference_mode=True,
                                      init_lora_weights=False))  # fmt: skip
    pm.eval()
    x = inputs({**fixed(), "batch": (3,)})
    names = ["other", "__base__", "default"]
    with mp.no_grad():
        mixed = pm(x, adapter_names=names).numpy()
        with pm.disable_adapter():
            expected = {"__base__": pm(x).numpy()}
        for name in ("default", "other"):
            pm.set_adapter(name)
            expected[name] = pm(x).numpy()
    for row, name in enumerate(names):
        np.testing.assert_allclose(mixed[row], expected[name][row], rtol=1e-12, atol=1e-12)
    assert len({expected[n][0].tobytes() for n in expected}) == 3  # three different functions
