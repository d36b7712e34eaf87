"""GPU benchmark: a LoRA training step at fp32/TF32/fp16/bf16, QLoRA, and NF4 dequantization,
minipeft (CuPy) vs PyTorch + transformers + PEFT (+ bitsandbytes), in one process.

The **gpu-gpt2s** preset: GPT-2 small (vocab 50257, n_positions 1024, n_embd 768, 12 layers,
12 heads, dropout 0), batch 8 × 1024 tokens, LoRA r=8, alpha=16 on ``c_attn``, AdamW lr 1e-4.
Each row times a training step (forward + backward + AdamW), the median of ``--repeats`` runs
after two warm-up steps, minipeft and PyTorch alternating run by run so machine noise hits both
alike; the GPU is synchronized before each timer is read (``cupy.cuda.Device().synchronize()``,
``torch.cuda.synchronize()``). ratio = minipeft time / PyTorch time (lower is better).

    bash scripts/gpu_check.sh                        # on the GPU machine: tests + this + fine-tune
    python benchmarks/gpu_step.py [--repeats 5] [--rows fp32,bf16] [--json out.json]
    python benchmarks/gpu_step.py --device cpu --preset smoke --repeats 1   # seconds, on a CPU

Rows (what each compares):

* ``fp32`` — minipeft precision "fp32" vs torch fp32 with
  ``torch.backends.cuda.matmul.allow_tf32 = False``.
* ``tf32`` — minipeft precision "tf32" (cuBLAS TF32 compute type) vs torch ``allow_tf32 = True``.
  On the CPU neither library has TF32: the row equals fp32 and is labeled so.
* ``fp16`` — minipeft "fp16" (:class:`~minipeft.precision.MixedPrecision`: float16 compute, fp32
  master weights, dynamic loss scaling, a step skipped when gradients overflow) vs
  ``torch.autocast("cuda", dtype=torch.float16)`` + ``torch.amp.GradScaler``. Skipped for torch
  on the CPU (fp16 autocast + GradScaler there is unsupported or very slow).
* ``bf16`` — minipeft "bf16" (an emulation: float32 arrays holding bfloat16-rounded values, so
  bfloat16 numerics at float32 speed and memory) vs torch bf16 autocast.
* ``qlora`` — minipeft LoRA on an NF4 base (every linear but ``lm_head`` a Linear4bit, blocksize
  64 with double quantization, as ``minipeft finetune --method qlora`` builds it; run with
  precision "bf16") vs transformers ``BitsAndBytesConfig(load_in_4bit=True,
  bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)`` + PEFT
  (``prepare_model_for_kbit_training`` without gradient checkpointing, which minipeft lacks;
  the step under bf16 autocast; bitsandbytes' default: no double quantization). Skipped, with
  the reason, when ``import bitsandbytes`` fails or it has no CUDA (and always with --device cpu).
* ``nf4`` — minipeft's ``minipeft.quant.dequantize_4bit`` of a 16384×16384 float16 weight
  (blocksize 64, double quantization; on CUDA one fused elementwise kernel) in GB/s = (bytes
  read: packed codes + absmax statistics, + bytes written) / time, against a device-to-device
  copy of the same output size (``cupy.copyto``, read + write), printed as a fraction of copy
  bandwidth; and ``bitsandbytes.functional.dequantize_4bit`` in the same run when importable
  (the PyTorch column). No memory columns.

Peak GPU memory per row, measured in one extra step after the timed ones (so tracking costs no
timed time): torch ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``;
minipeft a ``cupy.cuda.MemoryHook`` subclass (:class:`PeakMemoryHook`) that starts from the
default pool's ``used_bytes()`` and follows every pool ``malloc``/``free``
(``malloc_postprocess``/``free_postprocess``, ``mem_size`` = the rounded block), keeping the
peak of bytes in use. Both therefore count live, rounded allocations (model, optimizer state,
activations), not the memory the caching allocators hold in reserve.

The PyTorch side is ``transformers.GPT2LMHeadModel`` with ``attn_implementation="eager"``
(``--torch-attn``, default eager): the reference figures below were measured with eager, and
eager computes attention as minipeft does (explicit scores, softmax, a second matmul); ``sdpa``
(flash attention) is faster and lighter and can be asked for to see that gap.

Targets (the issue's): ratio ≤ 1.0 for TF32, fp16/bf16 and QLoRA; minipeft's peak memory ≤
PyTorch's; NF4 dequantization ≥ 70% of copy bandwidth. Reference figures seen on the H200
(139 GiB): PyTorch eager LoRA step 0.131 s fp32, 0.063 s TF32, 0.048 s bf16 autocast (peak
13.1 GiB fp32); bitsandbytes QLoRA step 0.056 s, 10.7 GiB; bitsandbytes NF4 dequantization of a
16384² weight 0.30 ms (≈2.2 TB/s moved, about half the 4.2 TB/s copy bandwidth).

Exit codes: 0 after printing the table (it asserts nothing about time); 2 when ``--device cuda``
is asked for and CUDA is not available (CuPy missing or no GPU), with a message saying so.
Without torch/transformers/peft the minipeft columns still print and the PyTorch columns say
"n/a (torch not installed)". The package itself never imports torch; only this script does.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

# the CPU benchmark's interleaved median timer (this folder is on sys.path when run as a script)
from train_step import measure  # noqa: E402

import minipeft as mp
from minipeft.models import GPT2Config, GPT2LMHeadModel
from minipeft.optim import AdamW
from minipeft.peft import LoraConfig, get_peft_model
from minipeft.precision import MixedPrecision

# torch's OpenMP threads spin between its ops; while NumPy and torch alternate on the CPU they
# would steal the cores NumPy runs on. torch is imported lazily below, so this is set first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

PRESETS: dict[str, dict[str, Any]] = {
    "gpu-gpt2s": {"model": {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768,
                            "n_layer": 12, "n_head": 12},
                  "batch": 8, "seq": 1024, "nf4_shape": (16384, 16384)},
    "smoke": {"model": {"vocab_size": 256, "n_positions": 64, "n_embd": 64, "n_layer": 2,
                        "n_head": 2},
              "batch": 2, "seq": 32, "nf4_shape": (256, 256)},
}  # fmt: skip
ROWS = ("fp32", "tf32", "fp16", "bf16", "qlora", "nf4")
LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["c_attn"]}
LR = 1e-4
GIB = 1024**3
TARGETS = {
    "fp32": "reference; peak <= torch",
    "tf32": "ratio <= 1.0; peak <= torch",
    "fp16": "ratio <= 1.0; peak <= torch",
    "bf16": "ratio <= 1.0; peak <= torch",
    "qlora": "ratio <= 1.0; peak <= torch",
    "nf4": ">= 70% of copy bandwidth",
}
REFERENCE = {  # PyTorch on the H200, gpu-gpt2s (module docstring)
    "fp32": "torch 0.131 s, 13.1 GiB",
    "tf32": "torch 0.063 s",
    "bf16": "torch 0.048 s",
    "qlora": "bnb 0.056 s, 10.7 GiB",
    "nf4": "bnb 0.30 ms, ~2.2 TB/s (~52% of 4.2 TB/s copy)",
}

Step = Callable[[], None]


class SkipError(Exception):
    """One side of a row cannot run here; the message says why."""


# ---------------------------------------------------------------------------- device helpers
def _cupy() -> Any:
    import cupy  # noqa: PLC0415 — only with --device cuda, after cuda_available()

    return cupy


def sync(device: str) -> None:
    if device == "cuda":
        _cupy().cuda.Device().synchronize()


def torch_sync(torch: Any, device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def import_torch() -> tuple[Any, Any, Any]:
    """(torch, transformers, peft), or SkipError("torch not installed") naming what is missing."""
    try:
        import peft  # noqa: PLC0415
        import torch  # noqa: PLC0415
        import transformers  # noqa: PLC0415
    except ImportError as exc:
        name = getattr(exc, "name", None) or "torch"
        raise SkipError(f"{name} not installed") from exc
    transformers.logging.set_verbosity_error()  # config notes would bury the table
    return torch, transformers, peft


def free_memory(device: str) -> None:
    """Drop what the finished row left: Python garbage, CuPy's pool, torch's cache."""
    gc.collect()
    if device != "cuda":
        return
    cp = _cupy()
    cp.get_default_memory_pool().free_all_blocks()
    cp.get_default_pinned_memory_pool().free_all_blocks()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def make_peak_hook(cp: Any) -> Any:
    """A :class:`PeakMemoryHook` for CuPy's default pool (built lazily: CuPy is optional)."""

    class PeakMemoryHook(cp.cuda.MemoryHook):
        """Peak bytes in use in CuPy's default pool while the hook is active: starts from the
        pool's ``used_bytes()`` and follows each pool malloc/free (``mem_size``: the rounded
        block size, as the pool accounts it)."""

        name = "PeakMemoryHook"

        def __init__(self) -> None:
            self.in_use = cp.get_default_memory_pool().used_bytes()
            self.peak = self.in_use

        def malloc_postprocess(self, **kwargs: Any) -> None:
            self.in_use += kwargs["mem_size"]
            self.peak = max(self.peak, self.in_use)

        def free_postprocess(self, **kwargs: Any) -> None:
            self.in_use -= kwargs["mem_size"]

    return PeakMemoryHook()


