"""``AdapterConfig``: bottleneck adapters with AdapterHub ``adapters`` 1.3's fields and defaults.

A bottleneck adapter (Houlsby et al., 2019; Pfeiffer et al., 2020; He et al., 2021) is a small
two-layer MLP inserted where a Transformer sub-block joins the residual stream:

    A(z) = s · (W_up · act(W_down · z + b_down) + b_up),   W_down (m, C), W_up (C, m),
    m = C // reduction_factor,  2·C·m + C + m parameters per inserted adapter.

``adapter_type`` picks AdapterHub's preset (its ``SeqBnConfig`` / ``DoubleSeqBnConfig`` /
``ParBnConfig``; old names "pfeiffer", "houlsby", "parallel" are accepted), and every field the
preset sets can be overridden:

=================  ==========================  ===  ======  ===  =============
adapter_type       where                       C/m  act     s    init_weights
=================  ==========================  ===  ======  ===  =============
``seq_bn``         after the MLP               16   relu    1.0  "bert"
``double_seq_bn``  after attention and the MLP 16   swish   1.0  "bert"
``par_bn``         beside the MLP              2    relu    4.0  "mam_adapter"
=================  ==========================  ===  ======  ===  =============

Fields left as None take the preset's value in ``__post_init__``, so a config always holds
concrete values. Field names are AdapterHub's, so its JSON maps onto them one to one (the files
are AdapterHub's too: :mod:`minipeft.peft.tuners.bottleneck.files`). Pure Python: no engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from minipeft.peft.config import PeftConfig, PeftType, is_finite, is_int
from minipeft.peft.registry import register_peft_method

__all__ = [
    "ADAPTER_TYPES",
    "NON_LINEARITIES",
    "AdapterConfig",
    "DoubleSeqBnConfig",
    "ParBnConfig",
    "SeqBnConfig",
]

# AdapterHub's presets: the fields each one sets (BnConfig's defaults fill the rest).
ADAPTER_TYPES: dict[str, dict[str, Any]] = {
    "seq_bn": {
        "original_ln_before": True, "original_ln_after": True, "residual_before_ln": True,
        "mh_adapter": False, "output_adapter": True, "non_linearity": "relu",
        "reduction_factor": 16, "init_weights": "bert", "is_parallel": False, "scaling": 1.0,
    },
    "double_seq_bn": {
        "original_ln_before": False, "original_ln_after": True, "residual_before_ln": True,
        "mh_adapter": True, "output_adapter": True, "non_linearity": "swish",
        "reduction_factor": 16, "init_weights": "bert", "is_parallel": False, "scaling": 1.0,
    },
    "par_bn": {
        "original_ln_before": False, "original_ln_after": True, "residual_before_ln": True,
        "mh_adapter": False, "output_adapter": True, "non_linearity": "relu",
        "reduction_factor": 2, "init_weights": "mam_adapter", "is_parallel": True, "scaling": 4.0,
    },
}  # fmt: skip
ALIASES = {"pfeiffer": "seq_bn", "houlsby": "double_seq_bn", "parallel": "par_bn"}
# transformers' ACT2FN names the adapters use (lower-cased, as AdapterHub does), plus its
# own "leakyrelu"; see layer.py for the functions.
NON_LINEARITIES = (
    "relu", "swish", "silu", "gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "quick_gelu",
    "tanh", "sigmoid", "leakyrelu", "linear",
)  # fmt: skip
INIT_WEIGHTS = ("bert", "mam_adapter", "houlsby")
# AdapterHub features not implemented here: (value meaning "off", what it enables).
_UNSUPPORTED: dict[str, tuple[Any, str]] = {
    "phm_layer": (False, "PHM (Compacter) layers"),
    "inv_adapter": (None, "invertible adapters"),
    "cross_adapter": (False, "cross-attention adapters (no encoder-decoder models here)"),
    "stochastic_depth": (0.0, "stochastic depth"),
}


@dataclass
class AdapterConfig(PeftConfig):
    """Settings of one bottleneck adapter (AdapterHub's ``BnConfig`` field names).

    ``task_type`` and ``modules_to_save`` are minipeft's (PEFT's meaning): with
    ``task_type="SEQ_CLS"`` the classification head trains and is saved with the adapter.
    """

    PEFT_TYPE: ClassVar[PeftType | None] = PeftType.BOTTLENECK

    adapter_type: str = "seq_bn"
    mh_adapter: bool | None = None  # an adapter where attention joins the stream
    output_adapter: bool | None = None  # an adapter where the MLP joins the stream
    reduction_factor: float | dict[str, float] | None = None  # m = C // reduction_factor
    non_linearity: str | None = None
    original_ln_before: bool | None = None  # add the sub-block's residual before the adapter
    original_ln_after: bool | None = None  # add it after the adapter
    ln_before: bool = False  # a new LayerNorm on the adapter's input
    ln_after: bool = False  # a new LayerNorm on the adapter's output
    init_weights: str | None = None
    init_weights_seed: int | None = None
    is_parallel: bool | None = None  # beside the sub-block (input: the stream x) instead of after
    scaling: float | str | None = None  # a number, "learned" (one scalar) or "channel" (C)
    use_gating: bool = False
    residual_before_ln: bool | str | None = None  # adapter residual: before the original add
    adapter_residual_before_ln: bool = False  # adapter residual before its own ln_after
    inv_adapter: str | None = None
    inv_adapter_reduction_factor: float | None = None
    cross_adapter: bool = False
    leave_out: list[int] = field(default_factory=list)  # layer indices without adapters
    dropout: float = 0.0
    phm_layer: bool = False
    phm_dim: int = 4
    factorized_phm_W: bool | None = True  # noqa: N815 (AdapterHub's field name)
    shared_W_phm: bool | None = False  # noqa: N815
    shared_phm_rule: bool | None = True
    factorized_phm_rule: bool | None = False
    phm_c_init: str | None = "normal"
    phm_init_range: float | None = 0.0001
    learn_phm: bool | None = True
    hypercomplex_nonlinearity: str | None = "glorot-uniform"
    phm_rank: int | None = 1
    phm_bias: bool | None = True
    stochastic_depth: float | None = 0.0
    modules_to_save: list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        kind = ALIASES.get(self.adapter_type, self.adapter_type)
        if kind not in ADAPTER_TYPES:
            names = ", ".join([*ADAPTER_TYPES, *ALIASES])
            raise self._bad("adapter_type", f"one of {names}", self.adapter_type)
        self.adapter_type = kind
        for name, value in ADAPTER_TYPES[kind].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self._check()
        self.modules_to_save = self._module_list(self.modules_to_save, "modules_to_save")

    def _check(self) -> None:
        for name, (off, feature) in _UNSUPPORTED.items():
            if getattr(self, name) not in (off, None):
                note = f" (minipeft does not implement {feature})"
                raise self._bad(name, repr(off), getattr(self, name), note)
        for name in ("mh_adapter", "output_adapter", "original_ln_before", "original_ln_after",
                     "ln_before", "ln_after", "is_parallel", "use_gating",
                     "adapter_residual_before_ln"):  # fmt: skip
            if not isinstance(getattr(self, name), bool):
                raise self._bad(name, "a bool", getattr(self, name))
        if not (self.mh_adapter or self.output_adapter):
            raise self._bad("mh_adapter", "True when output_adapter is False (else no adapter)",
                            self.mh_adapter)  # fmt: skip
        self._check_reduction()
        if not isinstance(self.non_linearity, str) or self.non_linearity.lower() not in (
            NON_LINEARITIES
        ):
            raise self._bad("non_linearity", f"one of {', '.join(NON_LINEARITIES)}",
                            self.non_linearity)  # fmt: skip
        if self.init_weights not in INIT_WEIGHTS:
            raise self._bad("init_weights", f"one of {', '.join(INIT_WEIGHTS)}", self.init_weights)
        if self.init_weights_seed is not None and not is_int(self.init_weights_seed):
            raise self._bad("init_weights_seed", "None or an int", self.init_weights_seed)
        s = self.scaling
        if not (is_finite(s) or s in ("learned", "channel")):
            raise self._bad("scaling", "a number, 'learned' or 'channel'", s)
        if is_int(s):
            self.scaling = float(s)
        if self.residual_before_ln not in (True, False, "post_add"):
            raise self._bad("residual_before_ln", "True, False or 'post_add'",
                            self.residual_before_ln)  # fmt: skip
        if not is_finite(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise self._bad("dropout", "a number in [0, 1)", self.dropout)
        if not isinstance(self.leave_out, (list, tuple)) or not all(
            is_int(i) and i >= 0 for i in self.leave_out
        ):
            raise self._bad("leave_out", "a list of layer indices >= 0", self.leave_out)
        self.leave_out = sorted(set(self.leave_out))

    def _check_reduction(self) -> None:
        rf = self.reduction_factor
        values = list(rf.values()) if isinstance(rf, dict) else [rf]
        if isinstance(rf, dict):
            bad_keys = [k for k in rf if not (k == "default" or str(k).isdigit())]
            if bad_keys:
                raise self._bad("reduction_factor", "keys that are layer indices or 'default'",
                                bad_keys)  # fmt: skip
            self.reduction_factor = {str(k): v for k, v in rf.items()}
        if not all(is_finite(v) and v > 0 for v in values):
            raise self._bad("reduction_factor", "a number > 0 or {layer: number > 0}", rf)

    def reduction_for(self, layer: int | None) -> float:
        """AdapterHub's rule: a per-layer mapping entry, else its "default"."""
        rf = self.reduction_factor
        if not isinstance(rf, dict):
            return rf
        if layer is not None and str(layer) in rf:
            return rf[str(layer)]
        if "default" not in rf:
            raise ValueError(
                f"AdapterConfig.reduction_factor: expected a 'default' entry for layer {layer}, "
                f"found keys {sorted(rf)}"
            )
        return rf["default"]

    def bottleneck_size(self, hidden_size: int, layer: int | None = None) -> int:
        """m = C // reduction_factor; a factor that leaves m < 1 is an error (AdapterHub would
        silently use 1)."""
        rf = self.reduction_for(layer)
        m = int(hidden_size // rf)
        if m < 1:
            raise ValueError(
                f"AdapterConfig.reduction_factor: expected at most {hidden_size} for hidden size "
                f"{hidden_size} (m = {hidden_size} // reduction_factor must be >= 1), found {rf!r}"
            )
        return m

    def hub_fields(self) -> dict[str, Any]:
        """The ``config`` object of AdapterHub's adapter_config.json: every BnConfig field."""
        own = {f.name for f in fields(PeftConfig)} | {"adapter_type", "modules_to_save"}
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name not in own}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@dataclass
class SeqBnConfig(AdapterConfig):
    """Pfeiffer et al. (2020): one adapter after the MLP of each block (AdapterHub's default)."""

    adapter_type: str = "seq_bn"


@dataclass
class DoubleSeqBnConfig(AdapterConfig):
    """Houlsby et al. (2019): adapters after attention and after the MLP of each block."""

    adapter_type: str = "double_seq_bn"


@dataclass
class ParBnConfig(AdapterConfig):
    """He et al. (2021): a scaled adapter beside the MLP, fed the block's residual stream."""

    adapter_type: str = "par_bn"


register_peft_method(
    config_class=AdapterConfig,
    tuner="minipeft.peft.tuners.bottleneck.model:BottleneckModel",
    prefix=".adapters.",
    presets={name: {"adapter_type": name} for name in ADAPTER_TYPES},
    files="adapterhub",
)
