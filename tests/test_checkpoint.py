"""Checkpoint and config interop: safetensors files/folders, HF key layouts, config.json.

The interop tests build tiny random transformers models, so they skip without torch/transformers;
the file-format and error-path tests need only NumPy and safetensors.
"""

import json
import os
import struct

import numpy as np
import pytest

from minipeft.models.checkpoint import (
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    check_state_dict,
    hf_to_minipeft_state_dict,
    load_safetensors,
    load_state_dict_from_folder,
    minipeft_to_hf_state_dict,
    parse_size,
    safetensors_metadata,
    save_safetensors,
    save_state_dict_to_folder,
)
from minipeft.models.config import config_from_dict, load_config
from minipeft.models.gpt2_config import GPT2Config
from minipeft.models.llama_config import LlamaConfig

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _rand_sd(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "a.weight": rng.standard_normal((4, 3)).astype(np.float32),
        "b.bias": rng.standard_normal(5).astype(np.float64),
        "c.ids": np.arange(6, dtype=np.int64).reshape(2, 3),
        "d.half": rng.standard_normal((2, 2)).astype(np.float16),
        "e.mask": np.array([True, False]),
    }


def _assert_sd_equal(a, b):
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _write_raw_safetensors(path, header: dict, data: bytes):
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + data)


# ---------------------------------------------------------------------------- single files
def test_safetensors_round_trip_and_metadata(tmp_path):
    sd = _rand_sd()
    sd["f.strided"] = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]  # not contiguous
    path = tmp_path / "x.safetensors"
    save_safetensors(path, sd)
    _assert_sd_equal(load_safetensors(path), sd)
    assert safetensors_metadata(path) == {"format": "pt"}
    save_safetensors(path, sd, metadata={"note": "hi"})
    assert safetensors_metadata(path) == {"format": "pt", "note": "hi"}
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]  # no temp files left


def test_bf16_by_hand(tmp_path):
    # bfloat16 = top 16 bits of float32; these values are exactly representable.
    values = np.array([[1.0, -2.5], [0.15625, 2.0**100]], dtype=np.float32)
    bits = (values.view(np.uint32) >> 16).astype("<u2")
    other = np.arange(3, dtype="<i4")
    header = {
        "__metadata__": {"format": "pt"},
        "w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]},
        "i": {"dtype": "I32", "shape": [3], "data_offsets": [8, 20]},
    }
    path = tmp_path / "bf16.safetensors"
    _write_raw_safetensors(path, header, bits.tobytes() + other.tobytes())
    out = load_safetensors(path)
    assert out["w"].dtype == np.float32 and out["w"].shape == (2, 2)
    np.testing.assert_array_equal(out["w"], values)
    np.testing.assert_array_equal(out["i"], other)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p.write_bytes(b"\x01\x02"), "at least 8 bytes"),
        (lambda p: p.write_bytes(struct.pack("<Q", 1000) + b"{}"), "header claims 1000 bytes"),
        (lambda p: p.write_bytes(struct.pack("<Q", 3) + b"{x:"), "not valid JSON"),
        (
            lambda p: _write_raw_safetensors(
                p, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8
            ),
            "truncated safetensors file: tensor 'w'",
        ),
        (
            lambda p: _write_raw_safetensors(
                p, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}, b"\0" * 12
            ),
            "needs 16 bytes",
        ),
        (
            lambda p: _write_raw_safetensors(
                p, {"w": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}, b"\0"
            ),
            "has dtype 'F8_E4M3'",
        ),
        (lambda p: _write_raw_safetensors(p, {"w": {"shape": [1]}}, b""), "needs dtype, shape"),
    ],
)
def test_corrupt_files_name_the_file(tmp_path, make, match):
    path = tmp_path / "bad.safetensors"
    make(path)
    with pytest.raises(ValueError, match=match) as info:
        load_safetensors(path)
    assert str(path) in str(info.value)


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_safetensors(tmp_path / "nope.safetensors")
    with pytest.raises(TypeError, match="'w': expected a host numpy array, found list"):
        save_safetensors(tmp_path / "x.safetensors", {"w": [1.0, 2.0]})


