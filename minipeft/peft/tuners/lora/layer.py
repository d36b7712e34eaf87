"""The LoRA layer: a frozen linear map plus a trainable low-rank update.

For a base layer ``y = W x + b`` with W (d_out, d_in), LoRA (Hu et al., 2021, eq. 3) learns
A (r, d_in) and B (d_out, r), r ≪ min(d_in, d_out), and computes

    y = W x + b + s · B A dropout(x),      s = α / r   (rsLoRA: s = α / √r, Kalajdzievski 2023)

B starts at zero, so at initialisation the output is exactly the base model's. The update has
r · (d_in + d_out) parameters instead of d_in · d_out, and merging ``W ← W + s·B A`` removes the
extra inference cost. The layer *wraps* the base layer (``self.base_layer``), never edits it,
except on an explicit merge or a PiSSA / OLoRA initialisation (:mod:`.init`, which moves the
principal part of W into A and B). One layer can hold several named adapters
(``lora_A["default"]``), as in Hugging Face PEFT, whose parameter names it mirrors. An adapter
with ``use_dora`` also has a magnitude ``lora_magnitude_vector[name]`` (DoRA, :mod:`.dora`).

Shapes: x (..., d_in) → A x (..., r) → B A x (..., d_out).
"""

from __future__ import annotations

import math
from typing import Any

from .... import functional as F
from ....nn import Dropout, Identity, Linear, Module, ModuleDict
from ....nn import init as nn_init
from ....ops.lora_linear import use_fused
from ....tensor import Tensor
from ...mixed_batch import current_adapter_names
from ..base import AdditiveTunerLayer, weight_layout
from . import dora
from .init import init_from_base_weight, is_base_weight_init

__all__ = ["LoraLayer"]


