"""Whole-model 4-bit quantization and QLoRA's preparation step.

    model = AutoModelForCausalLM.from_pretrained("gpt2-folder")
    quantize_model(model, quant_type="nf4", blocksize=64, compress_statistics=True)
    model = prepare_model_for_kbit_training(model)
    peft_model = get_peft_model(model, LoraConfig(r=8))      # QLoRA: LoRA on Linear4bit

:func:`quantize_model` replaces every ``nn.Linear`` (exactly that type, as transformers'
``replace_with_bnb_linear`` does; GPT-2's fused ``c_attn`` / ``c_fc`` / ``c_proj`` are Linears here,
(out, in) like transformers' transposed Conv1D) by a :class:`~minipeft.quant.linear4bit.Linear4bit`,
except those matched by ``skip`` (transformers' module-name rule; ``lm_head`` by default, as
transformers keeps the output embedding in full precision), and records the
``quantization_config`` that transformers' ``BitsAndBytesConfig.to_dict()`` writes into
config.json. :func:`prepare_model_for_kbit_training` is PEFT's: freeze every parameter and cast
the float16 ones that are not 4-bit (norms, embeddings) to float32. :func:`dequantize_model`
goes back to float Linears (transformers' ``model.dequantize()``).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..nn import Linear, Module
from .blockwise import quantize_4bit
from .linear4bit import Linear4bit, Params4bit

__all__ = [
    "bnb_quantization_config",
    "dequantize_model",
    "is_quantized",
    "prepare_model_for_kbit_training",
    "quantize_model",
    "should_convert_module",
]


def should_convert_module(name: str, patterns: Any) -> bool:
    """transformers' rule (``quantizers_utils.should_convert_module``): skip a module when a
    pattern matches its name from the start up to a module boundary (``"h.1"`` skips
    ``"h.1.attn"``, not ``"h.11.attn"``), as a regex with that boundary, or as a suffix."""
    if patterns is None:
        return True
    boundary = r"(?:(?<=\.)|(?=\.|$))"
    return not any(
        re.match(rf"(?:{key}){boundary}", name) or name.endswith(key) for key in patterns
    )


def bnb_quantization_config(
    quant_type: str = "nf4",
    compress_statistics: bool = True,
    skip: Any = None,
    compute_dtype: str = "float32",
) -> dict[str, Any]:
    """``BitsAndBytesConfig(load_in_4bit=True, ...).to_dict()`` as transformers writes it into
    config.json's ``quantization_config`` (bitsandbytes has one blocksize: 64 for weights)."""
    return {
        "_load_in_4bit": True,
        "_load_in_8bit": False,
        "bnb_4bit_compute_dtype": compute_dtype,
        "bnb_4bit_quant_storage": "uint8",
        "bnb_4bit_quant_type": quant_type,
        "bnb_4bit_use_double_quant": bool(compress_statistics),
        "llm_int8_enable_fp32_cpu_offload": False,
        "llm_int8_has_fp16_weight": False,
        "llm_int8_skip_modules": None if skip is None else list(skip),
        "llm_int8_threshold": 6.0,
        "load_in_4bit": True,
        "load_in_8bit": False,
        "quant_method": "bitsandbytes",
    }


def is_quantized(model: Module) -> bool:
    """Whether ``model`` holds any 4-bit layer."""
    return any(isinstance(m, Linear4bit) for m in model.modules())


def _config_extra(model: Module) -> dict[str, Any] | None:
    extra = getattr(getattr(model, "config", None), "extra", None)
    return extra if isinstance(extra, dict) else None


def quantize_model(
    model: Module,
    quant_type: str = "nf4",
    blocksize: int = 64,
    compress_statistics: bool = True,
    skip: Any = ("lm_head",),
) -> Module:
    """Replace every ``nn.Linear`` not matched by ``skip`` by a Linear4bit, in place; returns
    ``model``.

    Raises, before changing anything, for an unsupported quant type or blocksize (the blockwise
    core's check), a model that already holds 4-bit layers or adapters (quantize the base model,
    then add LoRA), and a Linear whose weight is shared with another module (a tied lm_head:
    quantizing it would silently untie it; keep it in ``skip``).
    """
    quantize_4bit(
        np.ones(blocksize, dtype=np.float32),
        blocksize=blocksize,
        quant_type=quant_type,
        compress_statistics=compress_statistics,
    )  # validates the settings
    skip = [skip] if isinstance(skip, str) else list(skip or [])
    modules = dict(model.named_modules())
    if is_quantized(model):
        raise ValueError(
            f"{type(model).__name__} is already quantized to 4 bits (it holds Linear4bit "
            "layers); quantizing again would round already rounded weights"
        )
    if any(hasattr(m, "base_layer") for m in modules.values()):
        raise ValueError(
            f"{type(model).__name__} holds adapter layers; quantize the base model first, then "
            "add the adapters (get_peft_model on the quantized model is QLoRA)"
        )
    targets = [
        n for n, m in modules.items() if n and type(m) is Linear and should_convert_module(n, skip)
    ]
    owners: dict[int, list[str]] = {}
    for name, module in modules.items():
        for pname, p in module._parameters.items():
            owners.setdefault(id(p), []).append(f"{name}.{pname}" if name else pname)
    for name in targets:
        shared = [o for o in owners[id(modules[name].weight)] if o != f"{name}.weight"]
        if shared:
            raise ValueError(
                f"{name}.weight is shared with {', '.join(shared)} (tied weights); quantizing "
                f"it would untie them: add {name!r} to skip"
            )
    for name in targets:
        model.set_submodule(
            name,
            Linear4bit.from_linear(
                modules[name],
                quant_type=quant_type,
                blocksize=blocksize,
                compress_statistics=compress_statistics,
            ),
        )
    extra = _config_extra(model)
    if extra is not None:
        default = skip == ["lm_head"]  # transformers writes null for its own default
        extra["quantization_config"] = bnb_quantization_config(
            quant_type, compress_statistics, skip=None if default else skip
        )
    model.is_loaded_in_4bit = True  # what transformers sets and PEFT reads
    model.is_quantized = True
    return model


def prepare_model_for_kbit_training(
    model: Module,
    use_gradient_checkpointing: bool = True,
    gradient_checkpointing_kwargs: Any = None,
) -> Module:
    """PEFT's ``prepare_model_for_kbit_training``: freeze every parameter, then cast each float16
    parameter that is not 4-bit (norms, embeddings, a float lm_head) to float32 in place, so the
    trainable adapters and the norms they pass through run in full precision.

    minipeft has no gradient checkpointing, so the checkpointing arguments (accepted for PEFT's
    signature) change nothing, and PEFT's ``enable_input_require_grads`` (a workaround for
    reentrant checkpointing) is not needed.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.parameters():
        if not isinstance(p, Params4bit) and p.dtype == np.float16:
            p.data = p.data.astype(np.float32)
            if p.grad is not None:
                p.grad = p.grad.astype(np.float32)
    return model


def dequantize_model(model: Module, dtype: Any = None) -> Module:
    """Replace every Linear4bit by a float ``Linear`` holding Ŵ, in place (transformers'
    ``model.dequantize()``; after a merge, ``merge_and_unload`` then this gives a full-precision
    model). The ``quantization_config`` is dropped from the config."""
    for name, module in list(model.named_modules()):
        if isinstance(module, Linear4bit):
            model.set_submodule(name, module.dequantize(dtype))
    extra = _config_extra(model)
    if extra is not None:
        extra.pop("quantization_config", None)
    for attr in ("is_loaded_in_4bit", "is_quantized"):
        model.__dict__.pop(attr, None)
    return model
