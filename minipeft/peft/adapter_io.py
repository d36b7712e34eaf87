"""Adapter files in PEFT's format: ``adapter_config.json`` + ``adapter_model.safetensors``.

In memory a PEFT model's state-dict keys carry the adapter name; on disk PEFT removes it, so an
adapter can be loaded under any name (PEFT's ``get_peft_model_state_dict`` /
``set_peft_model_state_dict``)::

    in memory (P = base_model.model.transformer.)  on disk
    P h.0.attn.c_attn.lora_A.default.weight     -> P h.0.attn.c_attn.lora_A.weight
    P wte.lora_embedding_A.default              -> P wte.lora_embedding_A
    base_model.model.score.modules_to_save.default.weight -> base_model.model.score.weight
    P h.0.attn.c_attn.base_layer.bias           -> unchanged (saved when bias="lora_only"/"all")

Adapter "default" is saved in ``folder/``, any other adapter in ``folder/<adapter_name>/``.
Weights are only ever read from safetensors; pickled ``adapter_model.bin`` files are refused.
A method with another folder layout (AdapterHub's, for bottleneck adapters) registers an
:class:`AdapterFiles` of its own; :func:`load_adapter_files` tells them apart by the config's
content. Pure Python + host NumPy: no engine import.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np
from safetensors.numpy import save

from minipeft.fileio import atomic_write_bytes, load_safetensors, safetensors_metadata
from minipeft.peft.config import CONFIG_NAME, PeftConfig, read_json_object
from minipeft.peft.matching import is_module_to_save

__all__ = [
    "PICKLE_WEIGHTS_NAME",
    "AdapterFiles",
    "adapter_metadata",
    "WEIGHTS_NAME",
    "adapter_dir",
    "file_format",
    "register_file_format",
    "check_adapter_keys",
    "from_peft_keys",
    "load_adapter_files",
    "read_adapter_config",
    "remove_adapter_name",
    "save_adapter",
    "to_peft_keys",
]

WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_WEIGHTS_NAME = "adapter_model.bin"
PEFT_PREFIX = "base_model.model."  # a PeftModel's keys start here

V = TypeVar("V")


def remove_adapter_name(key: str, adapter_name: str) -> str:
    """In-memory key -> on-disk key (PEFT's ``_remove_adapter_name_from_state_dict_key``).

    ``x.lora_A.default.weight`` -> ``x.lora_A.weight`` (a module's parameter) and
    ``x.lora_embedding_A.default`` -> ``x.lora_embedding_A`` (a bare parameter). Only the name at
    the end is removed, so a module that happens to be called like the adapter is left alone.
    """
    if "." not in key:
        return key
    if key.endswith("." + adapter_name):
        return key[: -len(adapter_name) - 1]
    head, _, last = key.rpartition(".")
    if head.endswith("." + adapter_name):
        head = head[: -len(adapter_name) - 1]
    return f"{head}.{last}"


def _prefixes(prefixes: tuple[str, ...] | None) -> tuple[str, ...]:
    """The given parameter markers, or every registered method's (``lora_``, ``ia3_``, ...)."""
    if prefixes is not None:
        return prefixes
    from minipeft.peft.registry import parameter_prefixes  # noqa: PLC0415 (a cycle otherwise)

    return parameter_prefixes()


def _adapter_part(parts: list[str], prefixes: tuple[str, ...]) -> int | None:
    """Index of the adapter-container part (``lora_A``, ``ia3_l``) of a key split on dots; the
    adapter name follows it and is either last (a bare parameter) or followed by the parameter
    name (``.weight``)."""
    for i in (len(parts) - 2, len(parts) - 3):
        if i >= 0 and parts[i].startswith(prefixes):
            return i
    return None


def _to_save_owner(parts: list[str]) -> str | None:
    """Adapter name of a ``<module>.modules_to_save.<adapter>.<param>`` key."""
    for i, part in enumerate(parts[:-2]):
        if part == "modules_to_save":
            return parts[i + 1]
    return None


def to_peft_keys(
    state_dict: Mapping[str, V],
    adapter_name: str = "default",
    bias: str = "none",
    prefixes: tuple[str, ...] | None = None,
) -> dict[str, V]:
    """Select adapter ``adapter_name``'s entries of a PeftModel state dict and name them as on disk.

    Saved: the adapter's ``lora_*`` tensors, its ``modules_to_save`` copies (under the wrapped
    module's own name), and biases per ``bias``: ``"all"`` every ``*.bias`` outside adapter
    containers, ``"lora_only"`` the ``<module>.base_layer.bias`` of LoRA-wrapped modules. Values
    pass through untouched (arrays or tensors).
    """
    if bias not in ("none", "all", "lora_only"):
        raise ValueError(f"bias: expected 'none', 'all' or 'lora_only', found {bias!r}")
    prefixes = _prefixes(prefixes)
    out: dict[str, V] = {}
    seen_adapters: set[str] = set()
    wrapped: set[str] = set()  # modules with a lora_* child, i.e. LoRA layers
    for key, value in state_dict.items():
        parts = key.split(".")
        i = _adapter_part(parts, prefixes)
        if i is not None:
            owner = parts[i + 1]
            seen_adapters.add(owner)
            if owner == adapter_name:
                wrapped.add(".".join(parts[:i]))  # only this adapter's layers own biases here
                out[remove_adapter_name(key, adapter_name)] = value
            continue
        owner = _to_save_owner(parts)
        if owner is not None:
            seen_adapters.add(owner)
            if owner == adapter_name:  # score.modules_to_save.default.weight -> score.weight
                out[key.replace(f".modules_to_save.{adapter_name}.", ".", 1)] = value
    if not out:
        raise ValueError(
            f"no tensors of adapter {adapter_name!r} in the state dict; expected keys like "
            f"'...lora_A.{adapter_name}.weight', found adapters {sorted(seen_adapters) or 'none'}"
        )
    if bias == "none":
        return out
    for key, value in state_dict.items():
        if not (key == "bias" or key.endswith(".bias")):
            continue
        parts = key.split(".")
        # Biases of adapter containers and of the frozen original of a modules_to_save module
        # are not the base model's trainable biases.
        if (
            _adapter_part(parts, prefixes) is not None
            or "modules_to_save" in parts
            or "original_module" in parts
        ):
            continue
        base = key.removesuffix(".base_layer.bias")
        if bias == "all" or (base != key and base in wrapped):
            out[key] = value
    return out


def from_peft_keys(
    tensors: Mapping[str, V],
    adapter_name: str = "default",
    modules_to_save: list[str] | None = None,
    prefixes: tuple[str, ...] | None = None,
) -> dict[str, V]:
    """On-disk keys -> in-memory keys of adapter ``adapter_name`` (inverse of :func:`to_peft_keys`).

    ``lora_*`` keys get the adapter name back; keys of a module named in ``modules_to_save`` (PEFT's
    suffix rule) go to ``<module>.modules_to_save.<adapter_name>.<param>``; anything else (saved
    biases, unknown keys) passes through unchanged for :func:`check_adapter_keys` to judge.
    (``to_peft_keys`` with ``bias="all"`` omits two redundant keys PEFT writes for a bias of a
    module to save, ``<m>.original_module.bias`` and ``<m>.modules_to_save.bias``; read back here
    they are skipped.)
    """
    prefixes = _prefixes(prefixes)
    out: dict[str, V] = {}
    for key, value in tensors.items():
        if _redundant_peft_key(key):
            # PEFT's bias="all" also writes these two copies of a module-to-save's bias: the frozen
            # original (equal to the base model's) and a duplicate of the trained one. Skip both.
            continue
        parts = key.split(".")
        if parts[-1].startswith(prefixes):
            new = f"{key}.{adapter_name}"
        elif len(parts) >= 2 and parts[-2].startswith(prefixes):
            new = ".".join([*parts[:-1], adapter_name, parts[-1]])
        else:
            new = _insert_modules_to_save(parts, adapter_name, modules_to_save) or key
        if new in out:
            raise ValueError(f"two adapter keys map to {new!r}; found duplicate input {key!r}")
        out[new] = value
    return out


def _redundant_peft_key(key: str) -> bool:
    parts = key.split(".")
    return "original_module" in parts or "modules_to_save" in parts


def _insert_modules_to_save(parts: list[str], adapter_name: str, to_save: list[str] | None) -> str:
    if not to_save or "base_layer" in parts:
        return ""
    start = 2 if parts[:2] == PEFT_PREFIX.rstrip(".").split(".") else 0
    for j in range(start + 1, len(parts)):  # shortest module path that is a module to save
        if is_module_to_save(".".join(parts[start:j]), to_save):
            return ".".join([*parts[:j], "modules_to_save", adapter_name, *parts[j:]])
    return ""


def adapter_dir(folder: str | os.PathLike, adapter_name: str = "default") -> str:
    """Where PEFT puts an adapter: ``folder`` for "default", else ``folder/<adapter_name>``."""
    folder = os.fspath(folder)
    return folder if adapter_name == "default" else os.path.join(folder, adapter_name)


# ---------------------------------------------------------------------- file formats
class AdapterFiles:
    """One adapter folder layout. Both PEFT and AdapterHub name the config ``adapter_config.json``
    and tell themselves apart by its content; a format says whether a parsed config is its own
    (:meth:`claims`), and reads and writes the config and the weights. This class is PEFT's
    layout (``adapter_model.safetensors``, pickled ``adapter_model.bin`` refused)."""

    name = "peft"
    weights_name = WEIGHTS_NAME
    pickle_name = PICKLE_WEIGHTS_NAME
    how_to_convert = (
        "Convert it with PEFT (save_pretrained(..., safe_serialization=True)) in a trusted "
        "environment."
    )

    def claims(self, data: dict[str, Any]) -> bool:
        return "peft_type" in data

    def read_config(self, data: dict[str, Any], path: str) -> PeftConfig:
        return PeftConfig.from_dict(data)

    def write_config(self, folder: str, config: PeftConfig, adapter_name: str) -> None:
        saved = copy.copy(config)  # keeps unknown keys; the caller's config stays as it was
        saved.inference_mode = True  # like PEFT
        saved.save_pretrained(folder)


_FORMATS: dict[str, AdapterFiles] = {"peft": AdapterFiles()}


def register_file_format(fmt: AdapterFiles) -> AdapterFiles:
    """Make ``load_adapter_files`` recognise another layout (AdapterHub's, for bottlenecks)."""
    _FORMATS[fmt.name] = fmt
    return fmt


def file_format(name: str) -> AdapterFiles:
    if name not in _FORMATS:
        from minipeft.peft.registry import registered_methods  # noqa: PLC0415 (registers them)

        registered_methods()
    if name not in _FORMATS:
        raise ValueError(f"unknown adapter file format {name!r}; known: {sorted(_FORMATS)}")
    return _FORMATS[name]


def _detect(path: str) -> tuple[AdapterFiles, dict[str, Any]]:
    """The format of the ``adapter_config.json`` in ``path``, and its parsed content."""
    config_path = os.path.join(path, CONFIG_NAME)
    data = read_json_object(config_path)
    from minipeft.peft.registry import registered_methods  # noqa: PLC0415 (registers formats)

    registered_methods()
    for fmt in _FORMATS.values():
        if fmt.claims(data):
            return fmt, data
    raise ValueError(
        f"{config_path}: expected a PEFT adapter config (a 'peft_type' key) or an AdapterHub one "
        f"(a 'config' object and a 'version' key), found keys {sorted(data)}"
    )


def save_adapter(
    folder: str | os.PathLike,
    config: PeftConfig,
    tensors: Mapping[str, Any],
    adapter_name: str = "default",
    metadata: Mapping[str, str] | None = None,
    fmt: str = "peft",
) -> str:
    """Write the config and the weights (safetensors, metadata {"format": "pt"} plus
    ``metadata``) for on-disk-keyed ``tensors`` in layout ``fmt``; return the folder written.
    Like PEFT, a saved PEFT config has ``inference_mode=True`` (the caller's is not changed)."""
    layout = file_format(fmt)
    out_dir = adapter_dir(folder, adapter_name)
    if os.path.isfile(out_dir):
        raise ValueError(f"save_adapter: expected a folder, found the file {out_dir!r}")
    arrays = {}
    for key, value in tensors.items():
        array = np.asarray(value)
        if array.dtype == object or array.dtype.kind not in "biuf":
            raise ValueError(
                f"save_adapter: tensor {key!r}: expected a numeric array, found {array.dtype}"
            )
        arrays[key] = np.ascontiguousarray(array)
    if not arrays:
        raise ValueError("save_adapter: expected at least one tensor, found an empty dict")
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_bytes(
        os.path.join(out_dir, layout.weights_name),
        save(arrays, metadata={"format": "pt", **(metadata or {})}),
    )
    layout.write_config(out_dir, config, adapter_name)
    return out_dir


def _adapter_path(folder: str | os.PathLike, adapter_name: str) -> str:
    """``folder/<adapter_name>`` when it holds an adapter, else ``folder`` (PEFT: the name you
    load under is just a label)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"adapter folder not found: expected a folder at {folder!r}")
    path = adapter_dir(folder, adapter_name)
    if not os.path.isfile(os.path.join(path, CONFIG_NAME)):
        path = folder
    present = sorted(os.listdir(path))
    if CONFIG_NAME not in present:
        raise FileNotFoundError(
            f"{path}: expected {CONFIG_NAME} (an adapter folder), found files {present}"
        )
    return path


def read_adapter_config(folder: str | os.PathLike, adapter_name: str = "default") -> PeftConfig:
    """The config of the adapter in ``folder`` (PEFT's or AdapterHub's), without its weights."""
    path = _adapter_path(folder, adapter_name)
    layout, data = _detect(path)
    return layout.read_config(data, path)


def load_adapter_files(
    folder: str | os.PathLike, adapter_name: str = "default"
) -> tuple[PeftConfig, dict[str, np.ndarray]]:
    """Read an adapter folder, PEFT's or AdapterHub's: ``(config, on-disk-keyed arrays)``.

    Looks in ``folder/<adapter_name>`` (where :func:`save_adapter` puts a non-default adapter) and
    otherwise in ``folder`` itself. The two redundant keys PEFT's ``bias="all"`` writes for a
    module to save are dropped. Pickled weights are refused with what to do instead.
    """
    path = _adapter_path(folder, adapter_name)
    layout, data = _detect(path)
    config = layout.read_config(data, path)
    present = sorted(os.listdir(path))
    weights = os.path.join(path, layout.weights_name)
    if not os.path.isfile(weights):
        if layout.pickle_name in present:
            raise ValueError(
                f"{path}: found only {layout.pickle_name}, a pickle file, which minipeft never "
                f"loads (unpickling can run arbitrary code); expected {layout.weights_name}. "
                f"{layout.how_to_convert}"
            )
        raise FileNotFoundError(f"{path}: expected {layout.weights_name}, found files {present}")
    tensors = load_safetensors(weights)
    # PEFT's bias="all" also writes `<m>.original_module.bias` and `<m>.modules_to_save.bias` for a
    # module to save; both are redundant (see from_peft_keys), so drop them here.
    tensors = {k: v for k, v in tensors.items() if not _redundant_peft_key(k)}
    if not tensors:
        warnings.warn(f"{weights} holds no tensors", stacklevel=2)
    return config, tensors


def adapter_metadata(folder: str | os.PathLike, adapter_name: str = "default") -> dict[str, str]:
    """The safetensors ``__metadata__`` of the adapter :func:`load_adapter_files` would read
    (empty when the folder has no weights file)."""
    path = _adapter_path(folder, adapter_name)
    layout, _ = _detect(path)
    weights = os.path.join(path, layout.weights_name)
    return safetensors_metadata(weights) if os.path.isfile(weights) else {}


ShapeHints = Callable[[list[tuple[str, tuple[int, ...], tuple[int, ...]]]], list[str]]


def check_adapter_keys(
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, Any],
    folder: str | os.PathLike,
    hints: ShapeHints | None = None,
) -> None:
    """Raise one ValueError listing missing keys, unexpected keys and shape mismatches.

    ``expected`` maps each key the model needs to its shape; ``found`` holds the loaded arrays. A
    mismatch usually means an adapter for another architecture or another size; ``hints`` (the
    method's) explains shape mismatches in its own terms.
    """
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(
        (k, tuple(expected[k]), tuple(np.shape(found[k])))
        for k in set(expected) & set(found)
        if tuple(expected[k]) != tuple(np.shape(found[k]))
    )
    if not (missing or unexpected or shapes):
        return

    def listing(title: str, items: list[str]) -> str:
        shown = "\n".join(f"  {i}" for i in items[:20])
        more = f"\n  ... and {len(items) - 20} more" if len(items) > 20 else ""
        return f"{title} ({len(items)}):\n{shown}{more}"

    parts = [f"adapter in {os.fspath(folder)!r} does not fit the model:"]
    if missing:
        parts.append(
            listing("missing keys (the model expects them, the adapter lacks them)", missing)
        )
    if unexpected:
        parts.append(listing("unexpected keys (in the adapter, not in the model)", unexpected))
    if shapes:
        rows = [f"{k}: expected {e}, found {f}" for k, e, f in shapes]
        parts.append(listing("shape mismatches", rows))
        parts.extend(hints(shapes) if hints else [])
    if missing and not (set(expected) & set(found)):
        parts.append("hint: no key matches at all: the adapter was probably made for another model")
    raise ValueError("\n".join(parts))
