"""PiSSA and OLoRA: A and B from the base weight, the residual W − s·B A left in the base.

For random sizes, ranks (``rank_pattern``), α, rsLoRA and both layouts (``nn.Linear`` and GPT-2's
Conv1D, W stored (d_in, d_out), which PEFT's OLoRA gets wrong), in float64:

* W_res + s·B A reconstructs W (1e-10), so the model's output at init is the base's;
* PiSSA's factors are the top singular triplets (s·B A = U_r Σ_r V_rᵀ, Aᵀ-rows and B-columns
  orthogonal), OLoRA's the first r columns of Q and rows of R;
* ``pissa_niter_N`` (randomised SVD) is deterministic and exact on a rank-r weight;
* saving with ``path_initial_model_for_weight_conversion`` gives a plain LoRA adapter of rank
  2r (PEFT's config rules) that, on the *original* base, equals the trained model; loading the
  unconverted adapter on the original base re-runs the initialisation and equals it too;
* bad settings fail before anything changes.

PEFT interop (the same A, B and residual on a LLaMA; converted adapters loading in PEFT) is in
test_lora_variants_interop.py.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import strategies as S
from hypothesis import given, settings
from toys import Toy, inputs, out, weights

import minipeft as mp
from minipeft.optim import SGD
from minipeft.peft import LoraConfig, LoraEmbedding, PeftModel, get_peft_model
from minipeft.peft.tuners.lora.init import svd_lowrank

pytestmark = [
    pytest.mark.filterwarnings("ignore:fan_in_fan_out=True does not match"),
    pytest.mark.filterwarnings("ignore:LoraConfig. rsLoRA with rank_pattern"),  # conversion
]


def build(setup: dict, device: str = "cpu", **overrides) -> tuple[Toy, PeftModel]:
    """(the original toy, a PEFT model around an identical copy) on ``device``."""
    args = (*setup["dims"], setup["dtype"], setup["conv"], setup["seed"])
    config = LoraConfig(r=setup["r1"], lora_alpha=setup["alpha"], use_rslora=setup["rslora"],
                        init_lora_weights=setup["init"], target_modules=["fc1", "fc2"],
                        rank_pattern={} if setup["r2"] == setup["r1"] else {"fc2": setup["r2"]},
                        fan_in_fan_out=setup["conv"],
                        **overrides)  # fmt: skip
    return Toy(*args).to(device), get_peft_model(Toy(*args).to(device), config)


def out_major(layer, w: np.ndarray) -> np.ndarray:
    return w.T if layer.fan_in_fan_out else w


def train_a_little(model: PeftModel, x: mp.Tensor) -> None:
    """One SGD step (a small one: s may be 16), then a nudge, so that every factor moved."""
    opt = SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    (model(x) ** 2).mean().backward()
    opt.step()
    rng = np.random.default_rng(0)
    for p in model.parameters():
        if p.requires_grad:
            p.data[...] += 0.1 * rng.normal(size=p.shape)


@settings(max_examples=30)
@given(setup=S.lora_init_setups())
def test_residual_plus_adapter_is_w_and_the_output_is_the_base(setup: dict, device) -> None:
    base, model = build(setup, device)
    x = inputs(setup, device)
    for name in ("fc1", "fc2"):
        layer = model.base_model.model.get_submodule(name)
        w = base.get_submodule(name).weight.numpy()
        residual = layer.base_layer.weight.numpy()
        assert residual.shape == w.shape and not np.allclose(residual, w)  # W really changed
        delta = mp.tensor(layer.get_delta_weight("default")).numpy()  # a host copy
        np.testing.assert_allclose(residual + delta, w,
                                   rtol=1e-10, atol=1e-10, err_msg=name)  # fmt: skip
    np.testing.assert_allclose(out(model, x), out(base, x), rtol=1e-10, atol=1e-10)


@settings(max_examples=25)
@given(setup=S.lora_init_setups())
def test_pissa_takes_the_top_singular_triplets_and_olora_q_and_r(setup: dict) -> None:
    base, model = build(setup)
    for name, r in (("fc1", setup["r1"]), ("fc2", setup["r2"])):
        layer = model.base_model.model.get_submodule(name)
        w = out_major(layer, base.get_submodule(name).weight.numpy())  # (d_out, d_in)
        a, b = layer.lora_A["default"].weight.numpy(), layer.lora_B["default"].weight.numpy()
        s = layer.scaling["default"]
        if setup["init"] == "olora":
            q, rr = np.linalg.qr(w)
            np.testing.assert_allclose(b, q[:, :r], atol=1e-12)
            np.testing.assert_allclose(a, rr[:r], atol=1e-12)
            continue
        if setup["init"] != "pissa":
            continue  # randomised: exact only on a rank-r weight (tested below)
        u, sigma, vh = np.linalg.svd(w, full_matrices=False)
        np.testing.assert_allclose(s * b @ a, (u[:, :r] * sigma[:r]) @ vh[:r], atol=1e-10)
        np.testing.assert_allclose(a @ a.T, np.diag(sigma[:r] / s), atol=1e-10)  # √(Σ/s) V_rᵀ
        np.testing.assert_allclose(b.T @ b, np.diag(sigma[:r] / s), atol=1e-10)  # U_r √(Σ/s)


@pytest.mark.parametrize("shape", [(9, 6), (6, 9)])
@pytest.mark.parametrize("niter", [0, 2])
def test_randomised_svd_is_deterministic_and_exact_on_a_rank_r_matrix(shape, niter) -> None:
    rng = np.random.default_rng(0)
    r = 3
    w = rng.normal(size=(shape[0], r)) @ rng.normal(size=(r, shape[1]))  # rank 3
    u, s, v = svd_lowrank(w, r, niter)
    assert u.shape == (shape[0], r) and s.shape == (r,) and v.shape == (shape[1], r)
    np.testing.assert_allclose((u * s) @ v.T, w, atol=1e-10)
    np.testing.assert_allclose(s, np.linalg.svd(w, compute_uv=False)[:r], rtol=1e-10)
    for again, first in zip(svd_lowrank(w, r, niter), (u, s, v)):
        np.testing.assert_array_equal(again, first)
    # through the layer: pissa_niter_N equals exact PiSSA on a rank-r weight
    layers = {}
    for init in ("pissa", f"pissa_niter_{niter}"):
        toy = Toy(shape[1], shape[0], 2, "float64")
        toy.fc1.weight.data[...] = w
        cfg = LoraConfig(r=r, lora_alpha=2 * r, init_lora_weights=init, target_modules=["fc1"])
        layers[init] = get_peft_model(toy, cfg).base_model.model.fc1
    exact, fast = layers.values()
    np.testing.assert_allclose(fast.get_delta_weight("default"),
                               exact.get_delta_weight("default"), atol=1e-10)  # fmt: skip
    np.testing.assert_allclose(fast.base_layer.weight.numpy(), 0, atol=1e-10)  # nothing left


@settings(max_examples=15)
@given(setup=S.lora_init_setups())
def test_converted_adapter_on_the_original_base_equals_the_trained_model(
    setup: dict, tmp_path_factory
) -> None:
    root = tmp_path_factory.mktemp("convert")
    if setup["rslora"]:  # PEFT cannot convert rsLoRA with a rank_pattern: use none
        setup = {**setup, "r1": 1, "r2": 1}
    base, model = build(setup)
    x = inputs(setup)
    model.save_pretrained(root / "init")  # right after initialisation, as PEFT asks
    train_a_little(model, x)
    expected = out(model, x)
    model.save_pretrained(root / "plain", path_initial_model_for_weight_conversion=root / "init")
    model.save_pretrained(root / "raw")
    saved = json.loads((root / "plain" / "adapter_config.json").read_text())
    assert saved["init_lora_weights"] is True and saved["r"] == 2 * setup["r1"]
    assert saved["rank_pattern"] == {k: 2 * v for k, v in model.peft_config["default"]
                                     .rank_pattern.items()}  # fmt: skip
    assert saved["lora_alpha"] == pytest.approx(
        setup["alpha"] * (math.sqrt(2) if setup["rslora"] else 2), rel=1e-15
    )
    for folder in ("plain", "raw"):  # "raw" re-runs the init on the original base when loaded
        loaded = PeftModel.from_pretrained(Toy(*setup["dims"], "float64", setup["conv"],
                                                setup["seed"]), root / folder)  # fmt: skip
        np.testing.assert_allclose(out(loaded, x), expected, rtol=1e-9, atol=1e-9, err_msg=folder)
    plain = PeftModel.from_pretrained(base, root / "plain")
    merged = plain.merge_and_unload()
    np.testing.assert_allclose(out(merged, x), expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(out(model.merge_and_unload(), x), expected, rtol=1e-9, atol=1e-9)


SETUP = {"dims": (4, 5, 3), "r1": 2, "r2": 2, "alpha": 4, "rslora": False, "init": "pissa",
         "conv": False, "dtype": "float64", "seed": 0}  # fmt: skip


def test_conversion_refuses_what_plain_lora_cannot_express(tmp_path) -> None:
    _, model = build(SETUP)
    model.save_pretrained(tmp_path / "init")
    with pytest.raises(ValueError, match="DoRA"):
        _, dora = build(SETUP, use_dora=True)
        dora.save_pretrained(tmp_path / "d", path_initial_model_for_weight_conversion=tmp_path)
    with pytest.warns(UserWarning, match="rank_pattern"):
        _, rs = build({**SETUP, "rslora": True, "r2": 1})
    with pytest.raises(ValueError, match="use_rslora"):
        rs.save_pretrained(tmp_path / "rs", path_initial_model_for_weight_conversion=tmp_path)
    _, other = build({**SETUP, "r1": 1})  # another rank: the initial tensors do not fit
    with pytest.raises(ValueError, match="lora_A.weight"):
        initial = tmp_path / "init"
        other.save_pretrained(tmp_path / "o", path_initial_model_for_weight_conversion=initial)
    assert not (tmp_path / "o").exists() and not (tmp_path / "d").exists()


def test_bad_settings_fail_before_anything_changes() -> None:
    toy = Toy(4, 5, 3, "float64")
    before = weights(toy)
    with pytest.raises(ValueError, match=r"\br\b.*min\(d_in, d_out\) = 3"):
        get_peft_model(toy, LoraConfig(r=4, init_lora_weights="pissa",
                                       target_modules=["fc1", "fc2"]))  # fmt: skip
    with pytest.raises(ValueError, match="lora_alpha"):
        get_peft_model(toy, LoraConfig(r=2, lora_alpha=-1, init_lora_weights="pissa",
                                       target_modules=["fc1"]))  # fmt: skip
    for key, value in weights(toy).items():  # fc1 (r=4 fits there) was not decomposed either
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    assert not any(hasattr(m, "lora_A") for m in toy.modules())
    for bad in ("pissa_niter_x", "pissa_niter_", "olora2"):
        with pytest.raises(ValueError, match="LoraConfig.init_lora_weights: expected"):
            LoraConfig(init_lora_weights=bad)
    with pytest.raises(ValueError, match="LoraConfig.use_dora: expected a bool"):
        LoraConfig(use_dora="yes")


def test_pissa_refuses_a_4bit_base_and_olora_goes_through_the_protocol() -> None:
    from minipeft import nn
    from minipeft.peft.tuners.base import get_base_weight
    from minipeft.quant import Linear4bit

    mp.manual_seed(0)
    model = nn.Sequential(Linear4bit(64, 8), nn.Tanh())
    with pytest.raises(TypeError, match="PiSSA needs a float base weight"):
        get_peft_model(model, LoraConfig(r=2, init_lora_weights="pissa", target_modules=["0"]))
    w = get_base_weight(model[0])
    pm = get_peft_model(model, LoraConfig(r=2, init_lora_weights="olora", target_modules=["0"]))
    layer = pm.base_model.model[0]
    residual = get_base_weight(layer.base_layer)
    rebuilt = residual + layer.get_delta_weight("default")
    # W up to one 4-bit rounding of the residual (NF4's widest gap: 0.28 of a block's absmax)
    assert np.abs(rebuilt - w).max() <= 0.15 * np.abs(residual).max()


def test_an_embedding_target_takes_the_default_init_as_in_peft() -> None:
    from minipeft.models import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=16, n_positions=8)
    model = GPT2LMHeadModel(cfg, seed=0)
    table = model.transformer.wte.weight.numpy().copy()
    pm = get_peft_model(model, LoraConfig(r=2, init_lora_weights="olora",
                                          target_modules=["c_attn", "wte"]))  # fmt: skip
    wte = pm.base_model.model.transformer.wte
    assert isinstance(wte, LoraEmbedding) and not wte.lora_embedding_A["default"].numpy().any()
    np.testing.assert_array_equal(wte.base_layer.weight.numpy(), table)
