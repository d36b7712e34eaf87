"""Against transformers: HF checkpoints load here with the same logits/loss, ours load there,
classification heads agree, and greedy generation picks the same tokens (float32, CPU)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import minipeft as mp  # noqa: E402
from minipeft.models import AutoModelForCausalLM, AutoModelForSequenceClassification  # noqa: E402

V = 96
EOS = V - 1  # inside the vocabulary, so both libraries really can stop on it
ATOL = 1e-4


def hf_config(arch, **kw):
    if arch == "gpt2":
        cfg = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=V, n_positions=64,
                   bos_token_id=EOS, eos_token_id=EOS)  # fmt: skip
        return transformers.GPT2Config(**{**cfg, **kw})
    cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=V, max_position_embeddings=64,
               bos_token_id=EOS, eos_token_id=EOS, rope_theta=500.0)  # fmt: skip
    return transformers.LlamaConfig(**{**cfg, **kw})


ARCHS = {
    "gpt2": ("gpt2", {}),
    "llama-untied": ("llama", {"tie_word_embeddings": False}),
    "llama-tied": ("llama", {"tie_word_embeddings": True}),
}


def hf_model(kind, head="causal", **kw):
    arch, extra = ARCHS[kind]
    torch.manual_seed(0)
    cfg = hf_config(arch, **extra, **kw)
    auto = (transformers.AutoModelForCausalLM if head == "causal"
            else transformers.AutoModelForSequenceClassification)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return auto.from_config(cfg).eval()


def ids(shape, seed=0):
    return np.random.default_rng(seed).integers(0, V - 1, shape)


def hf_forward(model, x, **kw):
    with torch.no_grad():
        return model(input_ids=torch.tensor(x), **{k: torch.tensor(v) for k, v in kw.items()})


@pytest.mark.parametrize("kind", list(ARCHS))
def test_hf_checkpoint_loads_with_same_logits_and_loss(kind, tmp_path):
    hf = hf_model(kind)
    hf.save_pretrained(tmp_path)
    ours = AutoModelForCausalLM.from_pretrained(tmp_path)
    x = ids((2, 9))
    ref = hf_forward(hf, x, labels=x)
    out = ours(input_ids=mp.tensor(x), labels=mp.tensor(x))
    np.testing.assert_allclose(out.logits.numpy(), ref.logits.numpy(), atol=ATOL, rtol=0)
    assert abs(out.loss.item() - ref.loss.item()) < ATOL
    if ARCHS[kind][1].get("tie_word_embeddings", kind == "gpt2"):
        assert ours.lm_head.weight is ours.get_input_embeddings().weight


@pytest.mark.parametrize("kind", list(ARCHS))
def test_our_checkpoint_loads_in_transformers(kind, tmp_path):
    ref = hf_model(kind)
    ref.save_pretrained(tmp_path / "hf")
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    for p in ours.parameters():  # make the weights our own, so the check is not circular
        p.data[...] = p.data * 0.9 + 0.01
    ours.save_pretrained(tmp_path / "ours")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert type(back).__name__ == type(ours).__name__
    x = ids((2, 7), seed=1)
    np.testing.assert_allclose(
        ours(input_ids=mp.tensor(x)).logits.numpy(), hf_forward(back, x).logits.numpy(),
        atol=ATOL, rtol=0,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["gpt2", "llama-untied"])
def test_attention_mask_with_padding_matches_transformers(kind, tmp_path):
    hf = hf_model(kind)
    hf.save_pretrained(tmp_path)
    ours = AutoModelForCausalLM.from_pretrained(tmp_path)
    x = ids((2, 8), seed=2)
    mask = np.ones((2, 8), dtype=np.int64)
    mask[0, :3] = 0  # left padding
    mask[1, 6:] = 0  # right padding
    ref = hf_forward(hf, x, attention_mask=mask).logits.numpy()
    out = ours(input_ids=mp.tensor(x), attention_mask=mp.tensor(mask)).logits.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(out[real], ref[real], atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", ["gpt2", "llama-untied"])
def test_sequence_classification_matches_transformers(kind, tmp_path):
    hf = hf_model(kind, head="seqcls", pad_token_id=0, num_labels=3)
    hf.save_pretrained(tmp_path)
    ours = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    x = ids((3, 7), seed=3) + 1
    mask = np.ones_like(x)
    x[0, 4:], mask[0, 4:] = 0, 0  # right padding with the pad token
    x[1, 6:], mask[1, 6:] = 0, 0
    labels = np.array([2, 0, 1])
    ref = hf_forward(hf, x, attention_mask=mask, labels=labels)
    out = ours(input_ids=mp.tensor(x), attention_mask=mp.tensor(mask), labels=mp.tensor(labels))
    np.testing.assert_allclose(out.logits.numpy(), ref.logits.numpy(), atol=ATOL, rtol=0)
    assert abs(out.loss.item() - ref.loss.item()) < ATOL
    ours.save_pretrained(tmp_path / "ours")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "ours")
    np.testing.assert_allclose(
        hf_forward(back.eval(), x, attention_mask=mask).logits.numpy(), out.logits.numpy(),
        atol=ATOL, rtol=0,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["gpt2", "llama-untied"])
def test_greedy_generation_matches_transformers(kind, tmp_path):
    hf = hf_model(kind)
    hf.save_pretrained(tmp_path)
    ours = AutoModelForCausalLM.from_pretrained(tmp_path)
    x = ids((2, 5), seed=4)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = hf.generate(
            torch.tensor(x), attention_mask=torch.ones(2, 5, dtype=torch.long),
            max_new_tokens=8, do_sample=False, eos_token_id=EOS, pad_token_id=EOS,
        ).numpy()  # fmt: skip
    out = ours.generate(mp.tensor(x), max_new_tokens=8, eos_token_id=EOS, pad_token_id=EOS)
    assert np.array_equal(out.numpy(), ref)
