"""What GPT-2 and LLaMA share: the model base class, the losses and the classification pooling.

- :class:`PreTrainedModel`: Hugging Face-style weight init, ``save_pretrained`` (config.json +
  model.safetensors in HF's layout) and ``from_pretrained`` (errors name the weights file and key).
- :func:`causal_lm_loss`: HF's next-token loss. Position t predicts token t + 1, so the labels
  are shifted left by one and padded with -100 (ignored):
  ``loss = mean over {t : labels[t+1] != -100} of -log softmax(logits[t])[labels[t+1]]``.
- :func:`last_token_index` / :func:`sequence_classification_loss`: HF's pooling at the
  rightmost non-padding token and its ``problem_type`` rules (MSE / cross-entropy / BCE).

Shapes: B batch, T tokens, C hidden size, V vocabulary, N labels.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

from .. import functional as F
from .. import nn
from ..backend import get_rng, xp_of
from ..creation import arange, full
from ..fileio import atomic_folder
from ..nn import init
from ..nn.init import skip_init
from ..ops.api import cat
from ..tensor import Tensor, float32, int64
from .checkpoint import (
    check_state_dict,
    hf_to_minipeft_state_dict,
    is_weights_file,
    load_state_dict_from_folder,
    minipeft_to_hf_state_dict,
    save_state_dict_to_folder,
    weights_location,
)
from .config import ModelConfig, config_from_dict, load_config
from .inputs import as_tensor
from .outputs import CausalLMOutput, SequenceClassifierOutput

__all__ = [
    "PreTrainedModel",
    "CausalLMHead",
    "SequenceClassificationHead",
    "get_activation",
    "causal_lm_loss",
    "last_token_index",
    "sequence_classification_loss",
]


def get_activation(name: str) -> Callable[[Tensor], Tensor]:
    """HF's ACT2FN for the activations minipeft supports (gelu_new & co. are tanh-GELU)."""
    if name in ("gelu_new", "gelu_fast", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    table = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}
    if name not in table:
        raise ValueError(f"activation: expected one of gelu_new, gelu, relu, silu, found {name!r}")
    return table[name]


# ---------------------------------------------------------------------------------- losses
def causal_lm_loss(logits: Tensor, labels: Any, ignore_index: int = -100) -> Tensor:
    """Mean cross-entropy of logits (B, T, V) against labels (B, T) shifted left by one."""
    labels = as_tensor(labels, logits.device, int64)
    B, T, V = logits.shape
    if labels.shape != (B, T):
        raise ValueError(f"labels: expected shape ({B}, {T}) like input_ids, found {labels.shape}")
    pad = full((B, 1), ignore_index, dtype=int64, device=logits.device)
    shifted = cat([labels[:, 1:], pad], dim=1)  # (B, T): the token each position must predict
    return F.cross_entropy(
        logits.reshape(B * T, V), shifted.reshape(B * T), ignore_index=ignore_index
    )


def last_token_index(input_ids: Tensor | None, pad_token_id: int | None, batch: int) -> Tensor:
    """Index (B,) of each row's rightmost token != pad_token_id (HF's rule, any padding side).

    Without a pad token the last position is used, which HF allows only for batch size 1.
    A row of nothing but padding gives 0 (argmax of all zeros), as in HF.
    """
    if pad_token_id is None and batch != 1:
        raise ValueError(
            "Cannot handle batch sizes > 1 if no padding token is defined: expected "
            f"config.pad_token_id to be set, found None with batch size {batch}"
        )
    if pad_token_id is None or input_ids is None:
        if input_ids is None and pad_token_id is not None:
            warnings.warn(
                "padding cannot be detected in inputs_embeds; pooling the last token", stacklevel=3
            )
        return full((batch,), -1, dtype=int64)
    ids = input_ids.data
    xp = xp_of(ids)
    positions = xp.arange(ids.shape[-1]) * (ids != pad_token_id)  # 0 at padding
    return Tensor(positions.argmax(-1))


