"""Read a llama.cpp GGUF file: its LlamaConfig, its tensors (raw or float32), its tokenizer.

A GGUF file is ``[magic "GGUF"][version][n_tensors][n_kv][metadata kv …][tensor infos …][data]``;
the ``gguf`` package (llama.cpp's own reader, the optional extra ``gguf``) memory-maps it, so a
tensor's bytes are read only when used::

    ckpt = read_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")
    ckpt.config                   # LlamaConfig from the llama.* metadata
    ckpt.metadata                 # {"general.architecture": "llama", "tokenizer.ggml.tokens": …}
    for t in ckpt.tensors():      # GGUFTensor(name, type_name, shape, data), HF names, HF row order
        t.name, t.type_name, t.shape, t.data   # "model.layers.0.self_attn.q_proj.weight", "Q4_1",
                                               # (576, 576), uint8 (576, 360): the blocks, unchanged
    for name, w in ckpt.dequantized():         # the same, as float32 arrays of shape t.shape
    ckpt.tokenizer                # GGUFTokenizer: `tokenizers` backend, special tokens, template
    model = load_gguf_model(LlamaForCausalLM, path)  # = AutoModelForCausalLM.from_pretrained(path)

Conventions. ``shape`` is NumPy's/HF's (rows, columns) = the reverse of GGUF's ``ne``; a weight
W (out, in) is stored row by row, each row cut into blocks of the file's type (Q8_0: 32 weights
+ an f16 scale, 34 bytes; Q4_1: 32 weights, 4 bits each, + f16 scale d and min m, w = d·q + m).
Raw ``data`` is (rows, bytes per row) ``uint8`` for block types and the float array for F32/F16.
Because every row is its own run of blocks, llama.cpp's q/k row permutation
(:mod:`minipeft.models.gguf_layout`) is undone on the raw rows too: ``tensors()`` yields q_proj
(H heads) and k_proj (H_kv heads) with HF's rows, quantized or not (``unpermute=False`` keeps
the file's order). Dequantization is ``gguf.quants.dequantize`` (F32, F16, BF16, Q4_0, Q4_1,
Q5_0, Q5_1, Q8_0, the K-quants and the IQ types the package implements); another type is an
error naming it. ``load_gguf_model`` dequantizes tensor by tensor straight into the model's
parameters, so the peak is the float model plus one tensor.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ..nn.init import skip_init
from .config import config_from_dict
from .gguf_layout import CONFIG_KEYS, SUPPORTED_ARCHITECTURES, gguf_to_hf_name, unpermute_qk
from .llama_config import LlamaConfig

__all__ = [
    "GGUF_MAGIC",
    "GGUFCheckpoint",
    "GGUFTensor",
    "is_gguf_file",
    "load_gguf_model",
    "read_gguf",
]

GGUF_MAGIC = b"GGUF"
_SLAB_VALUES = 1 << 20  # values dequantized at once (4 MiB of float32)
_HEADER = "GGUF."  # the reader's pseudo-fields for the file header (version, counts)


class GGUFTensor(NamedTuple):
    """One tensor: HF ``name``, GGUF ``type_name`` ("F32", "Q4_1", …), HF ``shape``, raw
    ``data`` ((rows, bytes per row) uint8 for block types, else the float array)."""

    name: str
    type_name: str
    shape: tuple[int, ...]
    data: np.ndarray


def is_gguf_file(path: Any) -> bool:
    """True for a path spelled ``*.gguf`` (the file need not exist: reading then says so)."""
    try:
        return os.fspath(path).lower().endswith(".gguf")
    except TypeError:
        return False


def _gguf() -> Any:
    try:
        import gguf  # noqa: PLC0415 (optional extra)
    except ImportError:  # pragma: no cover - the extra is installed in CI
        raise ImportError(
            "reading GGUF files needs the `gguf` package: pip install 'minipeft[gguf]' "
            "(or pip install gguf)"
        ) from None
    return gguf


class GGUFCheckpoint:
    """A GGUF file opened for reading (memory-mapped: nothing is read until used).

    ``config`` (a fresh LlamaConfig each time), ``metadata`` (key → Python value),
    ``architecture``, ``tensors()``, ``dequantized()``, ``state_dict()`` and ``tokenizer``.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self._reader = _open_reader(self.path)
        self.metadata: dict[str, Any] = {
            k: f.contents() for k, f in self._reader.fields.items() if not k.startswith(_HEADER)
        }
        # The reader keeps every field as numpy parts (for SmolLM2's tokenizer, ~100k small
        # arrays: ~85 MiB); their contents are now in ``metadata``, so the parts can go.
        self._reader.fields.clear()
        self.architecture = self.metadata.get("general.architecture")
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"{self.path}: a GGUF of architecture {self.architecture!r}, which minipeft "
                f"does not support; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        self._infos = {t.name: t for t in self._reader.tensors}
        self._check_sizes()
        self._config = self._read_config()

    def __repr__(self) -> str:
        return f"GGUFCheckpoint({self.path!r}, {len(self._infos)} tensors)"

    # ------------------------------------------------------------------------- config
    @property
    def config(self) -> LlamaConfig:
        return copy.deepcopy(self._config)

    def _read_config(self) -> LlamaConfig:
        arch, meta = self.architecture, self.metadata
        d: dict[str, Any] = {"model_type": "llama"}
        for key, field in CONFIG_KEYS.items():
            if f"{arch}.{key}" in meta:
                d[field] = meta[f"{arch}.{key}"]
        for key in ("embedding_length", "block_count", "feed_forward_length",
                    "attention.head_count"):  # fmt: skip
            if f"{arch}.{key}" not in meta:
                raise ValueError(f"{self.path}: the metadata has no {arch}.{key}")
        if "vocab_size" not in d:  # older files: the vocabulary's length, else the embedding's
            tokens = meta.get("tokenizer.ggml.tokens")
            d["vocab_size"] = len(tokens) if tokens else self._shape("token_embd.weight")[0]
        if f"{arch}.rope.dimension_count" in meta:  # D = the rotated size (plain RoPE: all)
            d["head_dim"] = meta[f"{arch}.rope.dimension_count"]
        d["tie_word_embeddings"] = "output.weight" not in self._infos
        for hf, key in (("bos_token_id", "bos"), ("eos_token_id", "eos"),
                        ("pad_token_id", "padding")):  # fmt: skip
            d[hf] = meta.get(f"tokenizer.ggml.{key}_token_id")
        d["dtype"] = "float32"
        return config_from_dict(d, source=self.path)

    def _shape(self, gguf_name: str) -> tuple[int, ...]:
        if gguf_name not in self._infos:
            raise ValueError(f"{self.path}: no tensor {gguf_name!r}")
        return tuple(int(n) for n in reversed(self._infos[gguf_name].shape))

    def _check_sizes(self) -> None:
        size = os.path.getsize(self.path)
        for info in self._infos.values():
            end = int(info.data_offset) + int(info.n_bytes)
            if end > size:
                raise ValueError(
                    f"{self.path}: truncated GGUF file: tensor {info.name!r} needs bytes up to "
                    f"{end:,}, the file has {size:,}"
                )

    # ------------------------------------------------------------------------ tensors
    def tensors(self, unpermute: bool = True) -> Iterator[GGUFTensor]:
        """Every tensor with its HF name and shape, the data as stored (no copy, except the q/k
        rows reordered when ``unpermute``)."""
        cfg = self._config
        heads = {"attn_q": cfg.num_attention_heads, "attn_k": cfg.num_key_value_heads}
        for info in self._reader.tensors:
            name = gguf_to_hf_name(info.name, cfg.num_hidden_layers)
            shape = tuple(int(n) for n in reversed(info.shape))  # (rows, cols) = HF's
            data = info.data
            n_head = heads.get(info.name.split(".")[-2]) if info.name.startswith("blk.") else None
            if unpermute and n_head is not None and len(shape) == 2:
                data = unpermute_qk(data.reshape(shape[0], -1), n_head)
            yield GGUFTensor(name, info.tensor_type.name, shape, data)

    def dequantized(self, unpermute: bool = True) -> Iterator[tuple[str, np.ndarray]]:
        """``(hf_name, float32 array of the HF shape)``, one tensor at a time."""
        for t in self.tensors(unpermute=unpermute):
            out = np.empty(t.shape, np.float32)
            self.dequantize_into(t, out)
            yield t.name, out

    def dequantize_into(self, t: GGUFTensor, out: np.ndarray) -> None:
        """Dequantize tensor ``t`` into the float array ``out`` (its HF shape), a slab of rows at
        a time, so the dequantizer's temporaries stay a few MiB even for a 49152-row embedding
        (whole, they were several times the tensor: the load's peak memory)."""
        gguf = _gguf()
        qtype = gguf.GGMLQuantizationType[t.type_name]
        rows = out.shape[0] if out.ndim > 1 else 1
        data = t.data.reshape(rows, -1)  # one stored row (its blocks' bytes) per output row
        flat = out.reshape(rows, -1)
        step = max(1, _SLAB_VALUES // max(flat.shape[1], 1))
        for r in range(0, rows, step):
            try:
                w = gguf.quants.dequantize(data[r : r + step], qtype)
            except NotImplementedError:
                raise ValueError(
                    f"{self.path}: tensor {t.name!r} has type {t.type_name}, which the gguf "
                    "package cannot dequantize (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, "
                    "Q5_1, Q8_0, the K-quants, the IQ types)"
                ) from None
            flat[r : r + step] = w.reshape(-1, flat.shape[1])

    def state_dict(self) -> dict[str, np.ndarray]:
        """All tensors as float32 in HF's names and layout (a full float copy: for tests and
        conversion; :func:`load_gguf_model` avoids it)."""
        return dict(self.dequantized())

    # ----------------------------------------------------------------------- tokenizer
    @functools.cached_property
    def tokenizer(self) -> Any:
        """The :class:`~minipeft.models.gguf_tokenizer.GGUFTokenizer` of ``tokenizer.ggml.*``
        (``minipeft.Tokenizer.from_pretrained(path)`` wraps it)."""
        from .gguf_tokenizer import tokenizer_from_metadata  # noqa: PLC0415

        return tokenizer_from_metadata(self.metadata, source=self.path)

    @property
    def chat_template(self) -> str | None:
        return self.metadata.get("tokenizer.chat_template")


def _open_reader(path: str) -> Any:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(
            f"{path}: not a GGUF file (it starts with {magic!r}, a GGUF file with {GGUF_MAGIC!r})"
        )
    gguf = _gguf()
    try:
        return gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: truncated or corrupt GGUF file ({e})") from e


@dataclass(frozen=True)
class _Key:
    path: str
    mtime_ns: int
    size: int


_CACHE: dict[_Key, GGUFCheckpoint] = {}  # the last files read (at most _CACHED), newest last
_CACHED = 2


def read_gguf(path: str | os.PathLike) -> GGUFCheckpoint:
    """Open a GGUF file (cached by path, mtime and size: a config read, then a model load,
    parse the metadata once). Errors: not found, not GGUF (bad magic), truncated, an
    unsupported architecture."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file not found: {path}")
    st = os.stat(path)
    key = _Key(path, st.st_mtime_ns, st.st_size)
    ckpt = _CACHE.pop(key, None) or GGUFCheckpoint(path)
    _CACHE[key] = ckpt
    while len(_CACHE) > _CACHED:
        del _CACHE[next(iter(_CACHE))]
    return ckpt


def _forget(path: str) -> None:
    """Drop ``path``'s cached checkpoint: its memory map (the file's pages touched so far) and
    parsed metadata (SmolLM2: ~180 MiB together) go once nothing else holds them."""
    for key in [k for k in _CACHE if k.path == path]:
        del _CACHE[key]


def load_gguf_model(
    cls: type,
    path: str | os.PathLike,
    device: str = "cpu",
    dtype: Any = None,
    seed: int | None = None,
    **config_overrides: Any,
) -> Any:
    """``cls`` (LlamaForCausalLM, LlamaModel, LlamaForSequenceClassification) with the file's
    weights, float32, eval mode. Each tensor is dequantized into its parameter in place;
    a head the file lacks (``score``) is initialised fresh (``seed``) with a warning."""
    import warnings  # noqa: PLC0415

    ckpt = read_gguf(path)
    config = ckpt.config
    if config_overrides:
        config = config_from_dict({**config.to_dict(), **config_overrides}, source=ckpt.path)
    if not isinstance(config, cls.config_class):
        raise ValueError(f"{ckpt.path}: {cls.__name__} cannot load a GGUF llama checkpoint")
    with skip_init():  # the checkpoint fills every weight next
        model = cls(config, init_weights=False)
    own = model.state_dict()
    prefix = cls.base_model_prefix + "."
    loaded, unused = set(), []
    for t in ckpt.tensors():  # each dequantized straight into its parameter, in slabs of rows
        key = t.name.removeprefix(prefix) if cls.task == "base" else t.name
        if key not in own:
            unused.append(t.name)
            continue
        target = own[key]
        if tuple(target.shape) != t.shape:
            raise ValueError(f"{ckpt.path}: tensor {t.name!r} has shape {t.shape}, the model "
                             f"expects {tuple(target.shape)}")  # fmt: skip
        if target.data.dtype == np.float32 and target.data.flags.c_contiguous:
            ckpt.dequantize_into(t, target.data)
        else:
            buf = np.empty(t.shape, np.float32)
            ckpt.dequantize_into(t, buf)
            target.data[...] = buf
        loaded.add(key)
    model.tie_weights()
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = [k for k in own if k not in loaded and k not in tied]
    if unused and cls.task != "base":
        warnings.warn(f"{ckpt.path}: weights not used by {cls.__name__}: {unused}", stacklevel=3)
    if missing and cls.task == "seq_cls" and all(not k.startswith(prefix) for k in missing):
        warnings.warn(f"{ckpt.path}: {missing} not found in the checkpoint; newly initialised. "
                      "Train this model on a down-stream task before using it for predictions.",
                      stacklevel=3)  # fmt: skip
        from ..backend import get_rng  # noqa: PLC0415

        rng = get_rng("cpu", seed) if seed is not None else None
        for name in sorted({k.rpartition(".")[0] for k in missing}):
            model._init_module(model.get_submodule(name), rng)
    elif missing:
        raise ValueError(f"{ckpt.path}: tensors missing from the GGUF file: {missing}")
    model.name_or_path = ckpt.path
    _forget(ckpt.path)  # the weights are copied out; a later read (the tokenizer) parses anew
    model.to(device)
    if dtype is not None:
        model.to(dtype)
    return model.eval()
