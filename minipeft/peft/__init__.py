"""Parameter-efficient fine-tuning with Hugging Face PEFT's API and file format.

from minipeft.peft import LoraConfig, get_peft_model, PeftModel, TaskType
"""

from __future__ import annotations

from .config import PeftConfig, PeftType, TaskType
from .lora import LoraLayer
from .lora_config import LoraConfig
from .lora_embedding import LoraEmbedding
from .modules_to_save import ModulesToSaveWrapper
from .peft_model import PeftModel, get_peft_model
from .tuner import LoraModel

__all__ = [
    "LoraConfig",
    "LoraEmbedding",
    "LoraLayer",
    "LoraModel",
    "ModulesToSaveWrapper",
    "PeftConfig",
    "PeftModel",
    "PeftType",
    "TaskType",
    "get_peft_model",
]