def minipeft_peak(step: Step, device: str) -> float | None:
    """GiB: the peak of CuPy pool bytes in use during one more ``step`` (None on the CPU)."""
    if device != "cuda":
        return None
    sync(device)
    hook = make_peak_hook(_cupy())
    with hook:
        step()
        sync(device)
    return hook.peak / GIB


def torch_peak(torch: Any, step: Step, device: str) -> float | None:
    """GiB: ``torch.cuda.max_memory_allocated()`` over one more ``step`` (None on the CPU)."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / GIB


# ---------------------------------------------------------------------------- minipeft side
def minipeft_step(preset: dict[str, Any], device: str, precision: str, qlora: bool) -> Step:
    """A LoRA training step of minipeft at ``precision`` (on an NF4 base when ``qlora``)."""
    cfg = GPT2Config(**preset["model"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg, seed=0)
    if qlora:  # quantized on the device, as the finetune job's base (lm_head stays float)
        from minipeft.quant.model import (  # noqa: PLC0415
            prepare_model_for_kbit_training,
            quantize_model,
        )

        model = prepare_model_for_kbit_training(
            quantize_model(model.to(device), skip=("lm_head", "score"))
        )
    model = get_peft_model(model.to(device), LoraConfig(**LORA))
    params = [p for p in model.parameters() if p.requires_grad]
    amp = MixedPrecision(model, params, precision, device)
    opt = AdamW(params, lr=LR)
    rng = np.random.default_rng(0)
    shape = (preset["batch"], preset["seq"])
    ids = mp.tensor(rng.integers(0, preset["model"]["vocab_size"], shape), device=device)

    def step() -> None:
        model.train()
        amp.cast()
        try:
            with amp.quiet_overflow():
                loss = model(input_ids=ids, labels=ids).loss
                (loss * amp.loss_scale).backward()
        finally:
            finite = amp.restore()
        if finite:
            opt.step()
        opt.zero_grad()
        amp.update(finite)
        loss.item()
        sync(device)

    return step


# ---------------------------------------------------------------------------- PyTorch side
def torch_step(preset: dict[str, Any], device: str, row: str, attn: str) -> tuple[Any, Step]:
    """(torch, a LoRA training step of transformers + PEFT) for ``row``; SkipError if not."""
    torch, transformers, peft = import_torch()
    if device == "cpu" and row == "fp16":
        raise SkipError("torch fp16 autocast + GradScaler on the CPU is unsupported/slow")
    if row == "qlora":
        if device != "cuda":
            raise SkipError("--device cpu: the bitsandbytes QLoRA side runs on CUDA only")
        try:
            import bitsandbytes  # noqa: F401, PLC0415
        except Exception as exc:  # ImportError, or a broken install failing on import
            raise SkipError(f"import bitsandbytes failed ({type(exc).__name__}: {exc})") from exc
        if not torch.cuda.is_available():
            raise SkipError("bitsandbytes: torch sees no CUDA device")
    if device == "cuda" and not torch.cuda.is_available():
        raise SkipError("torch has no CUDA (a CPU build?)")
    torch.backends.cuda.matmul.allow_tf32 = row == "tf32"
    torch.backends.cudnn.allow_tf32 = row == "tf32"
    last = preset["model"]["vocab_size"] - 1  # GPT-2's <|endoftext|> id, inside any vocab
    cfg = transformers.GPT2Config(**preset["model"], resid_pdrop=0.0, embd_pdrop=0.0,
                                  attn_pdrop=0.0, bos_token_id=last, eos_token_id=last,
                                  attn_implementation=attn)  # fmt: skip
    torch.manual_seed(0)
    if row == "qlora":
        quant = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
        with tempfile.TemporaryDirectory() as folder:
            transformers.GPT2LMHeadModel(cfg).save_pretrained(folder)
            model = transformers.GPT2LMHeadModel.from_pretrained(
                folder, quantization_config=quant, device_map={"": 0}, attn_implementation=attn
            )
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model = transformers.GPT2LMHeadModel(cfg).to(device)
    model = peft.get_peft_model(model, peft.LoraConfig(**LORA))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, **({"foreach": False} if device == "cpu" else {}))
    rng = np.random.default_rng(0)
    shape = (preset["batch"], preset["seq"])
    ids = torch.from_numpy(rng.integers(0, preset["model"]["vocab_size"], shape)).to(device)
    half = {"fp16": torch.float16, "bf16": torch.bfloat16, "qlora": torch.bfloat16}.get(row)
    scaler = torch.amp.GradScaler(device) if row == "fp16" else None

    def autocast() -> Any:
        if half is None:
            return contextlib.nullcontext()
        return torch.autocast(device, dtype=half)

    def step() -> None:
        model.train()
        with autocast():
            loss = model(input_ids=ids, labels=ids).loss
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        opt.zero_grad()
        loss.item()
        torch_sync(torch, device)

    return torch, step


# ---------------------------------------------------------------------------- rows
def step_row(row: str, preset: dict[str, Any], device: str, repeats: int,
             attn: str) -> dict[str, Any]:  # fmt: skip
    """Time minipeft's and PyTorch's step for ``row`` alternately; their peaks after."""
    out: dict[str, Any] = {"row": row, "minipeft_s": None, "torch_s": None, "ratio": None,
                           "minipeft_peak_gib": None, "torch_peak_gib": None,
                           "minipeft_error": None, "torch_skipped": None}  # fmt: skip
    if device == "cpu" and row == "tf32":
        out["label"] = "tf32 (=fp32 on cpu)"
    precision = "bf16" if row == "qlora" else row
    try:
        mine: Step | None = minipeft_step(preset, device, precision, qlora=row == "qlora")
    except Exception as exc:  # report and go on: one broken row must not hide the others
        mine = None
        out["minipeft_error"] = f"{type(exc).__name__}: {exc}"
    torch = ref = None
    try:
        torch, ref = torch_step(preset, device, row, attn)
    except SkipError as exc:
        out["torch_skipped"] = str(exc)
    except Exception as exc:
        out["torch_skipped"] = f"failed: {type(exc).__name__}: {exc}"
    fns = [f for f in (mine, ref) if f is not None]
    if fns:
        times = measure(fns, repeats)
        if mine is not None:
            out["minipeft_s"] = times[0]
            out["minipeft_peak_gib"] = minipeft_peak(mine, device)
        if ref is not None:
            out["torch_s"] = times[-1]
            out["torch_peak_gib"] = torch_peak(torch, ref, device)
    if out["minipeft_s"] and out["torch_s"]:
        out["ratio"] = out["minipeft_s"] / out["torch_s"]
    out["met"] = step_target_met(row, out)
    del mine, ref, fns
    free_memory(device)
    return out


def step_target_met(row: str, r: dict[str, Any]) -> bool | None:
    """Whether the row meets the issue's targets, as far as its numbers are known."""
    checks = []
    if row != "fp32" and r["ratio"] is not None:
        checks.append(r["ratio"] <= 1.0)
    if r["minipeft_peak_gib"] is not None and r["torch_peak_gib"] is not None:
        checks.append(r["minipeft_peak_gib"] <= r["torch_peak_gib"])
    return all(checks) if checks else None