class LoraLayer(AdditiveTunerLayer):
    """Wraps one linear layer; adds ``lora_A[name]``, ``lora_B[name]``, ``lora_dropout[name]``.

    ``fan_in_fan_out=True`` means the base weight is stored (d_in, d_out) (HF's Conv1D); it only
    changes how the delta weight is laid out when merging.

    A subclass for another base layer (:class:`~minipeft.peft.tuners.lora.embedding.LoraEmbedding`)
    names its per-adapter containers in ``adapter_layer_names`` and overrides ``update_layer``,
    ``get_delta_weight`` and ``forward``; adapter state, set/delete and merge/unmerge are
    :class:`~minipeft.peft.tuners.base.BaseTunerLayer`'s, merging being W ← W ± ΔW.
    """

    adapter_layer_names: tuple[str, ...] = ("lora_A", "lora_B", "lora_magnitude_vector")  # PEFT's
    other_param_names: tuple[str, ...] = ("lora_dropout", "r", "lora_alpha", "scaling",
                                          "dora_merged_norm")  # fmt: skip

    def __init__(self, base_layer: Module, fan_in_fan_out: bool = False) -> None:
        super().__init__()
        self._wrap_linear(base_layer, "LoRA")
        self.fan_in_fan_out = weight_layout(base_layer, fan_in_fan_out)
        self.lora_A = ModuleDict()
        self.lora_B = ModuleDict()
        self.lora_dropout = ModuleDict()
        self._init_adapter_state()

    def _init_adapter_state(self) -> None:
        """Per-adapter rank, alpha and scaling, DoRA magnitudes (and the norms of merged DoRA
        adapters), and the merged / active / disabled state."""
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.lora_magnitude_vector = ModuleDict()
        self.dora_merged_norm: dict[str, Any] = {}
        super()._init_adapter_state()

    # ------------------------------------------------------------------ adapters
    def update_layer(
        self,
        adapter_name: str,
        r: int,
        lora_alpha: float,
        lora_dropout: float = 0.0,
        init_lora_weights: bool | str = True,
        use_rslora: bool = False,
        use_dora: bool = False,
    ) -> None:
        """Add adapter ``adapter_name`` with rank r and scaling α/r (or α/√r), DoRA's
        magnitude with ``use_dora``."""
        self._check_rank(r)
        kw = {"bias": False, **self._adapter_factory_kwargs()}
        self.lora_A[adapter_name] = Linear(self.in_features, r, **kw)
        self.lora_B[adapter_name] = Linear(r, self.out_features, **kw)
        self.lora_dropout[adapter_name] = Dropout(lora_dropout) if lora_dropout > 0 else Identity()
        self._finish_update(adapter_name, r, lora_alpha, init_lora_weights, use_rslora, use_dora)

    @staticmethod
    def _check_rank(r: Any) -> None:
        if not isinstance(r, int) or r <= 0:
            raise ValueError(f"LoRA rank r must be a positive int, found {r!r}")

    def _finish_update(self, adapter_name: str, r: int, lora_alpha: float,
                       init_lora_weights: bool | str, use_rslora: bool,
                       use_dora: bool = False) -> None:  # fmt: skip
        """Record r, α and s = α/r (rsLoRA: α/√r), initialise (then DoRA's magnitude, from the
        initialised weights, as PEFT orders it), and activate a first adapter."""
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = lora_alpha / (math.sqrt(r) if use_rslora else r)
        self.reset_lora_parameters(adapter_name, init_lora_weights)
        if use_dora:
            dora.init_magnitude(self, adapter_name)
        self._activate_first(adapter_name)

    def reset_lora_parameters(self, adapter_name: str, init: bool | str) -> None:
        """True: A ~ Kaiming-uniform (PyTorch Linear's default), B = 0 ⇒ ΔW = 0 at start.
        "gaussian": A ~ N(0, 1/r), B = 0. False: A and B both random (for tests). "pissa",
        "pissa_niter_N", "olora": from the base weight, which keeps the residual (:mod:`.init`)."""
        a, b = self.lora_A[adapter_name].weight, self.lora_B[adapter_name].weight
        if init is False:
            return  # both keep Linear's random default init
        if is_base_weight_init(init):
            init_from_base_weight(self, adapter_name, init)
            return
        if init == "gaussian":
            nn_init.normal_(a, std=1.0 / self.r[adapter_name])
        else:
            nn_init.kaiming_uniform_(a, a=math.sqrt(5))
        nn_init.zeros_(b)

    # ------------------------------------------------------------------ merging
    @property
    def weight_transposed(self) -> bool:
        """Whether the base weight array is stored (d_in, d_out) (``fan_in_fan_out``)."""
        return self.fan_in_fan_out

    def lora_factors(self, adapter_name: str) -> tuple[Any, Any]:
        """(A (r, d_in), B (d_out, r)) of adapter ``adapter_name``, as Parameters."""
        return self.lora_A[adapter_name].weight, self.lora_B[adapter_name].weight

    def uses_dora(self, adapter_name: str) -> bool:
        return adapter_name in self.lora_magnitude_vector

    def get_delta_weight(self, adapter_name: str) -> Any:
        """ΔW = s · B A as a raw array laid out like the base weight ((d_out, d_in), or
        transposed with fan_in_fan_out)."""
        a = self.lora_A[adapter_name].weight.data
        b = self.lora_B[adapter_name].weight.data
        delta = (b @ a) * self.scaling[adapter_name]
        delta = delta.T if self.fan_in_fan_out else delta
        dtype = self.base_layer.weight.dtype  # a 4-bit base stores codes: keep ΔW in float
        return delta.astype(dtype, copy=False) if dtype.kind == "f" else delta

    def merge_weight(self, weight: Any, adapter_name: str) -> Any:
        if self.uses_dora(adapter_name):
            return dora.merge_weight(self, weight, adapter_name)  # m/‖W+ΔW‖ ⊙ (W + ΔW)
        return weight + self.get_delta_weight(adapter_name)  # W + ΔW

    def unmerge_weight(self, weight: Any, adapter_name: str) -> Any:
        if self.uses_dora(adapter_name):
            return dora.unmerge_weight(self, weight, adapter_name)
        return weight - self.get_delta_weight(adapter_name)

    # ------------------------------------------------------------------ forward
    def forward(self, x: Any) -> Any:
        fused = self._fused_forward(x)
        return super().forward(x) if fused is None else fused

    def _fused_forward(self, x: Any) -> Any:
        """y = x Wᵀ + b + s·(x Aᵀ) Bᵀ as one Function (:func:`minipeft.functional.lora_linear`),
        or None where the general path must run: adapters disabled or merged, a mixed batch,
        other than exactly one active adapter, DoRA, dropout in effect, a base layer other than
        a plain or packed Linear (Linear4bit, LinearGGUF: QLoRA), or mixed dtypes (a float16
        base, float32 adapters).
        Where it runs, it computes what the general path does, to float rounding (tested)."""
        if not use_fused.on or self.disable_adapters or self.merged:
            return None
        if current_adapter_names() is not None:
            return None
        names = [n for n in self.active_adapters if self.holds(n)]
        base = self.base_layer
        if len(names) != 1 or self.uses_dora(names[0]):
            return None
        if type(base) is not Linear and not callable(getattr(base, "packed", None)):
            return None  # a plain Linear, or a packed one (QLoRA: Linear4bit, LinearGGUF)
        if type(self).add_adapter_output is not LoraLayer.add_adapter_output:
            return None  # a subclass changes the update: its own path
        drop = self.lora_dropout[names[0]]
        if isinstance(drop, Dropout) and drop.training and drop.p > 0:
            return None
        a, b = self.lora_factors(names[0])
        packed = base.packed() if type(base) is not Linear else (None, None)
        w_dtype = x.dtype if packed[1] is not None else base.weight.dtype
        bias_dtype = x.dtype if base.bias is None else base.bias.dtype
        if not isinstance(x, Tensor) or not x.dtype == w_dtype == bias_dtype == a.dtype == b.dtype:
            return None
        return F.lora_linear(x, base.weight, a, b, self.scaling[names[0]], base.bias,
                             dequantize=packed[1], state=packed[0])  # fmt: skip

    def add_adapter_output(self, name: str, x: Any, result: Any) -> Any:
        """``result + s · B A dropout(x)`` for adapter ``name``; ``result`` is the base layer's
        output for the same rows of x, so a mixed batch calls this on each adapter's rows.
        A DoRA adapter rescales it too (:func:`.dora.linear_output`)."""
        if self.uses_dora(name):
            return dora.linear_output(self, name, x, result)
        a = self.lora_A[name]
        h = self.lora_dropout[name](x)
        if h.dtype != a.weight.dtype:  # a float16 base keeps float32 adapters
            h = h.to(a.weight.dtype)
        update = self.lora_B[name](a(h)) * self.scaling[name]
        return result + (update if update.dtype == result.dtype else update.to(result.dtype))

    def extra_repr(self) -> str:
        ranks = ", ".join(f"{k}: r={v}" for k, v in self.r.items())
        return f"in_features={self.in_features}, out_features={self.out_features}, {ranks}"
