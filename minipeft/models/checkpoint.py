"""Safetensors checkpoints on the host: files, (sharded) folders, and HF <-> minipeft key layouts.

Everything here works on host NumPy arrays, so it needs neither torch nor the minipeft engine.

Single safetensors files and atomic writes live in :mod:`minipeft.fileio` (re-exported here).

A Hugging Face model folder holds ``model.safetensors``, or shards ``model-00001-of-0000K.
safetensors`` plus ``model.safetensors.index.json`` = ``{"metadata": {"total_size": bytes},
"weight_map": {tensor name: shard file}}``. ``pytorch_model.bin`` is a pickle (loading one runs
arbitrary code), so it is never read.

Key conventions (minipeft modules use HF's module names, so keys match HF's except for layout):

- GPT-2: HF stores ``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj`` as Conv1D with
  weight (in, out); minipeft's Linear holds (out, in), so those four ``.weight`` tensors are
  transposed both ways. Files saved from a bare ``GPT2Model`` (or by old transformers) lack the
  ``transformer.`` prefix (``h.0.attn...``, ``wte.weight``); it is added on load.
- LLaMA: same layout; a bare ``LlamaModel`` file lacks the ``model.`` prefix; it is added.
- Non-parameter buffers some files carry (GPT-2 ``attn.bias``/``attn.masked_bias`` causal masks,
  LLaMA ``rotary_emb.inv_freq``) are dropped.
- Tied embeddings: transformers omits ``lm_head.weight`` when ``tie_word_embeddings`` is true;
  on load it is restored from ``transformer.wte.weight`` / ``model.embed_tokens.weight``, on
  save it is omitted again (after checking it really equals the embedding).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..fileio import (
    atomic_write_bytes,
    load_safetensors,
    safetensors_metadata,
    save_safetensors,
)

__all__ = [
    "SAFE_WEIGHTS_NAME",
    "is_weights_file",
    "SAFE_WEIGHTS_INDEX_NAME",
    "atomic_write_bytes",
    "load_safetensors",
    "safetensors_metadata",
    "save_safetensors",
    "parse_size",
    "load_state_dict_from_folder",
    "save_state_dict_to_folder",
    "hf_to_minipeft_state_dict",
    "minipeft_to_hf_state_dict",
    "check_state_dict",
    "weights_location",
]

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
_SHARD_RE = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")


def is_weights_file(name: str) -> bool:
    """A file that a model save owns: config, weights, shards or their index."""
    return name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, "config.json") or bool(
        _SHARD_RE.match(name)
    )


_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string like "200MB", "5GB" (powers of 10) or "1GiB" (powers of 2)."""
    m = (
        re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", size, re.I)
        if isinstance(size, str)
        else None
    )
    if m:
        value = int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").upper()])
    else:
        value = size if isinstance(size, int) and not isinstance(size, bool) else 0
    if value <= 0:
        raise ValueError(
            "max_shard_size: expected a positive number of bytes or a string like '200MB', "
            f"'5GB' or '1GiB', found {size!r}"
        )
    return value


def load_state_dict_from_folder(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read ``folder/model.safetensors``, or the shards listed by its index json."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"checkpoint folder not found: {folder}")
    single = os.path.join(folder, SAFE_WEIGHTS_NAME)
    index = os.path.join(folder, SAFE_WEIGHTS_INDEX_NAME)
    if os.path.isfile(single):
        return load_safetensors(single)
    if os.path.isfile(index):
        return _load_sharded(folder, index)
    found = sorted(os.listdir(folder))
    raise FileNotFoundError(
        f"{folder}: no model weights: looked for {SAFE_WEIGHTS_NAME} and "
        f"{SAFE_WEIGHTS_INDEX_NAME}, found {found}. pytorch_model.bin is not supported (it is "
        "a pickle, and unpickling runs arbitrary code): convert it with transformers' "
        "save_pretrained(folder, safe_serialization=True)"
    )


def weights_location(folder: str | os.PathLike) -> tuple[str, dict[str, str]]:
    """How errors name the weights of a loadable ``folder``, and which shard holds each tensor.

    ``("model.safetensors in <folder>", {})`` for one file, or
    ``("model.safetensors.index.json in <folder>", {tensor name: shard file})`` for shards.
    """
    folder = os.fspath(folder)
    index = os.path.join(folder, SAFE_WEIGHTS_INDEX_NAME)
    if os.path.isfile(os.path.join(folder, SAFE_WEIGHTS_NAME)) or not os.path.isfile(index):
        return f"{SAFE_WEIGHTS_NAME} in {folder}", {}
    with open(index, encoding="utf-8") as f:
        weight_map = json.load(f).get("weight_map", {})
    return f"{SAFE_WEIGHTS_INDEX_NAME} in {folder}", dict(weight_map)


def _load_sharded(folder: str, index: str) -> dict[str, np.ndarray]:
    try:
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ValueError(
            f"{index}: expected a JSON object with a 'weight_map' {{tensor: shard file}} ({e!r})"
        ) from e
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index}: 'weight_map' must be a dict, found {type(weight_map).__name__}")
    out: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        if not isinstance(shard, str) or os.path.basename(shard) != shard or shard in ("", ".."):
            raise ValueError(f"{index}: shard names must be plain file names, found {shard!r}")
        path = os.path.join(folder, shard)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{index}: lists shard {shard!r}, which is missing ({path})")
        tensors = load_safetensors(path)
        twice = sorted(tensors.keys() & out.keys())
        if twice:
            raise ValueError(f"{folder}: tensors in more than one shard: {_preview(twice)}")
        out.update(tensors)
    absent = sorted(k for k in weight_map if k not in out)
    if absent:
        raise ValueError(
            f"{index}: weight_map lists {len(absent)} tensors missing from their shards: "
            f"{_preview(absent)}"
        )
    return out