def timed(fn: Step, device: str, inner: int, repeats: int, syncer: Step) -> float:
    """Median seconds of one ``fn`` call: ``inner`` calls between synchronizations."""
    fn()
    syncer()
    times = []
    for _ in range(max(repeats, 3)):
        syncer()
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        syncer()
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times)


def nf4_row(preset: dict[str, Any], device: str, repeats: int) -> dict[str, Any]:
    """minipeft's NF4 dequantization bandwidth vs a copy of the output (and bitsandbytes')."""
    shape = tuple(preset["nf4_shape"])
    out: dict[str, Any] = {"row": "nf4", "shape": list(shape), "minipeft_s": None,
                           "torch_s": None, "ratio": None, "minipeft_peak_gib": None,
                           "torch_peak_gib": None, "minipeft_error": None,
                           "torch_skipped": None}  # fmt: skip
    xp = _cupy() if device == "cuda" else np
    inner = 20 if device == "cuda" else 3
    try:
        out.update(minipeft_dequant(xp, shape, device, inner, repeats))
    except Exception as exc:
        out["minipeft_error"] = f"{type(exc).__name__}: {exc}"
    free_memory(device)
    try:
        out.update(bnb_dequant(shape, device, inner, repeats))
    except SkipError as exc:
        out["torch_skipped"] = str(exc)
    except Exception as exc:
        out["torch_skipped"] = f"failed: {type(exc).__name__}: {exc}"
    if out["minipeft_s"] and out["torch_s"]:
        out["ratio"] = out["minipeft_s"] / out["torch_s"]
    frac = out.get("fraction_of_copy")
    out["met"] = None if frac is None else frac >= 0.70
    free_memory(device)
    return out


