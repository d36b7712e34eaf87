"""Corpora, splits, LM blocks, batching and the offline fine-tuning tasks."""

import re
from collections import Counter

import numpy as np
import pytest

from minipeft.data import (
    TokenBlockDataset,
    batch_stream,
    classification_batches,
    default_corpus,
    iterate_batches,
    lm_blocks,
    load_corpus,
    tokenize_documents,
    train_val_split,
)
from minipeft.tasks import TASKS, Task, docstrings_corpus, get_task
from minipeft.tokenizer import train_bpe_tokenizer


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(default_corpus()[:30], vocab_size=512)


# ----------------------------------------------------------------------------- corpora
def test_default_corpus_is_real_and_deterministic():
    docs = default_corpus()
    assert len(docs) > 50 and sum(map(len, docs)) > 400_000
    assert docs == default_corpus() == load_corpus(None)
    assert all(isinstance(d, str) and d for d in docs)


def test_load_corpus_from_file_and_folder(tmp_path):
    (tmp_path / "one.txt").write_text("the first text\n", encoding="utf-8")
    assert load_corpus(tmp_path / "one.txt") == ["the first text\n"]
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("bee", encoding="utf-8")
    (folder / "a.txt").write_text("ay — ünïcode", encoding="utf-8")
    (folder / "sub" / "c.txt").write_text("sea", encoding="utf-8")
    (folder / "empty.txt").write_text("  \n", encoding="utf-8")  # blank files are skipped
    (folder / "notes.md").write_text("ignored", encoding="utf-8")
    assert load_corpus(folder) == ["ay — ünïcode", "bee", "sea"]
    assert load_corpus(str(folder)) == load_corpus(folder)


