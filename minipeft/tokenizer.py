"""Byte-level BPE tokenizer: train one on a corpus, or load a Hugging Face ``tokenizer.json``.

A thin, readable wrapper over the Rust `tokenizers` library. It does three jobs:

1. ``train_bpe_tokenizer`` builds a GPT-2 style byte-level BPE (Sennrich et al., 2016; Radford et
   al., 2019). Text is first mapped to bytes and each byte to a printable character, so every
   string is encodable without an unknown token and ``decode(encode(text)) == text`` exactly.
   The 256 byte symbols start the vocabulary; training then repeatedly merges the most frequent
   adjacent pair until ``vocab_size`` is reached.
2. ``Tokenizer`` encodes/decodes and batches text into host NumPy ``np.int64`` arrays::

       batch = tok(["a b", "c"], padding=True)   # input_ids (B, T), attention_mask (B, T)

   ``attention_mask[b, t] == 1`` marks a real token, ``0`` a pad.
3. ``save_pretrained(folder)`` writes ``tokenizer.json``, ``tokenizer_config.json`` and
   ``special_tokens_map.json`` so that ``transformers.AutoTokenizer.from_pretrained(folder)``
   loads the very same tokenizer (same ids, same eos/bos/pad tokens).

Pad convention (GPT-2): GPT-2 has no pad token, so ``pad_token`` is ``None`` and
``pad_token_id`` falls back to ``eos_token_id``; padded positions are masked out by
``attention_mask`` (and by label ``-100`` in the losses), so the pad id itself never matters.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from .fileio import atomic_write_text

__all__ = ["DEFAULT_EOS_TOKEN", "Tokenizer", "train_bpe_tokenizer"]

DEFAULT_EOS_TOKEN = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
_PADDING_CHOICES = (False, True, "longest", "max_length", "do_not_pad")


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str] = (DEFAULT_EOS_TOKEN,),
    min_frequency: int = 2,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a GPT-2 style byte-level BPE tokenizer on ``texts`` (deterministic).

    The vocabulary is ``special_tokens`` (ids 0..S-1), then the 256 byte symbols, then one token
    per learned merge, so ``vocab_size`` must be at least ``256 + len(special_tokens)``. A pair
    is merged only if it occurs at least ``min_frequency`` times, so a small corpus can end with
    fewer than ``vocab_size`` tokens. The first special token becomes the eos (and bos) token.
    """
    special_tokens = list(special_tokens)
    minimum = 256 + len(special_tokens)
    if int(vocab_size) < minimum:
        raise ValueError(
            f"vocab_size must be >= 256 byte symbols + {len(special_tokens)} special tokens "
            f"= {minimum}, got {vocab_size}"
        )
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts or not any(texts):
        raise ValueError("train_bpe_tokenizer needs at least one non-empty text, got none")
    if not all(isinstance(t, str) for t in texts):
        bad = next(type(t).__name__ for t in texts if not isinstance(t, str))
        raise TypeError(f"texts must be strings, found an item of type {bad}")

    backend = _HFTokenizer(models.BPE())
    # GPT-2's regex split (words, numbers, punctuation, whitespace runs), then bytes -> symbols.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=int(vocab_size),
        min_frequency=int(min_frequency),
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
        show_progress=show_progress,
    )
    backend.train_from_iterator(texts, trainer=trainer, length=len(texts))
    eos = special_tokens[0] if special_tokens else None
    return Tokenizer(backend, eos_token=eos)


