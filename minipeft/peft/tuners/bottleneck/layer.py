"""Bottleneck adapters where a sub-block joins the residual stream, computed as AdapterHub does.

Every pre-norm block adds its two sub-blocks to the stream through :class:`~minipeft.nn.Residual`
modules (``attn_residual``, ``mlp_residual``: ``x + h``). :class:`BottleneckLayer` wraps one of
them (AdapterHub's ``attention_adapters`` / ``output_adapters`` layer) and holds the named
adapters placed there. With x (B, T, C) the stream entering the sub-block, h (B, T, C) the
sub-block's output and A(z) = s · (W_up · act(W_down · z + b_down) + b_up), z (B, T, C) →
(B, T, m) → (B, T, C)::

          x ───────────────┬──────────────────────────────┐
          │                │                              │
    ln → sub-block → h ──(+ x if original_ln_before)─→ A ─(+ residual)─(+ x if original_ln_after)→
                           └─ residual: h (residual_before_ln) or h + x ─┘

    seq_bn         after the MLP                  x + h + A(x + h)
    double_seq_bn  after attention, after the MLP x + h + A(h)        (at each of the two)
    par_bn         beside the MLP (input: x)      x + h + A(x)

Exactly (AdapterHub's ``pre_forward`` / ``forward`` / ``post_forward``, with no original layer
norm to apply: the models here are pre-norm), for a sequential adapter:

    z = h + x if original_ln_before else h;   r = h if residual_before_ln else z
    o = s · up(act(down(ln_before(z)))) [· gate]
    o = ln_after(o + r) if adapter_residual_before_ln else ln_after(o) + r
    out = o + x if original_ln_after else o

and for a parallel one ``o = ln_after(s · up(act(down(x))))``, ``out = o + h (+ x)``. Several
active adapters at one site run in sequence (AdapterHub's ``Stack``): each takes the previous
one's output as its h, and the last one's ``post_forward`` closes the site.
"""

from __future__ import annotations

import math
from typing import Any

from .... import functional as F
from ....backend import manual_seed, xp_of
from ....creation import ones, zeros
from ....nn import Dropout, LayerNorm, Linear, Module, ModuleDict, Parameter, Sequential
from ....nn import init as nn_init
from ....tensor import Tensor
from ..base import BaseTunerLayer
from .config import AdapterConfig

__all__ = ["Activation", "Bottleneck", "BottleneckLayer", "is_residual"]


def is_residual(module: Any) -> bool:
    """A residual-add site: a Module whose forward is ``(h, x) -> x + h`` (nn.Residual)."""
    from ....nn import Residual  # noqa: PLC0415 (kept beside its one use)

    return isinstance(module, Residual)