def save_state_dict_to_folder(
    folder: str | os.PathLike,
    tensors: Mapping[str, np.ndarray],
    max_shard_size: int | str = "5GB",
    metadata: Mapping[str, str] | None = None,
) -> list[str]:
    """Write ``tensors`` as HF does: one ``model.safetensors``, or shards of at most
    ``max_shard_size`` bytes (a larger tensor gets a shard of its own) plus the index json.

    Files of an earlier save that the new one does not use are removed afterwards, so the
    folder never holds both forms. Returns the paths written.
    """
    folder = os.fspath(folder)
    limit = parse_size(max_shard_size)
    os.makedirs(folder, exist_ok=True)
    shards: list[dict[str, np.ndarray]] = [{}]
    used = 0
    for name, arr in tensors.items():
        nbytes = getattr(arr, "nbytes", 0)
        if shards[-1] and used + nbytes > limit:
            shards.append({})
            used = 0
        shards[-1][name] = arr
        used += nbytes
    if len(shards) == 1:
        names = [SAFE_WEIGHTS_NAME]
    else:
        k = len(shards)
        names = [f"model-{i + 1:05d}-of-{k:05d}.safetensors" for i in range(k)]
    written = []
    for name, shard in zip(names, shards, strict=True):
        written.append(os.path.join(folder, name))
        save_safetensors(written[-1], shard, metadata)
    if len(shards) > 1:
        index = {
            "metadata": {
                "total_parameters": sum(int(np.size(a)) for a in tensors.values()),
                "total_size": sum(int(a.nbytes) for a in tensors.values()),
            },
            "weight_map": {k: n for n, s in zip(names, shards, strict=True) for k in sorted(s)},
        }
        written.append(os.path.join(folder, SAFE_WEIGHTS_INDEX_NAME))
        text = json.dumps(index, indent=2, sort_keys=True) + "\n"
        atomic_write_bytes(written[-1], text.encode("utf-8"))
    for entry in os.listdir(folder):  # stale files from an earlier save
        stale = entry in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME) or _SHARD_RE.match(entry)
        if stale and os.path.join(folder, entry) not in written:
            os.remove(os.path.join(folder, entry))
    return written


# -------------------------------------------------------------------------------- conversion
_PREFIX = {"gpt2": "transformer.", "llama": "model."}
_EMBED = {"gpt2": "transformer.wte.weight", "llama": "model.embed_tokens.weight"}
# Keys of a bare base model (no prefix): GPT2Model / LlamaModel files, old GPT-2 files.
_BARE = {
    "gpt2": re.compile(r"^(h\.\d+\.|wte\.|wpe\.|ln_f\.)"),
    "llama": re.compile(r"^(layers\.\d+\.|embed_tokens\.|norm\.)"),
}
_BUFFERS = {
    "gpt2": re.compile(r"\.attn\.(bias|masked_bias)$"),  # causal-mask buffers, not parameters
    "llama": re.compile(r"\.rotary_emb\.inv_freq$"),  # recomputed from rope_theta
}
_GPT2_CONV1D = re.compile(r"^transformer\.h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")  # fmt: skip  # noqa: E501


