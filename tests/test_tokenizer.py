"""Byte-level BPE tokenizer: training, lossless round trips, batching, files, HF interop."""

import json
import os
from pydoc_data.topics import topics

import numpy as np
import pytest

from minipeft.tokenizer import Tokenizer, train_bpe_tokenizer

CORPUS = [topics[k] for k in sorted(topics)]
SAMPLES = [
    "The quick brown fox jumps over the lazy dog.",
    "def f(x):\n    return x ** 2  # square\n\n\n",
    "   leading spaces, trailing tabs\t\t",
    "Unicode: héllo wörld — naïve café, 日本語のテキスト, emoji 🙂👍🏽",
    "whitespace   runs\n\n\n   and \r\n line endings",
    "numbers 3.14159 and 1,000,000 and 0x1F",
    "",
    topics["assert"][:2000],
]


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(CORPUS, vocab_size=1000)


def test_training_basics_and_special_tokens(tok):
    assert tok.vocab_size == len(tok) == 1000
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 0
    assert tok.bos_token == tok.eos_token
    assert tok.pad_token is None and tok.pad_token_id == tok.eos_token_id  # GPT-2 convention
    assert tok.id_to_token(tok.eos_token_id) == "<|endoftext|>"
    assert "Tokenizer(vocab_size=1000" in repr(tok)


def test_training_is_deterministic(tok):
    again = train_bpe_tokenizer(CORPUS, vocab_size=1000)
    assert again.backend.to_str() == tok.backend.to_str()


def test_training_rejects_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size must be >= 256"):
        train_bpe_tokenizer(CORPUS, vocab_size=100)
    with pytest.raises(ValueError, match="at least one non-empty text"):
        train_bpe_tokenizer([], vocab_size=300)
    with pytest.raises(TypeError, match="must be strings"):
        train_bpe_tokenizer(["ok", 3], vocab_size=300)


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_is_exact(tok, text):
    ids = tok.encode(text)
    assert all(isinstance(i, int) for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode(np.asarray(ids, dtype=np.int64)) == text


def test_round_trip_whole_document_and_compression(tok):
    text = CORPUS[5]
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode("utf-8")) / 2  # merges learned: well under a byte each


def test_special_tokens_skipped_on_decode(tok):
    ids = tok.encode("a<|endoftext|>b")
    assert tok.eos_token_id in ids
    assert tok.decode(ids) == "ab"
    assert tok.decode(ids, skip_special_tokens=False) == "a<|endoftext|>b"


def test_batch_right_padding(tok):
    texts = ["short", "a somewhat longer sentence here", "mid length text"]
    lengths = [len(tok.encode(t)) for t in texts]
    out = tok(texts, padding=True)
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids.shape == mask.shape == (3, max(lengths))
    np.testing.assert_array_equal(mask.sum(1), lengths)
    for row, m, t, n in zip(ids, mask, texts, lengths):
        assert list(row[:n]) == tok.encode(t)
        assert (m[:n] == 1).all() and (m[n:] == 0).all()
        assert (row[n:] == tok.pad_token_id).all()
    assert tok.batch_decode(ids) == texts


def test_batch_left_padding(tok):
    texts = ["one", "two three four five"]
    lengths = [len(tok.encode(t)) for t in texts]
    out = tok(texts, padding="longest", padding_side="left")
    ids, mask = out["input_ids"], out["attention_mask"]
    T = max(lengths)
    for row, m, t, n in zip(ids, mask, texts, lengths):
        assert list(row[T - n :]) == tok.encode(t)
        assert (m[: T - n] == 0).all() and (m[T - n :] == 1).all()
    assert (mask[:, -1] == 1).all()  # the last position is always real: generation continues it


def test_max_length_padding_and_truncation(tok):
    texts = ["a b c d e f g h i j k l m n o p", "x"]
    out = tok(texts, padding="max_length", truncation=True, max_length=6)
    assert out["input_ids"].shape == (2, 6)
    assert list(out["input_ids"][0]) == tok.encode(texts[0])[:6]
    assert list(out["attention_mask"][1]) == [1] * len(tok.encode("x")) + [0] * (
        6 - len(tok.encode("x"))
    )
    out = tok(texts, padding=True, truncation=True, max_length=4)
    assert out["input_ids"].shape == (2, 4)
    ragged = tok(texts, truncation=True, max_length=3)
    assert [len(r) for r in ragged["input_ids"]] == [3, 1]


def test_model_max_length_is_the_default_truncation(tmp_path):
    base = train_bpe_tokenizer(CORPUS[:20], vocab_size=400)
    tok = Tokenizer(base.backend, model_max_length=8)
    assert tok(["word " * 50], truncation=True)["input_ids"][0].shape == (8,)
    tok.save_pretrained(tmp_path)
    assert Tokenizer.from_pretrained(tmp_path).model_max_length == 8


