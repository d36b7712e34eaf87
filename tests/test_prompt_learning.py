"""Prompt tuning, prefix tuning and P-tuning through PeftModel: forward, generate, training,
files, the MAM combination and bad input. (Encoders and configs alone:
tests/test_prompt_encoders.py; against PEFT itself: tests/test_prompt_interop.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minipeft as mp
from minipeft.models import (
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)
from minipeft.optim import AdamW
from minipeft.peft import (
    ParBnConfig,
    PeftModel,
    PeftModelForCausalLM,
    PeftModelForSequenceClassification,
    get_peft_model,
)
from minipeft.peft.tuners.p_tuning import PromptEncoderConfig
from minipeft.peft.tuners.prefix_tuning import PrefixTuningConfig
from minipeft.peft.tuners.prompt_tuning import PromptTuningConfig

IDS = np.array([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]])
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def gpt2(n_embd: int = 32, n_layer: int = 2, n_positions: int = 32) -> GPT2LMHeadModel:
    cfg = GPT2Config(n_embd=n_embd, n_layer=n_layer, n_head=4, vocab_size=64,
                     n_positions=n_positions, **NO_DROPOUT)  # fmt: skip
    return GPT2LMHeadModel(cfg, seed=0).eval()


def llama() -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=32)  # fmt: skip
    return LlamaForCausalLM(cfg, seed=0).eval()


def logits(model, ids=IDS, **kw) -> np.ndarray:
    with mp.no_grad():
        return model(input_ids=ids, **kw).logits.numpy()


def randomize(pm, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for _, p in pm.named_parameters():
        if p.requires_grad:
            p.data[...] = rng.normal(0, 0.5, p.shape).astype(p.dtype)


CONFIGS = {
    "prompt": lambda: PromptTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"),
    "prefix": lambda: PrefixTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"),
    "prefix_projection": lambda: PrefixTuningConfig(
        num_virtual_tokens=4, prefix_projection=True, encoder_hidden_size=16, task_type="CAUSAL_LM"
    ),
    "ptuning": lambda: PromptEncoderConfig(
        num_virtual_tokens=4, encoder_hidden_size=16, task_type="CAUSAL_LM"
    ),
}
MAKERS = {"gpt2": gpt2, "llama": llama}


# ---------------------------------------------------------------------------- counts
@settings(max_examples=10)
@given(T=st.integers(1, 6), n_layer=st.integers(1, 3), width=st.sampled_from([16, 32]),
       h=st.sampled_from([8, 24]))  # fmt: skip
def test_trainable_counts(T, n_layer, width, h):
    def count(config):
        return get_peft_model(gpt2(width, n_layer), config).get_nb_trainable_parameters()[0]

    d, L = width, n_layer
    assert count(PromptTuningConfig(num_virtual_tokens=T)) == T * d
    assert count(PrefixTuningConfig(num_virtual_tokens=T)) == T * 2 * L * d  # H·D = d
    projected = PrefixTuningConfig(num_virtual_tokens=T, prefix_projection=True,
                                   encoder_hidden_size=h)  # fmt: skip
    assert count(projected) == T * d + d * h + h + h * 2 * L * d + 2 * L * d


def test_prefix_count_on_gqa_uses_the_key_value_heads():
    pm = get_peft_model(llama(), PrefixTuningConfig(num_virtual_tokens=3))
    L, H_kv, D = 2, 2, 8
    assert pm.get_nb_trainable_parameters()[0] == 3 * 2 * L * H_kv * D


def test_the_task_type_chooses_the_class():
    assert type(get_peft_model(gpt2(), CONFIGS["prompt"]())) is PeftModelForCausalLM
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=32,
                     num_labels=3, pad_token_id=0, **NO_DROPOUT)  # fmt: skip
    pm = get_peft_model(GPT2ForSequenceClassification(cfg, seed=0),
                        PrefixTuningConfig(num_virtual_tokens=3, task_type="SEQ_CLS"))  # fmt: skip
    assert type(pm) is PeftModelForSequenceClassification
    assert pm(input_ids=IDS).logits.shape == (2, 3)
    trainable = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert any("score.modules_to_save" in n for n in trainable)


# ---------------------------------------------------------------------------- forward
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_prefix_forward_is_the_base_with_that_past(arch):
    pm = get_peft_model(MAKERS[arch](), CONFIGS["prefix"]())
    randomize(pm)
    with mp.no_grad():
        past = pm.base_model.prompt(2)
        expected = pm.get_base_model()(input_ids=IDS, past_key_values=past).logits.numpy()
    np.testing.assert_array_equal(logits(pm), expected)
    assert logits(pm).shape == (2, 5, 64)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_fully_masked_prefix_is_the_base(arch):
    # Equal to float rounding (about 6e-8 in float32), not bit for bit: with a mask, attention
    # runs its masked path over T_v more (zero-weight) keys instead of the plain causal one.
    base = MAKERS[arch]()
    pm = get_peft_model(MAKERS[arch](), CONFIGS["prefix"]())
    randomize(pm)
    with mp.no_grad():
        past = pm.base_model.prompt(2)
        mask = np.concatenate([np.zeros((2, 4)), np.ones((2, 5))], axis=1).astype(np.int64)
        got = pm.get_base_model()(input_ids=IDS, past_key_values=past, attention_mask=mask,
                                  position_ids=np.arange(5)[None]).logits.numpy()  # fmt: skip
    np.testing.assert_allclose(got, logits(base), atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_prompt_tuning_prepends_its_vectors_and_pads_the_labels(arch):
    pm = get_peft_model(MAKERS[arch](), CONFIGS["prompt"]())
    randomize(pm)
    out = pm(input_ids=IDS, labels=IDS)
    assert out.logits.shape == (2, 4 + 5, 64)
    with mp.no_grad():
        embeds = mp.ops.api.cat(
            [pm.base_model.prompt(2), pm.get_base_model().get_input_embeddings()(mp.tensor(IDS))], 1
        )
        ref = pm.get_base_model()(inputs_embeds=embeds, labels=np.concatenate(
            [np.full((2, 4), -100), IDS], axis=1))  # fmt: skip
    np.testing.assert_array_equal(out.logits.numpy(), ref.logits.numpy())
    assert float(out.loss.item()) == float(ref.loss.item())


# ---------------------------------------------------------------------------- generate
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_cached_generation_equals_recomputation(arch, kind):
    pm = get_peft_model(MAKERS[arch](), CONFIGS[kind]())
    randomize(pm)
    cached = pm.generate(IDS, max_new_tokens=5).numpy()
    uncached = pm.generate(IDS, max_new_tokens=5, use_cache=False).numpy()
    np.testing.assert_array_equal(cached, uncached)
    np.testing.assert_array_equal(cached[:, :5], IDS)
    seq = IDS  # token for token: each new token is the argmax of a full forward
    for _ in range(5):
        seq = np.concatenate([seq, logits(pm, seq)[:, -1].argmax(-1)[:, None]], axis=1)
    np.testing.assert_array_equal(cached, seq)
    sampled = pm.generate(IDS, max_new_tokens=5, do_sample=True, top_k=5, seed=1).numpy()
    assert sampled.shape == (2, 10)


# ---------------------------------------------------------------------------- training
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_only_the_prompt_trains_and_the_base_stays_bit_identical(kind):
    pm = get_peft_model(gpt2(), CONFIGS[kind]())
    base = {n: p.numpy().copy() for n, p in pm.get_base_model().named_parameters()}
    opt = AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    before = float(pm(input_ids=IDS, labels=IDS).loss.item())
    for _ in range(5):
        out = pm(input_ids=IDS, labels=IDS)
        out.loss.backward()
        for name, p in pm.named_parameters():
            assert (p.grad is not None) == name.startswith("prompt_encoder."), name
        opt.step()
        opt.zero_grad()
    assert float(pm(input_ids=IDS, labels=IDS).loss.item()) < before
    for n, p in pm.get_base_model().named_parameters():
        np.testing.assert_array_equal(p.numpy(), base[n])


# ---------------------------------------------------------------------------- files
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_save_and_load_give_the_same_logits(arch, kind, tmp_path):
    pm = get_peft_model(MAKERS[arch](), CONFIGS[kind]())
    randomize(pm)
    expected = logits(pm)
    pm.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(MAKERS[arch](), tmp_path)
    np.testing.assert_allclose(logits(loaded), expected, atol=1e-6, rtol=0)
    assert loaded.get_nb_trainable_parameters()[0] == 0
    again = PeftModel.from_pretrained(MAKERS[arch](), tmp_path, is_trainable=True)
    assert again.get_nb_trainable_parameters()[0] > 0


def test_an_adapter_for_another_width_or_depth_is_refused(tmp_path):
    get_peft_model(gpt2(n_embd=64), CONFIGS["prefix"]()).save_pretrained(tmp_path / "wide")
    get_peft_model(gpt2(n_layer=3), CONFIGS["prefix"]()).save_pretrained(tmp_path / "deep")
    with pytest.raises(ValueError, match="64"):
        PeftModel.from_pretrained(gpt2(), tmp_path / "wide")
    with pytest.raises(ValueError, match="3"):
        PeftModel.from_pretrained(gpt2(), tmp_path / "deep")


# ---------------------------------------------------------------------------- MAM
def test_mam_prefix_and_parallel_adapter_train_together(tmp_path):
    def count(config):
        return get_peft_model(gpt2(), config).get_nb_trainable_parameters()[0]

    pm = get_peft_model(gpt2(), PrefixTuningConfig(num_virtual_tokens=4), "default")
    pm.add_adapter("par_bn", ParBnConfig())
    pm.set_adapter(["default", "par_bn"])
    parts = count(PrefixTuningConfig(num_virtual_tokens=4)) + count(ParBnConfig())
    assert pm.get_nb_trainable_parameters()[0] == parts
    randomize(pm)
    both = logits(pm)
    pm.set_adapter("default")
    assert np.abs(logits(pm) - both).max() > 1e-3
    pm.set_adapter(["default", "par_bn"])
    pm.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(gpt2(), tmp_path)
    loaded.load_adapter(tmp_path / "par_bn", "par_bn")
    loaded.set_adapter(["default", "par_bn"])
    np.testing.assert_allclose(logits(loaded), both, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------- bad input
def test_bad_prompt_settings_are_refused():
    with pytest.raises(ValueError, match="num_virtual_tokens: expected an integer >= 1"):
        PromptTuningConfig(num_virtual_tokens=0)
    with pytest.raises(ValueError, match="prompt_tuning_init_text"):
        PromptTuningConfig(num_virtual_tokens=2, prompt_tuning_init="TEXT",
                           tokenizer_name_or_path="x")  # fmt: skip
    pm = get_peft_model(gpt2(n_positions=8), CONFIGS["prefix"]())
    with pytest.raises(ValueError, match="n_positions = 8"):
        pm(input_ids=IDS)  # 4 virtual + 5 real > 8
    with pytest.raises(ValueError, match="n_positions = 8"):
        pm.generate(IDS[:, :3], max_new_tokens=2)


def test_a_text_init_equals_writing_that_text(tmp_path):
    """Prompt tuning initialised from a text is, before training, the text itself written in
    front of the input: same embeddings at the same positions, so the same logits."""
    from pydoc_data.topics import topics

    from minipeft.tokenizer import Tokenizer, train_bpe_tokenizer

    corpus = [topics[k] for k in sorted(topics)[:20]]
    train_bpe_tokenizer(corpus, vocab_size=300).save_pretrained(tmp_path)
    text = "Return the topic of this text:"
    text_ids = [int(i) for i in Tokenizer.from_pretrained(tmp_path)(text)["input_ids"]]
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=300, n_positions=64, **NO_DROPOUT)
    config = PromptTuningConfig(num_virtual_tokens=len(text_ids), prompt_tuning_init="TEXT",
                                prompt_tuning_init_text=text,
                                tokenizer_name_or_path=str(tmp_path))  # fmt: skip
    pm = get_peft_model(GPT2LMHeadModel(cfg, seed=0).eval(), config)
    written = np.concatenate([np.tile(text_ids, (2, 1)), IDS], axis=1)
    np.testing.assert_array_equal(logits(pm), logits(GPT2LMHeadModel(cfg, seed=0).eval(), written))
