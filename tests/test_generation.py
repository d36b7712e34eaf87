"""``model.generate``: the KV cache changes nothing, eos stops rows, top-k/top-p math, seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest

import minipeft as mp
from minipeft.models import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    top_k_filter,
    top_p_filter,
)

V = 64


def make(arch, device="cpu"):
    if arch == "gpt2":
        cfg = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=V, n_positions=64)
        model = GPT2LMHeadModel(cfg, seed=0)
    else:
        cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, vocab_size=V,
                          max_position_embeddings=64)  # fmt: skip
        model = LlamaForCausalLM(cfg, seed=0)
    return model.to(device).eval()


def prompt(device="cpu", shape=(2, 5)):
    return mp.tensor(np.random.default_rng(1).integers(1, V, shape), device=device)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_cached_equals_uncached_greedy(arch, device):
    m = make(arch, device)
    ids = prompt(device)
    cached = m.generate(ids, max_new_tokens=8)
    uncached = m.generate(ids, max_new_tokens=8, use_cache=False)
    assert cached.shape == (2, 13) and cached.dtype == mp.int64
    assert np.array_equal(cached.numpy(), uncached.numpy())
    assert np.array_equal(cached.numpy()[:, :5], ids.numpy())
    # greedy: each new token is the argmax of a full forward over the tokens before it
    seq = cached.numpy()
    logits = m(input_ids=cached).logits.numpy()
    assert np.array_equal(logits[:, 4:-1].argmax(-1), seq[:, 5:])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_cached_equals_uncached_sampling_and_seeds_reproduce(arch):
    m = make(arch)
    ids = prompt()
    kw = dict(max_new_tokens=8, do_sample=True, temperature=0.9, top_k=20, top_p=0.9)
    a = m.generate(ids, seed=7, **kw).numpy()
    b = m.generate(ids, seed=7, **kw).numpy()
    c = m.generate(ids, seed=7, use_cache=False, **kw).numpy()
    assert np.array_equal(a, b) and np.array_equal(a, c)
    others = [m.generate(ids, seed=s, **kw).numpy() for s in range(8, 12)]
    assert any(not np.array_equal(a, o) for o in others)


def test_left_padded_batch_generates_like_each_row_alone():
    m = make("llama")
    row = prompt(shape=(1, 4))
    alone = m.generate(row, max_new_tokens=5).numpy()
    padded = mp.tensor(np.concatenate([[[0, 0]], row.numpy()], axis=1))
    mask = mp.tensor([[0, 0, 1, 1, 1, 1]])
    out = m.generate(padded, attention_mask=mask, max_new_tokens=5).numpy()
    assert np.array_equal(out[:, 2:], alone)


def test_eos_stops_rows_and_pads_after():
    m = make("gpt2")
    ids = prompt()
    free = m.generate(ids, max_new_tokens=6).numpy()
    eos = int(free[0, 7])  # row 0 emits this token at its third step
    out = m.generate(ids, max_new_tokens=6, eos_token_id=eos, pad_token_id=V - 1).numpy()
    first = int(np.argmax(free[0, 5:] == eos)) + 5  # row 0's first eos (≤ position 7)
    assert out[0, first] == eos
    assert np.all(out[0, first + 1 :] == V - 1)
    for r in range(2):  # up to each row's eos the tokens are the unconstrained ones
        hits = np.flatnonzero(free[r, 5:] == eos)
        stop = 5 + (hits[0] + 1 if hits.size else 6)
        assert np.array_equal(out[r, :stop], free[r, :stop])
    single = m.generate(ids[:1], max_new_tokens=6, eos_token_id=eos).numpy()
    assert single.shape[1] == first + 1  # generation ends once every row stopped


def test_top_k_one_equals_greedy():
    m = make("llama")
    ids = prompt()
    greedy = m.generate(ids, max_new_tokens=6).numpy()
    sampled = m.generate(ids, max_new_tokens=6, do_sample=True, top_k=1, seed=3).numpy()
    assert np.array_equal(greedy, sampled)


def test_top_p_filter_hand_example():
    probs = np.array([[0.5, 0.3, 0.15, 0.05]])
    logits = mp.tensor(np.log(probs))
    kept = lambda p: np.isfinite(top_p_filter(logits, p).numpy())[0].tolist()  # noqa: E731
    # smallest set of most likely tokens with cumulative probability >= p
    assert kept(0.5) == [True, False, False, False]
    assert kept(0.6) == [True, True, False, False]
    assert kept(0.75) == [True, True, False, False]  # (exact boundaries are rounding-sensitive)
    assert kept(0.85) == [True, True, True, False]
    assert kept(0.99) == [True, True, True, True]
    assert kept(0.01) == [True, False, False, False]  # at least one token
    shuffled = mp.tensor(np.log(probs[:, [2, 0, 3, 1]]))  # order in the vocabulary is irrelevant
    assert np.isfinite(top_p_filter(shuffled, 0.6).numpy())[0].tolist() == [
        False, True, False, True,
    ]  # fmt: skip
    kept_values = top_p_filter(logits, 0.6).numpy()[0, :2]
    np.testing.assert_allclose(kept_values, np.log([0.5, 0.3]), rtol=1e-6)


def test_top_k_filter_and_sampling_distribution():
    logits = mp.tensor([[1.0, 3.0, 2.0, 3.0, 0.0]])
    assert np.isfinite(top_k_filter(logits, 2).numpy())[0].tolist() == [
        False, True, False, True, False,
    ]  # fmt: skip
    assert np.isfinite(top_k_filter(logits, 10).numpy()).all()
    with pytest.raises(ValueError, match="top_k"):
        top_k_filter(logits, 0)
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(logits, 1.5)


def test_sampling_follows_the_softmax():
    from minipeft.models.generation import _sample

    rng = np.random.default_rng(0)
    logits = np.log(np.tile([[0.1, 0.2, 0.7, 0.0]], (20000, 1)) + 1e-30)
    counts = np.bincount(_sample(logits, rng), minlength=4) / 20000
    np.testing.assert_allclose(counts, [0.1, 0.2, 0.7, 0.0], atol=0.015)
    assert math.isclose(counts.sum(), 1.0)


def test_generate_validates_arguments():
    m = make("gpt2")
    with pytest.raises(ValueError, match="max_new_tokens"):
        m.generate(prompt(), max_new_tokens=-1)
    with pytest.raises(ValueError, match="temperature"):
        m.generate(prompt(), do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="attention_mask"):
        m.generate(prompt(), attention_mask=mp.ones(2, 3))
    assert m.generate(prompt(), max_new_tokens=0).shape == (2, 5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_new_tokens=-1), "max_new_tokens: expected an int >= 0, found -1"),
        (dict(max_new_tokens=2.0), "max_new_tokens: expected an int >= 0, found 2.0"),
        (dict(do_sample=True, top_k=0), "top_k: expected None or an int >= 1, found 0"),
        (dict(do_sample=True, top_k=2.5), "top_k: expected None or an int >= 1, found 2.5"),
        (dict(do_sample=True, top_p=0.0), r"top_p: expected None or a probability in \(0, 1\]"),
        (dict(do_sample=True, top_p=1.5), "top_p: .*found 1.5"),
        (dict(do_sample=True, top_p=float("nan")), "top_p: .*found nan"),
        (dict(top_p=2.0), "top_p: .*found 2.0"),  # wrong even when greedy ignores it
        (dict(do_sample=True, temperature=-1.0), "temperature: expected a number > 0"),
        (dict(do_sample=True, temperature=0.0), "temperature: .*found 0.0"),
    ],
)  # fmt: skip
def test_generate_names_the_bad_argument_before_decoding(kwargs, message, monkeypatch):
    m = make("gpt2")
    monkeypatch.setattr(m, "forward", lambda *a, **k: pytest.fail("decoding started"))
    with pytest.raises(ValueError, match=message):
        m.generate(prompt(), **kwargs)


@pytest.mark.parametrize("arch, limit_name", [("gpt2", "n_positions"),
                                              ("llama", "max_position_embeddings")])  # fmt: skip
def test_generate_checks_the_position_limit_before_decoding(arch, limit_name, monkeypatch):
    m = make(arch)  # a limit of 64 positions; the prompt has 5 tokens
    assert m.generate(prompt(shape=(1, 5)), max_new_tokens=59).shape == (1, 64)  # just fits
    monkeypatch.setattr(m, "forward", lambda *a, **k: pytest.fail("decoding started"))
    with pytest.raises(ValueError) as info:
        m.generate(prompt(shape=(1, 5)), max_new_tokens=60)
    message = str(info.value)
    assert "the prompt has 5 tokens and max_new_tokens is 60" in message
    assert f"65 tokens in all, more than the model's {limit_name} = 64" in message
    assert "at most 59 new tokens" in message


# ---------------------------------------------------------------------------- a given past, embeds
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_a_given_past_is_context_every_step_attends_to(arch, use_cache):
    model = make(arch)
    ids = prompt()
    whole = model.generate(ids, max_new_tokens=4).numpy()
    with mp.no_grad():
        past = model(input_ids=ids[:, :3], use_cache=True).past_key_values
    rest = model.generate(ids[:, 3:], max_new_tokens=4, past_key_values=past, use_cache=use_cache)
    np.testing.assert_array_equal(rest.numpy(), whole[:, 3:])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_inputs_embeds_of_the_prompt_give_the_same_tokens(arch, use_cache):
    model = make(arch)
    ids = prompt()
    whole = model.generate(ids, max_new_tokens=4, use_cache=use_cache).numpy()
    with mp.no_grad():
        embeds = model.get_input_embeddings()(ids)
    got = model.generate(ids, max_new_tokens=4, inputs_embeds=embeds, use_cache=use_cache)
    np.testing.assert_array_equal(got.numpy(), whole)
    only = model.generate(None, max_new_tokens=4, inputs_embeds=embeds, use_cache=use_cache)
    np.testing.assert_array_equal(only.numpy(), whole[:, ids.shape[1] :])


def test_a_past_counts_in_the_length_limit():
    model = make("gpt2")
    limit = model.config.n_positions
    with mp.no_grad():
        past = model(input_ids=np.ones((1, limit - 2), dtype=np.int64), use_cache=True)
    with pytest.raises(ValueError, match=f"{limit - 1} tokens"):
        model.generate(np.ones((1, 1), dtype=np.int64), max_new_tokens=2,
                       past_key_values=past.past_key_values)  # fmt: skip
