"""LoRA on an embedding layer: a frozen table plus a trainable low-rank update of it.

For a base embedding z = E[ids] with E (V, C) (V tokens, C features), LoRA learns
A (r, V) and B (C, r) and computes, as PEFT's ``lora.Embedding`` does,

    z = E[ids] + s · (Aᵀ[ids] @ Bᵀ),      s = α / r   (rsLoRA: α / √r)

i.e. the table becomes E + s·(B A)ᵀ, rank r. A starts at zero and B ~ N(0, 1) (PEFT's choice
for embeddings: the reverse of a linear layer's, so again ΔE = 0 at initialisation while the
gradient of A is not zero). No dropout is applied on this path, as in PEFT. The update has
r · (V + C) parameters instead of V · C; merging ``E ← E + s·(B A)ᵀ`` removes it.

Shapes: ids (...) → Aᵀ[ids] (..., r) → @ Bᵀ (..., C).
"""

from __future__ import annotations

import math
from typing import Any

from ..functional import embedding
from ..nn import Module, Parameter, ParameterDict
from ..nn import init as nn_init
from .lora import LoraLayer

__all__ = ["LoraEmbedding", "is_embedding"]


def is_embedding(module: Any) -> bool:
    """An embedding table: ``num_embeddings``, ``embedding_dim`` and a (V, C) ``weight``."""
    return (
        isinstance(module, Module)
        and isinstance(getattr(module, "num_embeddings", None), int)
        and isinstance(getattr(module, "embedding_dim", None), int)
        and getattr(module, "weight", None) is not None
    )


class LoraEmbedding(LoraLayer):
    """Wraps one embedding; adds ``lora_embedding_A[name]`` (r, V), ``lora_embedding_B[name]``
    (C, r). Merging, unmerging and adapter state are :class:`LoraLayer`'s."""

    def __init__(self, base_layer: Module, fan_in_fan_out: bool = False) -> None:
        Module.__init__(self)
        if not is_embedding(base_layer):
            raise TypeError(
                f"LoraEmbedding wraps embedding layers (num_embeddings, embedding_dim, weight), "
                f"found {type(base_layer).__name__}"
            )
        self.base_layer = base_layer
        self.in_features = base_layer.num_embeddings  # PEFT's names for V and C
        self.out_features = base_layer.embedding_dim
        self.fan_in_fan_out = False
        self.lora_embedding_A = ParameterDict()  # PEFT's names: ``...wte.lora_embedding_A``
        self.lora_embedding_B = ParameterDict()
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.merged_adapters: list[str] = []
        self.active_adapters: list[str] = []
        self.disable_adapters = False
        self.tied_to: str | None = None  # set by the tuner when lm_head shares this table

    @property
    def weight(self) -> Parameter:
        """The base table E (V, C): models read ``wte.weight`` (device, tying with lm_head)."""
        return self.base_layer.weight

    @property
    def num_embeddings(self) -> int:
        return self.in_features

    @property
    def embedding_dim(self) -> int:
        return self.out_features

    def adapter_names(self) -> list[str]:
        return self.lora_embedding_A.keys()

    def update_layer(
        self,
        adapter_name: str,
        r: int,
        lora_alpha: float,
        lora_dropout: float = 0.0,
        init_lora_weights: bool | str = True,
        use_rslora: bool = False,
    ) -> None:
        """Add adapter ``adapter_name``: A (r, V), B (C, r), scaling α/r (or α/√r)."""
        if not isinstance(r, int) or r <= 0:
            raise ValueError(f"LoRA rank r must be a positive int, found {r!r}")
        from ..creation import randn  # noqa: PLC0415

        w = self.base_layer.weight
        dtype = w.dtype if w.dtype.kind == "f" and w.dtype.itemsize >= 4 else "float32"
        kw = {"device": w.device, "dtype": dtype}
        self.lora_embedding_A[adapter_name] = Parameter(randn(r, self.in_features, **kw))
        self.lora_embedding_B[adapter_name] = Parameter(randn(self.out_features, r, **kw))
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = lora_alpha / (math.sqrt(r) if use_rslora else r)
        self.reset_lora_parameters(adapter_name, init_lora_weights)
        if not self.active_adapters:
            self.active_adapters = [adapter_name]

    def reset_lora_parameters(self, adapter_name: str, init: bool | str) -> None:
        """True (and "gaussian", as PEFT treats every other init of an embedding alike):
        A = 0, B ~ N(0, 1). False: both keep their random N(0, 1) start (for tests)."""
        if init is False:
            return
        nn_init.zeros_(self.lora_embedding_A[adapter_name])
        nn_init.normal_(self.lora_embedding_B[adapter_name])

    def delete_adapter(self, adapter_name: str) -> None:
        for container in (self.lora_embedding_A, self.lora_embedding_B):
            if adapter_name in container:
                del container[adapter_name]
        for d in (self.r, self.lora_alpha, self.scaling):
            d.pop(adapter_name, None)
        self.active_adapters = [a for a in self.active_adapters if a != adapter_name]

    def set_adapter(self, adapter_names: str | list[str]) -> None:
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        for key in self.lora_embedding_A.keys():
            trainable = key in names
            self.lora_embedding_A[key].requires_grad_(trainable)
            self.lora_embedding_B[key].requires_grad_(trainable)
        self.active_adapters = [n for n in names if n in self.lora_embedding_A]

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """E ← E + ΔE, refused for a table tied to the output layer: there the adapter changes
        only the input embedding, and merging would change ``lm_head`` as well."""
        if self.tied_to:
            raise ValueError(
                f"cannot merge LoRA on an embedding tied to {self.tied_to!r} "
                "(tie_word_embeddings): the merged table would change the output layer too, so "
                "the merged model would not compute what the adapter does; keep it unmerged"
            )
        super().merge(safe_merge=safe_merge, adapter_names=adapter_names)

    def get_delta_weight(self, adapter_name: str) -> Any:
        """ΔE = s · (B A)ᵀ, shaped like the table (V, C)."""
        a = self.lora_embedding_A[adapter_name].data
        b = self.lora_embedding_B[adapter_name].data
        delta = (b @ a).T * self.scaling[adapter_name]
        return delta.astype(self.base_layer.weight.dtype, copy=False)

    def forward(self, x: Any) -> Any:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x)
        result = self.base_layer(x)
        if self.merged:
            return result
        for name in self.active_adapters:
            if name not in self.lora_embedding_A:
                continue
            a = self.lora_embedding_A[name]  # (r, V)
            after_a = embedding(x, a.T)  # (..., r): rows of Aᵀ
            update = (after_a @ self.lora_embedding_B[name].T) * self.scaling[name]  # (..., C)
            result = result + (update if update.dtype == result.dtype else update.to(result.dtype))
        return result

    def extra_repr(self) -> str:
        ranks = ", ".join(f"{k}: r={v}" for k, v in self.r.items())
        return f"num_embeddings={self.in_features}, embedding_dim={self.out_features}, {ranks}"
