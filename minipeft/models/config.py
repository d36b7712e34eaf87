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
  both are written so either version loads the file. Only plain RoPE is supported.
- ``id2label``/``label2id`` are written only when they differ from the default two labels;
  ``num_labels`` is never written (transformers derives it from ``id2label``).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from minipeft.models.checkpoint import atomic_write_bytes

__all__ = [
    "CONFIG_NAME",
    "SUPPORTED_ACTIVATIONS",
    "ModelConfig",
    "GPT2Config",
    "LlamaConfig",
    "CONFIG_CLASSES",
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


@dataclass(kw_only=True)
class GPT2Config(ModelConfig):
    """GPT-2 with transformers' field names and defaults (``GPT2Config().to_dict()``).

    Sizes: V = vocab_size, C = n_embd, H = n_head, D = C / H, L = n_layer, inner = n_inner or 4 C.
    """

    model_type: ClassVar[str] = "gpt2"
    architecture_names: ClassVar[dict[str, str]] = {
        "causal_lm": "GPT2LMHeadModel",
        "seq_cls": "GPT2ForSequenceClassification",
        "base": "GPT2Model",
    }
    aliases: ClassVar[dict[str, str]] = {
        "hidden_size": "n_embd",
        "max_position_embeddings": "n_positions",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
    }

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    summary_type: str = "cls_index"
    summary_use_proj: bool = True
    summary_activation: str | None = None
    summary_proj_to_labels: bool = True
    summary_first_dropout: float = 0.1
    scale_attn_weights: bool = True
    use_cache: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: int | list[int] | None = 50256
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False
    add_cross_attention: bool = False
    tie_word_embeddings: bool = True

    def _validate_fields(self) -> None:
        self._check("a positive int", "vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
        if self.n_inner is not None:
            self._check("a positive int", "n_inner")
        if self.n_embd % self.n_head:
            _fail(self, "n_embd", f"a multiple of n_head = {self.n_head}", self.n_embd)
        if self.activation_function not in SUPPORTED_ACTIVATIONS:
            _fail(self, "activation_function", f"one of {SUPPORTED_ACTIVATIONS}",
                  self.activation_function)  # fmt: skip
        self._check("a probability in [0, 1)", "resid_pdrop", "embd_pdrop", "attn_pdrop")
        self._check("a probability in [0, 1)", "summary_first_dropout")
        self._check("a positive number", "layer_norm_epsilon")
        self._check("a non-negative number", "initializer_range")
        self._check("True or False", "scale_attn_weights", "use_cache", "reorder_and_upcast_attn")
        self._check(
            "True or False", "tie_word_embeddings", "summary_use_proj", "summary_proj_to_labels"
        )
        for name in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
            if getattr(self, name) is not False:  # these change the math; minipeft omits them
                _fail(self, name, "False (the only value minipeft supports)", getattr(self, name))
        self._check_token_id("bos_token_id", allow_list=False)
        self._check_token_id("eos_token_id", allow_list=True)

    # Read-only HF aliases (transformers' attribute_map) and derived sizes.
    @property
    def hidden_size(self) -> int:
        return self.n_embd

    @property
    def num_attention_heads(self) -> int:
        return self.n_head

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layer

    @property
    def max_position_embeddings(self) -> int:
        return self.n_positions

    @property
    def num_key_value_heads(self) -> int:
        """GPT-2 has one key/value head per query head."""
        return self.n_head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        """MLP width: n_inner, or 4 * n_embd when n_inner is None."""
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd


@dataclass(kw_only=True)
class LlamaConfig(ModelConfig):
    """LLaMA with transformers' field names and defaults (``LlamaConfig().to_dict()``).

    Sizes: C = hidden_size, H = num_attention_heads, H_kv = num_key_value_heads (grouped-query
    attention when H_kv < H), D = head_dim (default C / H), inner = intermediate_size.
    """

    model_type: ClassVar[str] = "llama"
    architecture_names: ClassVar[dict[str, str]] = {
        "causal_lm": "LlamaForCausalLM",
        "seq_cls": "LlamaForSequenceClassification",
        "base": "LlamaModel",
    }

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None -> num_attention_heads
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pretraining_tp: int = 1
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    attention_bias: bool = False
    attention_dropout: float = 0.0
    mlp_bias: bool = False
    head_dim: int | None = None  # None -> hidden_size // num_attention_heads

    def _validate_fields(self) -> None:
        self._check("a positive int", "vocab_size", "hidden_size", "intermediate_size")
        self._check("a positive int", "num_hidden_layers", "num_attention_heads")
        self._check("a positive int", "max_position_embeddings", "pretraining_tp")
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self._check("a positive int", "num_key_value_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            _fail(self, "num_attention_heads",
                  f"a multiple of num_key_value_heads = {self.num_key_value_heads}",
                  self.num_attention_heads)  # fmt: skip
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                _fail(self, "hidden_size",
                      f"a multiple of num_attention_heads = {self.num_attention_heads} "
                      "(or set head_dim)", self.hidden_size)  # fmt: skip
            self.head_dim = self.hidden_size // self.num_attention_heads
        self._check("a positive int", "head_dim")
        if self.head_dim % 2:  # RoPE rotates pairs of features
            _fail(self, "head_dim", "an even number (RoPE rotates feature pairs)", self.head_dim)
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            _fail(self, "hidden_act", f"one of {SUPPORTED_ACTIVATIONS}", self.hidden_act)
        self._check("a positive number", "rms_norm_eps", "rope_theta")
        self._check("a probability in [0, 1)", "attention_dropout")
        self._check("a non-negative number", "initializer_range")
        self._check(
            "True or False", "use_cache", "tie_word_embeddings", "attention_bias", "mlp_bias"
        )
        self._check_token_id("bos_token_id", allow_list=False)
        self._check_token_id("eos_token_id", allow_list=True)

    def _write_special(self, d: dict[str, Any]) -> None:
        # transformers 5 reads rope_parameters; transformers 4 reads the top-level rope_theta.
        d["rope_parameters"] = {"rope_theta": float(self.rope_theta), "rope_type": "default"}
        d["rope_theta"] = float(self.rope_theta)

    @classmethod
    def _read_special(cls, d: dict[str, Any]) -> None:
        """Fold ``rope_parameters`` (transformers 5) / ``rope_scaling`` (4) into rope_theta."""
        thetas = []
        if d.get("rope_theta") is not None:
            thetas.append(("rope_theta", d.pop("rope_theta")))
        for key in ("rope_parameters", "rope_scaling"):
            params = d.pop(key, None)
            if params is None:
                continue
            if not isinstance(params, dict):
                raise ValueError(f"LlamaConfig.{key}: expected a dict or null, found {params!r}")
            original, params = params, dict(params)
            rope_type = params.pop("rope_type", params.pop("type", "default"))
            if rope_type != "default":
                raise ValueError(
                    f"LlamaConfig.{key}: expected rope_type 'default' (plain RoPE, the only "
                    f"kind minipeft supports), found {rope_type!r}"
                )
            if params.pop("partial_rotary_factor", 1.0) != 1.0:
                raise ValueError(
                    f"LlamaConfig.{key}: expected partial_rotary_factor 1.0 (RoPE on all "
                    f"features), found {original!r}"
                )
            if "rope_theta" in params:
                thetas.append((f"{key}.rope_theta", params.pop("rope_theta")))
            if params:
                raise ValueError(
                    f"LlamaConfig.{key}: expected only rope_theta/rope_type for plain RoPE, "
                    f"found unsupported keys {sorted(params)}"
                )
        if len({float(t) for _, t in thetas if _is_number(t)}) > 1:
            raise ValueError(f"LlamaConfig.rope_theta: expected one value, found {thetas}")
        if thetas:
            d["rope_theta"] = thetas[0][1]


CONFIG_CLASSES: dict[str, type[ModelConfig]] = {"gpt2": GPT2Config, "llama": LlamaConfig}


def config_from_dict(d: dict[str, Any], source: str = "<dict>") -> ModelConfig:
    """Pick the config class from ``d["model_type"]`` and build it."""
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
    """Read ``folder/config.json`` into the config class its model_type names."""
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
