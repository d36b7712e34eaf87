"""Linear4bit, QLoRA and 4-bit files: the layer, the model-level steps, and bitsandbytes' layout.

* Linear4bit's forward equals a dense Linear on its dequantized weight Ŵ; its input gradient
  passes a float64 gradcheck; between forward and backward it keeps only the 4-bit bytes.
* QLoRA (quantize_model → prepare_model_for_kbit_training → get_peft_model): B = 0 gives exactly
  the 4-bit base, and only LoRA parameters get gradients.
* Merging into a 4-bit base goes through the base-weight protocol (dequantize, add, requantize),
  warns as PEFT does, and its rounding error is bounded element by element.
* save_quantized / load_quantized round-trip bit for bit; against transformers + bitsandbytes
  (CPU), a checkpoint saved here loads there with equal logits, and the other way round.
"""

from __future__ import annotations

import json
import math
import tracemalloc
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minipeft as mp
from minipeft import functional as F
from minipeft import nn
from minipeft.backend import to_numpy
from minipeft.fileio import load_safetensors, save_safetensors
from minipeft.gradcheck import gradcheck
from minipeft.models import AutoModelForCausalLM
from minipeft.models.gpt2_config import GPT2Config
from minipeft.models.llama_config import LlamaConfig
from minipeft.ops.linear4bit import Linear4bit as Linear4bitFn
from minipeft.peft import LoraConfig, LoraLayer, get_peft_model
from minipeft.quant.blockwise import dequantize_4bit, dequantize_absmax
from minipeft.quant.codebooks import code_4bit
from minipeft.quant.files import load_quantized, quantized_state_dict, save_quantized
from minipeft.quant.linear4bit import Linear4bit, Params4bit
from minipeft.quant.model import (
    dequantize_model,
    prepare_model_for_kbit_training,
    quantize_model,
)

V = 96
EOS = V - 1


def tiny(arch: str, seed: int = 0, **kw):
    if arch == "gpt2":
        cfg = GPT2Config(
            n_embd=64,
            n_layer=2,
            n_head=4,
            vocab_size=V,
            n_positions=32,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=EOS,
            eos_token_id=EOS,
            **kw,
        )
    else:
        cfg = LlamaConfig(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=V,
            max_position_embeddings=32,
            bos_token_id=EOS,
            eos_token_id=EOS,
            **kw,
        )
    return AutoModelForCausalLM.from_config(cfg, seed=seed).eval()


def ids(shape=(2, 9), seed=0):
    return np.random.default_rng(seed).integers(0, V - 1, shape)


def logits(model, x) -> np.ndarray:
    with mp.no_grad():
        return model(input_ids=mp.tensor(x)).logits.numpy()


def quantized_layers(model) -> dict[str, Linear4bit]:
    return {n: m for n, m in model.named_modules() if isinstance(m, Linear4bit)}


@st.composite
def layer_setups(draw: st.DrawFn) -> dict:
    """A Linear (sizes not multiples of the blocksize, odd weight counts) and 4-bit settings."""
    return {
        "d_in": draw(st.integers(1, 70)),
        "d_out": draw(st.integers(1, 9)),
        "bias": draw(st.booleans()),
        "quant_type": draw(st.sampled_from(["nf4", "fp4"])),
        "blocksize": draw(st.sampled_from([32, 64, 128])),
        "compress_statistics": draw(st.booleans()),
        "batch": tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=2))),
        "seed": draw(st.integers(0, 2**16)),
    }


def make_layer(
    s: dict, device: str = "cpu", dtype: str = "float32"
) -> tuple[nn.Linear, Linear4bit]:
    mp.manual_seed(s["seed"])
    dense = nn.Linear(s["d_in"], s["d_out"], bias=s["bias"], dtype=dtype).to(device)
    q = Linear4bit.from_linear(dense, s["quant_type"], s["blocksize"], s["compress_statistics"])
    return dense, q