def minipeft_dequant(xp: Any, shape: tuple[int, int], device: str, inner: int,
                     repeats: int) -> dict[str, Any]:  # fmt: skip
    """minipeft's ``dequantize_4bit`` and a copy of its output size: seconds and GB/s."""
    from minipeft.quant import dequantize_4bit, quantize_4bit, quantized_nbytes  # noqa: PLC0415

    def syncer() -> None:
        sync(device)

    rng = xp.random.default_rng(0)
    w = rng.standard_normal(shape, dtype=xp.float32).astype(xp.float16)
    packed, state = quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    w = None  # the float weight is not needed any more
    moved = quantized_nbytes(packed, state) + math.prod(shape) * 2  # read + write (fp16)
    t = timed(lambda: dequantize_4bit(packed, state), device, inner, repeats, syncer)
    src = xp.ones(shape, dtype=xp.float16)
    dst = xp.empty_like(src)
    t_copy = timed(lambda: xp.copyto(dst, src), device, inner, repeats, syncer)
    copy_gbps = 2 * src.nbytes / t_copy / 1e9
    return {"minipeft_s": t, "minipeft_gbps": moved / t / 1e9, "copy_s": t_copy,
            "copy_gbps": copy_gbps, "fraction_of_copy": moved / t / 1e9 / copy_gbps}  # fmt: skip


