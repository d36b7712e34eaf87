"""The IA3 layer: a frozen linear map whose output (or input) is rescaled by a learned vector.

For a base layer ``y = x Wᵀ + b`` with W (d_out, d_in) and x (B, T, d_in), IA3 (Liu et al.,
2022, §3.3) learns one vector per adapter and computes

    attention-side:  y = (x Wᵀ + b) ⊙ l        l (d_out, 1), broadcast as (d_out,) → y (B, T, d_out)
    feed-forward:    y = (x ⊙ l) Wᵀ + b        l (1, d_in),  broadcast as (d_in,)  → y (B, T, d_out)

(PEFT's shapes, so the vectors load unchanged from its files). The vectors start at 1, so at
initialisation the layer is exactly the identity rescaling and the model is exactly the base
model; training then amplifies or inhibits individual channels. The adapter has d_out (or d_in)
parameters per layer, against d_in · d_out for the weight. Several active adapters multiply:
l = l₁ ⊙ l₂ ⊙ ...

Merging folds l into the base layer: W ← W ⊙ l (scaling W's rows, or its columns for a
feed-forward vector) and, for an output vector, b ← b ⊙ l; unmerging divides by l + 1e-8, as
PEFT does (inexact, and meaningless for l ≈ 0).
"""

from __future__ import annotations

import warnings
from typing import Any

from ....creation import ones, randn
from ....nn import Module, Parameter, ParameterDict
from ..base import BaseTunerLayer, weight_layout

__all__ = ["IA3Layer"]

EPS = 1e-8  # PEFT's guard against division by zero when unmerging


class IA3Layer(BaseTunerLayer):
    """Wraps one linear layer; adds ``ia3_l[name]``, (1, d_in) if ``is_feedforward`` else
    (d_out, 1). Feed-forward or not is a property of the layer (PEFT's), shared by its adapters.
    """

    adapter_layer_names: tuple[str, ...] = ("ia3_l",)  # PEFT's attribute name

    def __init__(self, base_layer: Module, is_feedforward: bool = False,
                 fan_in_fan_out: bool = False) -> None:  # fmt: skip
        super().__init__()
        self._wrap_linear(base_layer, "IA3")
        self.is_feedforward = bool(is_feedforward)
        self.fan_in_fan_out = weight_layout(base_layer, fan_in_fan_out)
        self.ia3_l = ParameterDict()
        self._init_adapter_state()

    # ------------------------------------------------------------------ adapters
    def update_layer(self, adapter_name: str, init_ia3_weights: bool = True) -> None:
        """Add adapter ``adapter_name``: l = 1 (identity) or, with ``init_ia3_weights=False``,
        l ~ N(0, 1) (PEFT's ``torch.randn``)."""
        shape = (1, self.in_features) if self.is_feedforward else (self.out_features, 1)
        make = ones if init_ia3_weights else randn
        self.ia3_l[adapter_name] = Parameter(make(*shape, **self._adapter_factory_kwargs()))
        self._activate_first(adapter_name)

    # ------------------------------------------------------------------ merging
    def _weight_scale(self, adapter_name: str) -> Any:
        """l laid out to broadcast against the base weight: (d_out, 1) or (1, d_in) for a
        (d_out, d_in) weight, transposed for a (d_in, d_out) one."""
        scale = self.ia3_l[adapter_name].data
        return scale.T if self.fan_in_fan_out else scale

    def merge_weight(self, weight: Any, adapter_name: str) -> Any:
        return (weight * self._weight_scale(adapter_name)).astype(weight.dtype, copy=False)

    def unmerge_weight(self, weight: Any, adapter_name: str) -> Any:
        scale = self._weight_scale(adapter_name) + EPS
        return (weight / scale).astype(weight.dtype, copy=False)

    def merge_bias(self, bias: Any, adapter_name: str) -> Any:
        if self.is_feedforward:  # the input is scaled: b is added after W, untouched
            return bias
        scale = self.ia3_l[adapter_name].data.reshape(bias.shape)
        return (bias * scale).astype(bias.dtype, copy=False)

    def unmerge_bias(self, bias: Any, adapter_name: str) -> Any:
        if self.is_feedforward:
            return bias
        scale = self.ia3_l[adapter_name].data.reshape(bias.shape) + EPS
        return (bias / scale).astype(bias.dtype, copy=False)

    def unmerge(self) -> None:
        if self.merged:
            warnings.warn("Unmerge result can be inaccurate for (IA)^3.", stacklevel=2)  # PEFT's
        super().unmerge()

    # ------------------------------------------------------------------ forward
    def forward(self, x: Any) -> Any:
        if self._disabled_or_merged():  # first: disabling unmerges
            return self.base_layer(x)
        scale = None
        for name in self.active_adapters:
            if name in self.ia3_l:
                vector = self.ia3_l[name].reshape(-1)  # (d_in,) or (d_out,)
                scale = vector if scale is None else scale * vector
        if scale is None:
            return self.base_layer(x)
        if self.is_feedforward:
            h = x.to(scale.dtype) * scale  # (B, T, d_in) ⊙ (d_in,); float16 x: in float32
            return self.base_layer(h.to(x.dtype))
        result = self.base_layer(x)
        return (result.to(scale.dtype) * scale).to(result.dtype)  # (B, T, d_out) ⊙ (d_out,)

    def extra_repr(self) -> str:
        side = "input (feed-forward)" if self.is_feedforward else "output"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, scales={side}, "
            f"adapters={self.adapter_names()}"
        )
