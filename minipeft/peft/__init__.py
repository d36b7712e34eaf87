"""Parameter-efficient fine-tuning with Hugging Face PEFT's API and files (AdapterHub's for
bottleneck adapters), every method on one tuner seam (:mod:`minipeft.peft.tuners`).

from minipeft.peft import LoraConfig, get_peft_model, PeftModel, TaskType
"""

from __future__ import annotations

from .config import PeftConfig, PeftType, TaskType
from .modules_to_save import ModulesToSaveWrapper
from .peft_model import (
    PeftModel,
    PeftModelForCausalLM,
    PeftModelForSequenceClassification,
    get_peft_model,
)
from .registry import PeftMethod, method_for, preset, preset_names, register_peft_method
from .tuners.adalora import AdaLoraConfig, AdaLoraLayer, AdaLoraModel
from .tuners.base import BaseTuner, BaseTunerLayer
from .tuners.bottleneck import (
    AdapterConfig,
    BottleneckLayer,
    BottleneckModel,
    DoubleSeqBnConfig,
    ParBnConfig,
    SeqBnConfig,
    Stack,
)
from .tuners.ia3 import IA3Config, IA3Layer, IA3Model
from .tuners.lora import LoraConfig, LoraEmbedding, LoraLayer, LoraModel
from .tuners.p_tuning import PromptEncoder, PromptEncoderConfig
from .tuners.prefix_tuning import PrefixEncoder, PrefixTuningConfig
from .tuners.prompt_tuning import PromptEmbedding, PromptTuningConfig, PromptTuningInit

__all__ = [
    "AdaLoraConfig",
    "AdaLoraLayer",
    "AdaLoraModel",
    "AdapterConfig",
    "BaseTuner",
    "BaseTunerLayer",
    "BottleneckLayer",
    "BottleneckModel",
    "DoubleSeqBnConfig",
    "IA3Config",
    "IA3Layer",
    "IA3Model",
    "LoraConfig",
    "LoraEmbedding",
    "LoraLayer",
    "LoraModel",
    "ModulesToSaveWrapper",
    "ParBnConfig",
    "PeftConfig",
    "PeftMethod",
    "PeftModel",
    "PeftModelForCausalLM",
    "PeftModelForSequenceClassification",
    "PrefixEncoder",
    "PrefixTuningConfig",
    "PromptEmbedding",
    "PromptEncoder",
    "PromptEncoderConfig",
    "PromptTuningConfig",
    "PromptTuningInit",
    "PeftType",
    "SeqBnConfig",
    "Stack",
    "TaskType",
    "get_peft_model",
    "method_for",
    "preset",
    "preset_names",
    "register_peft_method",
]