# ---------------------------------------------------------------------- the layer
@given(s=layer_setups())
def test_forward_equals_dense_linear_on_dequantized_weight(s, device):
    dense, q = make_layer(s, device)
    assert q.weight.dtype == np.uint8 and q.weight.shape == ((s["d_in"] * s["d_out"] + 1) // 2, 1)
    w = q.get_base_weight()
    assert w.dtype == np.float32 and w.shape == (s["d_out"], s["d_in"])
    np.testing.assert_array_equal(
        to_numpy(w), to_numpy(dequantize_4bit(q.weight.data, q.quant_state))
    )
    x = mp.randn(*s["batch"], s["d_in"], device=device)
    ref = F.linear(x, mp.tensor(w, device=device), q.bias)
    np.testing.assert_allclose(q(x).numpy(), ref.numpy(), rtol=1e-6, atol=1e-6)
    if s["bias"]:  # a copy, not the float layer's Parameter
        assert q.bias is not dense.bias
        np.testing.assert_array_equal(q.bias.numpy(), dense.bias.numpy())


@given(s=layer_setups())
def test_input_gradient_passes_gradcheck(s, device):
    _, q = make_layer({**s, "bias": True}, device, dtype="float64")
    assert q.quant_state.dtype == "float64"
    x = mp.randn(*s["batch"], s["d_in"], dtype="float64", device=device, requires_grad=True)
    b = q.bias.detach().requires_grad_()

    def f(x, b):
        return Linear4bitFn.apply(x, q.weight, b, state=q.quant_state, dequantize=dequantize_4bit)

    assert gradcheck(f, x, b)
    y = q(x)
    assert y.grad_fn.ctx.saved_tensors == (q.weight.data,)  # the 4-bit bytes, not x, not Ŵ
    y.sum().backward()
    assert q.weight.grad is None


def test_backward_keeps_no_float_weight_alive():
    """Between forward and backward a 1024×1024 layer holds its 512 KiB of codes, not the 4 MiB
    float Ŵ: the op dequantizes again in backward."""
    mp.manual_seed(0)
    q = Linear4bit(1024, 1024, bias=False)
    x = mp.randn(4, 1024, requires_grad=True)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        y = q(x)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 256 * 1024, f"forward left {held} bytes alive (Ŵ is {4 * 1024 * 1024})"
    y.sum().backward()
    np.testing.assert_allclose(
        x.grad, np.broadcast_to(q.get_base_weight().sum(0), (4, 1024)), rtol=1e-5, atol=1e-5
    )


def test_compute_dtype_follows_the_input():
    mp.manual_seed(0)
    q = Linear4bit(40, 6)
    x = mp.randn(3, 40)
    y16 = q(x.half())
    assert y16.dtype == np.float16
    np.testing.assert_allclose(y16.numpy(), q(x).numpy(), atol=2e-2, rtol=2e-2)


def test_module_moves_and_casts_keep_the_codes():
    mp.manual_seed(0)
    q = Linear4bit(40, 6)
    packed = q.weight.data.copy()
    q.to(np.float64)  # only floats change dtype: the codes stay uint8
    assert q.weight.dtype == np.uint8 and q.bias.dtype == np.float64
    np.testing.assert_array_equal(q.weight.data, packed)
    assert q(mp.randn(2, 40, dtype="float64")).dtype == np.float64


def test_linear4bit_meets_the_linear_contract_and_lora_wraps_it():
    from minipeft.peft.tuners.base import get_base_weight, is_linear

    mp.manual_seed(0)
    q = Linear4bit(40, 6)
    assert is_linear(q) and q.weight.dtype.kind != "f" and isinstance(q.weight, Params4bit)
    assert get_base_weight(q).dtype == np.float32
    layer = LoraLayer(q)
    layer.update_layer("default", r=2, lora_alpha=4)
    assert layer.lora_A["default"].weight.dtype == np.float32  # adapters in float32
    x = mp.randn(3, 40)
    np.testing.assert_array_equal(layer(x).numpy(), q(x).numpy())  # B = 0


# ---------------------------------------------------------------------- model level
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_quantize_model_replaces_the_linears_and_records_the_config(arch):
    model = tiny(arch)
    quantize_model(model)
    names = quantized_layers(model)
    per_layer = 4 if arch == "gpt2" else 7
    assert len(names) == 2 * per_layer and "lm_head" not in names
    assert type(model.lm_head) is nn.Linear
    qc = model.config.extra["quantization_config"]
    assert qc["quant_method"] == "bitsandbytes" and qc["load_in_4bit"] is True
    assert qc["bnb_4bit_quant_type"] == "nf4" and qc["bnb_4bit_use_double_quant"] is True
    assert qc["llm_int8_skip_modules"] is None  # transformers' default skip list
    assert model.is_loaded_in_4bit
    skipped = tiny(arch)
    quantize_model(
        skipped,
        quant_type="fp4",
        compress_statistics=False,
        skip=["lm_head", "transformer.h.0", "model.layers.0"],
    )
    assert all(".1." in n for n in quantized_layers(skipped))  # "…h.0" skips h.0.*, not h.1*
    assert skipped.config.extra["quantization_config"]["llm_int8_skip_modules"] == [
        "lm_head",
        "transformer.h.0",
        "model.layers.0",
    ]


def test_prepare_model_for_kbit_training_freezes_and_upcasts():
    model = quantize_model(tiny("llama").half())
    prepare_model_for_kbit_training(model)
    for name, p in model.named_parameters():
        assert not p.requires_grad, name
        assert p.dtype == (np.uint8 if isinstance(p, Params4bit) else np.float32), name


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_qlora_with_b_zero_equals_the_4bit_base_and_trains_only_lora(arch):
    model = prepare_model_for_kbit_training(quantize_model(tiny(arch)))
    x = ids()
    base = logits(model, x)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    wrapped = [m for m in peft.modules() if isinstance(m, LoraLayer)]
    assert wrapped and all(isinstance(m.base_layer, Linear4bit) for m in wrapped)
    np.testing.assert_array_equal(logits(peft, x), base)
    peft.train()
    out = peft(input_ids=mp.tensor(x), labels=mp.tensor(x))
    out.loss.backward()
    for name, p in peft.named_parameters():
        assert (p.grad is not None) == ("lora_" in name), name
    assert any(np.abs(p.grad).max() > 0 for n, p in peft.named_parameters() if "lora_B" in n)


def test_print_trainable_parameters_counts_4bit_weights_as_peft(capsys):
    model = prepare_model_for_kbit_training(quantize_model(tiny("gpt2")))
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["c_attn"]))
    total = sum(p.numel() * (2 if isinstance(p, Params4bit) else 1) for p in peft.parameters())
    trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert peft.get_nb_trainable_parameters() == (trainable, total)


