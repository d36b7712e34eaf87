"""LoRA on an embedding layer: a frozen table plus a trainable low-rank update of it.

For a base embedding z = E[ids] with E (V, C) (V tokens, C features), LoRA learns
A (r, V) and B (C, r) and computes, as PEFT's ``lora.Embedding`` does,

    z = E[ids] + s · (Aᵀ[ids] @ Bᵀ),      s = α / r   (rsLoRA: α / √r)

i.e. the table becomes E + s·(B A)ᵀ, rank r. A starts at zero and B ~ N(0, 1) (PEFT's choice
for embeddings, taken from loralib: the reverse of a linear layer's, so again ΔE = 0 at
initialisation while the gradient of A is not zero). No dropout is applied on this path, as in
PEFT. The lookup of Aᵀ uses the base layer's ``padding_idx``, so, as in PEFT, the column of A for
the padding token gets no gradient. The update has r · (V + C) parameters instead of V · C;
merging ``E ← E + s·(B A)ᵀ`` removes it. With ``use_dora`` the output is rescaled per embedding
feature by a trained magnitude over the norms ‖E + ΔE‖ taken over the vocabulary (PEFT's
``DoraEmbeddingLayer``, :func:`.dora.embedding_output`).

Shapes: ids (...) → Aᵀ[ids] (..., r) → @ Bᵀ (..., C).
"""

from __future__ import annotations

from typing import Any

from ....creation import as_array, randn
from ....functional import embedding
from ....nn import Module, Parameter, ParameterDict
from ....nn import init as nn_init
from ....nn.layers import _PaddedEmbeddingFn
from ....tensor import Tensor
from ..base import is_embedding
from . import dora
from .layer import LoraLayer

__all__ = ["LoraEmbedding"]


class LoraEmbedding(LoraLayer):
    """Wraps one embedding; adds ``lora_embedding_A[name]`` (r, V), ``lora_embedding_B[name]``
    (C, r), bare Parameters as in PEFT (state-dict keys ``...wte.lora_embedding_A.default``).
    Adapter state, set/delete and merge/unmerge are :class:`LoraLayer`'s.

    ``fan_in_fan_out`` is accepted for the tuner's sake and ignored: a table is always (V, C),
    i.e. (d_in, d_out) (``weight_transposed``).
    """

    weight_transposed = True  # E (V, C) = (d_in, d_out): DoRA's norms run over V, per feature

    adapter_layer_names = ("lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")
    other_param_names = ("r", "lora_alpha", "scaling", "dora_merged_norm")

    def __init__(self, base_layer: Module, fan_in_fan_out: bool = False) -> None:
        Module.__init__(self)  # not LoraLayer's: it checks the linear contract
        if not is_embedding(base_layer):
            raise TypeError(
                f"LoraEmbedding wraps embedding layers (num_embeddings, embedding_dim, weight), "
                f"found {type(base_layer).__name__}"
            )
        self.base_layer = base_layer
        self.in_features = base_layer.num_embeddings  # PEFT's LoraLayer names V and C so too
        self.out_features = base_layer.embedding_dim
        self.fan_in_fan_out = False
        self.lora_embedding_A = ParameterDict()
        self.lora_embedding_B = ParameterDict()
        self._init_adapter_state()
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
        """Add adapter ``adapter_name``: A (r, V), B (C, r), scaling α/r (or α/√r), and with
        ``use_dora`` a magnitude (C,).

        ``lora_dropout`` is accepted and not used: PEFT's embedding forward applies none."""
        self._check_rank(r)
        kw = self._adapter_factory_kwargs()
        self.lora_embedding_A[adapter_name] = Parameter(randn(r, self.in_features, **kw))
        self.lora_embedding_B[adapter_name] = Parameter(randn(self.out_features, r, **kw))
        self._finish_update(adapter_name, r, lora_alpha, init_lora_weights, use_rslora, use_dora)

    def reset_lora_parameters(self, adapter_name: str, init: bool | str) -> None:
        """True, and "gaussian", "pissa", "olora" too (PEFT treats every init of an embedding
        alike): A = 0, B ~ N(0, 1). False: both keep their random N(0, 1) start (for tests)."""
        if init is False:
            return
        nn_init.zeros_(self.lora_embedding_A[adapter_name])
        nn_init.normal_(self.lora_embedding_B[adapter_name])

    # ------------------------------------------------------------------ merging
    def check_merge_allowed(self) -> None:
        """Refuse to merge a table tied to the output layer: the adapter changes only the input
        embedding, and merging would change ``lm_head`` as well (PEFT merges and only warns)."""
        if self.tied_to:
            raise ValueError(
                f"cannot merge LoRA on an embedding tied to {self.tied_to!r} "
                "(tie_word_embeddings): the merged table would change the output layer too, so "
                "the merged model would not compute what the adapter does; keep it unmerged"
            )

    def lora_factors(self, adapter_name: str) -> tuple[Any, Any]:
        """(A (r, V), B (C, r)) of adapter ``adapter_name``."""
        return self.lora_embedding_A[adapter_name], self.lora_embedding_B[adapter_name]

    def get_delta_weight(self, adapter_name: str) -> Any:
        """ΔE = s · (B A)ᵀ as a raw array shaped like the table (V, C), in the table's dtype."""
        a = self.lora_embedding_A[adapter_name].data
        b = self.lora_embedding_B[adapter_name].data
        delta = (b @ a).T * self.scaling[adapter_name]
        dtype = self.base_layer.weight.dtype  # a 4-bit base stores codes: keep ΔW in float
        return delta.astype(dtype, copy=False) if dtype.kind == "f" else delta

    # ------------------------------------------------------------------ forward
    def _embed(self, ids: Any, table: Tensor) -> Tensor:
        """Rows of ``table`` (V, r) for ``ids`` (...) → (..., r), with the base layer's
        ``padding_idx`` (PEFT's ``_embed``): that row then gets no gradient."""
        pad = getattr(self.base_layer, "padding_idx", None)
        if pad is None:
            return embedding(ids, table)
        # The base layer has already checked the ids (integers in [0, V)).
        return _PaddedEmbeddingFn.apply(table, ids=as_array(ids, device=table.device),
                                        padding_idx=pad)  # fmt: skip

    def add_adapter_output(self, name: str, x: Any, result: Any) -> Any:
        """``result + s · Aᵀ[ids] Bᵀ`` for adapter ``name`` (rows of ``x`` and ``result``);
        DoRA: the magnitude over the norm times both (:func:`.dora.embedding_output`)."""
        if self.uses_dora(name):
            return dora.embedding_output(self, name, x, result)
        after_a = self._embed(x, self.lora_embedding_A[name].T)  # (..., r): rows of Aᵀ
        update = (after_a @ self.lora_embedding_B[name].T) * self.scaling[name]  # (..., C)
        return result + (update if update.dtype == result.dtype else update.to(result.dtype))

    def extra_repr(self) -> str:
        ranks = ", ".join(f"{k}: r={v}" for k, v in self.r.items())
        return f"num_embeddings={self.in_features}, embedding_dim={self.out_features}, {ranks}"
