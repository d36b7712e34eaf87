"""The tokenizer of a GGUF file's ``tokenizer.ggml.*`` metadata, as a `tokenizers` tokenizer.

A GGUF has no ``tokenizer.json``; llama.cpp stores the pieces instead. For ``tokenizer.ggml.model
= "gpt2"`` (byte-level BPE, GPT-2 style: LLaMA 3, SmolLM, Qwen …):

- ``tokens`` (V strings, id = position), spelled in GPT-2's byte alphabet (each byte b mapped to
  a printable character, ``bytes_to_unicode``); a token spelled otherwise is re-spelled byte by
  byte from its UTF-8;
- ``merges`` ("a b" strings, best first) and ``token_type`` (1 normal, 3 control, 4 user
  defined …): control tokens become special added tokens (kept whole, dropped by decode), user
  defined ones plain added tokens;
- ``bos/eos/unknown/padding_token_id``; ``add_bos_token`` / ``add_eos_token`` put BOS / EOS
  around every encoding (a TemplateProcessing post-processor, as transformers does);
- ``pre``: the pre-tokenizer's split regex (GPT-2's unless the name is a known other one).

This mirrors transformers' conversion (``integrations/gguf/gguf_tokenizer_mapping.py``,
``byte_level_tokenizer`` + ``add_gguf_special_tokens`` + ``set_split_regex``) so both encode
the same ids, and keeps ``tokenizer.chat_template``. ``minipeft.Tokenizer.from_pretrained(path)``
wraps the result (this module sits below it and does not import it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as _Backend

__all__ = ["GGUFTokenizer", "bytes_to_unicode", "tokenizer_from_metadata"]

CONTROL, USER_DEFINED = 3, 4  # llama.cpp's token types

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre -> split regex, where it is not GPT-2's (transformers' table, the LLaMA part)
PRE_TOKENIZER_SPLITS = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx"),
                    _LLAMA3_SPLIT),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen"), _QWEN2_SPLIT),
}  # fmt: skip


@dataclass
class GGUFTokenizer:
    """``backend`` (a ``tokenizers.Tokenizer``) and what a wrapper needs besides: special
    tokens (strings or None), the add-BOS/EOS flags and the chat template (Jinja text)."""

    backend: _Backend
    bos_token: str | None
    eos_token: str | None
    pad_token: str | None
    unk_token: str | None
    add_bos_token: bool
    add_eos_token: bool
    chat_template: str | None


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character map: printable Latin-1 bytes map to themselves, the
    other 68 to U+0100 onwards (Radford et al., 2019, ``encoder.py``)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tokenizer_from_metadata(meta: dict[str, Any], source: str = "<gguf>") -> GGUFTokenizer:
    """Build the tokenizer of a GGUF file's metadata (``GGUFCheckpoint.metadata``)."""
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(
            f"{source}: tokenizer.ggml.model is {kind!r}; minipeft builds only byte-level BPE "
            "tokenizers ('gpt2')"
        )
    tokens = meta.get("tokenizer.ggml.tokens")
    merges = meta.get("tokenizer.ggml.merges")
    if not tokens or merges is None:
        raise ValueError(f"{source}: the metadata lacks tokenizer.ggml.tokens or .merges")
    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {
        t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
        for i, t in enumerate(tokens)
    }
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], dropout=None,
                     continuing_subword_prefix="", end_of_word_suffix="",
                     fuse_unk=False)  # fmt: skip
    backend = _Backend(bpe)
    split = PRE_TOKENIZER_SPLITS.get(meta.get("tokenizer.ggml.pre"))
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(split), behavior="isolated"),
             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )  # fmt: skip
    backend.decoder = decoders.ByteLevel()
    types = meta.get("tokenizer.ggml.token_type") or ()
    # A "control" token outside the byte alphabet is a llama.cpp mislabel (transformers skips it).
    control = [
        AddedToken(t, normalized=False, special=True)
        for t, k in zip(tokens, types)
        if k == CONTROL and set(t) <= alphabet
    ]
    user = [AddedToken(t, normalized=False, special=False)
            for t, k in zip(tokens, types) if k == USER_DEFINED and t in vocab]  # fmt: skip
    if control:
        backend.add_special_tokens(control)
    if user:
        backend.add_tokens(user)

    def token(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    bos, eos = token("bos"), token("eos")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    backend.post_processor = _template(backend, bos if add_bos else None, eos if add_eos else None)
    return GGUFTokenizer(backend, bos, eos, token("padding"), token("unknown"), add_bos, add_eos,
                         meta.get("tokenizer.chat_template"))  # fmt: skip


def _template(backend: _Backend, bos: str | None, eos: str | None) -> Any:
    """transformers' ``update_post_processor``: single = [bos] $A [eos], pair = … $B:1 …"""
    b = f"{bos}:0 " if bos else ""
    e = f" {eos}:0" if eos else ""
    single = f"{b}$A:0{e}"
    pair = f"{single}{' ' + bos + ':1' if bos else ''} $B:1{' ' + eos + ':1' if eos else ''}"
    specials = [(t, backend.token_to_id(t)) for t in dict.fromkeys(x for x in (bos, eos) if x)]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
