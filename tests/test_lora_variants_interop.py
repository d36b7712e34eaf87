"""DoRA, PiSSA and OLoRA against Hugging Face PEFT 0.21.2 on the same transformers models.

The tiny random GPT-2 (PEFT sees ``Conv1D``, we ``Linear``) and GQA LLaMA of test_peft_interop.py:

* DoRA adapters (GPT-2 ``c_attn``/``c_proj``, LLaMA ``q_proj``/``v_proj``, each also on the token
  embedding) with random A, B and magnitudes made here load in PEFT with equal logits, and PEFT's
  load here equal, merged too; the printed trainable-parameter lines agree, and so do the
  gradients of every adapter parameter (PEFT's detached norm);
* PEFT's PiSSA / OLoRA initialisation of a LLaMA (PiSSA also of GPT-2's Conv1D) gives our A, B
  (up to the sign of each singular / QR direction, which no library fixes) and our residual
  weights; PEFT's OLoRA breaks on Conv1D (its issue #2103), ours keeps the base model's logits;
* a trained PiSSA adapter converted here (``path_initial_model_for_weight_conversion``) loads in
  PEFT on the original base with the trained model's logits, and PEFT's PiSSA adapters,
  converted or not, load here on the original base with PEFT's logits.

Skipped without torch, transformers and peft.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from test_peft_interop import (  # noqa: E402
    IDS,
    TOL,
    gpt2_dir,  # noqa: F401 (fixtures)
    hf_logits,
    hf_model,
    llama_dir,  # noqa: F401
    our_logits,
    our_model,
)

import minipeft as mp  # noqa: E402
from minipeft.peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:fan_in_fan_out"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore:Setting `save_embedding_layers`"),
    pytest.mark.filterwarnings("ignore:Already unmerged"),
]
DORA_TARGETS = {
    "gpt2": ["c_attn", "c_proj"],
    "gpt2+wte": ["c_attn", "wte"],
    "llama": ["q_proj", "v_proj"],
    "llama+embed": ["q_proj", "embed_tokens"],
}


def _folder(arch: str, request: pytest.FixtureRequest) -> str:
    """The saved transformers model of ``arch`` (the module fixtures of test_peft_interop)."""
    return request.getfixturevalue("gpt2_dir" if arch.startswith("gpt2") else "llama_dir")


def _randomize(model, ours: bool, seed: int = 1) -> None:
    """Every adapter tensor gets values (B and an embedding's A start at zero, m at ‖W‖)."""
    rng = np.random.default_rng(seed)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if ".lora_" not in name:
            continue
        shape = tuple(p.shape)
        if "magnitude" in name:
            current = p.numpy() if ours else p.detach().numpy()
            values = current * rng.uniform(0.7, 1.3, size=shape)
        else:
            values = rng.normal(size=shape) * 0.3
        if ours:
            p.data[...] = values.astype(np.float32)
        else:
            with torch.no_grad():
                p.copy_(torch.tensor(values.astype(np.float32)))


def _grads(model, ours: bool) -> dict[str, np.ndarray]:
    """Gradients of Σ R ⊙ logits (R fixed) for every adapter parameter."""
    weight = np.random.default_rng(2).normal(size=(*IDS.shape, 64)).astype(np.float32)
    if ours:
        (model(input_ids=IDS).logits * mp.tensor(weight)).sum().backward()
        return {n: p.grad for n, p in model.named_parameters() if ".lora_" in n}
    (model(input_ids=torch.tensor(IDS)).logits * torch.tensor(weight)).sum().backward()
    return {n: p.grad.numpy() for n, p in model.named_parameters() if ".lora_" in n}


# ---------------------------------------------------------------------------- DoRA
@pytest.mark.parametrize("arch", list(DORA_TARGETS))
def test_dora_made_here_loads_in_peft(arch, request, tmp_path, capsys) -> None:
    folder = _folder(arch, request)
    kwargs = {"r": 4, "lora_alpha": 8, "use_dora": True, "target_modules": DORA_TARGETS[arch]}
    ours = get_peft_model(our_model(folder), LoraConfig(**kwargs))
    _randomize(ours, ours=True)
    expected = our_logits(ours)
    assert np.abs(expected - hf_logits(hf_model(folder))).max() > 1e-2
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(hf_model(folder), str(tmp_path))
    np.testing.assert_allclose(hf_logits(theirs), expected, atol=TOL, rtol=0)
    fresh = peft.get_peft_model(hf_model(folder), peft.LoraConfig(**kwargs))
    fresh.print_trainable_parameters()
    line = capsys.readouterr().out
    get_peft_model(our_model(folder), LoraConfig(**kwargs)).print_trainable_parameters()
    assert capsys.readouterr().out == line


@pytest.mark.parametrize("arch", list(DORA_TARGETS))
def test_peft_dora_loads_here_merges_and_has_pefts_gradients(arch, request, tmp_path) -> None:
    folder = _folder(arch, request)
    config = peft.LoraConfig(r=4, lora_alpha=16, use_dora=True, target_modules=DORA_TARGETS[arch])
    theirs = peft.get_peft_model(hf_model(folder), config)
    _randomize(theirs, ours=False, seed=3)
    expected = hf_logits(theirs)
    theirs.save_pretrained(str(tmp_path))
    ours = PeftModel.from_pretrained(our_model(folder), tmp_path, is_trainable=True)
    np.testing.assert_allclose(our_logits(ours), expected, atol=TOL, rtol=0)
    their_grads, our_grads = _grads(theirs, ours=False), _grads(ours, ours=True)
    assert their_grads.keys() == our_grads.keys() and their_grads
    for name, grad in their_grads.items():
        scale = max(1.0, float(np.abs(grad).max()))
        np.testing.assert_allclose(our_grads[name], grad, atol=1e-4 * scale, rtol=0, err_msg=name)
    if "wte" in DORA_TARGETS[arch]:
        return  # tied to lm_head: merging is refused (test_lora_embedding.py)
    ours.merge_adapter()
    np.testing.assert_allclose(our_logits(ours), expected, atol=TOL, rtol=0)
    theirs.merge_adapter()
    np.testing.assert_allclose(hf_logits(theirs), expected, atol=TOL, rtol=0)


# ---------------------------------------------------------------------------- PiSSA, OLoRA
def _lora_factors(model, ours: bool) -> dict[str, tuple[np.ndarray, ...]]:
    """{layer: (A, B, residual W)} of adapter "default" (W as (d_out, d_in))."""
    out = {}
    for name, module in model.named_modules():
        if not (hasattr(module, "lora_A") and "default" in module.lora_A):
            continue
        arrays = (module.lora_A["default"].weight, module.lora_B["default"].weight,
                  module.base_layer.weight)  # fmt: skip
        a, b, w = (t.numpy() if ours else t.detach().numpy() for t in arrays)
        out[name] = (a, b, w.T if module.fan_in_fan_out else w)  # PEFT's GPT-2: Conv1D
    return out


@pytest.mark.parametrize(("arch", "init"), [("llama", "pissa"), ("llama", "olora"),
                                            ("gpt2", "pissa")])  # fmt: skip
def test_pissa_and_olora_init_equal_pefts(arch, init, request) -> None:
    folder = _folder(arch, request)
    targets = {"llama": ["q_proj", "k_proj", "v_proj", "down_proj"], "gpt2": ["c_attn", "c_fc"]}
    kwargs = {"r": 4, "lora_alpha": 8, "init_lora_weights": init, "target_modules": targets[arch]}
    theirs = _lora_factors(peft.get_peft_model(hf_model(folder), peft.LoraConfig(**kwargs)), False)
    ours = _lora_factors(get_peft_model(our_model(folder), LoraConfig(**kwargs)), ours=True)
    assert theirs.keys() == ours.keys() and len(ours) == 2 * len(targets[arch])
    for name, (a, b, w) in ours.items():
        ta, tb, tw = theirs[name]
        np.testing.assert_allclose(w, tw, atol=TOL, rtol=0, err_msg=name)  # the residual (float32)
        sign = np.sign(np.sum(a * ta, axis=1))  # each direction is defined up to its sign
        assert np.all(sign != 0), name
        np.testing.assert_allclose(a * sign[:, None], ta, atol=TOL, rtol=0, err_msg=name)
        np.testing.assert_allclose(b * sign[None, :], tb, atol=TOL, rtol=0, err_msg=name)


def test_olora_on_gpt2s_conv1d_works_here_where_peft_breaks(request) -> None:
    """PEFT 0.21.2 takes the QR of the stored (d_in, d_out) Conv1D weight (its issues #2103,
    #2991): lora_A comes out (r, d_out) and the forward fails. Here the weight is taken as
    (d_out, d_in), so the model at init is the base model."""
    folder = _folder("gpt2", request)
    kwargs = {"r": 4, "lora_alpha": 8, "init_lora_weights": "olora", "target_modules": ["c_attn"]}
    theirs = peft.get_peft_model(hf_model(folder), peft.LoraConfig(**kwargs))
    c_attn = theirs.base_model.model.transformer.h[0].attn.c_attn
    assert tuple(c_attn.lora_A["default"].weight.shape) == (4, 96)  # should be (4, 32)
    ours = get_peft_model(our_model(folder), LoraConfig(**kwargs))
    assert ours.base_model.model.transformer.h[0].attn.c_attn.lora_A["default"].weight.shape == (
        4, 32)  # fmt: skip
    np.testing.assert_allclose(our_logits(ours), hf_logits(hf_model(folder)), atol=TOL, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_converted_pissa_made_here_loads_in_peft_on_the_original_base(arch, request, tmp_path):
    folder = _folder(arch, request)
    targets = ["c_attn", "c_proj"] if arch == "gpt2" else ["q_proj", "v_proj", "o_proj"]
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights="pissa", target_modules=targets)
    ours = get_peft_model(our_model(folder), config)
    ours.save_pretrained(tmp_path / "init")
    _randomize(ours, ours=True)  # "trained"
    expected = our_logits(ours)
    assert np.abs(expected - hf_logits(hf_model(folder))).max() > 1e-2
    initial = tmp_path / "init"
    ours.save_pretrained(tmp_path / "lora", path_initial_model_for_weight_conversion=initial)
    theirs = peft.PeftModel.from_pretrained(hf_model(folder), str(tmp_path / "lora"))
    assert theirs.peft_config["default"].r == 8
    np.testing.assert_allclose(hf_logits(theirs), expected, atol=TOL, rtol=0)


def test_pefts_pissa_adapters_load_here_on_the_original_base(request, tmp_path) -> None:
    llama = _folder("llama", request)
    kwargs = {"r": 4, "lora_alpha": 8, "init_lora_weights": "pissa",
              "target_modules": ["q_proj", "v_proj"]}  # fmt: skip
    theirs = peft.get_peft_model(hf_model(llama), peft.LoraConfig(**kwargs))
    theirs.save_pretrained(str(tmp_path / "init"))
    _randomize(theirs, ours=False, seed=4)
    expected = hf_logits(theirs)
    theirs.save_pretrained(str(tmp_path / "raw"))  # init "pissa": loading re-runs it
    initial = str(tmp_path / "init")
    theirs.save_pretrained(str(tmp_path / "lora"), path_initial_model_for_weight_conversion=initial)
    for kind in ("raw", "lora"):
        ours = PeftModel.from_pretrained(our_model(llama), tmp_path / kind)
        np.testing.assert_allclose(our_logits(ours), expected, atol=TOL, rtol=0, err_msg=kind)
