"""4-bit checkpoints in the layout transformers writes for bitsandbytes, both ways.

    save_quantized(model, "out/")        # config.json (+ quantization_config) + model.safetensors
    model = load_quantized("out/")       # also reads folders transformers + bitsandbytes saved

For each 4-bit layer at path P transformers (bitsandbytes' ``Linear4bit._save_to_state_dict``,
``QuantState.as_dict(packed=True)``) stores

    P.weight                                  uint8 (ceil(n/2), 1)   the packed codes
    P.weight.absmax                           float32 (n_blocks,), or uint8 with double quant
    P.weight.quant_map                        float32 (16,)          the NF4 / FP4 codebook
    P.weight.nested_absmax                    float32 (ceil(n_blocks/256),)    double quant only
    P.weight.nested_quant_map                 float32 (256,)                   double quant only
    P.weight.quant_state.bitsandbytes__nf4    uint8: the UTF-8 bytes of a JSON object
        {"quant_type", "blocksize", "dtype", "shape", ["nested_blocksize", "nested_dtype",
         "nested_offset"]}                    (``__fp4`` for FP4)
    P.bias                                    float (out,)

The 4-bit weight is stored (out, in) for every model, GPT-2 included: transformers transposes
GPT-2's Conv1D weights before quantizing them, so only the float Conv1D weights left unquantized
are transposed (by :mod:`minipeft.models.checkpoint`, as for any checkpoint). config.json
carries ``quantization_config`` (``BitsAndBytesConfig.to_dict()``).

This is kept beside ``PreTrainedModel.save_pretrained`` / ``from_pretrained`` rather than inside
them because ``models/`` sits below ``quant/`` in the layer order.
"""

from __future__ import annotations

import copy
import json
import os
import re
from typing import Any

import numpy as np

from ..backend import to_numpy
from ..fileio import atomic_folder
from ..models.checkpoint import (
    check_state_dict,
    hf_to_minipeft_state_dict,
    is_weights_file,
    load_state_dict_from_folder,
    minipeft_to_hf_state_dict,
    save_state_dict_to_folder,
    weights_location,
)
from ..models.config import load_config
from ..models.hub import AutoModelForCausalLM
from ..nn import Linear, Module
from ..nn.init import skip_init
from .linear4bit import Linear4bit, check_quant_state
from .model import bnb_quantization_config
from .state import NestedState, QuantState

__all__ = [
    "load_quantized",
    "quant_state_tensors",
    "quantized_state_dict",
    "save_quantized",
    "state_from_tensors",
]

_QS_KEY = re.compile(r"^(?P<path>.+)\.weight\.quant_state\.bitsandbytes__(?P<qt>[a-z0-9]+)$")
_STAT_SUFFIXES = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")
_META_KEYS = {
    "quant_type",
    "blocksize",
    "dtype",
    "shape",
    "nested_blocksize",
    "nested_dtype",
    "nested_offset",
}


# ---------------------------------------------------------------------- one layer
def quant_state_tensors(packed: Any, state: QuantState) -> dict[str, np.ndarray]:
    """bitsandbytes' ``QuantState.as_dict(packed=True)`` plus the weight, keyed below
    ``<layer>.weight`` ("" is the weight itself), as host arrays."""
    meta: dict[str, Any] = {
        "quant_type": state.quant_type,
        "blocksize": int(state.blocksize),
        "dtype": str(np.dtype(state.dtype)),
        "shape": [int(s) for s in state.shape],
    }
    out = {
        "": to_numpy(packed),
        ".absmax": to_numpy(state.absmax),
        ".quant_map": to_numpy(state.code).astype(np.float32),
    }
    if state.nested is not None:
        out[".nested_absmax"] = to_numpy(state.nested.absmax).astype(np.float32)
        out[".nested_quant_map"] = to_numpy(state.nested.code).astype(np.float32)
        # bnb writes offset.item() of a float32 tensor: the float32 value, printed as a double
        meta.update(
            nested_blocksize=int(state.nested.blocksize),
            nested_dtype="float32",
            nested_offset=float(np.float32(state.offset)),
        )
    blob = json.dumps(meta).encode("utf-8")  # json.dumps defaults, as pack_dict_to_tensor
    out[f".quant_state.bitsandbytes__{state.quant_type}"] = np.frombuffer(blob, np.uint8).copy()
    return out