def _check_model_type(model_type: str) -> None:
    if model_type not in _PREFIX:
        raise ValueError(f"model_type: expected one of {sorted(_PREFIX)}, found {model_type!r}")


def _transpose_conv1d(key: str, arr: np.ndarray) -> np.ndarray:
    if arr.ndim != 2:
        raise ValueError(f"{key}: expected a 2-D Conv1D/Linear weight, found shape {arr.shape}")
    return np.ascontiguousarray(arr.T)  # (in, out) <-> (out, in)


def hf_to_minipeft_state_dict(
    sd: Mapping[str, np.ndarray],
    model_type: str,
    tie_word_embeddings: bool,
    *,
    restore_lm_head: bool = True,
) -> dict[str, np.ndarray]:
    """HF checkpoint keys/layouts -> minipeft's (see the module docstring for the rules).

    ``restore_lm_head=False`` skips re-creating a tied ``lm_head.weight`` (for models without an
    LM head, e.g. sequence classification with its ``score`` layer).
    """
    _check_model_type(model_type)
    prefix = _PREFIX[model_type]
    out: dict[str, np.ndarray] = {}
    for key, arr in sd.items():
        if _BUFFERS[model_type].search(key):
            continue
        new = prefix + key if _BARE[model_type].match(key) else key
        if new in out:
            raise ValueError(
                f"checkpoint holds {new!r} both with and without the prefix {prefix!r}"
            )
        if model_type == "gpt2" and _GPT2_CONV1D.match(new):
            arr = _transpose_conv1d(new, arr)
        out[new] = arr
    embed = _EMBED[model_type]
    if tie_word_embeddings and restore_lm_head and "lm_head.weight" not in out and embed in out:
        out["lm_head.weight"] = out[embed]  # the same array: tied
    return out


def minipeft_to_hf_state_dict(
    sd: Mapping[str, np.ndarray], model_type: str, tie_word_embeddings: bool
) -> dict[str, np.ndarray]:
    """minipeft keys/layouts -> HF's: transpose GPT-2's Conv1D weights, omit a tied lm_head."""
    _check_model_type(model_type)
    out = {}
    for key, arr in sd.items():
        if model_type == "gpt2" and _GPT2_CONV1D.match(key):
            arr = _transpose_conv1d(key, arr)
        out[key] = arr
    embed = _EMBED[model_type]
    if tie_word_embeddings and "lm_head.weight" in out:
        head = out.pop("lm_head.weight")
        emb = out.get(embed)
        same = emb is not None and (
            head is emb or (head.shape == emb.shape and np.array_equal(head, emb))
        )
        if not same:
            found = "missing" if emb is None else "different values"
            raise ValueError(
                f"tie_word_embeddings=True: expected lm_head.weight to equal {embed}, found "
                f"{found}; saving would lose lm_head.weight (set tie_word_embeddings=False "
                "in the config to save it)"
            )
    return out


def _preview(keys: list[Any], limit: int = 20) -> str:
    shown = ", ".join(str(k) for k in keys[:limit])
    return shown + (f", ... and {len(keys) - limit} more" if len(keys) > limit else "")


def check_state_dict(
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, Any],
    source: str,
    where: Mapping[str, str] | None = None,
) -> None:
    """Raise one ValueError listing missing keys, unexpected keys and shape mismatches.

    ``expected``: key -> shape (e.g. ``{k: v.shape for k, v in model.state_dict().items()}``);
    ``found``: key -> array (anything with ``.shape``); ``source`` names the file or folder;
    ``where`` (optional): key -> the shard file holding it, shown after each key found.
    """
    where = where or {}

    def at(k: str) -> str:
        return f" [in {where[k]}]" if k in where else ""

    missing = sorted(set(expected) - set(found))
    unexpected = [f"{k}{at(k)}" for k in sorted(set(found) - set(expected))]
    mismatched = [
        f"{k} (expected {tuple(expected[k])}, found {tuple(found[k].shape)}){at(k)}"
        for k in sorted(set(expected) & set(found))
        if tuple(found[k].shape) != tuple(expected[k])
    ]
    if not (missing or unexpected or mismatched):
        return
    lines = [f"{source}: checkpoint does not match the model:"]
    for label, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", mismatched),
    ):
        if items:
            lines.append(f"  {len(items)} {label}: {_preview(items)}")
    raise ValueError("\n".join(lines))
