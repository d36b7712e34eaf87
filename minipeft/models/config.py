"""Model configurations: validated dataclasses that read and write Hugging Face ``config.json``.

A ``config.json`` written by transformers holds the architecture sizes (``n_embd``,
``hidden_size``, ...) plus bookkeeping keys (``architectures``, ``dtype``,
``transformers_version``, ``output_attentions``, ...). ``ModelConfig.from_dict`` maps the keys it
knows onto dataclass fields, keeps every other key in ``extra`` (so a load -> save round trip
preserves them) and validates the values: a bad value raises ``ValueError`` naming the field, the
expected value and the found one.

transformers 5 conventions handled here:

- the weight dtype is written as ``"dtype"`` (transformers 4 wrote ``"torch_dtype"``); both are
  read, ``"dtype"`` is written. ``transformers_version`` describes the writer, so it is dropped.
- LLaMA's RoPE base lives in ``"rope_parameters": {"rope_theta": θ, "rope_type": "default"}``
  (transformers 4 wrote a top-level ``"rope_theta"`` and ``"rope_scaling"``). Both forms are read;
  both are written so either version loads the file. Only plain RoPE is supported
  (handled by ``LlamaConfig``).
- ``id2label``/``label2id`` are written only when they differ from the default two labels;
  ``num_labels`` is never written (transformers derives it from ``id2label``).

This module holds the shared base ``ModelConfig``, its validation helpers and the ``model_type``
registry behind :func:`config_from_dict` / :func:`load_config`. Each architecture's config lives in
its own module and registers itself: :mod:`minipeft.models.gpt2_config` (``GPT2Config``) and
:mod:`minipeft.models.llama_config` (``LlamaConfig``).
"""

from __future__ import annotations

import copy
import importlib
import json
import os
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from minipeft.models.checkpoint import atomic_write_bytes

__all__ = [
    "CONFIG_NAME",
    "SUPPORTED_ACTIVATIONS",
    "ModelConfig",
    "CONFIG_CLASSES",
    "register_model_config",
    "config_from_dict",
    "load_config",
]

CONFIG_NAME = "config.json"
# Activation names as transformers' ACT2FN spells them; gelu_new/gelu_fast/gelu_pytorch_tanh are
# all the tanh approximation 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "relu", "silu")
_PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")
# Keys handled by hand in to_dict/from_dict rather than copied field by field.
_SPECIAL = ("extra", "num_labels", "id2label", "label2id", "architectures", "dtype")


# Validation helpers, shared with the architecture configs (gpt2_config.py, llama_config.py).
def _fail(cfg: Any, name: str, expected: str, found: Any) -> None:
    raise ValueError(f"{type(cfg).__name__}.{name}: expected {expected}, found {found!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_RULES = {
    "a positive int": lambda v: _is_int(v) and v > 0,
    "a positive number": lambda v: _is_number(v) and v > 0,
    "a non-negative number": lambda v: _is_number(v) and v >= 0,
    "a probability in [0, 1)": lambda v: _is_number(v) and 0 <= v < 1,
    "True or False": lambda v: isinstance(v, bool),
}