def sequence_classification_loss(
    logits: Tensor, labels: Any, num_labels: int, problem_type: str | None
) -> Tensor:
    """HF's rule: regression (MSE) for one label, cross-entropy for integer labels, else BCE."""
    labels = as_tensor(labels, logits.device)
    if problem_type is None:
        if num_labels == 1:
            problem_type = "regression"
        elif labels.dtype.kind in "iu":
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "regression":
        labels = labels.to(logits.dtype)
        pred, target = (logits.squeeze(), labels.squeeze()) if num_labels == 1 else (logits, labels)
        if pred.shape != target.shape:
            raise ValueError(f"labels: expected shape {pred.shape}, found {labels.shape}")
        return ((pred - target) ** 2).mean()
    if problem_type == "single_label_classification":
        flat = labels.reshape(-1).to(int64)
        if flat.shape[0] != logits.shape[0]:
            raise ValueError(f"labels: expected {logits.shape[0]} class ids, found {labels.shape}")
        return F.cross_entropy(logits.reshape(-1, num_labels), flat)
    y = labels.to(logits.dtype)  # multi-label: mean binary cross-entropy with logits, stably
    if y.shape != logits.shape:
        raise ValueError(f"labels: expected shape {logits.shape}, found {labels.shape}")
    return (logits.relu() - logits * y + (1.0 + (-logits.abs()).exp()).log()).mean()


