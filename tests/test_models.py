"""GPT-2 and LLaMA: module paths, causality, RoPE, caches, padding, heads, save/load, errors.

Tiny configs (C = 32, 2 layers, V = 80) keep every test well under a second.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minipeft as mp
from minipeft import nn
from minipeft.models import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    RotaryEmbedding,
    apply_rotary_pos_emb,
)
from minipeft.models.checkpoint import load_safetensors, save_safetensors
from minipeft.optim import AdamW

V = 80


def gpt2_config(**kw):
    base = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=V, n_positions=64,
                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    return GPT2Config(**{**base, **kw})


def llama_config(**kw):
    base = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=V, max_position_embeddings=64)  # fmt: skip
    return LlamaConfig(**{**base, **kw})


CAUSAL = {"gpt2": (GPT2LMHeadModel, gpt2_config), "llama": (LlamaForCausalLM, llama_config)}
SEQCLS = {
    "gpt2": (GPT2ForSequenceClassification, gpt2_config),
    "llama": (LlamaForSequenceClassification, llama_config),
}


def make(arch, device="cpu", table=CAUSAL, seed=0, **kw):
    cls, cfg = table[arch]
    return cls(cfg(**kw), seed=seed).to(device).eval()


def ids_of(shape, seed=0, device="cpu", high=V):
    return mp.tensor(np.random.default_rng(seed).integers(1, high, shape), device=device)


def close(a, b, atol=1e-5):
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=atol, rtol=0)


# ------------------------------------------------------------------------------ structure
def test_module_paths_are_hf_names():
    g = dict(make("gpt2").named_parameters())
    for name in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight",
                 "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.bias",
                 "transformer.h.1.mlp.c_fc.weight", "transformer.h.1.mlp.c_proj.weight",
                 "transformer.ln_f.bias"):  # fmt: skip
        assert name in g, name
    gm = make("gpt2")
    assert gm.lm_head.weight is gm.transformer.wte.weight  # tied
    assert isinstance(gm.get_submodule("transformer.h.0.attn.c_attn"), nn.Linear)
    assert gm.get_submodule("transformer.h.0.attn.c_attn").weight.shape == (96, 32)
    lm = make("llama")
    sd = lm.state_dict()
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                 "model.layers.0.self_attn.k_proj.weight", "model.layers.0.mlp.gate_proj.weight",
                 "model.layers.0.input_layernorm.weight", "model.norm.weight",
                 "model.layers.1.post_attention_layernorm.weight", "lm_head.weight"):  # fmt: skip
        assert name in sd, name
    assert "model.rotary_emb.inv_freq" not in sd  # a non-persistent buffer
    assert sd["model.layers.0.self_attn.k_proj.weight"].shape == (16, 32)  # 2 kv heads × D 8
    assert not any(k.endswith(".bias") for k in sd)
    assert lm.lm_head.weight is not lm.model.embed_tokens.weight
    tied = make("llama", tie_word_embeddings=True)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    assert tied.num_parameters() == lm.num_parameters() - V * 32
    biased = make("llama", attention_bias=True, mlp_bias=True)
    assert biased.model.layers[0].self_attn.q_proj.bias is not None
    assert biased.model.layers[0].mlp.up_proj.bias is not None


def test_init_is_hf_like_and_seeded():
    cfg = gpt2_config(n_embd=64, n_layer=4, initializer_range=0.05)
    m = GPT2LMHeadModel(cfg, seed=1)
    c_fc = m.transformer.h[0].mlp.c_fc
    assert abs(c_fc.weight.numpy().std() - 0.05) < 0.005
    assert np.all(c_fc.bias.numpy() == 0)
    proj = m.transformer.h[0].attn.c_proj.weight.numpy()
    assert abs(proj.std() - 0.05 / np.sqrt(8)) < 0.003
    assert np.all(m.transformer.ln_f.weight.numpy() == 1)
    assert np.all(m.transformer.ln_f.bias.numpy() == 0)
    same = GPT2LMHeadModel(cfg, seed=1)
    other = GPT2LMHeadModel(cfg, seed=2)
    assert np.array_equal(same.transformer.wte.weight.numpy(), m.transformer.wte.weight.numpy())
    assert not np.array_equal(
        other.transformer.wte.weight.numpy(), m.transformer.wte.weight.numpy()
    )
    lm = LlamaForCausalLM(llama_config(pad_token_id=0), seed=0)
    assert np.all(lm.model.embed_tokens.weight.numpy()[0] == 0)  # HF zeroes the padding row
    assert np.all(lm.model.norm.weight.numpy() == 1)


# ------------------------------------------------------------------------------ causality
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_future_tokens_never_change_past_logits(arch, device):
    m = make(arch, device)
    ids = ids_of((2, 10), device=device)
    base = m(input_ids=ids).logits.numpy()
    for t in (0, 3, 8):
        changed = ids.numpy().copy()
        changed[:, t + 1] = (changed[:, t + 1] + 7) % V
        out = m(input_ids=mp.tensor(changed, device=device)).logits.numpy()
        np.testing.assert_allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-6, rtol=0)
        assert np.abs(out[:, t + 1] - base[:, t + 1]).max() > 1e-4


@given(
    m=st.integers(0, 300),
    n=st.integers(0, 300),
    shift=st.integers(0, 300),
    seed=st.integers(0, 2**16),
)
def test_rope_scores_depend_only_on_relative_position(m, n, shift, seed):
    rope = RotaryEmbedding(16, base=10000.0).to(mp.float64)
    rng = np.random.default_rng(seed)
    q = mp.tensor(rng.standard_normal((1, 1, 1, 16)), dtype=mp.float64)
    k = mp.tensor(rng.standard_normal((1, 1, 1, 16)), dtype=mp.float64)

    def score(pq, pk):
        cq, sq = rope(q, mp.tensor([[pq]]))
        ck, sk = rope(k, mp.tensor([[pk]]))
        rq, _ = apply_rotary_pos_emb(q, q, cq, sq)
        _, rk = apply_rotary_pos_emb(k, k, ck, sk)
        return float((rq * rk).sum().item()), float((rq * rq).sum().item())

    s1, norm1 = score(m, n)
    s2, _ = score(m + shift, n + shift)
    assert abs(s1 - s2) < 1e-8 * max(1.0, abs(s1))
    assert abs(norm1 - float((q * q).sum().item())) < 1e-9  # a rotation keeps the norm


# ------------------------------------------------------------------------------ training
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_overfits_one_batch(arch):
    mp.manual_seed(0)
    m = make(arch).train()
    ids = ids_of((2, 12), seed=3)
    opt = AdamW(list(m.parameters()), lr=1e-2, weight_decay=0.0)
    for _ in range(150):
        loss = m(input_ids=ids, labels=ids).loss
        if loss.item() < 0.05:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_loss_is_hf_shifted_cross_entropy_with_ignore_index():
    m = make("gpt2")
    ids = ids_of((2, 6))
    labels = ids.numpy().copy()
    labels[0, 3] = -100
    out = m(input_ids=ids, labels=mp.tensor(labels))
    logits = out.logits.numpy().astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    terms = [-logp[b, t, labels[b, t + 1]] for b in range(2) for t in range(5)
             if labels[b, t + 1] != -100]  # fmt: skip
    assert len(terms) == 9
    assert abs(out.loss.item() - np.mean(terms)) < 1e-5


# ------------------------------------------------------------------------------ inputs
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_inputs_embeds_equals_input_ids(arch, device):
    m = make(arch, device)
    ids = ids_of((2, 7), device=device)
    embeds = m.get_input_embeddings()(ids)
    close(m(input_ids=ids).logits, m(inputs_embeds=embeds).logits, atol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_left_padding_with_mask_and_positions_matches_unpadded(arch, device):
    m = make(arch, device)
    real = ids_of((1, 5), device=device)
    padded = mp.tensor(np.concatenate([[[0, 0, 0]], real.numpy()], axis=1), device=device)
    mask = mp.tensor([[0, 0, 0, 1, 1, 1, 1, 1]], device=device)
    pos = mp.tensor([[1, 1, 1, 0, 1, 2, 3, 4]], device=device)  # HF: cumsum(mask) - 1
    out = m(input_ids=padded, attention_mask=mask, position_ids=pos).logits
    assert np.isfinite(out.numpy()).all()
    close(out[:, 3:], m(input_ids=real).logits, atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_kv_cache_equals_full_forward(arch, device):
    m = make(arch, device)
    ids = ids_of((2, 9), device=device)
    full = m(input_ids=ids).logits
    out = m(input_ids=ids[:, :4], use_cache=True)
    steps = [out.logits]
    past = out.past_key_values
    for t in range(4, 9):
        out = m(input_ids=ids[:, t : t + 1], past_key_values=past, use_cache=True)
        past = out.past_key_values
        steps.append(out.logits)
    close(mp.cat(steps, dim=1), full, atol=1e-5)
    kv = m.config.num_key_value_heads
    assert past[0][0].shape == (2, kv, 9, 8)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_learned_prefix_as_past_key_values_gets_gradients(arch, device):
    m = make(arch, device)
    m.requires_grad_(False)
    cfg = m.config
    P, B, T = 3, 2, 5
    mp.manual_seed(0)
    prefix = [
        tuple(
            nn.Parameter(mp.randn(B, cfg.num_key_value_heads, P, 8, device=device))
            for _ in range(2)
        )
        for _ in range(cfg.num_hidden_layers)
    ]
    before = [k.numpy().copy() for k, _ in prefix]
    ids = ids_of((B, T), device=device)
    mask = mp.ones(B, P + T, dtype=mp.int64, device=device)
    out = m(input_ids=ids, attention_mask=mask, past_key_values=prefix, labels=ids, use_cache=True)
    out.loss.backward()
    for k, v in prefix:
        assert k.grad is not None and np.abs(k.grad).max() > 0
        assert v.grad is not None and np.abs(v.grad).max() > 0
    for (k, _), b in zip(prefix, before):
        assert np.array_equal(k.numpy(), b)  # never mutated in place
    assert out.past_key_values[0][0].shape == (B, cfg.num_key_value_heads, P + T, 8)
    assert m.get_input_embeddings().weight.grad is None  # frozen stays free


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_hidden_states_output(arch):
    m = make(arch)
    out = m(input_ids=ids_of((1, 4)), output_hidden_states=True)
    assert len(out.hidden_states) == m.config.num_hidden_layers + 1
    assert out.hidden_states[-1].shape == (1, 4, 32)


# ------------------------------------------------------------------------------ classification
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_sequence_classification_pools_last_non_padding_token(arch, device):
    m = make(arch, device, SEQCLS, pad_token_id=0, num_labels=3)
    real = ids_of((1, 4), device=device)
    padded = mp.tensor(np.concatenate([real.numpy(), [[0, 0]]], axis=1), device=device)
    mask = mp.tensor([[1, 1, 1, 1, 0, 0]], device=device)
    out_pad = m(input_ids=padded, attention_mask=mask, output_hidden_states=True)
    out_real = m(input_ids=real)
    assert out_pad.logits.shape == (1, 3)
    close(out_pad.logits, out_real.logits, atol=1e-5)
    h = out_pad.hidden_states[-1]
    close(out_pad.logits, m.score(h[:, 3]), atol=1e-6)  # pooled index 3 = last real token
    batch = mp.tensor(np.concatenate([padded.numpy(), ids_of((1, 6), 1).numpy()]), device=device)
    both = m(input_ids=batch, attention_mask=mp.tensor([[1, 1, 1, 1, 0, 0], [1] * 6]))
    close(both.logits[:1], out_real.logits, atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_sequence_classification_losses(arch):
    m = make(arch, table=SEQCLS, pad_token_id=0, num_labels=3)
    ids = ids_of((2, 5))
    out = m(input_ids=ids, labels=mp.tensor([2, 0]))
    logits = out.logits.numpy().astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert abs(out.loss.item() + (logp[0, 2] + logp[1, 0]) / 2) < 1e-5
    out.loss.backward()
    assert m.score.weight.grad is not None
    reg = make(arch, table=SEQCLS, pad_token_id=0, num_labels=1)
    out = reg(input_ids=ids, labels=mp.tensor([0.5, -1.0]))
    pred = out.logits.numpy()[:, 0]
    assert abs(out.loss.item() - np.mean((pred - [0.5, -1.0]) ** 2)) < 1e-6


def test_sequence_classification_without_pad_token():
    m = make("gpt2", table=SEQCLS)
    assert m(input_ids=ids_of((1, 5))).logits.shape == (1, 2)
    with pytest.raises(ValueError, match="no padding token"):
        m(input_ids=ids_of((2, 5)))


# ------------------------------------------------------------------------------ save / load
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("table", [CAUSAL, SEQCLS], ids=["causal", "seqcls"])
def test_save_load_round_trip_is_exact(arch, table, tmp_path):
    m = make(arch, table=table, pad_token_id=0, seed=5)
    m.save_pretrained(tmp_path, max_shard_size="20KB")  # several shards + index
    assert (tmp_path / "config.json").exists()
    assert (tmp_path / "model.safetensors.index.json").exists()
    auto = AutoModelForCausalLM if table is CAUSAL else AutoModelForSequenceClassification
    loaded = auto.from_pretrained(tmp_path)
    assert type(loaded) is type(m)
    ids = ids_of((2, 6))
    assert np.array_equal(loaded(input_ids=ids).logits.numpy(), m(input_ids=ids).logits.numpy())
    m.save_pretrained(tmp_path)  # one file again; stale shards are removed
    assert (tmp_path / "model.safetensors").exists()
    loaded = type(m).from_pretrained(tmp_path, dtype=mp.float64)
    assert loaded.dtype == mp.float64 and not loaded.training


def test_classifier_from_causal_checkpoint_gets_fresh_score(tmp_path):
    make("llama", pad_token_id=0).save_pretrained(tmp_path)
    with pytest.warns(UserWarning) as record:
        clf = AutoModelForSequenceClassification.from_pretrained(tmp_path, seed=0)
    messages = " ".join(str(w.message) for w in record)
    assert "['score.weight'] not found" in messages and "not used" in messages  # lm_head
    assert isinstance(clf, LlamaForSequenceClassification)
    assert 0 < clf.score.weight.numpy().std() < 0.1


def test_load_errors_name_folder_and_key(tmp_path):
    m = make("gpt2")
    m.save_pretrained(tmp_path / "a")
    cfg = (tmp_path / "a" / "config.json").read_text()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text(cfg.replace('"n_embd": 32', '"n_embd": 16'))
    (tmp_path / "b" / "model.safetensors").write_bytes(
        (tmp_path / "a" / "model.safetensors").read_bytes()
    )
    with pytest.raises(
        ValueError,
        match=r"b: checkpoint(?s:.*)c_attn.weight \(expected \(48, 16\), found \(96, 32\)\)",
    ):  # noqa: E501
        AutoModelForCausalLM.from_pretrained(tmp_path / "b")
    tensors = load_safetensors(tmp_path / "a" / "model.safetensors")
    del tensors["transformer.h.1.mlp.c_fc.bias"]
    save_safetensors(tmp_path / "a" / "model.safetensors", tensors)
    with pytest.raises(ValueError, match=r"a: (?s:.*)missing keys: transformer.h.1.mlp.c_fc.bias"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="bert"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "c")
    with pytest.raises(ValueError, match="model_type"):
        LlamaForCausalLM.from_pretrained(tmp_path / "a")


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_bad_inputs_raise_clear_errors(arch):
    m = make(arch)
    ids = ids_of((2, 5))
    cases = [
        (dict(), "exactly one of input_ids or inputs_embeds"),
        (dict(input_ids=ids, inputs_embeds=mp.zeros(2, 5, 32)), "exactly one"),
        (dict(input_ids=mp.tensor([[1, V]])), f"vocab_size = {V}"),
        (dict(input_ids=ids_of((1, 65))), "longer than"),
        (dict(input_ids=ids, attention_mask=mp.ones(2, 4)), r"\(2, 5\), found \(2, 4\)"),
        (dict(input_ids=ids, labels=ids_of((2, 4))), r"labels: expected shape \(2, 5\)"),
        (dict(inputs_embeds=mp.zeros(2, 5, 31)), r"\(batch, seq_len, 32\)"),
        (dict(input_ids=ids, position_ids=mp.tensor([[0, 1]])), "position_ids"),
        (dict(input_ids=ids, past_key_values=[(mp.zeros(2, 1, 1, 8),) * 2]), "list of 2"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            m(**kwargs)
    kv = m.config.num_key_value_heads
    bad_past = [(mp.zeros(2, kv, 3, 8), mp.zeros(2, kv, 3, 7))] * 2
    with pytest.raises(ValueError, match=r"found \(2, \d, 3, 7\)"):
        m(input_ids=ids, past_key_values=bad_past)
    with pytest.raises(TypeError, match="Config"):
        type(m)(GPT2Config() if arch == "llama" else LlamaConfig())