# --------------------------------------------------------------------------------- folders
def test_parse_size():
    assert parse_size(123) == 123
    assert parse_size("200MB") == 200 * 10**6
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("1GiB") == 2**30
    assert parse_size("10kb") == 10_000
    for bad in ("lots", "5XB", 0, -1, True, "0MB"):
        with pytest.raises(ValueError, match="max_shard_size: expected a positive"):
            parse_size(bad)


def test_sharded_save_load_and_stale_cleanup(tmp_path):
    rng = np.random.default_rng(1)
    sd = {f"layer{i}.weight": rng.standard_normal((10, 10)).astype(np.float32) for i in range(5)}
    sd["big"] = np.zeros((40, 40), np.float32)  # 6400 bytes > the limit: a shard of its own
    written = save_state_dict_to_folder(tmp_path, sd, max_shard_size=900)
    names = sorted(os.listdir(tmp_path))
    # 400-byte tensors, two per 900-byte shard: [0, 1] [2, 3] [4] [big]
    assert names == [f"model-{i:05d}-of-00004.safetensors" for i in range(1, 5)] + [
        SAFE_WEIGHTS_INDEX_NAME
    ]
    assert len(written) == 5
    index = json.loads((tmp_path / SAFE_WEIGHTS_INDEX_NAME).read_text())
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in sd.values())
    assert index["weight_map"]["big"] == "model-00004-of-00004.safetensors"
    _assert_sd_equal(load_state_dict_from_folder(tmp_path), sd)
    # Re-saving as one file removes the shards and the index (and vice versa).
    save_state_dict_to_folder(tmp_path, sd)
    assert os.listdir(tmp_path) == [SAFE_WEIGHTS_NAME]
    _assert_sd_equal(load_state_dict_from_folder(tmp_path), sd)
    save_state_dict_to_folder(tmp_path, sd, max_shard_size="2KB")
    assert SAFE_WEIGHTS_NAME not in os.listdir(tmp_path)
    _assert_sd_equal(load_state_dict_from_folder(tmp_path), sd)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint folder not found"):
        load_state_dict_from_folder(tmp_path / "missing")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(FileNotFoundError) as info:
        load_state_dict_from_folder(tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg and SAFE_WEIGHTS_NAME in msg and SAFE_WEIGHTS_INDEX_NAME in msg
    assert "pytorch_model.bin is not supported" in msg
    # An index naming a missing shard, a key absent from its shard, a path outside the folder.
    save_safetensors(tmp_path / "s1.safetensors", {"a": np.zeros(2, np.float32)})
    index = tmp_path / SAFE_WEIGHTS_INDEX_NAME
    for weight_map, match in [
        ({"a": "s1.safetensors", "b": "s2.safetensors"}, "lists shard 's2.safetensors'"),
        ({"a": "s1.safetensors", "b": "s1.safetensors"}, "missing from their shards: b"),
        ({"a": "../s1.safetensors"}, "plain file names"),
    ]:
        index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            load_state_dict_from_folder(tmp_path)
    index.write_text("{}")
    with pytest.raises(ValueError, match="weight_map"):
        load_state_dict_from_folder(tmp_path)


# ------------------------------------------------------------------------ key conversions
def test_gpt2_old_style_keys_buffers_and_tying():
    rng = np.random.default_rng(2)
    old = {  # keys as an old transformers version (or a bare GPT2Model) wrote them
        "wte.weight": rng.standard_normal((10, 4)).astype(np.float32),
        "wpe.weight": rng.standard_normal((8, 4)).astype(np.float32),
        "h.0.attn.bias": np.tril(np.ones((1, 1, 8, 8), np.float32)),
        "h.0.attn.masked_bias": np.array(-1e4, np.float32),
        "h.0.attn.c_attn.weight": rng.standard_normal((4, 12)).astype(np.float32),
        "h.0.attn.c_attn.bias": rng.standard_normal(12).astype(np.float32),
        "h.0.mlp.c_proj.weight": rng.standard_normal((16, 4)).astype(np.float32),
        "ln_f.weight": np.ones(4, np.float32),
    }
    sd = hf_to_minipeft_state_dict(old, "gpt2", tie_word_embeddings=True)
    assert set(sd) == {
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.0.attn.c_attn.bias",
        "transformer.h.0.mlp.c_proj.weight",
        "transformer.ln_f.weight",
        "lm_head.weight",
    }
    assert sd["transformer.h.0.attn.c_attn.weight"].shape == (12, 4)  # (out, in)
    np.testing.assert_array_equal(
        sd["transformer.h.0.mlp.c_proj.weight"], old["h.0.mlp.c_proj.weight"].T
    )
    assert sd["lm_head.weight"] is sd["transformer.wte.weight"]
    assert "lm_head.weight" not in hf_to_minipeft_state_dict(
        old, "gpt2", tie_word_embeddings=True, restore_lm_head=False
    )
    back = minipeft_to_hf_state_dict(sd, "gpt2", tie_word_embeddings=True)
    assert "lm_head.weight" not in back
    np.testing.assert_array_equal(
        back["transformer.h.0.attn.c_attn.weight"], old["h.0.attn.c_attn.weight"]
    )


def test_conversion_errors():
    emb = np.ones((10, 4), np.float32)
    sd = {"model.embed_tokens.weight": emb, "lm_head.weight": emb * 2}
    with pytest.raises(ValueError, match="expected lm_head.weight to equal model.embed_tokens"):
        minipeft_to_hf_state_dict(sd, "llama", tie_word_embeddings=True)
    assert "lm_head.weight" in minipeft_to_hf_state_dict(sd, "llama", tie_word_embeddings=False)
    with pytest.raises(ValueError, match="model_type: expected one of \\['gpt2', 'llama'\\]"):
        hf_to_minipeft_state_dict(sd, "bert", tie_word_embeddings=False)
    with pytest.raises(ValueError, match="both with and without the prefix"):
        hf_to_minipeft_state_dict(
            {"norm.weight": emb, "model.norm.weight": emb}, "llama", tie_word_embeddings=False
        )


def test_check_state_dict_lists_everything():
    expected = {"a": (2, 3), "b": (4,), "c": (1,)}
    found = {"a": np.zeros((3, 2)), "b": np.zeros(4), "z": np.zeros(1)}
    check_state_dict({"b": (4,)}, {"b": np.zeros(4)}, "ok")
    with pytest.raises(ValueError) as info:
        check_state_dict(expected, found, "/ckpt/folder")
    msg = str(info.value)
    assert msg.startswith("/ckpt/folder: checkpoint does not match the model")
    assert "1 missing keys: c" in msg and "1 unexpected keys: z" in msg
    assert "a (expected (2, 3), found (3, 2))" in msg
    with pytest.raises(ValueError) as info:  # with the shard of each key found
        check_state_dict(expected, found, "index.json in f", where={"a": "s1", "z": "s2"})
    msg = str(info.value)
    assert "a (expected (2, 3), found (3, 2)) [in s1]" in msg and "z [in s2]" in msg


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_load_errors_name_the_weights_file(tmp_path, sharded):
    from minipeft.models import GPT2LMHeadModel

    cfg = GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=50, n_positions=16)
    model = GPT2LMHeadModel(cfg, seed=0)
    model.save_pretrained(tmp_path, max_shard_size="2KB" if sharded else "5GB")
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_layer": 1}))  # h.1 unexpected
    with pytest.raises(ValueError) as info:
        GPT2LMHeadModel.from_pretrained(tmp_path)
    msg = str(info.value)
    if not sharded:
        assert msg.startswith(f"{SAFE_WEIGHTS_NAME} in {tmp_path}: checkpoint does not match")
        assert "[in " not in msg
    else:
        assert msg.startswith(f"{SAFE_WEIGHTS_INDEX_NAME} in {tmp_path}: checkpoint does not")
        index = json.loads((tmp_path / SAFE_WEIGHTS_INDEX_NAME).read_text())["weight_map"]
        key = "transformer.h.1.mlp.c_fc.weight"
        assert f"{key} [in {index[key]}]" in msg  # the shard holding the unexpected tensor