def test_unpadded_outputs(tok):
    one = tok("hello world")
    assert one["input_ids"].ndim == 1 and one["input_ids"].dtype == np.int64
    assert list(one["input_ids"]) == tok.encode("hello world")
    assert (one["attention_mask"] == 1).all()
    ragged = tok(["a", "b c d"])
    assert isinstance(ragged["input_ids"], list)
    assert [r.dtype for r in ragged["input_ids"]] == [np.int64, np.int64]
    assert "attention_mask" not in tok(["a"], return_attention_mask=False)
    single_padded = tok("hi", padding="max_length", max_length=5)
    assert single_padded["input_ids"].shape == (5,)


def test_call_errors_are_clear(tok):
    with pytest.raises(ValueError, match="need max_length"):
        tok(["a"], padding="max_length")
    with pytest.raises(ValueError, match="pass truncation=True"):
        tok(["a b c d e f g"], padding="max_length", max_length=2)
    with pytest.raises(ValueError, match="padding_side"):
        tok(["a"], padding=True, padding_side="middle")
    with pytest.raises(ValueError, match="padding must be one of"):
        tok(["a"], padding="sideways")
    with pytest.raises(TypeError, match="list of str"):
        tok([1, 2])
    with pytest.raises(TypeError, match="expects a str"):
        tok.encode(["a"])


def test_save_and_load_give_identical_ids(tok, tmp_path):
    path = tmp_path / "tok.json"
    tok.save(path)
    loaded = Tokenizer.from_file(path)
    folder = tmp_path / "folder"
    written = tok.save_pretrained(folder)
    assert sorted(os.listdir(folder)) == [
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]  # written atomically: no temporary files left behind
    assert len(written) == 3
    again = Tokenizer.from_pretrained(folder)
    for other in (loaded, again):
        assert other.vocab_size == tok.vocab_size
        assert other.eos_token_id == tok.eos_token_id and other.pad_token_id == tok.pad_token_id
        for text in SAMPLES:
            assert other.encode(text) == tok.encode(text)


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Tokenizer.from_file(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        Tokenizer.from_file(bad)


def test_explicit_pad_token_round_trips(tmp_path):
    tok = train_bpe_tokenizer(
        CORPUS[:20], vocab_size=400, special_tokens=("<|endoftext|>", "<pad>")
    )
    tok = Tokenizer(tok.backend, pad_token="<pad>")
    assert tok.pad_token_id == 1 and tok.eos_token_id == 0
    tok.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["pad_token"] == "<pad>"
    assert Tokenizer.from_pretrained(tmp_path).pad_token_id == 1
    with pytest.raises(ValueError, match="not in the vocabulary"):
        Tokenizer(tok.backend, pad_token="<missing>")


# ----------------------------------------------------------------------------- HF interop
INTEROP = [*SAMPLES, "tab\tand\u00a0nbsp", "mixed   \n\t  whitespace   ", "a<|endoftext|>b"]


def test_transformers_encodes_identically(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok.save_pretrained(tmp_path)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert auto.eos_token == tok.eos_token and auto.bos_token == tok.bos_token
    assert auto.pad_token == tok.pad_token  # None: GPT-2 has no pad token
    assert auto.eos_token_id == tok.eos_token_id and len(auto) == len(tok)
    for text in INTEROP:
        ours = tok.encode(text)
        assert fast(text)["input_ids"] == ours, text
        assert auto(text)["input_ids"] == ours, text
        assert auto.decode(ours, skip_special_tokens=True) == tok.decode(ours), text
    # ... and the other way: a folder saved by transformers loads here with the same tokens.
    auto.save_pretrained(str(tmp_path / "from_hf"))
    back = Tokenizer.from_pretrained(tmp_path / "from_hf")
    assert (back.eos_token, back.bos_token, back.pad_token) == (tok.eos_token, tok.bos_token, None)
    assert all(back.encode(t) == tok.encode(t) for t in INTEROP)


def test_transformers_batch_padding_matches(tmp_path):
    transformers = pytest.importorskip("transformers")
    base = train_bpe_tokenizer(
        CORPUS[:20], vocab_size=400, special_tokens=("<|endoftext|>", "<pad>")
    )
    tok = Tokenizer(base.backend, pad_token="<pad>")
    tok.save_pretrained(tmp_path)
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert auto.pad_token == "<pad>" and auto.pad_token_id == tok.pad_token_id
    texts = ["a short one", "a much longer sentence with more words in it", "mid size"]
    for side in ("right", "left"):
        auto.padding_side = side
        theirs = auto(texts, padding=True, return_tensors="np")
        ours = tok(texts, padding=True, padding_side=side)
        np.testing.assert_array_equal(ours["input_ids"], theirs["input_ids"])
        np.testing.assert_array_equal(ours["attention_mask"], theirs["attention_mask"])
    theirs = auto(texts, padding="max_length", truncation=True, max_length=5, return_tensors="np")
    ours = tok(texts, padding="max_length", truncation=True, max_length=5)
    np.testing.assert_array_equal(ours["input_ids"], theirs["input_ids"])