def state_from_tensors(
    tensors: dict[str, Any], path: str, source: str, shape: tuple[int, int] | None = None
) -> tuple[Any, QuantState]:
    """(packed, QuantState) of the 4-bit layer at ``path`` from file ``tensors`` (HF keys);
    raises ``ValueError`` naming the key and ``source`` when anything is missing, malformed or
    inconsistent with the packed weight or with ``shape`` (the model's (out, in))."""
    w = f"{path}.weight"
    qs_keys = [k for k in tensors if k.startswith(f"{w}.quant_state.")]
    if len(qs_keys) != 1:
        raise ValueError(
            f"{source}: expected one {w}.quant_state.bitsandbytes__<nf4|fp4> entry, found {qs_keys}"
        )
    qt = qs_keys[0].rpartition("__")[2]
    try:
        meta = json.loads(bytes(to_numpy(tensors[qs_keys[0]]).astype(np.uint8)).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{source}: {qs_keys[0]} is not a UTF-8 JSON object: {e}") from None
    if not isinstance(meta, dict) or not {"quant_type", "blocksize", "dtype", "shape"} <= set(meta):
        raise ValueError(
            f"{source}: {qs_keys[0]}: expected quant_type, blocksize, dtype and "
            f"shape, found {meta!r}"
        )
    if set(meta) - _META_KEYS:
        raise ValueError(
            f"{source}: {qs_keys[0]}: unknown entries {sorted(set(meta) - _META_KEYS)}"
        )
    if meta["quant_type"] != qt:
        raise ValueError(
            f"{source}: {qs_keys[0]} says quant_type {meta['quant_type']!r} but its key says {qt!r}"
        )
    for suffix in ("absmax", "quant_map", ""):
        key = f"{w}.{suffix}" if suffix else w
        if key not in tensors:
            raise ValueError(f"{source}: {key} is missing (a 4-bit layer needs it)")
    nested_keys = [f"{w}.nested_absmax", f"{w}.nested_quant_map"]
    has_nested = [k in tensors for k in nested_keys]
    if any(has_nested) != all(has_nested) or any(has_nested) != ("nested_offset" in meta):
        raise ValueError(
            f"{source}: {w}: double quantization needs {', '.join(nested_keys)} and "
            "nested_offset/nested_blocksize in the quant_state, all or none"
        )
    bad = [
        f"{k}={meta[k]!r}"
        for k, ok in (
            ("blocksize", lambda v: isinstance(v, int) and not isinstance(v, bool)),
            ("dtype", lambda v: v in ("float16", "float32", "float64", "bfloat16")),
            ("nested_offset", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
            ("nested_blocksize", lambda v: isinstance(v, int) and not isinstance(v, bool)),
        )
        if k in meta and not ok(meta[k])
    ]
    if bad:
        raise ValueError(f"{source}: {qs_keys[0]}: malformed entries {', '.join(bad)}")
    dtype = "float32" if meta["dtype"] == "bfloat16" else meta["dtype"]  # no bfloat16 in NumPy
    nested = None
    if all(has_nested):
        nested = NestedState(
            absmax=tensors[nested_keys[0]],
            code=tensors[nested_keys[1]],
            blocksize=int(meta.get("nested_blocksize", 256)),
        )
    shape_m = meta["shape"]
    if not (isinstance(shape_m, list) and all(isinstance(s, int) for s in shape_m)):
        raise ValueError(f"{source}: {qs_keys[0]}: shape must be a list of ints, found {shape_m!r}")
    state = QuantState(
        absmax=tensors[f"{w}.absmax"],
        shape=tuple(shape_m),
        code=tensors[f"{w}.quant_map"],
        blocksize=meta["blocksize"],
        quant_type=qt,
        dtype=dtype,
        offset=meta.get("nested_offset"),
        nested=nested,
    )
    check_quant_state(tensors[w], state, f"{source}: {w}")
    if shape is not None and tuple(state.shape) != tuple(shape):
        raise ValueError(
            f"{source}: {w}: the 4-bit state says shape {tuple(state.shape)}, but "
            f"the model's layer is (out, in) = {tuple(shape)}"
        )
    return tensors[w], state


# ---------------------------------------------------------------------- saving
def _quant_layers(model: Module) -> dict[str, Linear4bit]:
    return {n: m for n, m in model.named_modules() if isinstance(m, Linear4bit)}


def quantized_state_dict(model: Module) -> dict[str, np.ndarray]:
    """The model's tensors under transformers' keys and layouts, 4-bit layers as bitsandbytes
    stores them (see the module docstring). Host arrays."""
    cfg = model.config
    layers = _quant_layers(model)
    full = model._to_full_keys  # a bare trunk's keys get the prefix, as in save_pretrained
    quant_keys = {f"{n}.weight" for n in layers}
    floats = {k: v.numpy() for k, v in model.state_dict().items() if k not in quant_keys}
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    hf = minipeft_to_hf_state_dict(full(floats), cfg.model_type, tied)
    for name, layer in layers.items():
        key = next(iter(full({f"{name}.weight": None})))
        for suffix, arr in quant_state_tensors(layer.weight.data, layer.quant_state).items():
            hf[key + suffix] = arr
    if model.task == "base":  # HF saves a bare trunk without the prefix
        cut = len(model.base_model_prefix) + 1
        hf = {k[cut:]: v for k, v in hf.items()}
    return hf


def _config_for(model: Module) -> Any:
    layers = list(_quant_layers(model).values())
    kinds = {(m.quant_type, m.compress_statistics) for m in layers}
    if len(kinds) > 1:
        raise ValueError(
            f"bitsandbytes' quantization_config has one quant type and one double-"
            f"quant flag per model; this model mixes {sorted(kinds)}"
        )
    out = copy.deepcopy(model.config)
    qc = out.extra.get("quantization_config")
    if qc is None or qc.get("quant_method") != "bitsandbytes":
        qt, dq = next(iter(kinds))
        qc = bnb_quantization_config(qt, dq)
    elif kinds and (qc.get("bnb_4bit_quant_type"), qc.get("bnb_4bit_use_double_quant")) != next(
        iter(kinds)
    ):
        qt, dq = next(iter(kinds))
        qc = {**qc, "bnb_4bit_quant_type": qt, "bnb_4bit_use_double_quant": dq}
    out.extra["quantization_config"] = qc
    out.architectures = [model._architecture()]
    floats = [p.dtype for p in model.parameters() if p.dtype.kind == "f"]
    out.dtype = str(floats[0]) if floats else "float32"
    return out


def save_quantized(
    model: Module, folder: str | os.PathLike, max_shard_size: int | str = "5GB"
) -> None:
    """Write a 4-bit model as transformers + bitsandbytes do: config.json with
    ``quantization_config`` and model.safetensors (or shards). Atomic, like save_pretrained."""
    if not hasattr(model, "_to_full_keys") or not hasattr(getattr(model, "config", None), "extra"):
        raise TypeError(
            f"save_quantized saves a minipeft PreTrainedModel (GPT-2, LLaMA), found "
            f"{type(model).__name__}"
        )
    if not _quant_layers(model):
        raise ValueError(
            f"{type(model).__name__} holds no 4-bit layer: quantize_model() it "
            "first, or save it with save_pretrained()"
        )
    if any(hasattr(m, "base_layer") for m in model.modules()):
        raise ValueError(
            "the model holds adapter layers: save the adapter with the PeftModel's "
            "save_pretrained(), or merge_and_unload() first"
        )
    tensors = quantized_state_dict(model)
    config = _config_for(model)
    with atomic_folder(folder, keep=lambda name: not is_weights_file(name)) as tmp:
        save_state_dict_to_folder(tmp, tensors, max_shard_size)
        config.save_pretrained(tmp)


# ---------------------------------------------------------------------- loading
def _model_key(hf_path: str, model_type: str) -> str:
    """A layer path of the file as minipeft names it (a bare-trunk file lacks the prefix)."""
    probe = {f"{hf_path}.weight": np.zeros((1, 1), np.float32)}
    return next(iter(hf_to_minipeft_state_dict(probe, model_type, False))).removesuffix(".weight")


def load_quantized(
    folder: str | os.PathLike,
    device: str = "cpu",
    dtype: Any = None,
    model_class: Any = None,
    **config_overrides: Any,
) -> Module:
    """Load a bitsandbytes 4-bit checkpoint folder (ours or transformers') as a model with
    Linear4bit layers; eval mode, float tensors float32 unless ``dtype``.

    ``model_class`` defaults to the causal-LM class of config.json's ``model_type``. Raises,
    naming the file and key, when config.json has no bitsandbytes 4-bit ``quantization_config``,
    a layer's statistics are missing or malformed, or a 4-bit state does not match its packed
    weight or the model's layer shape.
    """
    folder = os.fspath(folder)
    config = load_config(folder)
    if config_overrides:
        config = type(config).from_dict({**config.to_dict(), **config_overrides}, source=folder)
    qc = config.extra.get("quantization_config")
    source, shards = weights_location(folder)
    if (
        not isinstance(qc, dict)
        or qc.get("quant_method") != "bitsandbytes"
        or not (qc.get("load_in_4bit") or qc.get("_load_in_4bit"))
    ):
        found = "none" if qc is None else f"{qc.get('quant_method')!r} (load_in_4bit="
        found += "" if qc is None else f"{qc.get('load_in_4bit')})"
        raise ValueError(
            f"{folder}/config.json: expected a bitsandbytes 4-bit "
            f"quantization_config, found {found}; a float checkpoint loads with "
            "from_pretrained()"
        )
    cls = model_class or AutoModelForCausalLM._class_for(config.model_type, folder)
    with skip_init():  # the checkpoint fills every weight next
        model = cls(config, init_weights=False)
    raw = dict(load_state_dict_from_folder(folder))
    quant: dict[str, Any] = {}
    for key in [k for k in raw if _QS_KEY.match(k)]:
        hf_path = _QS_KEY.match(key)["path"]
        path = _model_key(hf_path, config.model_type)
        if cls.task == "base":  # a bare trunk's modules lack the prefix
            path = path.removeprefix(cls.base_model_prefix + ".")
        try:
            layer = model.get_submodule(path)
        except AttributeError:
            raise ValueError(f"{source}: {key}: the model has no layer {path!r}") from None
        if type(layer) is not Linear:
            raise ValueError(
                f"{source}: {key}: 4-bit weights for {path!r}, which is a "
                f"{type(layer).__name__}, not a Linear"
            )
        where = shards.get(key, source)
        packed, state = state_from_tensors(
            raw, hf_path, where, shape=(layer.out_features, layer.in_features)
        )
        bias = None if layer.bias is None else layer.bias.data  # filled by load_state_dict
        model.set_submodule(path, Linear4bit.from_quantized(packed, state, bias, where))
        for suffix in ("", *(f".{s}" for s in _STAT_SUFFIXES)):
            raw.pop(f"{hf_path}.weight{suffix}", None)
        raw.pop(key)
        quant[f"{path}.weight"] = packed
    stray = [
        k
        for k in raw
        if re.search(
            r"\.weight\.(absmax|quant_map|nested_absmax|"
            r"nested_quant_map|quant_state\..*)$",
            k,
        )
    ]
    if stray:
        raise ValueError(f"{source}: 4-bit statistics without a usable quant_state entry: {stray}")
    if not quant:
        raise ValueError(
            f"{source}: config.json declares 4-bit quantization, but no tensor is stored in 4 bits"
        )
    tied = bool(getattr(config, "tie_word_embeddings", False))
    sd = hf_to_minipeft_state_dict(
        raw, config.model_type, tied, restore_lm_head=cls.task == "causal_lm"
    )
    if cls.task == "base":
        sd = {k.removeprefix(cls.base_model_prefix + "."): v for k, v in sd.items()}
    sd.update(quant)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    check_state_dict(expected, sd, source=source, where=shards)
    model.load_state_dict(
        {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in sd.items()}
    )
    model.tie_weights()
    model.name_or_path = folder
    model.is_loaded_in_4bit = True
    model.is_quantized = True
    model.to(device)
    if dtype is not None:
        model.to(dtype)
    return model.eval()