@dataclass(kw_only=True)
class ModelConfig:
    """Fields shared by every model config: classification labels and file bookkeeping.

    Subclasses set ``model_type``, ``architecture_names`` (task -> HF class name) and
    ``aliases`` (HF ``attribute_map``: alternative key -> field name, read by ``from_dict``).
    """

    model_type: ClassVar[str] = ""
    architecture_names: ClassVar[dict[str, str]] = {}
    aliases: ClassVar[dict[str, str]] = {}

    pad_token_id: int | None = None
    num_labels: int | None = None  # None -> len(id2label), or 2 when id2label is None too
    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    problem_type: str | None = None
    architectures: list[str] | None = None  # None -> [architecture_names["causal_lm"]]
    dtype: str | None = None  # "float32", "bfloat16", ...; written as "dtype"
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys, written back verbatim

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------------------- validation
    def validate(self) -> None:
        """Normalize derived fields (labels, dtype) and check every value; raise ValueError."""
        self._normalize_labels()
        if isinstance(self.dtype, str) and self.dtype.startswith("torch."):
            self.dtype = self.dtype[len("torch.") :]
        if self.dtype is not None and not isinstance(self.dtype, str):
            _fail(self, "dtype", "None or a dtype name such as 'float32'", self.dtype)
        if self.problem_type not in _PROBLEM_TYPES:
            _fail(self, "problem_type", f"one of {_PROBLEM_TYPES}", self.problem_type)
        if self.architectures is None and self.architecture_names:
            self.architectures = [self.architecture_names["causal_lm"]]
        if self.architectures is not None and not (
            isinstance(self.architectures, list)
            and all(isinstance(a, str) for a in self.architectures)
        ):
            _fail(self, "architectures", "None or a list of class names", self.architectures)
        if not isinstance(self.extra, dict):
            _fail(self, "extra", "a dict", self.extra)
        clash = sorted(set(self.extra) & ({f.name for f in fields(self)} | {"model_type"}))
        if clash:
            _fail(self, "extra", "no keys that are config fields", clash)
        self._check_token_id("pad_token_id", allow_list=False)
        self._validate_fields()

    def _validate_fields(self) -> None:
        """Subclass hook: check the architecture fields."""

    def _normalize_labels(self) -> None:
        if self.id2label is None or (
            self.num_labels is not None
            and self.num_labels != len(self.id2label)
            and self._labels_are_default()
        ):
            # No labels given, or num_labels was changed on a config with default labels.
            n = 2 if self.num_labels is None else self.num_labels
            if not _is_int(n) or n < 1:
                _fail(self, "num_labels", "a positive int", n)
            self.id2label = {i: f"LABEL_{i}" for i in range(n)}
            self.label2id = None
        if not isinstance(self.id2label, dict) or not self.id2label:
            _fail(self, "id2label", "a non-empty dict {id: label}", self.id2label)
        try:
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        except (TypeError, ValueError):
            _fail(self, "id2label", "integer keys (or strings of digits)", self.id2label)
        if self.num_labels is not None and self.num_labels != len(self.id2label):
            _fail(self, "num_labels", f"len(id2label) = {len(self.id2label)}", self.num_labels)
        self.num_labels = len(self.id2label)
        inverse = {v: k for k, v in self.id2label.items()}
        if self.label2id is None:
            self.label2id = inverse
        elif (
            not isinstance(self.label2id, dict)
            or {str(k): v for k, v in self.label2id.items()} != inverse
        ):
            _fail(self, "label2id", f"the inverse of id2label {inverse}", self.label2id)

    def _labels_are_default(self) -> bool:
        return self.id2label == {i: f"LABEL_{i}" for i in range(len(self.id2label))}

    def _check_token_id(self, name: str, allow_list: bool) -> None:
        v = getattr(self, name)
        ok = v is None or (_is_int(v) and v >= 0)
        if allow_list and isinstance(v, list):
            ok = all(_is_int(t) and t >= 0 for t in v)
        if not ok:
            many = " or a list of them" if allow_list else ""
            _fail(self, name, f"None or a non-negative int{many}", v)

    def _check(self, rule: str, *names: str) -> None:
        """Check each named field against ``_RULES[rule]``; ``rule`` is the expected value."""
        for name in names:
            if not _RULES[rule](getattr(self, name)):
                _fail(self, name, rule, getattr(self, name))

    # ------------------------------------------------------------------------------- writing
    def to_dict(self) -> dict[str, Any]:
        """The config.json content: HF key names, plus every key kept in ``extra``."""
        self.validate()
        d: dict[str, Any] = {"model_type": self.model_type}
        for f in fields(self):
            if f.name not in _SPECIAL:
                d[f.name] = copy.deepcopy(getattr(self, f.name))
        if not (self.num_labels == 2 and self._labels_are_default()):
            d["id2label"] = {str(k): v for k, v in self.id2label.items()}
            d["label2id"] = dict(self.label2id)
        if self.architectures is not None:
            d["architectures"] = list(self.architectures)
        if self.dtype is not None:
            d["dtype"] = self.dtype
        self._write_special(d)
        d.update(copy.deepcopy(self.extra))
        return d

    def _write_special(self, d: dict[str, Any]) -> None:
        """Subclass hook: write fields whose HF form differs from the field (e.g. RoPE)."""

    def to_json_string(self) -> str:
        """``to_dict()`` as sorted, indented JSON, the way transformers writes config.json."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, folder: str | os.PathLike) -> str:
        """Write ``folder/config.json`` atomically; return its path."""
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(os.fspath(folder), CONFIG_NAME)
        atomic_write_bytes(path, self.to_json_string().encode("utf-8"))
        return path

    # ------------------------------------------------------------------------------- reading
    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> ModelConfig:
        """Build a config from config.json content; ``source`` names the file in errors."""
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected a JSON object, found {type(d).__name__}")
        d = copy.deepcopy(d)
        model_type = d.pop("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ValueError(
                f"{source}: {cls.__name__} expects model_type {cls.model_type!r}, "
                f"found {model_type!r}"
            )
        d.pop("transformers_version", None)  # describes the writer, not the model
        torch_dtype = d.pop("torch_dtype", None)  # transformers 4 name
        d["dtype"] = d.get("dtype") or torch_dtype
        for alias, name in cls.aliases.items():
            if alias in d:
                value = d.pop(alias)
                if name in d and d[name] != value:
                    raise ValueError(
                        f"{source}: {alias!r} is an alias of {name!r} but they differ: "
                        f"{name}={d[name]!r}, {alias}={value!r}"
                    )
                d[name] = value
        try:
            cls._read_special(d)
            names = {f.name for f in fields(cls)} - {"extra"}
            kwargs = {k: d.pop(k) for k in list(d) if k in names}
            return cls(**kwargs, extra=d)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{source}: {e}") from e

    @classmethod
    def _read_special(cls, d: dict[str, Any]) -> None:
        """Subclass hook: turn HF-specific keys of ``d`` into field values, in place."""

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> ModelConfig:
        """Read a config.json file (errors name the file)."""
        return cls.from_dict(_read_json(path), source=os.fspath(path))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> ModelConfig:
        """Read ``folder/config.json``."""
        return cls.from_json_file(_config_path(folder))


# model_type -> config class, filled by @register_model_config.
CONFIG_CLASSES: dict[str, type[ModelConfig]] = {}
# Modules whose import registers a built-in config class. They subclass ModelConfig from here, so
# this module cannot import them at the top (a cycle); `_load_builtin_configs` imports them on the
# first lookup, so `config_from_dict` works even when only this module was imported.
# (`minipeft.models` imports them eagerly as well.)
_BUILTIN_CONFIG_MODULES = ("minipeft.models.gpt2_config", "minipeft.models.llama_config")
_C = TypeVar("_C", bound=type[ModelConfig])


def register_model_config(cls: _C) -> _C:
    """Class decorator: make ``config_from_dict`` build ``cls`` for ``cls.model_type``."""
    if not cls.model_type:
        raise ValueError(f"{cls.__name__} must set the class attribute model_type to be registered")
    known = CONFIG_CLASSES.get(cls.model_type)
    if known is not None and known is not cls:
        raise ValueError(
            f"model_type {cls.model_type!r} is already registered to {known.__name__}; "
            f"cannot register {cls.__name__}"
        )
    CONFIG_CLASSES[cls.model_type] = cls
    return cls


def _load_builtin_configs() -> None:
    """Import the built-in config modules (a deliberate lazy import; see above)."""
    for module in _BUILTIN_CONFIG_MODULES:
        importlib.import_module(module)  # cached after the first call; registers on first import


def config_from_dict(d: dict[str, Any], source: str = "<dict>") -> ModelConfig:
    """Pick the config class from ``d["model_type"]`` and build it."""
    _load_builtin_configs()
    supported = ", ".join(sorted(CONFIG_CLASSES))
    model_type = d.get("model_type") if isinstance(d, dict) else None
    if model_type is None:
        raise ValueError(f"{source}: no 'model_type' key; supported model types: {supported}")
    if model_type not in CONFIG_CLASSES:
        raise ValueError(
            f"{source}: unsupported model_type {model_type!r}; supported model types: {supported}"
        )
    return CONFIG_CLASSES[model_type].from_dict(d, source=source)


def load_config(folder: str | os.PathLike) -> ModelConfig:
    """Read ``folder/config.json`` into the config class its model_type names (a ``.gguf``
    file or a known checkpoint name: the config of its metadata)."""
    from .checkpoints import resolve_model  # noqa: PLC0415

    folder = resolve_model(folder)
    if os.fspath(folder).lower().endswith(".gguf"):
        from .gguf import read_gguf  # noqa: PLC0415

        return read_gguf(folder).config
    path = _config_path(folder)
    return config_from_dict(_read_json(path), source=path)


def _config_path(folder: str | os.PathLike) -> str:
    path = os.path.join(os.fspath(folder), CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{os.fspath(folder)}: no {CONFIG_NAME} found (looked for {path})")
    return path


def _read_json(path: str | os.PathLike) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {os.fspath(path)}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{os.fspath(path)}: not valid JSON ({e})") from e
