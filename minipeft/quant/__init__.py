"""4-bit quantization (NF4/FP4, blockwise absmax, double quantization) in bitsandbytes' layout,
and llama.cpp's Q8_0/Q4_0/Q4_1 blocks kept packed in frozen LinearGGUF layers."""

from __future__ import annotations

from .blockwise import (
    BLOCKSIZES_4BIT,
    NESTED_BLOCKSIZE,
    dequantize_4bit,
    dequantize_absmax,
    dequantize_blockwise,
    pack_4bit,
    quantize_4bit,
    quantize_blockwise,
    quantized_bits_per_parameter,
    quantized_nbytes,
    unpack_4bit,
)
from .codebooks import NF4_OFFSET, QUANT_TYPES, code_4bit, dynamic_map, fp4_code, nf4_code
from .files import load_quantized, save_quantized
from .gguf_blocks import dequantize_blocks, quantize_blocks
from .gguf_memory import format_gguf_memory, gguf_memory_report
from .gguf_model import load_gguf_quantized, quantize_model_gguf
from .linear4bit import Linear4bit, Params4bit
from .linear_gguf import LinearGGUF, ParamsGGUF
from .model import dequantize_model, prepare_model_for_kbit_training, quantize_model
from .state import NestedState, QuantState

__all__ = [
    "BLOCKSIZES_4BIT",
    "NESTED_BLOCKSIZE",
    "Linear4bit",
    "LinearGGUF",
    "NF4_OFFSET",
    "Params4bit",
    "ParamsGGUF",
    "QUANT_TYPES",
    "NestedState",
    "QuantState",
    "code_4bit",
    "dequantize_4bit",
    "dequantize_absmax",
    "dequantize_blocks",
    "dequantize_blockwise",
    "dequantize_model",
    "dynamic_map",
    "format_gguf_memory",
    "fp4_code",
    "gguf_memory_report",
    "load_gguf_quantized",
    "load_quantized",
    "nf4_code",
    "pack_4bit",
    "prepare_model_for_kbit_training",
    "quantize_4bit",
    "quantize_blocks",
    "quantize_model",
    "quantize_model_gguf",
    "quantize_blockwise",
    "quantized_bits_per_parameter",
    "quantized_nbytes",
    "save_quantized",
    "unpack_4bit",
]
