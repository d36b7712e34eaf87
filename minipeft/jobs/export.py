"""``minipeft export-gguf``: a base model (+ an adapter, merged) written as one GGUF file.

    export(model_path, out="model.gguf", adapter="runs/lora-docstrings", dtype="q8_0")

The base and adapter load through :func:`minipeft.jobs.inference.load_for_inference` (the path
every command uses, so whatever ``--model`` accepts there is accepted here); an adapter is merged
with ``safe_merge`` (W ← W + s·B A, checked finite) and unloaded, then
:func:`minipeft.models.gguf_export.export_gguf` writes the file. The chat template comes from the
tokenizer (``tokenizer.chat_template``) or the model folder's ``tokenizer_config.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..models.gguf_export import EXPORT_TYPES, export_gguf
from ..tokenizer import Tokenizer
from .inference import load_for_inference

__all__ = ["EXPORT_TYPES", "chat_template_of", "export"]


def chat_template_of(model_path: str | os.PathLike[str], tokenizer: Any) -> str | None:
    """The tokenizer's ``chat_template``, else ``tokenizer_config.json``'s, else None."""
    template = getattr(tokenizer, "chat_template", None)
    config = Path(model_path) / "tokenizer_config.json"
    if template is None and config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
    if isinstance(template, list):  # HF's named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) and template else None


def export(
    model_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    adapter: str | os.PathLike[str] | None = None,
    dtype: str = "f32",
    overwrite: bool = False,
    device: str = "cpu",
    strict: bool = False,
) -> str:
    """Load, merge (if ``adapter``), export to ``out``; returns the written path."""
    if dtype not in EXPORT_TYPES:  # before minutes of loading
        raise ValueError(f"export-gguf --type: expected one of {', '.join(EXPORT_TYPES)}, "
                         f"found {dtype!r}")  # fmt: skip
    inputs = {"the base model": model_path, "the adapter": adapter}
    from ..fileio import check_output_path  # noqa: PLC0415

    check_output_path(out, inputs)
    if os.path.exists(out) and not overwrite:
        raise ValueError(f"--out {os.fspath(out)!r} already exists; pass --overwrite to replace it")
    model, kind = load_for_inference(model_path, adapter, device, strict)
    if kind != "causal_lm":
        raise ValueError(f"export-gguf: expected a causal LM (an LLaMA language model), found a "
                         f"{kind} model or adapter")  # fmt: skip
    if adapter is not None:
        model = model.merge_and_unload(safe_merge=True)
    tokenizer = Tokenizer.from_pretrained(model_path)
    name = Path(model_path).stem + ("" if adapter is None else f"+{Path(adapter).name}")
    template = chat_template_of(model_path, tokenizer)
    return export_gguf(model, tokenizer, out, dtype, chat_template=template, name=name,
                       overwrite=overwrite, inputs=inputs)  # fmt: skip
