"""The AdaLoRA layer: a frozen linear map plus an update in SVD form whose rank can shrink.

For a base layer ``y = x Wᵀ + b`` with W (d_out, d_in), AdaLoRA (Zhang et al., 2023, Eq. 3) learns
P = B (d_out, r), Λ = diag(E) with E (r, 1) and Q = A (r, d_in), and computes (PEFT's form)

    y = x Wᵀ + b + (dropout(x) (A ⊙ E)ᵀ Bᵀ) · α / (ranknum + 1e-5)

    ΔW = B (A ⊙ E) · α / (ranknum + 1e-5)        (d_out, d_in); transposed for GPT-2's Conv1D

Shapes: x (..., d_in) → (A ⊙ E) x (..., r) → B (A ⊙ E) x (..., d_out). E broadcasts over A's
rows, so E_i scales the i-th triplet (B[:, i], E_i, A[i]). ``ranknum`` is the rank the adapter
was created with (a frozen one-element parameter, PEFT's; not saved): pruning a triplet sets its
E_i to 0 and never changes the scale, and a pruned adapter loaded at its smaller rank keeps the
old ``ranknum``. E starts at 0, A and B ~ N(0, 0.02²), so at initialisation the layer is exactly
the base layer. The parameters are bare (``lora_A["default"]``, no ``.weight``), as in PEFT.
"""

from __future__ import annotations

from typing import Any

from ....backend import xp_of
from ....creation import full, randn
from ....nn import Dropout, Identity, Module, ModuleDict, Parameter, ParameterDict
from ....nn import init as nn_init
from ..base import AdditiveTunerLayer, weight_layout

__all__ = ["EPS", "AdaLoraLayer"]

EPS = 1e-5  # PEFT's guard in α / (ranknum + 1e-5)