# ------------------------------------------------------------------------------ base class
class PreTrainedModel(nn.Module):
    """Base of every model here: init, save/load in HF's format, embedding accessors.

    Subclasses set ``config_class``, ``base_model_prefix`` (``"transformer"`` / ``"model"``;
    the trunk's attribute, absent in a bare trunk) and ``task`` (``"base"``, ``"causal_lm"`` or
    ``"seq_cls"``, the key of ``config.architecture_names``), build their modules in
    ``__init__`` and end it with ``self.post_init(seed, init_weights)``.
    """

    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    base_model_prefix: ClassVar[str] = ""
    task: ClassVar[str] = "base"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__}: expected a {self.config_class.__name__}, "
                f"found {type(config).__name__}"
            )
        self.config = config

    # ------------------------------------------------------------------------- weights
    def post_init(self, seed: int | None = None, init_weights: bool = True) -> None:
        """Initialise every weight as HF does (unless loading will overwrite them), then tie."""
        if init_weights:
            self.init_weights(seed)
        self.tie_weights()

    def init_weights(self, seed: int | None = None) -> None:
        """N(0, initializer_range) for Linear/Embedding weights, zero biases, norms 1/0.

        ``seed`` makes a private generator; without it the global one (``manual_seed``) is used.
        """
        rng = get_rng("cpu", seed) if seed is not None else None
        # Children before parents (as HF's ``apply``), so a block can override its layers' init.
        self.apply(lambda module: self._init_module(module, rng))

    def _init_module(self, module: nn.Module, rng: Any) -> None:
        """Initialise one module's own weights; subclasses add special cases (GPT-2 c_proj).

        Models are built on the CPU, so ``rng`` (None: the global generator) is a CPU one.
        """
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            init.normal_(module.weight, 0.0, std, generator=rng)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            if getattr(module, "weight", None) is not None:
                init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)

    def get_input_embeddings(self) -> nn.Module:
        base = getattr(self, self.base_model_prefix, None) if self.task != "base" else self
        return base.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module | None:
        return getattr(self, "lm_head", None)

    def tie_weights(self) -> None:
        """With ``tie_word_embeddings``, make lm_head use the input embedding's Parameter."""
        head = self.get_output_embeddings()
        if head is not None and getattr(self.config, "tie_word_embeddings", False):
            head.weight = self.get_input_embeddings().weight

    @property
    def device(self) -> str:
        return next(self.parameters()).device

    @property
    def dtype(self) -> Any:
        return next(self.parameters()).dtype

    # -------------------------------------------------------------------------- saving
    def _architecture(self) -> str:
        return self.config.architecture_names[self.task]

    def _to_full_keys(self, sd: dict[str, Any]) -> dict[str, Any]:
        """A bare trunk's keys get the prefix, so the key rules of checkpoint.py apply."""
        if self.task != "base":
            return sd
        return {f"{self.base_model_prefix}.{k}": v for k, v in sd.items()}

    def save_pretrained(self, folder: str | os.PathLike, max_shard_size: int | str = "5GB") -> None:
        """Write ``config.json`` (with ``architectures``) and ``model.safetensors`` (or shards)
        in Hugging Face's layout. The folder is written as a whole (:func:`atomic_folder`): a
        failure leaves the previous save or nothing; other files already there (a tokenizer, a
        run's logs) are kept, weight files of an earlier save are not."""
        if any(getattr(p, "quant_state", None) is not None for p in self.parameters()):
            raise ValueError(
                f"{type(self).__name__} holds 4-bit layers: save it with "
                "minipeft.quant.save_quantized(model, folder) (bitsandbytes' layout)"
            )
        cfg = self.config
        sd = self._to_full_keys({k: v.numpy() for k, v in self.state_dict().items()})
        tied = bool(getattr(cfg, "tie_word_embeddings", False))
        hf = minipeft_to_hf_state_dict(sd, cfg.model_type, tied)
        if self.task == "base":  # HF saves a bare trunk without the prefix
            cut = len(self.base_model_prefix) + 1
            hf = {k[cut:]: v for k, v in hf.items()}
        out = copy.deepcopy(cfg)
        out.architectures = [self._architecture()]
        out.dtype = str(self.dtype)
        with atomic_folder(folder, keep=lambda name: not is_weights_file(name)) as tmp:
            save_state_dict_to_folder(tmp, hf, max_shard_size)
            out.save_pretrained(tmp)

    # ------------------------------------------------------------------------- loading
    @classmethod
    def from_config(cls, config: ModelConfig, seed: int | None = None) -> PreTrainedModel:
        """A freshly initialised model (``seed`` for a private generator)."""
        return cls(config, seed=seed)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        device: str = "cpu",
        dtype: Any = None,
        seed: int | None = None,
        **config_overrides: Any,
    ) -> PreTrainedModel:
        """Load a HF checkpoint folder (config.json + safetensors); returned in eval mode.

        Weights become float32 unless ``dtype`` says otherwise. Keys are reconciled as in
        transformers only for a change of head: a classification model loaded from a causal-LM
        checkpoint gets a freshly initialised ``score`` (``seed``) with a warning, and head
        weights the model has no use for (``lm_head``) are dropped with a warning. Any other
        missing or unexpected key or shape mismatch raises (transformers would only warn about
        unexpected keys); the error names the weights file (``model.safetensors``, or the index
        json and the shard of each wrong key).
        Keyword arguments override config fields, as in transformers
        (``from_pretrained(path, num_labels=4, pad_token_id=0)``).
        A ``.gguf`` file (or a known checkpoint name, ``smollm2-135m``) is read by
        :func:`minipeft.models.gguf.load_gguf_model`.
        """
        from .checkpoints import resolve_model  # noqa: PLC0415

        folder = os.fspath(resolve_model(folder))
        if folder.lower().endswith(".gguf"):
            from .gguf import load_gguf_model  # noqa: PLC0415

            return load_gguf_model(cls, folder, device=device, dtype=dtype, seed=seed,
                                   **config_overrides)  # fmt: skip
        config = load_config(folder)
        quantized = (getattr(config, "extra", None) or {}).get("quantization_config")
        if quantized:
            raise ValueError(
                f"{folder}: a {quantized.get('quant_method', 'quantized')} checkpoint (its "
                "config.json has a quantization_config); load it with "
                "minipeft.quant.load_quantized(folder)"
            )
        if config_overrides:
            config = config_from_dict({**config.to_dict(), **config_overrides}, source=folder)
        if not isinstance(config, cls.config_class):
            raise ValueError(
                f"{folder}: {cls.__name__} expects model_type {cls.config_class.model_type!r}, "
                f"found {config.model_type!r}"
            )
        with skip_init():  # the checkpoint fills every weight next
            model = cls(config, init_weights=False)
        tied = bool(getattr(config, "tie_word_embeddings", False))
        raw = load_state_dict_from_folder(folder)
        sd = hf_to_minipeft_state_dict(
            raw, config.model_type, tied, restore_lm_head=cls.task == "causal_lm"
        )
        sd = model._adapt_checkpoint(sd, folder, seed)
        expected = {k: v.shape for k, v in model.state_dict().items()}
        source, shards = weights_location(folder)
        prefix = cls.base_model_prefix + "."  # shard names of keys with and without the prefix
        where = {n: f for k, f in shards.items() for n in (k, prefix + k, k.removeprefix(prefix))}
        check_state_dict(expected, sd, source=source, where=where)
        model.load_state_dict({k: v.astype(float32) if v.dtype.kind == "f" else v
                               for k, v in sd.items()})  # fmt: skip
        model.tie_weights()
        model.name_or_path = folder  # recorded in adapters' base_model_name_or_path, as in HF
        model.to(device)
        if dtype is not None:
            model.to(dtype)
        return model.eval()

    def _adapt_checkpoint(self, sd: dict[str, Any], folder: str, seed: int | None) -> dict:
        """Reconcile a checkpoint for another head with this one, as transformers does."""
        prefix = self.base_model_prefix + "."
        own = self.state_dict()
        if self.task == "base":  # keep the trunk, drop any head
            return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        unused = [k for k in sd if not k.startswith(prefix) and k not in own]
        if unused:
            warnings.warn(
                f"{folder}: weights not used by {type(self).__name__}: {unused}", stacklevel=3
            )
            sd = {k: v for k, v in sd.items() if k not in unused}
        fresh = [k for k in own if not k.startswith(prefix) and k not in sd]
        if fresh and self.task == "seq_cls":
            warnings.warn(
                f"{folder}: {fresh} not found in the checkpoint; newly initialised. "
                "Train this model on a down-stream task before using it for predictions.",
                stacklevel=3,
            )
            rng = get_rng("cpu", seed) if seed is not None else None
            for name in sorted({k.rpartition(".")[0] for k in fresh}):
                self._init_module(self.get_submodule(name), rng)
            sd = {**sd, **{k: own[k].numpy() for k in fresh}}
        return sd


