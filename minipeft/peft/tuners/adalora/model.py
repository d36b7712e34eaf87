"""``AdaLoraModel``: AdaLoRA layers on a model's target linears, the rank allocation schedule,
the orthogonality penalty and PEFT's pruned adapter files.

PEFT's ``peft.tuners.adalora.AdaLoraModel`` on the tuner seam
(:class:`~minipeft.peft.tuners.base.BaseTuner`): targets, freezing by the ``lora_`` prefix, set /
delete / merge / unload are the base class's. What is AdaLoRA's own:

* one trainable adapter at most (the others loaded for inference), with its
  :class:`~.allocator.RankAllocator`; ``update_and_allocate(step)`` after each optimizer step;
* the penalty R = orth_reg_weight · (1/n) Σ_{P ∈ {A, B} of every module} ‖G(P) − I‖_F with
  G(A) = A Aᵀ, G(B) = Bᵀ B (r, r) — PEFT's: the Frobenius norm itself, not its square (Eq. 4
  squares it) — added to the loss (:meth:`regularization_loss`);
* files: ``rank_pattern`` is saved (keys without the adapter name) and each module's tensors are
  cut to its kept triplets; loading first cuts the modules to the pattern (PEFT's
  ``resize_modules_by_rank_pattern``). ``ranknum`` is never saved.
"""

from __future__ import annotations

import copy
from typing import Any

from ....backend import to_device, to_numpy, xp_of
from ....functional import sqrt, where
from ....nn import Module
from ....tensor import Tensor
from ..base import BaseTuner, is_linear
from ..lora.model import lora_shape_hints
from .allocator import RankAllocator
from .config import AdaLoraConfig
from .layer import AdaLoraLayer
from .report import format_rank_table, rank_rows

__all__ = ["AdaLoraModel", "frobenius_norm", "module_of"]

PREFIX = "base_model.model."  # PeftModel state-dict keys start here
STATE_KINDS = ("ipt", "exp_avg_ipt", "exp_avg_unc")  # the allocator's per-parameter arrays
# On-disk factor key suffix -> the axis of the rank in that tensor.
RANK_AXIS = {"lora_E": 0, "lora_A": 0, "lora_B": 1}


def frobenius_norm(m: Tensor) -> Tensor:
    """‖M‖_F = √(Σ M²), with torch.norm's gradient at M = 0 (zero, where √ would give NaN)."""
    squares = (m * m).sum()
    positive = squares.data > 0
    return where(positive, sqrt(where(positive, squares, 1.0)), 0.0)


def module_of(pattern_name: str, adapter_name: str) -> str:
    """Module name of a rank-pattern key: ``<module>.lora_E[.<adapter>]`` → ``<module>``."""
    cut = 2 if pattern_name.endswith(f".{adapter_name}") else 1
    return pattern_name.rsplit(".", cut)[0]


