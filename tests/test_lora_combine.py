"""``add_weighted_adapter``: what each combination type computes, as properties on a toy model.

* ``linear`` of one adapter with weight w gives ΔW' = w·ΔW; weight 1.0 gives back the adapter's
  outputs exactly for plain LoRA and rsLoRA (PEFT's issue #3761: not so in PEFT for rsLoRA);
* ``cat``: rank Σ r_i and ΔW' = Σ w_i ΔW_i;
* ``svd``: ΔW' is the best rank-k approximation of Σ w_i ΔW_i (Eckart–Young);
* the merge rules (task arithmetic, TIES, DARE, magnitude pruning) on hand-made tensors;
* bad input: unequal ranks or different layers for ``linear``, unknown names, bad weights.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from toys import Toy, inputs, out

import minipeft as mp
from minipeft.models import GPT2Config, GPT2LMHeadModel
from minipeft.peft import LoraConfig, get_peft_model
from minipeft.peft import merge_utils as mu

pytestmark = pytest.mark.filterwarnings("ignore:fan_in_fan_out=True does not match")


def delta(model, layer: str, name: str) -> np.ndarray:
    """ΔW of adapter ``name`` at ``layer``, (d_out, d_in)."""
    module = model.get_submodule(f"base_model.model.{layer}")
    d = mp.backend.to_numpy(module.get_delta_weight(name))
    return d.T if module.fan_in_fan_out else d


def two_adapters(setup: dict, r2: int | None = None, **config):
    """A toy PEFT model with adapters "a" and "b" (random non-zero B) on fc1 and fc2."""
    d_in, d_hid, d_out = setup["dims"]
    mp.manual_seed(setup["seed"])
    base = Toy(d_in, d_hid, d_out, "float64", setup["conv"], setup["seed"])
    common = {
        "target_modules": ["fc1", "fc2"],
        "fan_in_fan_out": setup["conv"],
        "init_lora_weights": False,
        **config,
    }
    model = get_peft_model(
        base, LoraConfig(r=setup["r"], lora_alpha=setup["alpha"], **common), adapter_name="a"
    )
    model.add_adapter("b", LoraConfig(r=r2 or setup["r"], lora_alpha=3, **common))
    return model


@st.composite
def setups(draw: st.DrawFn) -> dict:
    return {
        "dims": tuple(draw(st.integers(2, 6)) for _ in range(3)),
        "conv": draw(st.booleans()),
        "r": draw(st.integers(1, 3)),
        "alpha": draw(st.sampled_from([1, 2, 8])),
        "rslora": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
        "dtype": "float64",
    }


@settings(max_examples=20, deadline=None)
@given(setup=setups(), w=st.floats(-2, 2).filter(lambda v: abs(v) > 1e-3))
def test_linear_of_one_adapter_is_w_times_its_delta(setup: dict, w: float) -> None:
    model = two_adapters(setup, use_rslora=setup["rslora"])
    model.add_weighted_adapter(["a"], [w], "c", combination_type="linear")
    for layer in ("fc1", "fc2"):
        np.testing.assert_allclose(
            delta(model, layer, "c"), w * delta(model, layer, "a"), atol=1e-10, rtol=0
        )


@settings(max_examples=15, deadline=None)
@given(setup=setups(), kind=st.sampled_from(["linear", "svd", "cat", "ties", "magnitude_prune"]))
def test_weight_one_gives_back_the_adapter(setup: dict, kind: str) -> None:
    model = two_adapters(setup, use_rslora=setup["rslora"])
    x = inputs(setup)
    model.set_adapter("a")
    expected = out(model, x)
    model.add_weighted_adapter(["a"], [1.0], "c", combination_type=kind, density=0.5)
    model.set_adapter("c")
    np.testing.assert_allclose(out(model, x), expected, atol=1e-10, rtol=0)
    assert model.peft_config["c"].use_rslora is False  # scale 1: r = alpha


def _train_magnitudes(model) -> None:
    """Give every DoRA magnitude a trained-looking value (m ≠ ‖W‖)."""
    rng = np.random.default_rng(5)
    for module in model.modules():
        for vector in getattr(module, "lora_magnitude_vector", {}).values():
            vector.weight.data[...] *= rng.uniform(0.5, 1.5, size=vector.weight.shape)


@settings(max_examples=15, deadline=None)
@given(setup=setups(), kind=st.sampled_from(["linear", "svd", "cat"]))
def test_weight_one_gives_back_a_dora_adapter(setup: dict, kind: str) -> None:
    model = two_adapters(setup, use_dora=True)
    _train_magnitudes(model)
    x = inputs(setup)
    model.set_adapter("a")
    expected = out(model, x)
    model.add_weighted_adapter(["a"], [1.0], "c", combination_type=kind)
    model.set_adapter("c")
    np.testing.assert_allclose(out(model, x), expected, atol=1e-10, rtol=0)
    # weight 0: the base model (magnitude back to ‖W‖, direction unchanged)
    model.add_weighted_adapter(["a"], [0.0], "zero", combination_type=kind)
    model.set_adapter("zero")
    with model.disable_adapter():
        base = out(model, x)
    np.testing.assert_allclose(out(model, x), base, atol=1e-10, rtol=0)


def test_dora_magnitudes_combine_as_task_arithmetic() -> None:
    setup = {"dims": (3, 4, 5), "conv": True, "r": 2, "alpha": 4, "seed": 7, "dtype": "float64"}
    model = two_adapters(setup, use_dora=True)
    _train_magnitudes(model)
    model.add_weighted_adapter(["a", "b"], [0.3, 0.9], "c", combination_type="cat")
    layer = model.get_submodule("base_model.model.fc2")
    w = layer.base_layer.weight.numpy()
    n = np.linalg.norm(w, axis=0)  # Conv1D stores (d_in, d_out): one norm per output
    m = {k: layer.lora_magnitude_vector[k].weight.numpy() for k in ("a", "b", "c")}
    np.testing.assert_allclose(m["c"], n + 0.3 * (m["a"] - n) + 0.9 * (m["b"] - n), atol=1e-12)


@pytest.mark.parametrize("kind", ["linear", "svd", "cat"])
def test_dora_on_an_embedding_and_attention_combines_exactly(kind: str) -> None:
    cfg = GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=40, n_positions=16)
    mp.manual_seed(0)
    config = LoraConfig(
        r=2, target_modules=["c_attn", "wte"], use_dora=True, init_lora_weights=False
    )
    model = get_peft_model(GPT2LMHeadModel(cfg, seed=0), config, adapter_name="a").eval()
    _train_magnitudes(model)
    ids = np.arange(12)[None] % 40
    with mp.no_grad():
        expected = model(input_ids=ids).logits.numpy()
        model.add_weighted_adapter(["a"], [1.0], "c", combination_type=kind)
        model.set_adapter("c")
        got = model(input_ids=ids).logits.numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_mixing_dora_and_lora_is_refused() -> None:
    setup = {"dims": (3, 4, 5), "conv": False, "r": 2, "alpha": 4, "seed": 0, "dtype": "float64"}
    model = two_adapters(setup)
    model.add_adapter("d", LoraConfig(r=2, target_modules=["fc1", "fc2"], use_dora=True))
    with pytest.raises(ValueError, match="mix DoRA and plain LoRA"):
        model.add_weighted_adapter(["a", "d"], [1, 1], "c", combination_type="cat")


@settings(max_examples=15, deadline=None)
@given(setup=setups(), r2=st.integers(1, 3), w=st.tuples(st.floats(-2, 2), st.floats(-2, 2)))
def test_cat_sums_ranks_and_deltas(setup: dict, r2: int, w: tuple[float, float]) -> None:
    model = two_adapters(setup, r2=r2, use_rslora=setup["rslora"])
    model.add_weighted_adapter(["a", "b"], list(w), "c", combination_type="cat")
    for layer in ("fc1", "fc2"):
        module = model.get_submodule(f"base_model.model.{layer}")
        assert module.r["c"] == setup["r"] + r2
        expected = w[0] * delta(model, layer, "a") + w[1] * delta(model, layer, "b")
        np.testing.assert_allclose(delta(model, layer, "c"), expected, atol=1e-10, rtol=0)


@settings(max_examples=15, deadline=None)
@given(setup=setups(), r2=st.integers(1, 3), k=st.integers(1, 4))
def test_svd_is_the_best_rank_k_approximation(setup: dict, r2: int, k: int) -> None:
    model = two_adapters(setup, r2=r2)
    model.add_weighted_adapter(["a", "b"], [0.7, -1.3], "c", combination_type="svd", svd_rank=k)
    for layer in ("fc1", "fc2"):
        total = 0.7 * delta(model, layer, "a") - 1.3 * delta(model, layer, "b")
        u, s, vh = np.linalg.svd(total, full_matrices=False)
        best = (u[:, :k] * s[:k]) @ vh[:k]
        np.testing.assert_allclose(delta(model, layer, "c"), best, atol=1e-9, rtol=0)
        assert model.get_submodule(f"base_model.model.{layer}").r["c"] == k


def test_the_combined_adapter_saves_and_loads(tmp_path) -> None:
    setup = {"dims": (3, 4, 5), "conv": True, "r": 2, "alpha": 4, "seed": 3, "dtype": "float64"}
    model = two_adapters(setup, r2=3)
    model.add_weighted_adapter(["a", "b"], [0.5, 0.5], "c", combination_type="cat")
    model.set_adapter("c")
    x = inputs(setup)
    expected = out(model, x)
    model.save_pretrained(tmp_path, selected_adapters=["c"])
    d_in, d_hid, d_out = setup["dims"]
    fresh = Toy(d_in, d_hid, d_out, "float64", True, setup["seed"])
    from minipeft.peft import PeftModel  # noqa: PLC0415

    loaded = PeftModel.from_pretrained(fresh, tmp_path / "c")
    np.testing.assert_allclose(out(loaded, x), expected, atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------- merge rules
def test_task_arithmetic_ties_and_magnitude_prune_on_known_tensors() -> None:
    t1 = np.array([1.0, -2.0, 3.0, 0.5])
    t2 = np.array([-1.5, -1.0, 0.5, 4.0])
    np.testing.assert_array_equal(mu.task_arithmetic([t1, t2], [2, 1]), [0.5, -5.0, 6.5, 5.0])
    # magnitude prune at density 0.5 keeps the two largest |entries| of each
    np.testing.assert_array_equal(mu.magnitude_prune([t1, t2], [1, 1], 0.5), [-1.5, -2, 3, 4])
    # TIES without pruning: the sign of the sum is elected; agreeing entries are averaged
    with pytest.warns(UserWarning, match="nothing is pruned"):
        merged = mu.ties([t1, t2], [1, 1], 1.0)
    np.testing.assert_array_equal(merged, [-1.5, -1.5, 1.75, 2.25])
    # with pruning at 0.75 (three entries kept each): t1 loses 0.5, t2 loses 0.5
    np.testing.assert_array_equal(mu.ties([t1, t2], [1, 1], 0.75), [-1.5, -1.5, 3.0, 4.0])


@settings(max_examples=20, deadline=None)
@given(density=st.floats(0.05, 0.95), seed=st.integers(0, 1000))
def test_dare_drops_at_the_density_and_rescales(density: float, seed: int) -> None:
    t = np.ones(20000)
    dropped = mu.dare_linear([t], [1.0], density, np.random.default_rng(seed))
    kept = dropped != 0
    np.testing.assert_allclose(dropped[kept], 1.0 / density)
    assert abs(kept.mean() - density) < 0.02
    again = mu.dare_linear([t], [1.0], density, np.random.default_rng(seed))
    np.testing.assert_array_equal(dropped, again)  # seeded: reproducible


def test_majority_sign_by_frequency_counts_signs() -> None:
    stacked = np.array([[5.0, -1.0], [-1.0, -1.0], [-1.0, 2.0]])
    mask = mu.calculate_majority_sign_mask(stacked, "frequency")
    np.testing.assert_array_equal(mask, [[False, True], [True, True], [True, False]])


# ---------------------------------------------------------------------------- bad input
SETUP = {"dims": (3, 4, 5), "conv": False, "r": 2, "alpha": 4, "seed": 0, "dtype": "float64"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"adapters": ["a", "zz"], "weights": [1, 1]}, "adapter 'zz' does not exist"),
        ({"adapters": ["a", "b"], "weights": [1]}, "weights: expected 2 finite numbers"),
        ({"adapters": ["a", "b"], "weights": [1, float("nan")]}, "weights"),
        ({"adapters": ["a", "b"], "weights": [1, 1], "combination_type": "x"}, "combination_type"),
        ({"adapters": ["a", "b"], "weights": [1, 1], "combination_type": "ties"}, "density"),
        ({"adapters": ["a", "b"], "weights": [1, 1], "adapter_name": "a"}, "already exists"),
        ({"adapters": [], "weights": []}, "at least one"),
    ],
)
def test_bad_arguments_name_the_field(kwargs: dict, message: str) -> None:
    model = two_adapters(SETUP)
    args = {"adapter_name": "c", "combination_type": "linear", **kwargs}
    with pytest.raises(ValueError, match=message):
        model.add_weighted_adapter(**args)
    assert "c" not in model.peft_config


def test_linear_needs_equal_ranks_and_the_same_layers() -> None:
    model = two_adapters(SETUP, r2=3)
    with pytest.raises(ValueError, match="needs equal ranks.*ranks \\[2, 3\\]"):
        model.add_weighted_adapter(["a", "b"], [1, 1], "c", combination_type="linear")
    model.add_adapter("d", LoraConfig(r=2, target_modules=["fc1"], init_lora_weights=False))
    with pytest.raises(ValueError, match="same layers.*'fc2' has no \\['d'\\]"):
        model.add_weighted_adapter(["a", "d"], [1, 1], "c", combination_type="linear")
    model.add_weighted_adapter(["a", "d"], [1, 1], "c", combination_type="cat")  # exact: fine
    assert {"fc1", "fc2"} <= set(model.peft_config["c"].target_modules)