class Activation(Module):
    """transformers' ``ACT2FN[name]`` for the names adapters use (AdapterHub lower-cases them;
    "swish" is SiLU, the gelu_new family the tanh approximation, "leakyrelu" slope 0.01)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name.lower()

    def forward(self, x: Tensor) -> Tensor:
        n = self.name
        if n == "relu":
            return x.relu()
        if n in ("swish", "silu"):
            return x * x.sigmoid()
        if n == "gelu":
            return F.gelu(x)
        if n in ("gelu_new", "gelu_fast", "gelu_pytorch_tanh"):
            return F.gelu(x, approximate="tanh")
        if n == "quick_gelu":
            return x * (x * 1.702).sigmoid()
        if n == "tanh":
            return x.tanh()
        if n == "sigmoid":
            return x.sigmoid()
        if n == "leakyrelu":
            return x.maximum(x * 0.01)
        if n == "linear":
            return x
        raise ValueError(f"non_linearity: unknown activation {self.name!r}")

    def extra_repr(self) -> str:
        return self.name


class Bottleneck(Module):
    """One adapter at one site (AdapterHub's ``Adapter`` / ``ParallelAdapter``), with its
    module names, so state-dict keys are AdapterHub's: ``adapter_down.0`` (W_down, b_down:
    (m, C), (m,)), ``adapter_up`` ((C, m), (C,)), optional ``adapter_norm_after``, ``gate``
    and a learned ``scaling`` ((1,) or (C,))."""

    def __init__(self, config: AdapterConfig, hidden_size: int, bottleneck: int,
                 device: Any = None, dtype: Any = "float32") -> None:  # fmt: skip
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.is_parallel = config.is_parallel
        self.original_ln_before = config.original_ln_before
        self.original_ln_after = config.original_ln_after
        self.residual_before_ln = config.residual_before_ln
        self.adapter_residual_before_ln = config.adapter_residual_before_ln
        steps: list[Module] = [LayerNorm(hidden_size, **kw)] if config.ln_before else []
        steps += [Linear(hidden_size, bottleneck, **kw), Activation(config.non_linearity)]
        self.adapter_down = Sequential(*steps)
        self.adapter_up = Linear(bottleneck, hidden_size, **kw)
        if config.scaling == "learned":
            self.scaling: Any = Parameter(ones(1, **kw))
        elif config.scaling == "channel":
            self.scaling = Parameter(ones(hidden_size, **kw))
        else:
            self.scaling = float(config.scaling)
        self.adapter_norm_after = LayerNorm(hidden_size, **kw) if config.ln_after else None
        self.gate = Linear(hidden_size, 1, **kw) if config.use_gating else None
        self.dropout = Dropout(config.dropout)
        if config.init_weights_seed is not None:  # every adapter module the same init
            manual_seed(config.init_weights_seed)
        self.reset_parameters(config.init_weights)

    @property
    def down(self) -> Linear:
        return self.adapter_down[len(self.adapter_down) - 2]

    def reset_parameters(self, init: str) -> None:
        """AdapterHub's three initialisations. "bert": W ~ N(0, 0.02²), b = 0 (also for the
        gate); "mam_adapter": W_down Kaiming-uniform, W_up = 0, b = 0, so A(z) = 0 at the start
        (the adapter begins as the identity); "houlsby": W ~ truncated N(0, 0.01²) in ±0.02."""
        linears = [self.down, self.adapter_up]
        if init == "bert":
            for layer in linears + ([self.gate] if self.gate is not None else []):
                nn_init.normal_(layer.weight, std=0.02)
                nn_init.zeros_(layer.bias)
        elif init == "mam_adapter":
            nn_init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            for p in (self.down.bias, self.adapter_up.weight, self.adapter_up.bias):
                nn_init.zeros_(p)
            if self.gate is not None:
                nn_init.normal_(self.gate.weight, std=0.02)
                nn_init.zeros_(self.gate.bias)
        else:  # "houlsby"
            for layer in linears:
                _trunc_normal_(layer.weight, std=1e-2)
                nn_init.zeros_(layer.bias)

    def pre_forward(self, h: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """(adapter input z, adapter residual r) from the site's h and stream x."""
        if self.is_parallel:
            return x, x
        residual = h
        if self.original_ln_before:
            h = h + x
        if not self.residual_before_ln:
            residual = h
        return h, residual

    def forward(self, z: Tensor, residual: Tensor) -> Tensor:
        out = self.adapter_up(self.adapter_down(z)) * self.scaling
        out = self.dropout(out)
        if self.gate is not None:  # sigmoid(gate(z)) averaged over the sequence: (B, 1, 1)
            out = out * self.gate(z).sigmoid().mean(dim=1, keepdim=True)
        if self.is_parallel:
            return out if self.adapter_norm_after is None else self.adapter_norm_after(out)
        if self.adapter_residual_before_ln:
            out = out + residual
        if self.adapter_norm_after is not None:
            out = self.adapter_norm_after(out)
        return out if self.adapter_residual_before_ln else out + residual

    def post_forward(self, out: Tensor, h: Tensor, x: Tensor) -> Tensor:
        if self.is_parallel:
            out = out + h
        return out + x if self.original_ln_after else out

    def extra_repr(self) -> str:
        kind = "parallel" if self.is_parallel else "sequential"
        return f"{kind}, scaling={self.scaling if isinstance(self.scaling, float) else 'learned'}"


class BottleneckLayer(BaseTunerLayer):
    """Wraps one :class:`~minipeft.nn.Residual`; ``adapters[name]`` are its
    :class:`Bottleneck` modules (AdapterHub's container name, so keys read
    ``...mlp_residual.adapters.<name>.adapter_down.0.weight``)."""

    adapter_layer_names = ("adapters",)

    def __init__(self, base_layer: Module, hidden_size: int) -> None:
        super().__init__()
        if not is_residual(base_layer):
            raise TypeError(
                f"bottleneck adapters wrap a residual add (nn.Residual), found "
                f"{type(base_layer).__name__}"
            )
        self.base_layer = base_layer
        self.hidden_size = hidden_size
        self.adapters = ModuleDict()
        self._init_adapter_state()

    def update_layer(self, adapter_name: str, config: AdapterConfig, bottleneck: int,
                     device: Any = None, dtype: Any = "float32") -> None:  # fmt: skip
        self.adapters[adapter_name] = Bottleneck(config, self.hidden_size, bottleneck, device,
                                                 dtype)  # fmt: skip
        self._activate_first(adapter_name)

    def forward(self, h: Tensor, x: Tensor) -> Tensor:
        names = [n for n in self.active_adapters if n in self.adapters]
        if self._disabled_or_merged() or not names:
            return self.base_layer(h, x)
        dtype = self.adapters[names[0]].adapter_up.weight.dtype
        h_in, x_in = _cast(h, dtype), _cast(x, dtype)  # a float16 base keeps float32 adapters
        out = h_in
        for name in names:  # a Stack: each adapter's h is the previous one's output
            adapter = self.adapters[name]
            z, residual = adapter.pre_forward(out, x_in)
            out = adapter(z, residual)
        out = self.adapters[names[-1]].post_forward(out, h_in, x_in)
        return _cast(out, h.dtype)

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, adapters={self.adapter_names()}"


def _cast(t: Tensor, dtype: Any) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def _trunc_normal_(weight: Parameter, std: float) -> None:
    """N(0, std²) truncated to ±2·std, by redrawing (torch's ``trunc_normal_`` distribution)."""
    n = weight.numel()
    xp = xp_of(weight.data)
    pool = Parameter(zeros(2 * n + 16, device=weight.device, dtype=weight.dtype))
    values = pool.data[:0]
    while values.size < n:  # about 95% of the draws are kept each round
        nn_init.normal_(pool, std=std)
        values = xp.concatenate([values, pool.data[xp.abs(pool.data) <= 2 * std]])
    weight.data[...] = values[:n].reshape(weight.shape)