def test_load_corpus_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_corpus(tmp_path / "missing.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .txt files"):
        load_corpus(tmp_path / "empty")
    (tmp_path / "data.csv").write_text("a,b")
    with pytest.raises(ValueError, match="expected a .txt file"):
        load_corpus(tmp_path / "data.csv")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00\x81 not utf8")
    with pytest.raises(ValueError, match="not UTF-8"):
        load_corpus(tmp_path / "binary.txt")
    (tmp_path / "blank.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="blank"):
        load_corpus(tmp_path / "blank.txt")


def test_train_val_split_deterministic_disjoint_and_nonempty():
    docs = [f"document number {i}" for i in range(50)]
    train, val = train_val_split(docs, val_fraction=0.1, seed=0)
    assert (train, val) == train_val_split(docs, val_fraction=0.1, seed=0)
    assert len(val) == 5 and len(train) == 45
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(docs)
    assert train == [d for d in docs if d in set(train)]  # original order kept
    assert train_val_split(docs, 0.1, seed=1)[1] != val
    for n in (2, 3):
        tr, va = train_val_split(docs[:n], val_fraction=0.01)
        assert tr and va
        tr, va = train_val_split(docs[:n], val_fraction=0.99)
        assert tr and va


def test_train_val_split_single_document_and_errors():
    text = "\n\n".join(f"paragraph {i} text" for i in range(10))
    train, val = train_val_split([text], val_fraction=0.2)
    assert len(train) == 8 and len(val) == 2
    with pytest.raises(ValueError, match=">= 2 documents"):
        train_val_split(["one paragraph only"])
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(["a", "b"], val_fraction=1.0)


# ----------------------------------------------------------------------------- LM blocks
def test_tokenize_documents_puts_eos_after_each(tok):
    docs = ["first doc.", "second one", "third"]
    stream = tokenize_documents(tok, docs)
    assert stream.dtype == np.int64 and stream.ndim == 1
    expected = sum((tok.encode(d) + [tok.eos_token_id] for d in docs), [])
    assert list(stream) == expected


def test_lm_blocks_shapes_and_content():
    ids = np.arange(103, dtype=np.int64)
    blocks = lm_blocks(ids, 10)
    assert blocks.shape == (10, 10) and blocks.dtype == np.int64
    np.testing.assert_array_equal(blocks.reshape(-1), ids[:100])  # the tail is dropped
    with pytest.raises(ValueError, match="no block"):
        lm_blocks(ids[:5], 10)
    with pytest.raises(ValueError, match="1-D"):
        lm_blocks(ids.reshape(1, -1), 10)
    with pytest.raises(ValueError, match="block_size must be >= 2"):
        lm_blocks(ids, 1)
    with pytest.raises(TypeError, match="integers"):
        lm_blocks(ids.astype(np.float32), 10)


def test_token_block_dataset(tok):
    ds = TokenBlockDataset.from_documents(tok, default_corpus()[:5], block_size=32)
    assert len(ds) == len(ds.blocks) > 0 and ds.blocks.shape[1] == 32
    item = ds[0]
    np.testing.assert_array_equal(item["input_ids"], item["labels"])  # the model shifts
    assert "num_blocks" in repr(ds)


def test_iterate_batches_covers_each_block_once_per_epoch():
    blocks = np.arange(23 * 4, dtype=np.int64).reshape(23, 4)  # row i starts with 4 * i
    batches = list(iterate_batches(blocks, batch_size=5, shuffle=True, seed=3))
    assert [len(b["input_ids"]) for b in batches] == [5, 5, 5, 5, 3]
    seen = np.concatenate([b["input_ids"][:, 0] // 4 for b in batches])
    assert sorted(seen) == list(range(23)) and list(seen) != list(range(23))
    for b in batches:
        assert b["input_ids"].dtype == b["labels"].dtype == np.int64
        np.testing.assert_array_equal(b["input_ids"], b["labels"])
        assert b["labels"] is not b["input_ids"]
    again = list(iterate_batches(blocks, 5, shuffle=True, seed=3))
    assert all((a["input_ids"] == b["input_ids"]).all() for a, b in zip(batches, again))
    other = next(iterate_batches(blocks, 5, shuffle=True, seed=3, epoch=1))
    assert not np.array_equal(other["input_ids"], batches[0]["input_ids"])
    dropped = list(iterate_batches(blocks, 5, shuffle=False, drop_last=True))
    assert len(dropped) == 4 and dropped[0]["input_ids"][0, 0] == 0


def test_batch_stream_is_endless_and_epoch_aware():
    blocks = np.arange(10 * 3, dtype=np.int64).reshape(10, 3)
    stream = batch_stream(blocks, batch_size=4, seed=7)  # drop_last: 2 batches per epoch
    assert stream.batches_per_epoch == 2
    first = [next(stream) for _ in range(2)]
    assert stream.epoch == 0 and stream.step == 2
    expected = list(iterate_batches(blocks, 4, shuffle=True, seed=7, drop_last=True, epoch=0))
    for a, b in zip(first, expected):
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
    for _ in range(5):
        batch = next(stream)
    assert stream.epoch == 3 and stream.step == 7 and batch["input_ids"].shape == (4, 3)
    with pytest.raises(ValueError, match="no batch"):
        batch_stream(blocks, batch_size=11)


def test_classification_batches(tok):
    texts = ["short", "a much longer text " * 20, "mid length text", "x", "yet another"]
    labels = [0, 1, 2, 3, 1]
    batches = list(classification_batches(tok, texts, labels, batch_size=2, max_length=16))
    assert [len(b["labels"]) for b in batches] == [2, 2, 1]
    for b in batches:
        ids, mask = b["input_ids"], b["attention_mask"]
        assert ids.dtype == mask.dtype == b["labels"].dtype == np.int64
        assert ids.shape == mask.shape and ids.shape[1] <= 16
        assert (ids[mask == 0] == tok.pad_token_id).all()
        assert (mask[:, 0] == 1).all()  # right padding: real tokens come first
    assert batches[0]["input_ids"].shape == (2, 16)  # the long text was truncated
    assert [int(y) for b in batches for y in b["labels"]] == labels
    shuffled = list(classification_batches(tok, texts, labels, 2, 16, shuffle=True, seed=1))
    assert sorted(int(y) for b in shuffled for y in b["labels"]) == sorted(labels)
    with pytest.raises(ValueError, match="labels must have shape"):
        next(classification_batches(tok, texts, labels[:2], 2, 16))


# ----------------------------------------------------------------------------- tasks
def test_task_registry():
    assert set(TASKS) == {"docstrings", "docstring-topic"}
    with pytest.raises(ValueError, match="known tasks are.*docstring-topic"):
        get_task("nope")
    assert get_task("docstrings") is get_task("docstrings")  # built once


def test_docstrings_task_is_a_real_corpus():
    docs = docstrings_corpus()
    assert docs == docstrings_corpus()
    size = sum(map(len, docs))
    assert 100_000 <= size <= 1_000_000
    task = get_task("docstrings")
    assert isinstance(task, Task) and task.kind == "causal_lm" and task.num_labels == 0
    assert task.train_texts and task.test_texts
    assert set(task.train_texts).isdisjoint(task.test_texts)
    assert len(task.train_texts) + len(task.test_texts) == len(docs)
    pydoc = set(default_corpus())
    assert not pydoc & set(docs)  # a different domain from the default corpus


def test_topic_task_is_balanced_and_disjoint():
    task = get_task("docstring-topic")
    assert task.kind == "seq_cls" and task.num_labels == len(task.label_names) == 4
    assert len(task.train_texts) == len(task.train_labels)
    assert len(task.test_texts) == len(task.test_labels)
    train, test = Counter(task.train_labels), Counter(task.test_labels)
    assert set(train) == set(test) == set(range(4))
    assert len(set(train.values())) == 1 and len(set(test.values())) == 1  # balanced
    assert train[0] + test[0] >= 150
    assert set(task.train_texts).isdisjoint(task.test_texts)
    assert len(set(task.train_texts)) == len(task.train_texts)


def _bag_of_words(texts, vocab):
    x = np.zeros((len(texts), len(vocab)))
    for i, text in enumerate(texts):
        for w in re.findall(r"[a-z]+", text.lower()):
            if w in vocab:
                x[i, vocab[w]] += 1
    x = np.log1p(x)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-9)


def test_topic_task_is_learnable_by_a_bag_of_words_baseline():
    """Nearest-centroid (cosine) on log word counts: clearly above chance, so learnable."""
    task = get_task("docstring-topic")
    words = sorted({w for t in task.train_texts for w in re.findall(r"[a-z]+", t.lower())})
    vocab = {w: i for i, w in enumerate(words)}
    x_train, x_test = _bag_of_words(task.train_texts, vocab), _bag_of_words(task.test_texts, vocab)
    y_train, y_test = np.array(task.train_labels), np.array(task.test_labels)
    centroids = np.stack([x_train[y_train == c].mean(0) for c in range(task.num_labels)])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    accuracy = ((x_test @ centroids.T).argmax(1) == y_test).mean()
    assert accuracy > 1 / task.num_labels + 0.15, accuracy