# -------------------------------------------------------------------------------- configs
def test_config_round_trip_keeps_unknown_keys(tmp_path):
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, num_labels=3)
    cfg.extra["my_key"] = {"nested": [1, 2]}
    cfg.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["architectures"] == ["GPT2LMHeadModel"] and "num_labels" not in saved
    assert saved["id2label"] == {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}
    loaded = load_config(tmp_path)
    assert loaded == cfg and loaded.num_labels == 3 and loaded.id2label[2] == "LABEL_2"
    assert (loaded.hidden_size, loaded.num_attention_heads, loaded.head_dim) == (32, 4, 8)
    hf_style = {
        "model_type": "gpt2",
        "hidden_size": 48,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.40.0",
        "n_ctx": 1024,
        "output_attentions": False,
    }
    cfg2 = config_from_dict(hf_style)
    assert cfg2.n_embd == 48 and cfg2.dtype == "bfloat16"
    assert cfg2.extra == {"n_ctx": 1024, "output_attentions": False}
    out = cfg2.to_dict()
    assert out["dtype"] == "bfloat16" and "torch_dtype" not in out and out["n_ctx"] == 1024
    assert "transformers_version" not in out
    assert LlamaConfig(hidden_size=64, num_attention_heads=4).architectures == ["LlamaForCausalLM"]
    assert LlamaConfig().to_dict()["architectures"] == ["LlamaForCausalLM"]


