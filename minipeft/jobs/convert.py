"""``minipeft convert``: a GGUF file (or a known checkpoint name) → a Hugging Face folder.

    convert("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-hf")
    # smollm2-hf/config.json, model.safetensors (float32), tokenizer.json,
    # tokenizer_config.json (special tokens + chat_template), special_tokens_map.json

The weights are dequantized to float32 (so the folder is ~4 bytes a parameter: 540 MB for
SmolLM2-135M against the file's 98 MB) with llama.cpp's q/k permutation undone; transformers'
``AutoModelForCausalLM.from_pretrained(out)`` and ``AutoTokenizer`` load it. The folder is
written as a whole (:func:`~minipeft.fileio.atomic_folder`), never onto or into its input.
"""

from __future__ import annotations

import os

from ..fileio import atomic_folder, check_output_path

__all__ = ["convert"]


def convert(model: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> str:
    """Write the HF folder of the GGUF ``model`` (a path or a known name) to ``out``; returns
    ``out``. An ``out`` that holds files needs ``overwrite``."""
    from ..models.checkpoints import resolve_model  # noqa: PLC0415
    from ..models.gguf import is_gguf_file, load_gguf_model, read_gguf  # noqa: PLC0415
    from ..models.llama import LlamaForCausalLM  # noqa: PLC0415
    from ..tokenizer import Tokenizer  # noqa: PLC0415

    src = os.fspath(resolve_model(model, must_exist=True))
    if not is_gguf_file(src):
        raise ValueError(f"--model {src!r}: expected a .gguf file or a known checkpoint name")
    check_output_path(out, {"the GGUF file": src})
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise ValueError(f"--out {os.fspath(out)!r} already holds files; pass --overwrite")
    read_gguf(src)  # bad input fails here, before anything is written
    tokenizer = Tokenizer.from_pretrained(src)
    model_ = load_gguf_model(LlamaForCausalLM, src)
    with atomic_folder(out) as tmp:
        model_.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return os.fspath(out)