# ------------------------------------------------------------------------------ the heads
class CausalLMHead:
    """``forward`` of ``*ForCausalLM``: trunk → ``lm_head`` → logits (B, T, V) (+ HF's loss).

    Mixed in before the architecture's PreTrainedModel; needs ``self.<base_model_prefix>`` (the
    trunk) and ``self.lm_head``.
    """

    def forward(
        self,
        input_ids: Any = None,
        inputs_embeds: Tensor | None = None,
        attention_mask: Any = None,
        past_key_values: Any = None,
        labels: Any = None,
        use_cache: bool = False,
        position_ids: Any = None,
        output_hidden_states: bool = False,
    ) -> CausalLMOutput:
        out = getattr(self, self.base_model_prefix)(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            use_cache=use_cache,
            position_ids=position_ids,
            output_hidden_states=output_hidden_states,
        )
        logits = self.lm_head(out.last_hidden_state)  # (B, T, V)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return CausalLMOutput(loss, logits, out.past_key_values, out.hidden_states)


class SequenceClassificationHead:
    """``forward`` of ``*ForSequenceClassification``: ``score`` at each row's last real token.

    ``logits`` (B, N) = score(h[b, last_token_index[b]]); pooling before ``score`` is the same
    math as HF's score-then-pool, T times cheaper.
    """

    def forward(
        self,
        input_ids: Any = None,
        inputs_embeds: Tensor | None = None,
        attention_mask: Any = None,
        past_key_values: Any = None,
        labels: Any = None,
        use_cache: bool = False,
        position_ids: Any = None,
        output_hidden_states: bool = False,
    ) -> SequenceClassifierOutput:
        out = getattr(self, self.base_model_prefix)(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            use_cache=use_cache,
            position_ids=position_ids,
            output_hidden_states=output_hidden_states,
        )
        h = out.last_hidden_state  # (B, T, C)
        B = h.shape[0]
        ids = None if input_ids is None else as_tensor(input_ids, h.device)
        idx = last_token_index(ids, self.config.pad_token_id, B).to(h.device)
        logits = self.score(h[(arange(B, device=h.device), idx)])  # (B, N)
        loss = None
        if labels is not None:
            loss = sequence_classification_loss(
                logits, labels, self.config.num_labels, self.config.problem_type
            )
        return SequenceClassifierOutput(loss, logits, out.past_key_values, out.hidden_states)