def test_llama_rope_forms():
    base = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4}
    v4 = config_from_dict({**base, "rope_theta": 5e5, "rope_scaling": None})
    v5 = config_from_dict({**base, "rope_parameters": {"rope_theta": 5e5, "rope_type": "default"}})
    assert v4.rope_theta == v5.rope_theta == 5e5 and v4 == v5
    assert v4.num_key_value_heads == 4 and v4.head_dim == 16
    d = v5.to_dict()
    assert d["rope_parameters"] == {"rope_theta": 5e5, "rope_type": "default"}
    assert d["rope_theta"] == 5e5
    assert LlamaConfig.from_dict(d) == v5
    bad = [
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling: expected rope_type"),
        ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}}, "found 'llama3'"),
        ({"rope_parameters": {"rope_theta": 1e4, "partial_rotary_factor": 0.5}}, "partial_rot"),
        ({"rope_parameters": {"rope_theta": 1e4, "factor": 2.0}}, "unsupported keys \\['factor"),
        ({"rope_theta": 1e4, "rope_parameters": {"rope_theta": 1e6}}, "expected one value"),
    ]
    for extra, match in bad:
        with pytest.raises(ValueError, match=match):
            config_from_dict({**base, **extra}, source="cfg.json")


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (
            GPT2Config,
            {"n_embd": 30, "n_head": 4},
            "GPT2Config.n_embd: expected a multiple of n_head = 4, found 30",
        ),
        (GPT2Config, {"n_layer": 0}, "GPT2Config.n_layer: expected a positive int, found 0"),
        (GPT2Config, {"vocab_size": "10"}, "vocab_size: expected a positive int, found '10'"),
        (GPT2Config, {"attn_pdrop": 1.5}, "attn_pdrop: expected a probability"),
        (GPT2Config, {"activation_function": "mish"}, "activation_function: expected one of"),
        (GPT2Config, {"add_cross_attention": True}, "add_cross_attention: expected False"),
        (
            GPT2Config,
            {"num_labels": 2, "id2label": {0: "a", 1: "b", 2: "c"}},
            "num_labels: expected len",
        ),
        (
            GPT2Config,
            {"id2label": {0: "a"}, "label2id": {"b": 0}},
            "label2id: expected the inverse",
        ),
        (GPT2Config, {"problem_type": "ranking"}, "problem_type: expected one of"),
        (
            LlamaConfig,
            {"num_attention_heads": 4, "num_key_value_heads": 3, "hidden_size": 32},
            "num_attention_heads: expected a multiple of num_key_value_heads = 3, found 4",
        ),
        (
            LlamaConfig,
            {"hidden_size": 30, "num_attention_heads": 4},
            "hidden_size: expected a multiple",
        ),
        (
            LlamaConfig,
            {"hidden_size": 30, "num_attention_heads": 2, "head_dim": 15},
            "head_dim: expected an even",
        ),
        (LlamaConfig, {"rms_norm_eps": 0}, "rms_norm_eps: expected a positive number"),
        (LlamaConfig, {"eos_token_id": [1, -2]}, "eos_token_id: expected None or a non-negative"),
    ],
)
def test_config_validation(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_config_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json found"):
        load_config(tmp_path)
    path = tmp_path / "config.json"
    for content, match in [
        ("{not json", "not valid JSON"),
        ('{"n_embd": 8}', "no 'model_type' key; supported model types: gpt2, llama"),
        ('{"model_type": "bert"}', "unsupported model_type 'bert'; supported model types"),
        ('{"model_type": "gpt2", "n_embd": 30}', "GPT2Config.n_embd: expected a multiple"),
    ]:
        path.write_text(content)
        with pytest.raises(ValueError, match=match) as info:
            load_config(tmp_path)
        assert str(path) in str(info.value)
    with pytest.raises(ValueError, match="expects model_type 'gpt2', found 'llama'"):
        GPT2Config.from_dict({"model_type": "llama"})
    with pytest.raises(ValueError, match="alias of 'n_embd' but they differ"):
        GPT2Config.from_dict({"n_embd": 32, "hidden_size": 64})
    with pytest.raises(ValueError, match="extra: expected no keys that are config fields"):
        GPT2Config(extra={"n_embd": 3})


# ------------------------------------------------------------------- transformers interop
GPT2_KW = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=64)
LLAMA_KW = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=100,
    max_position_embeddings=64,
    rope_theta=5e4,
)


