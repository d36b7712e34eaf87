"""GGUF export: a tiny LLaMA written for llama.cpp, read back by gguf's reader, transformers,
llama.cpp (where llama-cpp-python is installed) and minipeft's own reader (once it exists)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from minipeft.cli import main  # noqa: E402
from minipeft.data import default_corpus  # noqa: E402
from minipeft.models import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402
from minipeft.models.gguf_export import export_gguf  # noqa: E402
from minipeft.models.gguf_layout import permute_qk, unpermute_qk  # noqa: E402
from minipeft.tokenizer import Tokenizer, train_bpe_tokenizer  # noqa: E402

H, H_KV, L = 4, 2, 2
CHATML = "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
TEMPLATE = "{% for m in messages %}" + CHATML + "{% endfor %}"
TYPES = ("f32", "f16", "q8_0")
T = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    specials = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    return train_bpe_tokenizer(default_corpus()[:5], vocab_size=320, special_tokens=specials)


def tiny(tok: Tokenizer, tied: bool = False, seed: int = 0) -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=tok.vocab_size + 4, hidden_size=64, intermediate_size=96,
                      num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=H_KV,
                      max_position_embeddings=64, rope_theta=1e5, rms_norm_eps=1e-5,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      tie_word_embeddings=tied)  # fmt: skip
    model = LlamaForCausalLM(cfg, seed=seed)
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():  # norms away from 1, so a wrong norm shows
        if name.endswith("norm.weight"):
            p.data[...] = 1 + 0.3 * rng.standard_normal(p.shape).astype(np.float32)
    return model.eval()


@pytest.fixture(scope="module")
def folder(tok: Tokenizer, tmp_path_factory) -> Path:
    """An HF folder: the tiny model, its tokenizer and a ChatML chat template."""
    out = tmp_path_factory.mktemp("llama")
    tiny(tok).save_pretrained(out)
    tok.save_pretrained(out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    (out / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": TEMPLATE}))
    return out


@pytest.fixture(scope="module")
def exported(tok: Tokenizer, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("gguf")
    model = tiny(tok)
    return {t: Path(export_gguf(model, tok, out / f"m-{t}.gguf", t, chat_template=TEMPLATE))
            for t in TYPES}  # fmt: skip


def ids_of(tok: Tokenizer) -> np.ndarray:
    return np.array([tok.encode("def area(r): return the circle's value, 3 times")])


def rounded(model: LlamaForCausalLM, dtype: str) -> LlamaForCausalLM:
    """``model`` with each 2-D weight replaced by what the file stores, dequantized:
    f16: float32(float16(w)); q8_0: dequantize(quantize(w))."""
    for _, p in model.named_parameters():
        if p.data.ndim == 2 and dtype == "f16":
            p.data[...] = p.data.astype(np.float16).astype(np.float32)
        elif p.data.ndim == 2 and dtype == "q8_0":
            p.data[...] = gguf.quants.dequantize(gguf.quants.quantize(p.data, T.Q8_0), T.Q8_0)
    return model


def reader_tensors(path: Path) -> dict[str, np.ndarray]:
    r = gguf.GGUFReader(path)
    return {t.name: gguf.quants.dequantize(t.data, t.tensor_type).reshape(t.data.shape[0], -1)
            if t.tensor_type not in (T.F32, T.F16) else np.asarray(t.data)
            for t in r.tensors}  # fmt: skip


def field(r, key):
    return r.fields[key].contents()


# ----------------------------------------------------------------------- (a) the file itself
@pytest.mark.parametrize("dtype", TYPES)
def test_names_types_and_metadata(exported, tok, dtype):
    r = gguf.GGUFReader(exported[dtype])
    per_layer = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down",
                 "attn_norm", "ffn_norm"]  # fmt: skip
    want = {"token_embd.weight", "output_norm.weight", "output.weight"}
    want |= {f"blk.{i}.{p}.weight" for i in range(L) for p in per_layer}
    assert {t.name for t in r.tensors} == want
    two_d = {"f32": T.F32, "f16": T.F16, "q8_0": T.Q8_0}[dtype]
    for t in r.tensors:
        assert t.tensor_type == (T.F32 if len(t.shape) == 1 else two_d), t.name
    V = tok.vocab_size + 4
    expect = {
        "general.architecture": "llama", "general.type": "model",
        "general.file_type": {"f32": 0, "f16": 1, "q8_0": 7}[dtype],
        "general.quantization_version": 2,
        "llama.context_length": 64, "llama.embedding_length": 64, "llama.block_count": L,
        "llama.feed_forward_length": 96, "llama.rope.dimension_count": 16,
        "llama.attention.head_count": H, "llama.attention.head_count_kv": H_KV,
        "llama.attention.key_length": 16, "llama.vocab_size": V,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.bos_token_id": tok.bos_token_id,
        "tokenizer.ggml.eos_token_id": tok.eos_token_id,
        "tokenizer.ggml.add_bos_token": False, "tokenizer.chat_template": TEMPLATE,
    }  # fmt: skip
    assert {k: field(r, k) for k in expect} == expect
    assert field(r, "llama.rope.freq_base") == pytest.approx(1e5)
    assert field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert "tokenizer.ggml.padding_token_id" not in r.fields  # the tokenizer has no pad token


def test_tokenizer_metadata(exported, tok):
    r = gguf.GGUFReader(exported["f32"])
    tokens, types = field(r, "tokenizer.ggml.tokens"), field(r, "tokenizer.ggml.token_type")
    V = tok.vocab_size
    assert tokens[:V] == [tok.id_to_token(i) for i in range(V)]
    assert tokens[V:] == [f"[PAD{i}]" for i in range(V, V + 4)]  # rows the tokenizer lacks
    assert types[:3] == [3, 3, 3] and set(types[3:V]) == {1} and types[V:] == [5] * 4
    spec = json.loads(tok.backend.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec]
    assert field(r, "tokenizer.ggml.merges") == merges and merges


def test_qk_permutation_in_the_file(exported, tok):
    ours = {k: v.numpy() for k, v in tiny(tok).state_dict().items()}
    f32, f16 = reader_tensors(exported["f32"]), reader_tensors(exported["f16"])
    for i in range(L):
        for proj, short, heads in (("q_proj", "attn_q", H), ("k_proj", "attn_k", H_KV)):
            w = ours[f"model.layers.{i}.self_attn.{proj}.weight"]
            got = f32[f"blk.{i}.{short}.weight"]
            assert np.array_equal(got, permute_qk(w, heads))
            assert np.array_equal(unpermute_qk(got, heads), w)  # bit for bit
            assert not np.array_equal(got, w)
            half = f16[f"blk.{i}.{short}.weight"]
            assert half.dtype == np.float16
            assert np.array_equal(unpermute_qk(half, heads), w.astype(np.float16))
        v = ours[f"model.layers.{i}.self_attn.v_proj.weight"]
        assert np.array_equal(f32[f"blk.{i}.attn_v.weight"], v)  # v is not permuted
    assert np.array_equal(f32["output_norm.weight"], ours["model.norm.weight"])


def test_q8_0_blocks_are_the_quantized_weights(exported, tok):
    ours = {k: v.numpy() for k, v in tiny(tok).state_dict().items()}
    q8 = reader_tensors(exported["q8_0"])
    w = ours["model.layers.0.mlp.down_proj.weight"]
    want = gguf.quants.dequantize(gguf.quants.quantize(w, T.Q8_0), T.Q8_0)
    assert np.array_equal(q8["blk.0.ffn_down.weight"], want)
    assert 0 < np.abs(want - w).max() <= np.abs(w).max() / 127  # half a step per block, at most


def test_tied_embeddings_write_no_output(tok, tmp_path):
    path = export_gguf(tiny(tok, tied=True), tok, tmp_path / "tied.gguf")
    names = {t.name for t in gguf.GGUFReader(path).tensors}
    assert "token_embd.weight" in names and "output.weight" not in names


def test_q8_0_falls_back_to_f16_for_rows_not_of_32(tok, tmp_path):
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=48, intermediate_size=64,
                      num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2)  # fmt: skip
    path = export_gguf(LlamaForCausalLM(cfg, seed=0), tok, tmp_path / "odd.gguf", "q8_0")
    kinds = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    assert kinds["blk.0.attn_q.weight"] == T.F16  # rows of 48
    assert kinds["blk.0.ffn_down.weight"] == T.Q8_0  # rows of 64


# ------------------------------------------------------------------- (b) transformers loads it
def hf_logits(path: Path, ids: np.ndarray) -> np.ndarray:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


@pytest.mark.parametrize("dtype, tol", [("f32", 1e-5), ("f16", 2e-3), ("q8_0", 3e-2)])
def test_transformers_logits_equal_ours(exported, tok, dtype, tol):
    ids = ids_of(tok)
    theirs = hf_logits(exported[dtype], ids)
    ours = tiny(tok)(input_ids=ids).logits.numpy()
    assert np.abs(theirs - ours).max() <= tol
    same_weights = rounded(tiny(tok), dtype)(input_ids=ids).logits.numpy()
    assert np.abs(theirs - same_weights).max() <= 1e-5  # the format's rounding, and nothing else
    if dtype != "f32":
        assert np.abs(theirs - ours).max() > 1e-6  # the rounding is real


def test_transformers_loads_tied_embeddings(tok, tmp_path):
    model = tiny(tok, tied=True)
    path = Path(export_gguf(model, tok, tmp_path / "tied.gguf"))
    ids = ids_of(tok)
    assert np.abs(hf_logits(path, ids) - model(input_ids=ids).logits.numpy()).max() <= 1e-4


# ------------------------------------------------------------- (c) the CLI, an adapter merged in
def test_cli_exports_a_folder(folder, tok, tmp_path, capsys):
    out = tmp_path / "cli.gguf"
    assert main(["export-gguf", "--model", str(folder), "--out", str(out), "--type", "f16"]) == 0
    assert str(out) in capsys.readouterr().out
    r = gguf.GGUFReader(out)
    assert field(r, "tokenizer.chat_template") == TEMPLATE  # from tokenizer_config.json
    assert field(r, "general.file_type") == 1
    assert field(r, "general.name") == folder.name


def test_cli_merges_an_adapter(folder, tok, tmp_path):
    from minipeft.models import AutoModelForCausalLM  # noqa: PLC0415
    from minipeft.peft import LoraConfig, get_peft_model  # noqa: PLC0415

    base = AutoModelForCausalLM.from_pretrained(folder)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "down_proj"],
                     init_lora_weights=False)  # fmt: skip
    peft_model = get_peft_model(base, cfg).eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = ids_of(tok)
    unmerged = peft_model(input_ids=ids).logits.numpy()
    plain = AutoModelForCausalLM.from_pretrained(folder)(input_ids=ids).logits.numpy()
    assert np.abs(unmerged - plain).max() > 1e-2  # the adapter changes the output
    out = tmp_path / "merged.gguf"
    argv = ["export-gguf", "--model", str(folder), "--adapter", str(tmp_path / "adapter"),
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert np.abs(hf_logits(out, ids) - unmerged).max() <= 1e-4


# ------------------------------------------------------------------------------ (d) bad input
def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_cli_refuses_gpt2(tok, tmp_path, capsys):
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=tok.vocab_size))
    model.save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    out = tmp_path / "g.gguf"
    assert main(["export-gguf", "--model", str(tmp_path / "gpt2"), "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "LlamaForCausalLM" in line and "GPT2LMHeadModel" in line
    assert not out.exists()
    with pytest.raises(ValueError, match="LlamaForCausalLM"):
        export_gguf(model, tok, out)


def test_cli_refuses_a_bad_type(folder, tmp_path, capsys):
    out = tmp_path / "x.gguf"
    assert main(["export-gguf", "--model", str(folder), "--out", str(out), "--type", "q4"]) == 2
    line = one_error_line(capsys)
    assert "f32, f16, q8_0" in line and "'q4'" in line
    assert not out.exists()


def test_cli_refuses_an_input_as_out(folder, tmp_path, capsys):
    weights = folder / "model.safetensors"
    before = weights.read_bytes()
    for out in (folder, weights):
        assert main(["export-gguf", "--model", str(folder), "--out", str(out)]) == 2
        assert "the base model" in one_error_line(capsys)
    assert weights.read_bytes() == before


def test_existing_out_needs_overwrite(folder, tmp_path, capsys):
    out = tmp_path / "y.gguf"
    out.write_bytes(b"keep me")
    assert main(["export-gguf", "--model", str(folder), "--out", str(out)]) == 2
    assert "--overwrite" in one_error_line(capsys) and out.read_bytes() == b"keep me"
    assert main(["export-gguf", "--model", str(folder), "--out", str(out), "--overwrite"]) == 0
    assert out.read_bytes()[:4] == b"GGUF"


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failure_midway_leaves_nothing(tok, tmp_path, monkeypatch, exc):
    out = tmp_path / "half.gguf"
    out.write_bytes(b"old")
    written = []

    def fail(self, *a, **kw):  # the header and metadata are on disk by now
        written.append(os.path.getsize(self.path))
        raise exc

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail)
    with pytest.raises(type(exc)):
        export_gguf(tiny(tok), tok, out, "q8_0", overwrite=True)
    assert written and written[0] > 0
    assert out.read_bytes() == b"old"  # the old file untouched
    assert sorted(os.listdir(tmp_path)) == ["half.gguf"]  # no temporary left behind


# ----------------------------------------------------------------- (e) llama.cpp, our reader
def test_llama_cpp_runs_the_export(exported, tok):
    llama_cpp = pytest.importorskip("llama_cpp")
    ids = [int(i) for i in ids_of(tok)[0]]
    llm = llama_cpp.Llama(model_path=str(exported["f32"]), n_ctx=64, logits_all=True,
                          verbose=False, n_threads=2)  # fmt: skip
    llm.eval(ids)
    theirs = np.asarray(llm.scores[: len(ids)])
    model = tiny(tok)
    ours = model(input_ids=np.array([ids])).logits.numpy()[0]
    assert np.abs(theirs - ours).max() <= 1e-3
    llm.reset()
    greedy = []
    for t in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        greedy.append(int(t))
        if len(greedy) == 8:
            break
    mine = model.generate(np.array([ids]), max_new_tokens=8, do_sample=False, eos_token_id=None)
    assert greedy == [int(t) for t in np.asarray(mine)[0, len(ids) :]]


@pytest.mark.parametrize("dtype, tol", [("f32", 1e-5), ("f16", 1e-4), ("q8_0", 1e-4)])
def test_minipeft_reads_the_export_back(exported, tok, dtype, tol):
    pytest.importorskip("minipeft.models.gguf")
    from minipeft.models import AutoModelForCausalLM  # noqa: PLC0415

    ids = ids_of(tok)
    back = AutoModelForCausalLM.from_pretrained(exported[dtype])(input_ids=ids).logits.numpy()
    want = rounded(tiny(tok), dtype)(input_ids=ids).logits.numpy()
    assert np.abs(back - want).max() <= tol