def _token_content(value) -> str | None:
    """A special token in a HF config is a string or an AddedToken dict ``{"content": ...}``."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class Tokenizer:
    """Encode text to token ids and back; batch texts into padded ``np.int64`` arrays.

    Args:
        backend: a ``tokenizers.Tokenizer`` (the Rust object doing the work).
        eos_token: end-of-sequence token; by default ``<|endoftext|>`` if present, else the first
            special token, else ``None``.
        bos_token: beginning-of-sequence token; defaults to ``eos_token`` (GPT-2 convention).
        pad_token: padding token; ``None`` (the default) means "pad with eos".
        model_max_length: longest sequence a model accepts (used when truncating without an
            explicit ``max_length``); ``None`` means unknown.
        chat_template: the model's chat template (Jinja text, as in ``tokenizer_config.json``
            or a GGUF's ``tokenizer.chat_template``); ``None`` when it has none.
    """

    def __init__(
        self,
        backend: _HFTokenizer,
        *,
        eos_token: str | None = None,
        bos_token: str | None = None,
        pad_token: str | None = None,
        model_max_length: int | None = None,
        chat_template: str | None = None,
    ) -> None:
        if not isinstance(backend, _HFTokenizer):
            raise TypeError(f"expected a tokenizers.Tokenizer, got {type(backend).__name__}")
        backend.no_padding()  # a loaded tokenizer.json may carry its own padding/truncation;
        backend.no_truncation()  # we do both ourselves, in NumPy, below
        self._backend = backend
        if eos_token is None:
            eos_token = self._default_eos()
        self.eos_token = self._check_token("eos_token", eos_token)
        self.bos_token = self._check_token("bos_token", bos_token or eos_token)
        self.pad_token = self._check_token("pad_token", pad_token)
        self.model_max_length = model_max_length
        self.chat_template = chat_template

    # ----------------------------------------------------------------- special tokens
    def _default_eos(self) -> str | None:
        added = sorted(self._backend.get_added_tokens_decoder().items())  # by id
        specials = [t.content for _, t in added if t.special]
        if DEFAULT_EOS_TOKEN in specials:
            return DEFAULT_EOS_TOKEN
        return specials[0] if specials else None

    def _check_token(self, field: str, token: str | None) -> str | None:
        if token is not None and self._backend.token_to_id(token) is None:
            specials = sorted(t.content for t in self._backend.get_added_tokens_decoder().values())
            raise ValueError(
                f"{field}={token!r} is not in the vocabulary; special tokens are {specials}"
            )
        return token

    @property
    def vocab_size(self) -> int:
        """Number of ids, added/special tokens included (the embedding table's row count)."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def eos_token_id(self) -> int | None:
        return None if self.eos_token is None else self._backend.token_to_id(self.eos_token)

    @property
    def bos_token_id(self) -> int | None:
        return None if self.bos_token is None else self._backend.token_to_id(self.bos_token)

    @property
    def pad_token_id(self) -> int | None:
        """Id used for padding: the pad token's, else eos's (GPT-2 has no pad token)."""
        if self.pad_token is not None:
            return self._backend.token_to_id(self.pad_token)
        return self.eos_token_id

    @property
    def backend(self) -> _HFTokenizer:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._backend

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._backend.id_to_token(int(token_id))

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, eos_token={self.eos_token!r}, "
            f"pad_token_id={self.pad_token_id})"
        )

    # ----------------------------------------------------------------- encode / decode
    def encode(self, text: str) -> list[int]:
        """Token ids of one string. No special tokens are added, but a special token written in
        the text (e.g. ``"<|endoftext|>"``) maps to its id, as in Hugging Face tokenizers."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        return self._backend.encode(text).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of a sequence of ids (list or 1-D array); special tokens dropped by default."""
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(
        self, batch: Iterable[Iterable[int]], skip_special_tokens: bool = True
    ) -> list[str]:
        """Decode each row of a (B, T) array or list of id lists; returns a list of B strings."""
        return [self.decode(ids, skip_special_tokens=skip_special_tokens) for ids in batch]

    def __call__(
        self,
        texts: str | Sequence[str],
        padding: bool | str = False,
        truncation: bool = False,
        max_length: int | None = None,
        padding_side: str = "right",
        return_attention_mask: bool = True,
    ) -> dict:
        """Tokenize one text or a batch, HF style.

        Returns ``{"input_ids": ..., "attention_mask": ...}`` (mask 1 = real token, 0 = pad):

        - one ``str``: 1-D ``np.int64`` arrays of shape (T,);
        - a list with padding on: 2-D ``np.int64`` arrays of shape (B, T);
        - a list with padding off: lists of B 1-D ``np.int64`` arrays (ragged).

        ``padding``: ``False`` / ``"do_not_pad"``; ``True`` / ``"longest"`` pads to the longest
        row; ``"max_length"`` pads to ``max_length``. ``truncation=True`` keeps the first
        ``max_length`` tokens (``max_length`` defaults to ``model_max_length``).
        ``padding_side="left"`` puts pads first, as batched generation needs.
        """
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        for t in batch:
            if not isinstance(t, str):
                raise TypeError(f"texts must be a str or a list of str, found {type(t).__name__}")
        if padding not in _PADDING_CHOICES:
            raise ValueError(f"padding must be one of {_PADDING_CHOICES}, got {padding!r}")
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        if max_length is None and truncation:
            max_length = self.model_max_length
        if max_length is None and (truncation or padding == "max_length"):
            raise ValueError(
                f"truncation={truncation!r}, padding={padding!r} need max_length, got None"
            )
        if max_length is not None and int(max_length) < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")

        rows = [e.ids for e in self._backend.encode_batch(batch)] if batch else []
        if truncation:
            rows = [ids[:max_length] for ids in rows]
        if padding in (False, "do_not_pad"):
            ids = [np.asarray(r, dtype=np.int64) for r in rows]
            mask = [np.ones(len(r), dtype=np.int64) for r in rows]
        else:
            ids, mask = self._pad(rows, padding, max_length, padding_side)
        if single:
            ids, mask = ids[0], mask[0]
        out = {"input_ids": ids}
        if return_attention_mask:
            out["attention_mask"] = mask
        return out

    def _pad(self, rows, padding, max_length, padding_side):
        """Stack ragged rows into (B, T) ids and mask, T = longest row or ``max_length``."""
        if self.pad_token_id is None:
            raise ValueError("padding needs a pad_token or an eos_token; this tokenizer has none")
        longest = max((len(r) for r in rows), default=0)
        width = max_length if padding == "max_length" else longest
        if longest > width:
            raise ValueError(
                f"a sequence has {longest} tokens > max_length={width}; pass truncation=True"
            )
        ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for b, r in enumerate(rows):
            span = slice(0, len(r)) if padding_side == "right" else slice(width - len(r), width)
            ids[b, span] = r
            mask[b, span] = 1
        return ids, mask

    # ----------------------------------------------------------------- files
    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs) -> Tokenizer:
        """Load a ``tokenizer.json`` file; ``kwargs`` (eos_token, pad_token, ...) go to init."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: expected a file at '{path}'")
        try:
            backend = _HFTokenizer.from_file(str(path))
        except Exception as e:  # the Rust error says what was wrong inside the file
            raise ValueError(f"'{path}' is not a valid tokenizer.json: {e}") from e
        return cls(backend, **kwargs)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> Tokenizer:
        """Load ``folder/tokenizer.json`` plus special tokens from ``tokenizer_config.json``;
        or a GGUF file (``x.gguf``: the tokenizer of its ``tokenizer.ggml.*`` metadata), or a
        known checkpoint's name (``smollm2-135m``, :mod:`minipeft.models.checkpoints`)."""
        from .models.checkpoints import resolve_model  # noqa: PLC0415

        folder = resolve_model(folder)
        if os.fspath(folder).lower().endswith(".gguf"):
            from .models.gguf import read_gguf  # noqa: PLC0415

            g = read_gguf(folder).tokenizer
            return cls(g.backend, eos_token=g.eos_token, bos_token=g.bos_token,
                       pad_token=g.pad_token, chat_template=g.chat_template)  # fmt: skip
        folder = Path(folder)
        path = folder / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"no {TOKENIZER_FILE} in '{folder}': expected a file at '{path}' "
                "(save one with Tokenizer.save_pretrained or transformers' save_pretrained)"
            )
        kwargs = {}
        # special_tokens_map.json first, so tokenizer_config.json wins where both say.
        for name in (SPECIAL_TOKENS_FILE, CONFIG_FILE):
            if not (folder / name).is_file():
                continue
            config = json.loads((folder / name).read_text(encoding="utf-8"))
            for key in ("eos_token", "bos_token", "pad_token"):
                if _token_content(config.get(key)) is not None:
                    kwargs[key] = _token_content(config[key])
            if isinstance(config.get("chat_template"), str):
                kwargs["chat_template"] = config["chat_template"]
            limit = config.get("model_max_length")
            if isinstance(limit, int) and limit < 10**12:  # HF writes ~1e30 for "no limit"
                kwargs["model_max_length"] = limit
        jinja = folder / "chat_template.jinja"  # where transformers 5 saves the template
        if "chat_template" not in kwargs and jinja.is_file():
            kwargs["chat_template"] = jinja.read_text(encoding="utf-8")
        return cls.from_file(path, **kwargs)

    def save(self, path: str | os.PathLike) -> None:
        """Write the ``tokenizer.json`` file (atomically)."""
        atomic_write_text(path, self._backend.to_str(pretty=True))

    def save_pretrained(self, folder: str | os.PathLike) -> list[str]:
        """Write a folder that this class and ``transformers.AutoTokenizer`` both load.

        Files: ``tokenizer.json`` (the model), ``tokenizer_config.json`` (class + special tokens)
        and ``special_tokens_map.json``. Returns the written paths.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        specials = {
            k: v
            for k, v in (
                ("bos_token", self.bos_token),
                ("eos_token", self.eos_token),
                ("pad_token", self.pad_token),
            )
            if v is not None
        }
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **specials,
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": False,  # keep decode() lossless, as ours is
        }
        if self.model_max_length is not None:
            config["model_max_length"] = int(self.model_max_length)
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        paths = [
            folder / TOKENIZER_FILE,
            folder / CONFIG_FILE,
            folder / SPECIAL_TOKENS_FILE,
        ]
        self.save(paths[0])
        atomic_write_text(paths[1], json.dumps(config, indent=2) + "\n")
        atomic_write_text(paths[2], json.dumps(specials, indent=2) + "\n")
        return [str(p) for p in paths]
