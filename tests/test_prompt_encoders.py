"""Prompt-learning configs and encoders: PEFT's fields, sizing from a model, trainable counts,
initialisation, the ``prompt_embeddings`` save/load (fold) round trip, and bad input.

Interop (skipped without peft / torch / transformers): the config key sets, PEFT's sizing rule on
a transformers config, and state-dict keys and outputs of PEFT's torch encoders.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minipeft import nn
from minipeft.models import GPT2Config, LlamaConfig
from minipeft.peft.config import PeftConfig
from minipeft.peft.registry import method_for, preset
from minipeft.peft.tuners.p_tuning import PromptEncoder, PromptEncoderConfig
from minipeft.peft.tuners.prefix_tuning import PrefixEncoder, PrefixTuningConfig
from minipeft.peft.tuners.prompt_learning import prepare_prompt_learning_config
from minipeft.peft.tuners.prompt_tuning import PromptEmbedding, PromptTuningConfig

COMMON = {"auto_mapping", "base_model_name_or_path", "inference_mode", "modules_to_save",
          "num_attention_heads", "num_layers", "num_transformer_submodules",
          "num_virtual_tokens", "peft_type", "peft_version", "revision", "task_type",
          "token_dim"}  # fmt: skip
PEFT_KEYS = {
    PromptTuningConfig: COMMON | {"prompt_tuning_init", "prompt_tuning_init_text",
                                  "tokenizer_name_or_path", "tokenizer_kwargs"},
    PrefixTuningConfig: COMMON | {"encoder_hidden_size", "init_weights", "prefix_projection"},
    PromptEncoderConfig: COMMON | {"encoder_dropout", "encoder_hidden_size",
                                   "encoder_num_layers", "encoder_reparameterization_type"},
}  # fmt: skip


def gpt2_config(d: int = 32, L: int = 2, H: int = 4, V: int = 50) -> GPT2Config:
    return GPT2Config(n_embd=d, n_layer=L, n_head=H, vocab_size=V)


def llama_config(L: int = 2, H: int = 4, H_kv: int = 2, D: int = 8, d: int = 32) -> LlamaConfig:
    return LlamaConfig(vocab_size=50, hidden_size=d, intermediate_size=48, num_hidden_layers=L,
                       num_attention_heads=H, num_key_value_heads=H_kv, head_dim=D)  # fmt: skip


def make(config, model_config=None, word_embeddings=None):
    """The encoder for ``config``, sized by ``model_config`` (a small GPT-2 by default)."""
    prepare_prompt_learning_config(config, model_config or gpt2_config())
    if isinstance(config, PromptTuningConfig):
        return PromptEmbedding(config, word_embeddings or nn.Embedding(50, config.token_dim))
    return (PrefixEncoder if isinstance(config, PrefixTuningConfig) else PromptEncoder)(config)


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomize(module, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for p in module.parameters():
        p.data[...] = rng.normal(0, 0.5, p.shape).astype(p.dtype)


def output(encoder, B: int = 2) -> np.ndarray:
    T = encoder.embedding.weight.shape[0]
    return encoder(np.tile(np.arange(T), (B, 1))).numpy()


KINDS = {
    "prompt": lambda: PromptTuningConfig(num_virtual_tokens=5),
    "prefix": lambda: PrefixTuningConfig(num_virtual_tokens=5),
    "prefix_projection": lambda: PrefixTuningConfig(
        num_virtual_tokens=5, prefix_projection=True, encoder_hidden_size=12
    ),
    "ptuning": lambda: PromptEncoderConfig(num_virtual_tokens=5, encoder_hidden_size=12),
}


# ------------------------------------------------------------------------- counts and shapes
@settings(max_examples=15)
@given(T=st.integers(1, 6), L=st.integers(1, 3), d=st.sampled_from([8, 16, 24]),
       h=st.sampled_from([4, 10]), B=st.integers(1, 3))  # fmt: skip
def test_counts_and_shapes_follow_the_formulas(T, L, d, h, B) -> None:
    model = gpt2_config(d, L, H=4)
    prompt = make(PromptTuningConfig(num_virtual_tokens=T), model)
    prefix = make(PrefixTuningConfig(num_virtual_tokens=T), model)
    projected = make(PrefixTuningConfig(num_virtual_tokens=T, prefix_projection=True,
                                        encoder_hidden_size=h), model)  # fmt: skip
    ptuning = make(PromptEncoderConfig(num_virtual_tokens=T, encoder_hidden_size=h), model)
    assert count(prompt) == T * d
    assert count(prefix) == T * 2 * L * d
    assert count(projected) == T * d + d * h + h + h * 2 * L * d + 2 * L * d
    assert count(ptuning) == T * d + (d * h + h) + (h * h + h) + (h * d + d)
    for encoder, width in ((prompt, d), (prefix, 2 * L * d), (projected, 2 * L * d),
                           (ptuning, d)):  # fmt: skip
        assert output(encoder, B).shape == (B, T, width)
        assert encoder.embedding_to_save().shape == (T, width)


@settings(max_examples=10)
@given(L=st.integers(1, 3), H_kv=st.sampled_from([1, 2, 4]), D=st.sampled_from([4, 8]),
       T=st.integers(1, 4), h=st.sampled_from([6, 16]))  # fmt: skip
def test_prefix_on_gqa_is_sized_by_the_key_value_heads(L, H_kv, D, T, h) -> None:
    model = llama_config(L=L, H=4, H_kv=H_kv, D=D)
    prefix = make(PrefixTuningConfig(num_virtual_tokens=T), model)
    assert count(prefix) == T * 2 * L * H_kv * D
    kv = H_kv * D
    projected = make(PrefixTuningConfig(num_virtual_tokens=T, prefix_projection=True,
                                        encoder_hidden_size=h), model)  # fmt: skip
    assert count(projected) == T * kv + kv * h + h + h * 2 * L * kv + 2 * L * kv
    prompt = make(PromptTuningConfig(num_virtual_tokens=T), model)
    assert count(prompt) == T * 32  # prompt tuning feeds the embeddings: the hidden size


def test_prefix_zero_init_starts_at_zero() -> None:
    for projection in (False, True):
        encoder = make(PrefixTuningConfig(num_virtual_tokens=3, init_weights="zero",
                                          prefix_projection=projection))  # fmt: skip
        assert not output(encoder).any()


# ------------------------------------------------------------------------- sizing from a model
def test_prepare_on_gpt2_and_gqa_llama() -> None:
    c = prepare_prompt_learning_config(PromptEncoderConfig(num_virtual_tokens=4), gpt2_config())
    assert (c.num_layers, c.token_dim, c.num_attention_heads) == (2, 32, 4)
    assert (c.num_transformer_submodules, c.encoder_hidden_size) == (1, 32)
    gqa = llama_config(L=3, H=4, H_kv=2, D=6, d=32)
    p = prepare_prompt_learning_config(PrefixTuningConfig(num_virtual_tokens=4), gqa)
    assert (p.num_layers, p.token_dim, p.num_attention_heads, p.encoder_hidden_size) == (
        3, 12, 2, 12)  # fmt: skip
    q = prepare_prompt_learning_config(PromptTuningConfig(num_virtual_tokens=4), gqa)
    assert (q.num_layers, q.token_dim, q.num_attention_heads) == (3, 32, 4)
    again = prepare_prompt_learning_config(PeftConfig.from_dict(p.to_dict()), gqa)
    assert again.to_dict() == p.to_dict()  # a saved config is sized the same way again
    s2s = PromptTuningConfig(num_virtual_tokens=4, task_type="SEQ_2_SEQ_LM")
    assert prepare_prompt_learning_config(s2s, gpt2_config()).num_transformer_submodules == 2


def test_prepare_refuses_an_adapter_for_another_model() -> None:
    made = prepare_prompt_learning_config(PromptTuningConfig(num_virtual_tokens=2),
                                          gpt2_config(d=64))  # fmt: skip
    with pytest.raises(ValueError, match="made for token_dim 64; this model has hidden size 32"):
        prepare_prompt_learning_config(PeftConfig.from_dict(made.to_dict()), gpt2_config(d=32))
    deep = PrefixTuningConfig(num_virtual_tokens=2, num_layers=4)
    with pytest.raises(ValueError, match="made for num_layers 4; this model has 2 layers"):
        prepare_prompt_learning_config(deep, gpt2_config(L=2))
    wide = PrefixTuningConfig(num_virtual_tokens=2, token_dim=32)
    with pytest.raises(ValueError, match=r"key/value width 16 \(head_dim 8 x 2"):
        prepare_prompt_learning_config(wide, llama_config(H=4, H_kv=2, D=8))
    assert wide.token_dim == 32 and wide.num_layers is None  # refused before any change


def test_prepare_matches_peft_on_transformers_configs() -> None:
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from peft.utils.other import _prepare_prompt_learning_config

    hf = {
        "gpt2": transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4),
        "llama": transformers.LlamaConfig(hidden_size=32, num_hidden_layers=3,
                                          num_attention_heads=4, num_key_value_heads=2),
        "llama_head_dim": transformers.LlamaConfig(hidden_size=32, num_hidden_layers=3,
                                                   num_attention_heads=4, num_key_value_heads=2,
                                                   head_dim=6),
    }  # fmt: skip
    ours_models = {"gpt2": gpt2_config(32, 2, 4), "llama": llama_config(3, 4, 2, 8),
                   "llama_head_dim": llama_config(3, 4, 2, 6)}  # fmt: skip
    pairs = [(peft.PromptTuningConfig, PromptTuningConfig),
             (peft.PrefixTuningConfig, PrefixTuningConfig),
             (peft.PromptEncoderConfig, PromptEncoderConfig)]  # fmt: skip
    for name, model in hf.items():
        for theirs_cls, ours_cls in pairs:
            theirs = _prepare_prompt_learning_config(theirs_cls(num_virtual_tokens=3), model)
            ours = prepare_prompt_learning_config(ours_cls(num_virtual_tokens=3),
                                                  ours_models[name])  # fmt: skip
            for key in ("num_layers", "token_dim", "num_attention_heads", "encoder_hidden_size"):
                if hasattr(ours, key):
                    assert getattr(ours, key) == getattr(theirs, key), (name, ours_cls, key)


# ------------------------------------------------------------------------- initialisation
@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    from pydoc_data.topics import topics

    from minipeft.tokenizer import train_bpe_tokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    corpus = [topics[k] for k in sorted(topics)[:40]]
    train_bpe_tokenizer(corpus, vocab_size=320).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("T", [3, 11, 40])  # shorter than the text, and repeated
def test_text_init_copies_the_text_s_embedding_rows(tokenizer_folder, T) -> None:
    from minipeft.tokenizer import Tokenizer

    text = "Classify the topic of this sentence:"
    tok = Tokenizer.from_pretrained(tokenizer_folder)
    ids = [int(i) for i in tok(text)["input_ids"]]
    expected = (ids * T)[:T]  # PEFT: cut, or repeat ceil(T / n) times and cut
    words = nn.Embedding(tok.vocab_size, 16)
    config = PromptTuningConfig(num_virtual_tokens=T, prompt_tuning_init="TEXT",
                                prompt_tuning_init_text=text,
                                tokenizer_name_or_path=str(tokenizer_folder))  # fmt: skip
    encoder = make(config, gpt2_config(d=16), words)
    np.testing.assert_array_equal(encoder.embedding.weight.numpy(),
                                  words.weight.numpy()[expected])  # fmt: skip


def test_sample_vocab_copies_vocabulary_rows_and_inference_mode_skips_init() -> None:
    words = nn.Embedding(50, 32)
    encoder = make(PromptTuningConfig(num_virtual_tokens=6, prompt_tuning_init="SAMPLE_VOCAB"),
                   word_embeddings=words)  # fmt: skip
    vocab = words.weight.numpy()
    for row in encoder.embedding.weight.numpy():
        assert (np.abs(vocab - row).max(axis=1) == 0).any()
    loading = make(PromptTuningConfig(num_virtual_tokens=6, prompt_tuning_init="SAMPLE_VOCAB",
                                      inference_mode=True), word_embeddings=words)  # fmt: skip
    for row in loading.embedding.weight.numpy():
        assert not (np.abs(vocab - row).max(axis=1) == 0).any()


def test_text_init_needs_a_local_tokenizer_folder(tmp_path) -> None:
    config = PromptTuningConfig(
        num_virtual_tokens=2,
        prompt_tuning_init="TEXT",
        prompt_tuning_init_text="hi",
        tokenizer_name_or_path="gpt2",
    )
    with pytest.raises(ValueError, match="tokenizer_name_or_path: expected a local tokenizer"):
        make(config)


# ------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("kind", list(KINDS))
def test_saved_prompt_embeddings_load_back_to_the_same_output(kind) -> None:
    source = make(KINDS[kind]())
    randomize(source, seed=1)
    saved, before = source.embedding_to_save(), output(source)
    # the output for every token, to float32 rounding: the encoder runs batched in the forward,
    # unbatched here, and BLAS may block the two products differently
    np.testing.assert_allclose(saved, before[0], rtol=1e-6, atol=1e-6)
    trainable = make(KINDS[kind]())
    loading_config = KINDS[kind]()
    loading_config.inference_mode = True  # PEFT's layout when loading for inference
    loading = make(loading_config)
    assert loading.folded and count(loading) == saved.size
    for target in (trainable, loading):
        target.load_saved(saved)
        np.testing.assert_allclose(output(target), before, rtol=1e-6, atol=1e-6)
        assert target.folded and count(target) == saved.size
        assert [n for n, _ in target.named_parameters()] == ["embedding.weight"]
        np.testing.assert_array_equal(target.embedding_to_save(), saved)
    with pytest.raises(ValueError, match="expected prompt_embeddings of shape"):
        trainable.load_saved(saved[:-1])


def test_a_folded_encoder_still_trains() -> None:
    encoder = make(KINDS["ptuning"]())
    encoder.fold()
    out = encoder(np.arange(5)[None])
    out.sum().backward()
    np.testing.assert_array_equal(encoder.embedding.weight.grad, np.ones((5, 32)))


# ------------------------------------------------------------------------- configs
def test_registry_records_and_json_round_trip() -> None:
    for cls, name, encoder in ((PromptTuningConfig, "prompt", PromptEmbedding),
                               (PrefixTuningConfig, "prefix", PrefixEncoder),
                               (PromptEncoderConfig, "ptuning", PromptEncoder)):  # fmt: skip
        method = method_for(cls)
        assert method.prefix == "prompt_encoder." and method.tuner_class() is encoder
        config = preset(name)
        assert type(config) is cls and config.num_virtual_tokens == 20
        assert config.is_prompt_learning
        data = json.loads(config.to_json_string())
        assert set(data) == PEFT_KEYS[cls]
        again = PeftConfig.from_dict(data)
        assert type(again) is cls and again.to_dict() == config.to_dict()


def test_config_keys_and_defaults_equal_peft_s() -> None:
    peft = pytest.importorskip("peft")
    for theirs_cls, ours_cls in ((peft.PromptTuningConfig, PromptTuningConfig),
                                 (peft.PrefixTuningConfig, PrefixTuningConfig),
                                 (peft.PromptEncoderConfig, PromptEncoderConfig)):  # fmt: skip
        theirs, ours = theirs_cls().to_dict(), ours_cls().to_dict()
        assert set(theirs) == set(ours) == PEFT_KEYS[ours_cls]
        for key in PEFT_KEYS[ours_cls] - {"peft_version"}:
            value = theirs[key]
            assert ours[key] == getattr(value, "value", value), (ours_cls, key)


@pytest.mark.parametrize(
    ("make_config", "match"),
    [
        (lambda: PromptTuningConfig(num_virtual_tokens=0),
         "PromptTuningConfig.num_virtual_tokens: expected an integer >= 1, found 0"),
        (lambda: PrefixTuningConfig(num_virtual_tokens=-2), "found -2"),
        (lambda: PromptEncoderConfig(num_virtual_tokens=True), "found True"),
        (lambda: PromptTuningConfig(num_virtual_tokens=2, prompt_tuning_init="TEXT",
                                    prompt_tuning_init_text="hi"), "tokenizer_name_or_path"),
        (lambda: PromptTuningConfig(num_virtual_tokens=2, prompt_tuning_init="TEXT",
                                    tokenizer_name_or_path="tok"), "prompt_tuning_init_text"),
        (lambda: PromptTuningConfig(tokenizer_kwargs={"a": 1}), "tokenizer_kwargs"),
        (lambda: PromptTuningConfig(prompt_tuning_init="ZEROS"), "one of TEXT"),
        (lambda: PromptEncoderConfig(encoder_reparameterization_type="LSTM"),
         "minipeft does not implement the LSTM prompt encoder; "
         "use encoder_reparameterization_type='MLP'"),
        (lambda: PrefixTuningConfig(init_weights="ones"), "init_weights"),
        (lambda: PrefixTuningConfig(token_dim=0), "token_dim"),
        (lambda: PromptEncoderConfig(encoder_dropout=1.0), "encoder_dropout"),
        (lambda: PromptTuningConfig(num_transformer_submodules=3), "num_transformer_submodules"),
        (lambda: make(PromptTuningConfig()), "num_virtual_tokens: expected an integer >= 1, "
                                             "found None"),
    ],
)  # fmt: skip
def test_bad_settings_name_the_field(make_config, match) -> None:
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
        make_config()


# ------------------------------------------------------------------------- PEFT's torch encoders
@pytest.mark.parametrize("kind", list(KINDS))
def test_state_dict_keys_and_outputs_equal_peft_s(kind) -> None:
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    ours = make(KINDS[kind]())
    randomize(ours, seed=2)
    theirs_cls = {PromptTuningConfig: peft.PromptTuningConfig,
                  PrefixTuningConfig: peft.PrefixTuningConfig,
                  PromptEncoderConfig: peft.PromptEncoderConfig}[type(KINDS[kind]())]  # fmt: skip
    data = {k: v for k, v in KINDS[kind]().to_dict().items() if k != "peft_version"}
    config = theirs_cls(**{**data, "num_layers": 2, "token_dim": 32, "num_attention_heads": 4,
                           "num_transformer_submodules": 1})  # fmt: skip
    if getattr(config, "encoder_hidden_size", 0) is None:
        config.encoder_hidden_size = 32  # what prepare_prompt_learning_config sets
    encoder_cls = {
        "prompt": peft.PromptEmbedding,
        "prefix": peft.PrefixEncoder,
        "prefix_projection": peft.PrefixEncoder,
        "ptuning": peft.PromptEncoder,
    }[kind]
    args = (config, torch.nn.Embedding(50, 32)) if kind == "prompt" else (config,)
    theirs = encoder_cls(*args)
    state = {k: torch.from_numpy(v.numpy().copy()) for k, v in ours.state_dict().items()}
    shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in state.items()}
    theirs.load_state_dict(state)
    with torch.no_grad():
        expected = theirs(torch.arange(5)[None].repeat(2, 1)).numpy()
    np.testing.assert_allclose(output(ours), expected, rtol=1e-5, atol=1e-5)