class AdaLoraLayer(AdditiveTunerLayer):
    """Wraps one linear layer; adds ``lora_A[name]`` (r, d_in), ``lora_E[name]`` (r, 1),
    ``lora_B[name]`` (d_out, r) and the frozen ``ranknum[name]`` (1,).

    ``fan_in_fan_out=True`` means the base weight is stored (d_in, d_out) (HF's Conv1D); it only
    changes how ΔW is laid out when merging. A rank of 0 is allowed (a module whose triplets
    were all pruned: empty factors, no update), as in PEFT.
    """

    adapter_layer_names: tuple[str, ...] = ("lora_A", "lora_E", "lora_B")  # PEFT's names
    other_param_names: tuple[str, ...] = ("lora_dropout", "ranknum", "r", "lora_alpha", "scaling")

    def __init__(self, base_layer: Module, fan_in_fan_out: bool = False) -> None:
        super().__init__()
        self._wrap_linear(base_layer, "AdaLoRA")
        self.fan_in_fan_out = weight_layout(base_layer, fan_in_fan_out)
        self.lora_A = ParameterDict()
        self.lora_E = ParameterDict()
        self.lora_B = ParameterDict()
        self.ranknum = ParameterDict()
        self.lora_dropout = ModuleDict()
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self._init_adapter_state()

    # ------------------------------------------------------------------ adapters
    def update_layer(
        self,
        adapter_name: str,
        r: int,
        lora_alpha: float,
        lora_dropout: float = 0.0,
        init_lora_weights: bool | str = True,
    ) -> None:
        """Add adapter ``adapter_name`` at rank r: E = 0, A, B ~ N(0, 0.02²) (any true
        ``init_lora_weights``), or A, E, B ~ N(0, 1) (False); ``ranknum`` = r and the scaling
        α (r when α ≤ 0), PEFT's."""
        if not isinstance(r, int) or isinstance(r, bool) or r < 0:
            raise ValueError(f"AdaLoRA rank r must be an int >= 0, found {r!r}")
        kw = self._adapter_factory_kwargs()
        self.lora_A[adapter_name] = Parameter(randn(r, self.in_features, **kw))
        self.lora_E[adapter_name] = Parameter(randn(r, 1, **kw))
        self.lora_B[adapter_name] = Parameter(randn(self.out_features, r, **kw))
        self.ranknum[adapter_name] = Parameter(full((1,), float(r), **kw), requires_grad=False)
        self.lora_dropout[adapter_name] = Dropout(lora_dropout) if lora_dropout > 0 else Identity()
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = lora_alpha if lora_alpha > 0 else float(r)
        if init_lora_weights:
            self.reset_lora_parameters(adapter_name)
        self._activate_first(adapter_name)

    def reset_lora_parameters(self, adapter_name: str) -> None:
        """PEFT's init: E = 0 (so ΔW = 0), A and B ~ N(0, 0.02²)."""
        nn_init.zeros_(self.lora_E[adapter_name])
        nn_init.normal_(self.lora_A[adapter_name], mean=0.0, std=0.02)
        nn_init.normal_(self.lora_B[adapter_name], mean=0.0, std=0.02)

    def resize(self, adapter_name: str, keep: Any) -> None:
        """Keep only the triplets where ``keep`` (r bools) is True: A's rows, E's entries, B's
        columns. ``ranknum`` (hence the scale) stays, as in PEFT's
        ``resize_modules_by_rank_pattern``; with nothing kept it becomes 0."""
        old = {n: getattr(self, n)[adapter_name] for n in self.adapter_layer_names}
        xp = xp_of(old["lora_E"].data)
        mask = xp.asarray(list(keep), dtype=bool)
        if mask.shape != (self.r[adapter_name],):
            raise ValueError(
                f"resize {adapter_name!r}: expected {self.r[adapter_name]} flags (its rank), "
                f"found {mask.shape[0]}"
            )
        rank = int(mask.sum())
        arrays = {"lora_A": old["lora_A"].data[mask], "lora_E": old["lora_E"].data[mask],
                  "lora_B": old["lora_B"].data[:, mask]}  # fmt: skip
        for name, array in arrays.items():
            getattr(self, name)[adapter_name] = Parameter(array.copy(), old[name].requires_grad)
        if rank == 0:
            self.ranknum[adapter_name].data[...] = 0.0
        self.r[adapter_name] = rank
        alpha = self.lora_alpha[adapter_name]
        self.scaling[adapter_name] = alpha if alpha > 0 else float(rank)  # PEFT's update_layer

    # ------------------------------------------------------------------ merging
    def get_delta_weight(self, adapter_name: str) -> Any:
        """ΔW = B (A ⊙ E) · α / (ranknum + 1e-5) as a raw array laid out like the base weight
        ((d_out, d_in), or transposed with fan_in_fan_out)."""
        a = self.lora_A[adapter_name].data
        e = self.lora_E[adapter_name].data
        b = self.lora_B[adapter_name].data
        delta = b @ (a * e)
        delta = delta.T if self.fan_in_fan_out else delta
        delta = delta * self.scaling[adapter_name] / (self.ranknum[adapter_name].data + EPS)
        dtype = self.base_layer.weight.dtype  # a 4-bit base stores codes: keep ΔW in float
        return delta.astype(dtype, copy=False) if dtype.kind == "f" else delta

    def merge_weight(self, weight: Any, adapter_name: str) -> Any:
        return weight + self.get_delta_weight(adapter_name)  # W + ΔW

    def unmerge_weight(self, weight: Any, adapter_name: str) -> Any:
        return weight - self.get_delta_weight(adapter_name)

    # ------------------------------------------------------------------ forward
    def add_adapter_output(self, name: str, x: Any, result: Any) -> Any:
        """``result + (dropout(x) (A ⊙ E)ᵀ Bᵀ) · α / (ranknum + 1e-5)`` for adapter ``name``
        (PEFT's order of operations); ``result`` is the base output for the same rows of x."""
        a, e, b = self.lora_A[name], self.lora_E[name], self.lora_B[name]
        h = self.lora_dropout[name](x)
        if h.dtype != a.dtype:  # a float16 base keeps float32 adapters
            h = h.to(a.dtype)
        update = (h @ (a * e).T @ b.T) * self.scaling[name] / (self.ranknum[name] + EPS)
        return result + (update if update.dtype == result.dtype else update.to(result.dtype))

    def extra_repr(self) -> str:
        ranks = ", ".join(f"{k}: r={v}" for k, v in self.r.items())
        return f"in_features={self.in_features}, out_features={self.out_features}, {ranks}"