def _hf_model(kind, tied=None, seq_cls=False):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(**GPT2_KW, num_labels=3 if seq_cls else 2)
        cls = (
            transformers.GPT2ForSequenceClassification if seq_cls else transformers.GPT2LMHeadModel
        )
        return cls(cfg)
    cfg = transformers.LlamaConfig(**LLAMA_KW, tie_word_embeddings=tied)
    return transformers.LlamaForCausalLM(cfg)


def _torch_params(model, model_type):
    """HF state dict as numpy in minipeft's layout (GPT-2 Conv1D weights transposed)."""
    out = {}
    for k, v in model.state_dict().items():
        a = v.detach().float().numpy()
        out[k] = a.T.copy() if model_type == "gpt2" and k.endswith(CONV1D) else a
    return out


CASES = [
    ("gpt2", None, False),
    ("gpt2", None, True),
    ("llama", True, False),
    ("llama", False, False),
]


@pytest.mark.parametrize("kind, tied, seq_cls", CASES)
def test_hf_to_minipeft(tmp_path, kind, tied, seq_cls):
    model = _hf_model(kind, tied, seq_cls)
    model.save_pretrained(tmp_path)
    cfg = load_config(tmp_path)
    assert type(cfg) is {"gpt2": GPT2Config, "llama": LlamaConfig}[kind]
    hf_cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (32, 2, 100)
    assert cfg.tie_word_embeddings == hf_cfg.tie_word_embeddings and cfg.dtype == "float32"
    assert cfg.architectures == [type(model).__name__] and cfg.num_labels == hf_cfg.num_labels
    if kind == "llama":
        assert (cfg.num_key_value_heads, cfg.head_dim, cfg.rope_theta) == (2, 8, 5e4)
    raw = load_state_dict_from_folder(tmp_path)
    # transformers 5 omits lm_head.weight from the file of a tied model.
    assert ("lm_head.weight" in raw) == (kind == "llama" and not tied)
    sd = hf_to_minipeft_state_dict(
        raw, cfg.model_type, cfg.tie_word_embeddings, restore_lm_head=not seq_cls
    )
    _assert_sd_equal(sd, _torch_params(model, kind))