def test_dequantize_model_gives_float_linears_with_the_same_outputs():
    model = quantize_model(tiny("llama"))
    x = ids()
    q = logits(model, x)
    dequantize_model(model)
    assert not quantized_layers(model) and "quantization_config" not in model.config.extra
    np.testing.assert_allclose(logits(model, x), q, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------- merging
def _block_absmax(v: np.ndarray, blocksize: int) -> np.ndarray:
    flat = np.abs(v.reshape(-1))
    pad = np.zeros(-(-flat.size // blocksize) * blocksize, np.float32)
    pad[: flat.size] = flat
    return pad.reshape(-1, blocksize).max(axis=1)


def assert_requantized(q: Linear4bit, exact: np.ndarray) -> None:
    """|Ŵ_q - exact| ≤ ½·(largest code gap)·a_b + |a_b - â_b| for every element of block b, with
    a_b the block's exact absmax and â_b the one stored (after double quantization)."""
    err = np.abs(q.get_base_weight() - exact).reshape(-1)
    a = _block_absmax(exact, q.blocksize)
    a_hat = dequantize_absmax(q.quant_state)
    half_gap = np.diff(np.sort(code_4bit(q.quant_type))).max() / 2
    bound = (half_gap * a + np.abs(a - a_hat) + 1e-6)[np.arange(err.size) // q.blocksize]
    assert np.all(err <= bound), float((err - bound).max())


@given(s=layer_setups(), scale=st.sampled_from([1e-3, 1e-2, 1e-1]))
def test_requantizing_a_merged_weight_has_bounded_error(s, scale):
    _, q = make_layer(s)
    rng = np.random.default_rng(s["seed"])
    exact = q.get_base_weight() + rng.normal(0, scale, (s["d_out"], s["d_in"])).astype(np.float32)
    with pytest.warns(UserWarning, match="rounding errors"):
        q.set_base_weight(exact)
    assert_requantized(q, exact)
    assert q.quant_type == s["quant_type"] and q.blocksize == s["blocksize"]
    assert q.compress_statistics == s["compress_statistics"]


def _qlora(arch: str, seed: int = 1):
    """(float model, QLoRA PeftModel with random B, the exact merged weight of each LoRA layer)."""
    float_model = tiny(arch)
    model = prepare_model_for_kbit_training(quantize_model(tiny(arch)))
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    rng = np.random.default_rng(seed)
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            p.data[...] = rng.normal(0, 0.05, p.shape).astype(np.float32)
    exact = {}
    for layer in [m for m in peft.modules() if isinstance(m, LoraLayer)]:
        a, b = layer.lora_A["default"].weight.data, layer.lora_B["default"].weight.data
        exact[id(layer.base_layer)] = layer.base_layer.get_base_weight() + (
            (b @ a) * layer.scaling["default"]
        )
    return float_model, peft.eval(), exact


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _errors(float_model, peft, x):
    """(logits of the QLoRA model, relative logit change from quantizing the float model)."""
    with peft.disable_adapter():
        base = logits(peft, x)
    return logits(peft, x), _rel(base, logits(float_model, x))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_merge_through_the_protocol_is_one_more_bounded_rounding(arch):
    """W ← requant(Ŵ + s·B A) per layer, as a merge does: every element is within the rounding
    bound of Ŵ + ΔW, and the logits move by about one more 4-bit rounding: measured 1.1-1.7×
    what quantizing the float model moved them, bounded here by 2×."""
    float_model, peft, exact = _qlora(arch)
    x = ids((4, 16))
    before, quant_err = _errors(float_model, peft, x)
    with pytest.warns(UserWarning, match="Merge lora module to 4-bit linear"):
        for layer in [m for m in peft.modules() if isinstance(m, LoraLayer)]:
            layer.base_layer.set_base_weight(exact[id(layer.base_layer)])
            layer.merged_adapters.append("default")
    for layer in [m for m in peft.modules() if isinstance(m, LoraLayer)]:
        assert_requantized(layer.base_layer, exact[id(layer.base_layer)])
    merged_err = _rel(logits(peft, x), before)
    assert 0 < merged_err <= 2 * quant_err, (merged_err, quant_err)


def test_merge_and_unload_into_a_4bit_base():
    float_model, peft, exact = _qlora("llama")
    x = ids((4, 16))
    before, quant_err = _errors(float_model, peft, x)
    with pytest.warns(UserWarning, match="Merge lora module to 4-bit linear"):
        merged = peft.merge_and_unload()
    layers = quantized_layers(merged)
    assert len(layers) == len(exact)
    for layer in layers.values():
        assert_requantized(layer, exact[id(layer)])
    assert _rel(logits(merged, x), before) <= 2 * quant_err


def test_fan_in_fan_out_flag_is_corrected_for_a_4bit_base():
    mp.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        layer = LoraLayer(Linear4bit(40, 6), fan_in_fan_out=True)
    assert layer.fan_in_fan_out is False


# ---------------------------------------------------------------------- bad input
def test_a_4bit_weight_cannot_train():
    mp.manual_seed(0)
    q = Linear4bit(8, 4)
    for attempt in (
        lambda: q.weight.requires_grad_(True),
        lambda: q.requires_grad_(True),
        lambda: setattr(q.weight, "requires_grad", True),
    ):
        with pytest.raises(TypeError, match="4-bit weight .* cannot require grad"):
            attempt()
    q.requires_grad_(False)  # freezing is fine
    with pytest.raises(TypeError, match="cannot require grad"):
        Linear4bitFn.apply(
            mp.randn(2, 8),
            mp.randn(4, 4, requires_grad=True),
            state=q.quant_state,
            dequantize=dequantize_4bit,
        )


def test_quantizing_twice_is_refused():
    mp.manual_seed(0)
    q = Linear4bit(8, 4)
    with pytest.raises(ValueError, match="already quantized"):
        Linear4bit.from_linear(q)
    model = quantize_model(tiny("gpt2"))
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(model)


def test_bad_settings_and_inputs_raise_before_any_change():
    model = tiny("gpt2")
    for kw, field in (({"blocksize": 48}, "blocksize"), ({"quant_type": "int4"}, "quant_type")):
        with pytest.raises(ValueError, match=field):
            quantize_model(model, **kw)
    with pytest.raises(ValueError, match="tied"):
        quantize_model(model, skip=())  # lm_head shares wte's weight
    assert not quantized_layers(model) and "quantization_config" not in model.config.extra
    peft = get_peft_model(tiny("gpt2"), LoraConfig(r=2))
    with pytest.raises(ValueError, match="adapter layers"):
        quantize_model(peft.get_base_model())
    with pytest.raises(TypeError, match="expects a linear layer"):
        Linear4bit.from_linear(nn.Embedding(5, 3))
    mp.manual_seed(0)
    q = Linear4bit(8, 4)
    with pytest.raises(ValueError, match=r"expected input \(\.\.\., 8\)"):
        q(mp.randn(2, 7))
    with pytest.raises(TypeError, match="float"):
        q(mp.tensor(np.ones((2, 8), np.int64)))
    with pytest.raises(ValueError, match=r"shape \(4, 8\)"):
        q.set_base_weight(np.zeros((8, 4), np.float32))


# ---------------------------------------------------------------------- files
@pytest.mark.parametrize(
    ("arch", "quant_type", "dq", "blocksize"),
    [
        ("gpt2", "nf4", True, 64),
        ("gpt2", "fp4", False, 128),
        ("llama", "nf4", False, 64),
        ("llama", "fp4", True, 32),
    ],
)
def test_save_and_load_round_trip_in_bitsandbytes_layout(arch, quant_type, dq, blocksize, tmp_path):
    model = quantize_model(tiny(arch), quant_type, blocksize, dq)
    save_quantized(model, tmp_path)
    tensors = load_safetensors(tmp_path / "model.safetensors")
    key = "transformer.h.0.attn.c_attn" if arch == "gpt2" else "model.layers.0.self_attn.q_proj"
    suffixes = {k[len(key) :] for k in tensors if k.startswith(key + ".weight")}
    expected = {
        ".weight",
        ".weight.absmax",
        ".weight.quant_map",
        f".weight.quant_state.bitsandbytes__{quant_type}",
    }
    assert suffixes == expected | (
        {".weight.nested_absmax", ".weight.nested_quant_map"} if dq else set()
    )
    meta = json.loads(bytes(tensors[f"{key}.weight.quant_state.bitsandbytes__{quant_type}"]))
    layer = model.get_submodule(key)
    assert meta["shape"] == [layer.out_features, layer.in_features]  # (out, in), GPT-2 too
    assert meta["blocksize"] == blocksize and meta["dtype"] == "float32"
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization_config"] == model.config.extra["quantization_config"]

    loaded = load_quantized(tmp_path)
    assert set(quantized_layers(loaded)) == set(quantized_layers(model))
    for name, m in quantized_layers(model).items():
        other = loaded.get_submodule(name)
        np.testing.assert_array_equal(other.weight.data, m.weight.data)
        np.testing.assert_array_equal(other.get_base_weight(), m.get_base_weight())
    x = ids()
    np.testing.assert_array_equal(logits(loaded, x), logits(model, x))
    if arch == "gpt2":
        assert loaded.lm_head.weight is loaded.get_input_embeddings().weight
    assert quantized_state_dict(loaded).keys() == tensors.keys()


def test_a_bare_trunk_round_trips_without_the_prefix(tmp_path):
    from minipeft.models.gpt2 import GPT2Model

    trunk = quantize_model(GPT2Model(tiny("gpt2").config))
    save_quantized(trunk, tmp_path)
    keys = load_safetensors(tmp_path / "model.safetensors").keys()
    assert "h.0.attn.c_attn.weight.absmax" in keys and not any(
        k.startswith("transformer.") for k in keys
    )
    loaded = load_quantized(tmp_path, model_class=GPT2Model)
    x = mp.tensor(ids())
    with mp.no_grad():
        np.testing.assert_array_equal(
            loaded(input_ids=x).last_hidden_state.numpy(),
            trunk.eval()(input_ids=x).last_hidden_state.numpy(),
        )


def _corrupt(folder, key, value):
    path = folder / "model.safetensors"
    tensors = load_safetensors(path)
    if value is None:
        del tensors[key]
    else:
        tensors[key] = value
    save_safetensors(path, tensors)


def test_a_file_whose_state_does_not_match_its_shape_is_refused(tmp_path):
    model = quantize_model(tiny("gpt2"))
    save_quantized(model, tmp_path / "ok")
    key = "transformer.h.0.mlp.c_fc.weight"
    qs = f"{key}.quant_state.bitsandbytes__nf4"
    meta = json.loads(bytes(load_safetensors(tmp_path / "ok" / "model.safetensors")[qs]))

    def blob(**kw):
        return np.frombuffer(json.dumps({**meta, **kw}).encode(), np.uint8).copy()

    cases = {
        "wrong shape": (qs, blob(shape=[meta["shape"][0], meta["shape"][1] + 2]), r"uint8 codes"),
        "transposed": (qs, blob(shape=meta["shape"][::-1]), r"model's layer is \(out, in\)"),
        "short absmax": (f"{key}.absmax", np.zeros(3, np.uint8), r"absmax: expected uint8"),
        "missing absmax": (f"{key}.absmax", None, "absmax is missing"),
        "bad json": (qs, np.frombuffer(b"{not json", np.uint8).copy(), "not a UTF-8 JSON"),
        "wrong quant type": (qs, blob(quant_type="fp4"), "says quant_type 'fp4'"),
        "bad dtype": (qs, blob(dtype="int8"), "malformed entries dtype='int8'"),
    }
    for label, (k, value, message) in cases.items():
        folder = tmp_path / label.replace(" ", "_")
        save_quantized(model, folder)
        _corrupt(folder, k, value)
        with pytest.raises(ValueError, match=message):
            load_quantized(folder)
    float_folder = tmp_path / "float"
    tiny("gpt2").save_pretrained(float_folder)
    with pytest.raises(ValueError, match="quantization_config"):
        load_quantized(float_folder)


# ---------------------------------------------------------------------- transformers + bnb
def _hf():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"bitsandbytes does not import here: {e}")
    return torch, transformers


def _hf_float_model(transformers, torch, arch):
    # LLaMA's MLP is 128 wide, a multiple of the blocksize: bitsandbytes 0.50's native CPU
    # dequantize kernel gets rows of e.g. 96 or 48 values wrong (see test_bnb_cpu_kernel_rows).
    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = transformers.GPT2Config(
            n_embd=64,
            n_layer=2,
            n_head=4,
            vocab_size=V,
            n_positions=32,
            bos_token_id=EOS,
            eos_token_id=EOS,
        )
    else:
        cfg = transformers.LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=V,
            max_position_embeddings=32,
            bos_token_id=EOS,
            eos_token_id=EOS,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def _hf_logits(torch, model, x):
    with torch.no_grad():
        return model(input_ids=torch.tensor(x)).logits.float().numpy()


def _hf_load(transformers, folder, **kw):
    import bitsandbytes as bnb

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, device_map="cpu", **kw)
    # On a CPU with AVX512-BF16, bitsandbytes' eval-mode forward repacks the weight and computes
    # in bfloat16 (and fails for in_features not a multiple of the blocksize); its generic path
    # dequantizes to float32 and multiplies, which is what float32 agreement is about.
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False
    return model


INTEROP = [
    ("gpt2", "nf4", True),
    ("gpt2", "fp4", False),
    ("llama", "nf4", False),
    ("llama", "fp4", True),
]


@pytest.mark.parametrize(
    ("arch", "quant_type", "dq", "blocksize"),
    [(*c, 64) for c in INTEROP] + [("gpt2", "nf4", True, 32)],
)
def test_our_4bit_checkpoint_loads_in_transformers_with_equal_logits(
    arch, quant_type, dq, blocksize, tmp_path
):
    torch, transformers = _hf()
    _hf_float_model(transformers, torch, arch).save_pretrained(tmp_path / "float")
    ours = quantize_model(
        AutoModelForCausalLM.from_pretrained(tmp_path / "float"),
        quant_type=quant_type,
        blocksize=blocksize,
        compress_statistics=dq,
    )
    save_quantized(ours, tmp_path / "q")
    theirs = _hf_load(transformers, tmp_path / "q")
    x = ids()
    np.testing.assert_allclose(_hf_logits(torch, theirs, x), logits(ours, x), atol=1e-4, rtol=0)
    assert theirs.config.quantization_config.to_dict()["bnb_4bit_quant_type"] == quant_type


@pytest.mark.parametrize(("arch", "quant_type", "dq"), INTEROP)
def test_a_checkpoint_quantized_by_transformers_loads_here(arch, quant_type, dq, tmp_path):
    torch, transformers = _hf()
    _hf_float_model(transformers, torch, arch).save_pretrained(tmp_path / "float")
    bnb = transformers.BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_use_double_quant=dq
    )
    theirs = _hf_load(transformers, tmp_path / "float", quantization_config=bnb)
    theirs.save_pretrained(tmp_path / "q")
    ours = load_quantized(tmp_path / "q")
    x = ids()
    np.testing.assert_allclose(logits(ours, x), _hf_logits(torch, theirs, x), atol=1e-4, rtol=0)
    # the same bytes as quantizing the float checkpoint here, and the same config.json entry
    mine = quantize_model(
        AutoModelForCausalLM.from_pretrained(tmp_path / "float"),
        quant_type=quant_type,
        compress_statistics=dq,
    )
    for name, m in quantized_layers(mine).items():
        np.testing.assert_array_equal(ours.get_submodule(name).weight.data, m.weight.data)
    written = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert written == mine.config.extra["quantization_config"]
    assert math.isclose(
        sum(m.weight.numel() for m in quantized_layers(ours).values()),
        sum(p.numel() for n, p in theirs.named_parameters() if p.dtype == torch.uint8),
    )


def test_bnb_cpu_kernel_rows():
    """What a 96-wide LLaMA MLP would hit in transformers on the CPU: bitsandbytes 0.50's native
    CPU dequantize kernel (taken when the last axis is even) is off for some rows whose length is
    not a multiple of the blocksize; its generic kernel agrees with ours bit for bit."""
    torch, _ = _hf()
    import bitsandbytes.functional as bf

    try:
        from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
        from bitsandbytes.backends.utils import _get_4bit_code
    except ImportError:  # pragma: no cover - private API of one bitsandbytes version
        pytest.skip("bitsandbytes' generic dequantize kernel is not where 0.50 has it")
    w = torch.randn(64, 96, generator=torch.Generator().manual_seed(0)) * 0.02
    packed, qs = bf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    generic = _dequantize_4bit_compute(
        packed.reshape(-1), qs.absmax, _get_4bit_code("nf4", "cpu"), 64, qs.shape, torch.float32
    )
    mine = Linear4bit.from_linear(_dense_with(w.numpy()), "nf4", 64, False)
    np.testing.assert_array_equal(mine.weight.data, packed.numpy())
    np.testing.assert_array_equal(mine.get_base_weight(), generic.numpy())


def _dense_with(w: np.ndarray) -> nn.Linear:
    dense = nn.Linear(w.shape[1], w.shape[0], bias=False)
    dense.weight.data[...] = w
    return dense


def test_merge_and_unload_dequantize_gives_an_exact_full_precision_model():
    from minipeft.models import GPT2Config, GPT2LMHeadModel
    from minipeft.nn import Linear
    from minipeft.peft import LoraConfig, get_peft_model
    from minipeft.quant import Linear4bit, prepare_model_for_kbit_training, quantize_model

    cfg = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=64, n_positions=16,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    model = prepare_model_for_kbit_training(quantize_model(GPT2LMHeadModel(cfg, seed=0).eval()))
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False))
    ids = np.array([[1, 2, 3, 4, 5]])
    with mp.no_grad():
        adapted = pm(input_ids=ids).logits.numpy()
    merged = pm.merge_and_unload(dequantize=True)
    assert not any(isinstance(m, Linear4bit) for m in merged.modules())
    assert isinstance(merged.transformer.h[0].attn.c_attn, Linear)
    with mp.no_grad():
        np.testing.assert_allclose(merged(input_ids=ids).logits.numpy(), adapted, atol=1e-5)


def test_from_pretrained_on_a_4bit_folder_says_what_to_use(tmp_path):
    from minipeft.models import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel
    from minipeft.quant import quantize_model, save_quantized

    cfg = GPT2Config(n_embd=64, n_layer=1, n_head=4, vocab_size=64, n_positions=16)
    save_quantized(quantize_model(GPT2LMHeadModel(cfg, seed=0)), tmp_path)
    with pytest.raises(ValueError, match="load it with minipeft.quant.load_quantized"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