class AdaLoraModel(BaseTuner):
    """The model with AdaLoRA layers injected; ``peft_config`` maps adapter names to configs;
    ``trainable_adapter_name`` / ``rankallocator`` are the one trainable adapter's (PEFT's)."""

    prefix = "lora_"
    layer_class = AdaLoraLayer
    config_class = AdaLoraConfig
    supports_mixed_batch = True  # its layers route rows (peft.mixed_batch)

    # ------------------------------------------------------------------ injection
    def inject_adapter(self, config: Any, adapter_name: str) -> None:
        trainable = getattr(self, "trainable_adapter_name", None)
        if not getattr(config, "inference_mode", False) and trainable is not None:
            raise ValueError(
                f"AdaLoraModel supports only 1 trainable adapter ({trainable!r} is); load or "
                "add the others with inference_mode=True"
            )
        super().inject_adapter(config, adapter_name)
        if not config.inference_mode:
            self.trainable_adapter_name = adapter_name
            self.rankallocator = RankAllocator(self.model, config, adapter_name)

    def _check_target(self, name: str, module: Module, config: Any) -> None:
        if not (isinstance(module, AdaLoraLayer) or is_linear(module)):
            raise TypeError(
                f"target module {name!r} is a {type(module).__name__}; AdaLoRA supports linear "
                "layers (in_features, out_features, weight) only"
            )

    def _create_and_replace(self, config: AdaLoraConfig, adapter_name: str, target_name: str,
                            target: Module) -> None:  # fmt: skip
        module = target
        if not isinstance(module, AdaLoraLayer):
            module = AdaLoraLayer(target, fan_in_fan_out=config.fan_in_fan_out)
            self.model.set_submodule(target_name, module)
        module.update_layer(adapter_name, r=config.init_r, lora_alpha=config.lora_alpha,
                            lora_dropout=config.lora_dropout,
                            init_lora_weights=config.init_lora_weights)  # fmt: skip

    def _mark_trainable_extras(self, config: AdaLoraConfig) -> None:
        """LoRA's ``bias``: "all" trains every bias, "lora_only" those of the wrapped layers."""
        if config.bias == "all":
            for name, p in self.model.named_parameters():
                if name.endswith("bias") and ".original_module." not in name:
                    p.requires_grad_(True)
        elif config.bias == "lora_only":
            for layer in self.tuner_layers():
                if getattr(layer.base_layer, "bias", None) is not None:
                    layer.base_layer.bias.requires_grad_(True)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        if adapter_name == getattr(self, "trainable_adapter_name", None):
            self.trainable_adapter_name = None
            self.rankallocator = None

    # ------------------------------------------------------------------ training
    def _trainable(self) -> str:
        name = getattr(self, "trainable_adapter_name", None)
        if name is None:
            raise ValueError(
                "update_and_allocate: no trainable AdaLoRA adapter (every adapter was loaded "
                "with inference_mode=True; load it with is_trainable=True to train it)"
            )
        return name

    def update_and_allocate(self, global_step: int) -> None:
        """PEFT's ``update_and_allocate``: call after ``optimizer.step()``, before
        ``zero_grad()``. Before ``total_step − tfinal``: update the scores and prune on the
        schedule (recording ``rank_pattern``); at it: the final pruning to ``target_r`` on
        average (recorded, scores reset); after it: keep the final pattern's E entries at 0."""
        config = self.peft_config[self._trainable()]
        final = config.total_step - config.tfinal
        if global_step < final:
            _, pattern = self.rankallocator.update_and_allocate(self.model, global_step)
            if pattern:
                config.rank_pattern = pattern
        elif global_step == final:
            _, pattern = self.rankallocator.update_and_allocate(self.model, global_step,
                                                                force_mask=True)  # fmt: skip
            config.rank_pattern = pattern
            self.rankallocator.reset_ipt()
        else:
            if config.rank_pattern is None:
                raise ValueError(
                    f"update_and_allocate({global_step}): past total_step - tfinal = {final} "
                    "with no rank_pattern (the final allocation at that step never ran)"
                )
            self.rankallocator.mask_using_rank_pattern(self.model, config.rank_pattern)

    def training_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The allocator's averages (host arrays) and the rank pattern, for checkpoints."""
        name = getattr(self, "trainable_adapter_name", None)
        if name is None:
            return {}, {}
        alloc = self.rankallocator
        arrays = {f"{kind}/{key}": to_numpy(value) for kind in STATE_KINDS
                  for key, value in getattr(alloc, kind).items()}  # fmt: skip
        return arrays, {"adapter": name, "rank_pattern": self.peft_config[name].rank_pattern}

    def load_training_state(self, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
        if not meta:
            return
        name = self._trainable()
        params = dict(self.model.named_parameters())
        alloc = self.rankallocator
        alloc.reset_ipt()
        for full_key, value in arrays.items():
            kind, key = full_key.split("/", 1)
            getattr(alloc, kind)[key] = to_device(value, params[key].device)
        self.peft_config[name].rank_pattern = meta["rank_pattern"]

    def regularization_loss(self) -> Tensor | None:
        """orth_reg_weight · mean over the trainable adapter's A and B of ‖G − I‖_F (PEFT's
        AdaLoraModel.forward adds it to a loss); None without a trainable adapter."""
        name = getattr(self, "trainable_adapter_name", None)
        if name is None:
            return None
        total, count = None, 0
        for layer in self.tuner_layers():
            if not layer.holds(name):
                continue
            a, b = layer.lora_A[name], layer.lora_B[name]
            for gram in (a @ a.T, b.T @ b):  # (r, r) each, in PEFT's order (A, then B)
                eye = Tensor(xp_of(gram.data).eye(gram.shape[0], dtype=gram.dtype))
                norm = frobenius_norm(gram - eye)
                total, count = (norm if total is None else total + norm), count + 1
        if total is None:
            return None
        return total / count * self.peft_config[name].orth_reg_weight

    # ------------------------------------------------------------------ files
    def config_for_saving(self, config: AdaLoraConfig, adapter_name: str) -> AdaLoraConfig:
        """``rank_pattern`` keyed without the adapter name, as PEFT saves it."""
        if config.rank_pattern:
            config = copy.copy(config)
            config.rank_pattern = {module_of(k, adapter_name) + ".lora_E": list(v)
                                   for k, v in config.rank_pattern.items()}  # fmt: skip
        return config

    def to_disk_keys(self, state_dict: dict[str, Any], adapter_name: str) -> dict[str, Any]:
        """PEFT's keys, each module's A, E, B cut to the triplets ``rank_pattern`` keeps
        (values may be arrays or shapes)."""
        out = super().to_disk_keys(state_dict, adapter_name)
        pattern = self.peft_config[adapter_name].rank_pattern
        for name, keep in (pattern or {}).items():
            module = module_of(name, adapter_name)
            for factor, axis in RANK_AXIS.items():
                key = f"{PREFIX}{module}.{factor}"
                if key not in out:
                    raise ValueError(f"rank_pattern names {name!r}, but the adapter has no {key!r}")
                out[key] = _keep_along(out[key], keep, axis)
        return out

    def from_disk_keys(self, tensors: dict[str, Any], adapter_name: str,
                       shapes: dict[str, Any], source: Any) -> dict[str, Any]:  # fmt: skip
        pattern = self.peft_config[adapter_name].rank_pattern
        if pattern:
            self.resize_modules_by_rank_pattern(pattern, adapter_name)
            shapes = {**shapes, **{PREFIX + k: v.shape for k, v in self.model.state_dict().items()}}
        return super().from_disk_keys(tensors, adapter_name, shapes, source)

    def resize_modules_by_rank_pattern(self, rank_pattern: dict[str, Any],
                                       adapter_name: str) -> None:  # fmt: skip
        """Cut each named module to its kept triplets (a module already at that rank stays)."""
        for name, keep in rank_pattern.items():
            layer = self.model.get_submodule(module_of(name, adapter_name))
            if layer.r[adapter_name] != sum(bool(v) for v in keep):
                layer.resize(adapter_name, keep)

    shape_hints = staticmethod(lora_shape_hints)

    # ------------------------------------------------------------------ report
    def report(self) -> str | None:
        """The table of each module's initial and final rank (see :mod:`.report`)."""
        name = getattr(self, "trainable_adapter_name", None) or next(iter(self.peft_config))
        return format_rank_table(rank_rows(self, name), name)


def _keep_along(value: Any, keep: list[bool], axis: int) -> Any:
    """``value`` with only the kept indices along ``axis`` (unchanged when it already has that
    many); a shape tuple gives the cut shape."""
    kept = sum(bool(v) for v in keep)
    shape = tuple(value) if isinstance(value, tuple) else tuple(value.shape)
    if shape[axis] == kept:
        return value
    if shape[axis] != len(keep):
        raise ValueError(f"rank_pattern has {len(keep)} flags for a rank of {shape[axis]}")
    if isinstance(value, tuple):
        return shape[:axis] + (kept,) + shape[axis + 1 :]
    index = [slice(None)] * len(shape)
    index[axis] = [i for i, v in enumerate(keep) if v]
    return value[tuple(index)]
