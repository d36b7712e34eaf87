"""Write a minipeft LLaMA as a GGUF file that llama.cpp (and ollama, and transformers) runs.

    export_gguf(model, tokenizer, "model.gguf", dtype="q8_0", chat_template=template)

What is written is what llama.cpp's converter (``convert_hf_to_gguf.py``, ``LlamaModel``) writes
for the same HF folder:

- **Metadata.** ``general.architecture = "llama"``, ``general.type``, ``general.name``,
  ``general.file_type`` (0 F32, 1 F16, 7 Q8_0: ``gguf.LlamaFileType``),
  ``general.quantization_version``; ``llama.context_length`` (max_position_embeddings),
  ``embedding_length`` (C), ``block_count`` (L), ``feed_forward_length`` (inner),
  ``rope.dimension_count`` (D), ``attention.head_count`` (H), ``attention.head_count_kv`` (H_kv),
  ``attention.key_length`` / ``value_length`` (D), ``attention.layer_norm_rms_epsilon``,
  ``rope.freq_base`` (rope_theta), ``vocab_size`` (V).
- **Tokenizer** (byte-level BPE only, ``tokenizer.ggml.model = "gpt2"``): ``tokens`` (V strings,
  id order; ids the tokenizer lacks become ``[PAD{i}]``), ``token_type`` (1 normal, 3 control =
  a special added token, 4 user-defined = a plain added token, 5 unused = a hole), ``merges``
  (``"a b"`` strings, rank order), ``pre`` (the pre-tokenizer's llama.cpp name), bos/eos (and
  pad, if the tokenizer has one) ids, ``add_bos_token`` (False: minipeft adds no special tokens)
  and ``chat_template`` when one is given.
- **Tensors**, named by :func:`~minipeft.models.gguf_layout.hf_to_gguf_name`; the rows of
  ``q_proj`` / ``k_proj`` (and their biases) reordered by
  :func:`~minipeft.models.gguf_layout.permute_qk` with H / H_kv heads (llama.cpp's RoPE rotates
  adjacent pairs, HF's the two halves). 1-D tensors (norms, biases) stay F32; 2-D tensors take
  ``dtype``: F32, F16, or Q8_0 (blocks of 32 weights along a row, ``d = max|w| / 127``,
  ``q = round(w / d)``: ``gguf.quants.quantize``); a row length that is not a multiple of 32
  falls back to F16, as the converter does. Tied embeddings write no ``output.weight``
  (llama.cpp then uses ``token_embd`` for the output).

The file is written to a temporary file beside ``out_path`` and renamed into place, so a failure
or Ctrl-C leaves nothing under the final name; ``inputs`` (description → path) are refused as
the output (:func:`minipeft.fileio.check_output_path`), an existing file needs ``overwrite``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..fileio import check_output_path
from .checkpoint import minipeft_to_hf_state_dict
from .gguf_layout import SUPPORTED_ARCHITECTURES, hf_to_gguf_name, permute_qk

__all__ = ["EXPORT_TYPES", "export_gguf", "gguf_tensors", "tokenizer_metadata"]

EXPORT_TYPES = ("f32", "f16", "q8_0")  # --type values, llama.cpp's converter's --outtype names

# Token types (llama.cpp's ``llama_token_type`` / ``gguf.TokenType``).
_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED = 1, 3, 4, 5


def _gguf() -> Any:
    try:
        import gguf  # noqa: PLC0415 (the optional `gguf` extra)
    except ImportError:
        raise ImportError(
            "writing GGUF files needs the `gguf` package (llama.cpp's Python writer): "
            "pip install 'minipeft[gguf]'"
        ) from None
    return gguf


def _check_model(model: Any) -> None:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", type(model).__name__)
    if model_type not in SUPPORTED_ARCHITECTURES or getattr(model, "task", None) != "causal_lm":
        arch = (getattr(config, "architectures", None) or [type(model).__name__])[0]
        raise ValueError(
            f"export-gguf: expected a LLaMA causal LM (LlamaForCausalLM; GGUF architectures "
            f"written: {', '.join(SUPPORTED_ARCHITECTURES)}), found {arch} "
            f"(model_type {model_type!r})"
        )
    if any(getattr(p, "quant_state", None) is not None for p in model.parameters()):
        raise ValueError(
            "export-gguf: the model holds 4-bit (NF4/FP4) layers; export the float model (or "
            "merge the adapter into a float base) instead"
        )


def gguf_tensors(model: Any, dtype: str = "f32") -> list[tuple[str, np.ndarray, Any]]:
    """(GGUF name, data, GGML type) for every tensor, in the model's order.

    ``data`` is float32 (F32), float16 (F16), or the packed uint8 blocks of Q8_0, shape
    (rows, cols / 32 · 34): per block a float16 scale d and 32 int8 q, w ≈ d · q.
    """
    gguf = _gguf()
    _check_type(dtype)
    _check_model(model)
    cfg = model.config
    H, H_kv, L = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.num_hidden_layers
    sd = {k: np.asarray(v.numpy(), dtype=np.float32) for k, v in model.state_dict().items()}
    hf = minipeft_to_hf_state_dict(sd, "llama", bool(cfg.tie_word_embeddings))  # no tied lm_head
    T = gguf.GGMLQuantizationType
    out = []
    for name, w in hf.items():
        if ".self_attn.q_proj." in name:
            w = permute_qk(w, H)  # (H·D, C): halves → pairs within each head
        elif ".self_attn.k_proj." in name:
            w = permute_qk(w, H_kv)  # (H_kv·D, C)
        w = np.ascontiguousarray(w, dtype=np.float32)
        if w.ndim <= 1 or dtype == "f32":
            out.append((hf_to_gguf_name(name, L), w, T.F32))
        elif dtype == "f16":
            out.append((hf_to_gguf_name(name, L), w.astype(np.float16), T.F16))
        else:
            try:
                out.append((hf_to_gguf_name(name, L), gguf.quants.quantize(w, T.Q8_0), T.Q8_0))
            except gguf.QuantError:  # row length not a multiple of 32: the converter's fallback
                out.append((hf_to_gguf_name(name, L), w.astype(np.float16), T.F16))
    return out


def _pre_tokenizer_name(pre: Any) -> str | None:
    """llama.cpp's name for a byte-level pre-tokenizer: GPT-2's regex split is ``gpt-2``;
    SmolLM's (single digits, then GPT-2's) is ``smollm``; anything else is None."""
    if not isinstance(pre, dict):
        return None
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    parts = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    digits = bool(parts) and len(parts) == 2 and parts[0].get("type") == "Digits"
    if digits and parts[0].get("individual_digits") and _pre_tokenizer_name(parts[1]) == "gpt-2":
        return "smollm"
    return None


def tokenizer_metadata(tokenizer: Any, vocab_size: int, pre: str | None = None) -> dict[str, Any]:
    """The ``tokenizer.ggml.*`` values for a byte-level BPE tokenizer, padded to the model's
    ``vocab_size`` V: tokens (V,), token_type (V,), merges, pre, bos/eos/pad ids."""
    spec = json.loads(tokenizer.backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise ValueError(
            "export-gguf: expected a byte-level BPE tokenizer (tokenizer.ggml.model 'gpt2', what "
            f"GPT-2, LLaMA 3 and SmolLM use), found model {model.get('type')!r} with decoder "
            f"{(spec.get('decoder') or {}).get('type')!r}"
        )
    pre = pre or _pre_tokenizer_name(spec.get("pre_tokenizer"))
    if pre is None:
        raise ValueError(
            "export-gguf: unrecognised pre-tokenizer "
            f"{json.dumps(spec.get('pre_tokenizer'))[:200]}; expected GPT-2's byte-level split "
            "(llama.cpp 'gpt-2') or SmolLM's (digits, then byte-level: 'smollm'); pass pre=NAME "
            "to name llama.cpp's for it"
        )
    tokens: dict[int, str] = {int(i): t for t, i in model.get("vocab", {}).items()}
    types = dict.fromkeys(tokens, _NORMAL)
    for added in spec.get("added_tokens") or []:
        tokens[int(added["id"])] = added["content"]
        types[int(added["id"])] = _CONTROL if added.get("special") else _USER_DEFINED
    if tokens and max(tokens) >= vocab_size:
        raise ValueError(
            f"export-gguf: the tokenizer has token id {max(tokens)} but the model's vocab_size is "
            f"{vocab_size}: expected a tokenizer that fits the embedding table"
        )
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    meta: dict[str, Any] = {
        "model": "gpt2",
        "pre": pre,
        "tokens": [tokens.get(i, f"[PAD{i}]") for i in range(vocab_size)],
        "token_type": [types.get(i, _UNUSED) for i in range(vocab_size)],
        "merges": merges,
        "add_bos_token": False,  # minipeft's encode adds no special tokens
    }
    for key in ("bos", "eos"):
        if getattr(tokenizer, f"{key}_token_id", None) is not None:
            meta[f"{key}_token_id"] = int(getattr(tokenizer, f"{key}_token_id"))
    if getattr(tokenizer, "pad_token", None) is not None:
        meta["padding_token_id"] = int(tokenizer.pad_token_id)
    return meta


def _check_type(dtype: str) -> None:
    if dtype not in EXPORT_TYPES:
        raise ValueError(f"export-gguf --type: expected one of {', '.join(EXPORT_TYPES)}, "
                         f"found {dtype!r}")  # fmt: skip


def _write(path: str, model: Any, tensors: list, tok: dict[str, Any], dtype: str,
           chat_template: str | None, name: str) -> None:  # fmt: skip
    gguf = _gguf()
    cfg = model.config
    w = gguf.GGUFWriter(path, "llama")
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(float(cfg.rope_theta))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(cfg.vocab_size)
    ftype = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}[dtype]
    w.add_file_type(int(getattr(gguf.LlamaFileType, ftype)))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model(tok["model"])
    w.add_tokenizer_pre(tok["pre"])
    w.add_token_list(tok["tokens"])
    w.add_token_types(tok["token_type"])
    if tok["merges"]:
        w.add_token_merges(tok["merges"])
    for key in ("bos_token_id", "eos_token_id", "padding_token_id"):
        if key in tok:
            w.add_uint32(f"tokenizer.ggml.{key}", tok[key])
    w.add_add_bos_token(tok["add_bos_token"])
    if chat_template:
        w.add_chat_template(chat_template)
    for tname, data, qtype in tensors:
        w.add_tensor(tname, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def export_gguf(
    model: Any,
    tokenizer: Any,
    out_path: str | os.PathLike,
    dtype: str = "f32",
    *,
    chat_template: str | None = None,
    name: str | None = None,
    pre: str | None = None,
    overwrite: bool = False,
    inputs: Mapping[str, str | os.PathLike | None] | None = None,
) -> str:
    """Write ``model`` (a minipeft LlamaForCausalLM, float weights) and ``tokenizer`` to the
    GGUF file ``out_path`` with 2-D tensors in ``dtype`` ("f32", "f16" or "q8_0"); returns the
    path. ``pre`` overrides the pre-tokenizer's llama.cpp name; ``inputs`` are paths the file
    may not replace."""
    _check_type(dtype)
    _check_model(model)
    out = os.fspath(out_path)
    check_output_path(out, dict(inputs or {}), option="--out")
    if os.path.isdir(out):
        raise ValueError(f"--out {out!r} is a folder; expected a .gguf file path")
    if os.path.exists(out) and not overwrite:
        raise ValueError(f"--out {out!r} already exists; pass --overwrite to replace it")
    tensors = gguf_tensors(model, dtype)
    tok = tokenizer_metadata(tokenizer, model.config.vocab_size, pre)
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(out) + ".", suffix=".tmp")
    os.close(fd)
    try:
        _write(tmp, model, tensors, tok, dtype, chat_template, name or "minipeft-llama")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:  # an error or Ctrl-C: nothing under the final name, no temp left
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return out
