"""The LoRA layer: a frozen linear map plus a trainable low-rank update.

For a base layer ``y = W x + b`` with W (d_out, d_in), LoRA (Hu et al., 2021, eq. 3) learns
A (r, d_in) and B (d_out, r), r ≪ min(d_in, d_out), and computes

    y = W x + b + s · B A dropout(x),      s = α / r   (rsLoRA: s = α / √r, Kalajdzievski 2023)

B starts at zero, so at initialisation the output is exactly the base model's. The update has
r · (d_in + d_out) parameters instead of d_in · d_out, and merging ``W ← W + s·B A`` removes the
extra inference cost. The layer *wraps* the base layer (``self.base_layer``), never edits it,
except on an explicit merge. One layer can hold several named adapters (``lora_A["default"]``),
as in Hugging Face PEFT, whose parameter names it mirrors.

Shapes: x (..., d_in) → A x (..., r) → B A x (..., d_out).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from ..autograd import no_grad
from ..backend import xp_of
from ..nn import Dropout, Identity, Linear, Module, ModuleDict
from ..nn import init as nn_init

__all__ = ["LoraLayer", "is_linear"]


def has_sizes_and_weight(module: Any, *sizes: str) -> bool:
    """A Module with these integer size attributes and a ``weight``: the duck type a tuner
    wraps (linear: in/out features; embedding: num_embeddings, embedding_dim)."""
    return (
        isinstance(module, Module)
        and all(isinstance(getattr(module, s, None), int) for s in sizes)
        and getattr(module, "weight", None) is not None
    )


def is_linear(module: Any) -> bool:
    """The linear contract: anything with in/out features, a weight and forward is a linear."""
    return has_sizes_and_weight(module, "in_features", "out_features")


class LoraLayer(Module):
    """Wraps one linear layer; adds ``lora_A[name]``, ``lora_B[name]``, ``lora_dropout[name]``.

    ``fan_in_fan_out=True`` means the base weight is stored (d_in, d_out) (HF's Conv1D); it only
    changes how the delta weight is laid out when merging.

    A subclass for another base layer (:class:`~minipeft.peft.lora_embedding.LoraEmbedding`)
    names its per-adapter containers in ``adapter_layer_names`` (trainable) and
    ``other_adapter_containers`` and overrides ``update_layer``, ``get_delta_weight`` and
    ``forward``; adapter state, set/delete and merge/unmerge are written once, here.
    """

    adapter_layer_names: tuple[str, ...] = ("lora_A", "lora_B")  # PEFT's attribute name
    other_adapter_containers: tuple[str, ...] = ("lora_dropout",)

    def __init__(self, base_layer: Module, fan_in_fan_out: bool = False) -> None:
        super().__init__()
        if not is_linear(base_layer):
            raise TypeError(
                f"LoRA wraps linear layers (in_features, out_features, weight), found "
                f"{type(base_layer).__name__}"
            )
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        w_shape = tuple(base_layer.weight.shape)
        d_in, d_out = self.in_features, self.out_features
        if isinstance(base_layer, Linear):
            layout = False  # a Linear stores W as (d_out, d_in), even when it is square
        elif d_in != d_out and w_shape in ((d_in, d_out), (d_out, d_in)):
            layout = w_shape == (d_in, d_out)  # e.g. HF's Conv1D: (d_in, d_out)
        else:
            layout = fan_in_fan_out  # square or packed weight: only the flag can tell
        if layout != fan_in_fan_out:
            # PEFT warns and fixes the same mistake for nn.Linear and Conv1D.
            warnings.warn(
                f"fan_in_fan_out={fan_in_fan_out} does not match the base layer "
                f"{type(base_layer).__name__} with weight shape {w_shape}; "
                f"setting fan_in_fan_out={layout}",
                stacklevel=3,
            )
            fan_in_fan_out = layout
        self.fan_in_fan_out = fan_in_fan_out
        self.lora_A = ModuleDict()
        self.lora_B = ModuleDict()
        self.lora_dropout = ModuleDict()
        self._init_adapter_state()

    def _init_adapter_state(self) -> None:
        """Per-adapter rank, alpha and scaling, and the merged / active / disabled state."""
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.merged_adapters: list[str] = []
        self.active_adapters: list[str] = []
        self.disable_adapters = False

    # ------------------------------------------------------------------ adapters
    def update_layer(
        self,
        adapter_name: str,
        r: int,
        lora_alpha: float,
        lora_dropout: float = 0.0,
        init_lora_weights: bool | str = True,
        use_rslora: bool = False,
    ) -> None:
        """Add adapter ``adapter_name`` with rank r and scaling α/r (or α/√r)."""
        self._check_rank(r)
        kw = {"bias": False, **self._adapter_factory_kwargs()}
        self.lora_A[adapter_name] = Linear(self.in_features, r, **kw)
        self.lora_B[adapter_name] = Linear(r, self.out_features, **kw)
        self.lora_dropout[adapter_name] = Dropout(lora_dropout) if lora_dropout > 0 else Identity()
        self._finish_update(adapter_name, r, lora_alpha, init_lora_weights, use_rslora)

    @staticmethod
    def _check_rank(r: Any) -> None:
        if not isinstance(r, int) or r <= 0:
            raise ValueError(f"LoRA rank r must be a positive int, found {r!r}")

    def _adapter_factory_kwargs(self) -> dict[str, Any]:
        """Device and dtype of new adapter weights: the base weight's, but at least float32, so
        a float16 base keeps float32 adapters (PEFT's ``autocast_adapter_dtype=True``)."""
        w = self.base_layer.weight
        dtype = w.dtype if w.dtype.kind == "f" and w.dtype.itemsize >= 4 else "float32"
        return {"device": w.device, "dtype": dtype}

    def _finish_update(self, adapter_name: str, r: int, lora_alpha: float,
                       init_lora_weights: bool | str, use_rslora: bool) -> None:  # fmt: skip
        """Record r, α and s = α/r (rsLoRA: α/√r), initialise, and activate a first adapter."""
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = lora_alpha / (math.sqrt(r) if use_rslora else r)
        self.reset_lora_parameters(adapter_name, init_lora_weights)
        if not self.active_adapters:
            self.active_adapters = [adapter_name]

    def reset_lora_parameters(self, adapter_name: str, init: bool | str) -> None:
        """True: A ~ Kaiming-uniform (PyTorch Linear's default), B = 0 ⇒ ΔW = 0 at start.
        "gaussian": A ~ N(0, 1/r), B = 0. False: A and B both random (for tests)."""
        a, b = self.lora_A[adapter_name].weight, self.lora_B[adapter_name].weight
        if init is False:
            return  # both keep Linear's random default init
        if init == "gaussian":
            nn_init.normal_(a, std=1.0 / self.r[adapter_name])
        else:
            nn_init.kaiming_uniform_(a, a=math.sqrt(5))
        nn_init.zeros_(b)

    def delete_adapter(self, adapter_name: str) -> None:
        for attr in self.adapter_layer_names + self.other_adapter_containers:
            container = getattr(self, attr)
            if adapter_name in container:
                del container[adapter_name]
        for d in (self.r, self.lora_alpha, self.scaling):
            d.pop(adapter_name, None)
        self.active_adapters = [a for a in self.active_adapters if a != adapter_name]

    def set_adapter(self, adapter_names: str | list[str]) -> None:
        """Activate these adapters; only they are trainable (PEFT's behaviour)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        held = self.adapter_names()
        for attr in self.adapter_layer_names:
            container = getattr(self, attr)
            for key in held:
                container[key].requires_grad_(key in names)
        self.active_adapters = [n for n in names if n in held]

    def adapter_names(self) -> list[str]:
        """The adapters this layer holds."""
        return getattr(self, self.adapter_layer_names[0]).keys()

    # ------------------------------------------------------------------ merging
    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    def check_merge_allowed(self) -> None:
        """Raise if merging this layer would change what the model computes (a linear layer
        always merges; see :class:`~minipeft.peft.lora_embedding.LoraEmbedding`)."""

    def get_delta_weight(self, adapter_name: str) -> Any:
        """ΔW = s · B A as a raw array laid out like the base weight ((d_out, d_in), or
        transposed with fan_in_fan_out)."""
        a = self.lora_A[adapter_name].weight.data
        b = self.lora_B[adapter_name].weight.data
        delta = (b @ a) * self.scaling[adapter_name]
        delta = delta.T if self.fan_in_fan_out else delta
        return delta.astype(self.base_layer.weight.dtype, copy=False)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """W ← W + ΔW for each active (or named) adapter not merged yet.

        ``safe_merge`` computes the merged weight on a copy first and raises, leaving W
        untouched, if it is not finite.
        """
        self.check_merge_allowed()
        names = self.active_adapters if adapter_names is None else adapter_names
        held = self.adapter_names()
        todo = [n for n in names if n in held and n not in self.merged_adapters]
        if len(todo) < len(names):
            done = [n for n in names if n in self.merged_adapters]
            if done:
                warnings.warn(f"adapters {done} are already merged; merging them again is a no-op",
                              stacklevel=3)  # fmt: skip
        w = self.base_layer.weight
        with no_grad():
            for name in todo:
                delta = self.get_delta_weight(name)
                if safe_merge:
                    merged = w.data + delta
                    if not bool(xp_of(merged).isfinite(merged).all()):
                        raise ValueError(
                            f"NaNs or infs detected in the merged weights of adapter {name!r}: "
                            "the adapter seems broken; nothing was merged"
                        )
                    w.data[...] = merged
                else:
                    w.data += delta
                self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """W ← W − ΔW for every merged adapter, last merged first (PEFT warns if none is)."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        with no_grad():
            while self.merged_adapters:
                name = self.merged_adapters.pop()
                self.base_layer.weight.data -= self.get_delta_weight(name)

    # ------------------------------------------------------------------ forward
    def forward(self, x: Any) -> Any:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x)
        result = self.base_layer(x)
        if self.merged:
            return result
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            a = self.lora_A[name]
            h = self.lora_dropout[name](x)
            if h.dtype != a.weight.dtype:  # a float16 base keeps float32 adapters
                h = h.to(a.weight.dtype)
            update = self.lora_B[name](a(h)) * self.scaling[name]
            result = result + (update if update.dtype == result.dtype else update.to(result.dtype))
        return result

    def extra_repr(self) -> str:
        ranks = ", ".join(f"{k}: r={v}" for k, v in self.r.items())
        return f"in_features={self.in_features}, out_features={self.out_features}, {ranks}"