def bnb_dequant(shape: tuple[int, int], device: str, inner: int, repeats: int) -> dict[str, Any]:
    """bitsandbytes' ``dequantize_4bit`` of the same weight: seconds and GB/s moved."""
    torch, _, _ = import_torch()
    try:
        import bitsandbytes.functional as bnbf  # noqa: PLC0415
    except Exception as exc:
        raise SkipError(f"import bitsandbytes failed ({type(exc).__name__}: {exc})") from exc
    if device == "cuda" and not torch.cuda.is_available():
        raise SkipError("torch has no CUDA (a CPU build?)")
    gen = torch.Generator(device=device).manual_seed(0)
    w = torch.randn(shape, generator=gen, device=device, dtype=torch.float32).half()
    packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    w = None
    stats = state.absmax.numel() * state.absmax.element_size()
    if state.state2 is not None:
        stats += state.state2.absmax.numel() * state.state2.absmax.element_size() + 4
    moved = packed.numel() * packed.element_size() + stats + math.prod(shape) * 2
    t = timed(lambda: bnbf.dequantize_4bit(packed, state), device, inner, repeats,
              lambda: torch_sync(torch, device))  # fmt: skip
    return {"torch_s": t, "bnb_gbps": moved / t / 1e9}


# ---------------------------------------------------------------------------- report
def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def print_table(rows: list[dict[str, Any]], device: str) -> None:
    notes: list[str] = []
    head = (f"{'row':<20}{'minipeft s':>12}  {'PyTorch s':<26}{'ratio':>7}"
            f"{'mp peak GiB':>13}{'pt peak GiB':>13}  {'target':<30}{'met':>4}")  # fmt: skip
    print("\n" + head)
    print("-" * len(head))
    for r in rows:
        mine = _fmt(r["minipeft_s"], ".4f")
        if r["minipeft_error"]:
            notes.append(f"{r['row']}: minipeft failed: {r['minipeft_error']}")
            mine = f"failed [{len(notes)}]"
        if r["torch_s"] is not None:
            ref = f"{r['torch_s']:.4f}"
        elif r["torch_skipped"] and r["torch_skipped"].endswith("not installed"):
            ref = f"n/a ({r['torch_skipped']})"
        elif r["torch_skipped"]:
            notes.append(f"{r['row']}: PyTorch side skipped: {r['torch_skipped']}")
            ref = f"skipped [{len(notes)}]"
        else:
            ref = "n/a"
        met = {True: "yes", False: "no", None: "-"}[r.get("met")]
        print(f"{r.get('label', r['row']):<20}{mine:>12}  {ref:<26}{_fmt(r['ratio'], '.2f'):>7}"
              f"{_fmt(r['minipeft_peak_gib'], '.2f'):>13}{_fmt(r['torch_peak_gib'], '.2f'):>13}"
              f"  {TARGETS[r['row']]:<30}{met:>4}")  # fmt: skip
    print("ratio = minipeft time / PyTorch time (lower is better; 1.00 = parity); peak = GPU "
          "memory in use at its highest during a step")  # fmt: skip
    for r in rows:
        if r["row"] == "nf4" and r.get("minipeft_gbps") is not None:
            bnb = r.get("bnb_gbps")
            bnb_text = f"; bitsandbytes {bnb:.1f} GB/s = {bnb / r['copy_gbps']:.0%}" if bnb else ""
            print(f"nf4 dequant {'x'.join(map(str, r['shape']))}: minipeft {r['minipeft_gbps']:.1f}"
                  f" GB/s = {r['fraction_of_copy']:.0%} of copy ({r['copy_gbps']:.1f} GB/s)"
                  f"{bnb_text}")  # fmt: skip
    if device == "cuda":
        print("reference (H200): " + "; ".join(f"{k} {v}" for k, v in REFERENCE.items()))
    for i, note in enumerate(notes, 1):
        print(f"[{i}] {note}")