@pytest.mark.parametrize("kind, tied, seq_cls", CASES)
@pytest.mark.parametrize("max_shard_size", ["5GB", "20KB"])
def test_minipeft_to_hf(tmp_path, kind, tied, seq_cls, max_shard_size):
    torch = pytest.importorskip("torch")
    model = _hf_model(kind, tied, seq_cls)
    ours = {k: v * 1.5 + 0.25 for k, v in _torch_params(model, kind).items()}  # new values
    emb = "transformer.wte.weight" if kind == "gpt2" else "model.embed_tokens.weight"
    if "lm_head.weight" in ours and model.config.tie_word_embeddings:
        ours["lm_head.weight"] = ours[emb]
    cfg_dict = model.config.to_dict()
    cfg_dict["architectures"] = [type(model).__name__]
    cfg = config_from_dict(cfg_dict)
    cfg.save_pretrained(tmp_path)
    hf_sd = minipeft_to_hf_state_dict(ours, cfg.model_type, cfg.tie_word_embeddings)
    written = save_state_dict_to_folder(tmp_path, hf_sd, max_shard_size=max_shard_size)
    assert (len(written) > 1) == (max_shard_size == "20KB")
    loaded, info = type(model).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"] and not info["error_msgs"]
    with torch.no_grad():
        _assert_sd_equal(_torch_params(loaded, kind), ours)
    # And back: our loader reads the folder we wrote.
    again = hf_to_minipeft_state_dict(
        load_state_dict_from_folder(tmp_path),
        cfg.model_type,
        cfg.tie_word_embeddings,
        restore_lm_head=not seq_cls,
    )
    _assert_sd_equal(again, ours)


def test_hf_config_reads_our_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    LlamaConfig(**LLAMA_KW, id2label={0: "neg", 1: "pos", 2: "neu"}).save_pretrained(tmp_path)
    hf = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(hf).__name__ == "LlamaConfig"
    assert hf.rope_parameters["rope_theta"] == 5e4 and hf.num_key_value_heads == 2
    assert hf.num_labels == 3 and hf.id2label[2] == "neu" and hf.label2id["pos"] == 1
    ours = config_from_dict(hf.to_dict())  # HF's full to_dict, incl. its base-class keys
    assert ours.rope_theta == 5e4 and ours.id2label == {0: "neg", 1: "pos", 2: "neu"}
    assert "return_dict" in ours.extra
    hf_gpt2 = transformers.GPT2Config().to_dict()
    ours_gpt2 = GPT2Config().to_dict()
    for key, value in ours_gpt2.items():  # every default we write matches transformers'
        if key not in ("architectures", "extra"):
            assert hf_gpt2[key] == value, key


def test_hf_sharded_and_bf16_folders(tmp_path):
    torch = pytest.importorskip("torch")
    model = _hf_model("llama", tied=False)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / SAFE_WEIGHTS_INDEX_NAME).is_file()
    sd = hf_to_minipeft_state_dict(
        load_state_dict_from_folder(tmp_path / "sharded"), "llama", False
    )
    _assert_sd_equal(sd, _torch_params(model, "llama"))
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert load_config(tmp_path / "bf16").dtype == "bfloat16"
    sd = load_state_dict_from_folder(tmp_path / "bf16")
    _assert_sd_equal(sd, _torch_params(model, "llama"))  # .float() of the bf16 params