def write_json(path: str, payload: dict[str, Any]) -> None:
    """Atomically: a temporary file in the same folder, then os.replace."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".gpu_step.", suffix=".json.tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def parse_rows(text: str) -> list[str]:
    rows = [r.strip() for r in text.split(",") if r.strip()]
    bad = [r for r in rows if r not in ROWS]
    if bad or not rows:
        raise argparse.ArgumentTypeError(f"--rows: expected a subset of {','.join(ROWS)}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="gpu-gpt2s")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per side (median)")
    parser.add_argument("--rows", type=parse_rows, default=list(ROWS),
                        help=f"comma-separated subset of {','.join(ROWS)}")  # fmt: skip
    parser.add_argument("--torch-attn", choices=("eager", "sdpa"), default="eager",
                        help="transformers' attention implementation (default eager)")  # fmt: skip
    parser.add_argument("--json", default=None, help="also write the results here (atomically)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.device == "cuda" and not mp.cuda_available():
        print(f"CUDA is not available: {mp.backend_info()['cuda']} "
              "(use --device cpu --preset smoke to run on the CPU)", file=sys.stderr)  # fmt: skip
        return 2
    preset = PRESETS[args.preset]
    print(f"{args.preset} preset {preset['model']}, batch {preset['batch']}x{preset['seq']}, "
          f"LoRA r=8 alpha=16 on c_attn, device {args.device}, repeats {args.repeats}, "
          f"torch attention {args.torch_attn}", flush=True)  # fmt: skip
    rows = []
    for row in args.rows:
        start = time.perf_counter()
        if row == "nf4":
            result = nf4_row(preset, args.device, args.repeats)
        else:
            result = step_row(row, preset, args.device, args.repeats, args.torch_attn)
        print(f"  {row}: done in {time.perf_counter() - start:.1f} s", flush=True)
        rows.append(result)
    print_table(rows, args.device)
    if args.json:
        write_json(args.json, {"device": args.device, "preset": args.preset,
                               "config": {k: v for k, v in preset.items()},
                               "repeats": args.repeats, "torch_attn": args.torch_attn,
                               "targets": TARGETS, "rows": rows})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
