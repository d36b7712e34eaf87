"""``minipeft compare``: every method fine-tuned on one task with one budget, measured side by side.

For each method (full fine-tuning and every PEFT method: :data:`COMPARE_METHODS`) the job runs
``finetune`` on the same base, task, number of steps and seed (each method with its own
measured defaults for the rest: learning rate, rank, reduction factor), then measures the
trained model (:mod:`minipeft.jobs.compare_metrics`):

    trainable parameters and %      adapter (or model) bytes on disk
    peak memory of a training step  time per step (median)
    held-out loss, perplexity (and accuracy for a classification task)
    forgetting: the rise of the pretraining corpus's validation loss
    inference latency per token, unmerged, and merged where the method merges

The output folder holds ``run.json`` (the settings), ``results.json`` (written after every
method, so an interrupted comparison keeps its finished rows; ``--resume`` continues),
``results.csv``, ``report.md`` with PNG plots (:mod:`minipeft.jobs.compare_report`), and
``runs/<method>/``, each method's own fine-tuning run (its adapter). Every figure but the
timings is the same on a re-run: the data order and the initialisations are seeded, and the
memory traces repeat to a few dozen bytes (:data:`MEMORY_FIELDS`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from .. import __version__
from ..data import iterate_batches, lm_blocks, load_corpus, tokenize_documents, train_val_split
from ..fileio import atomic_write_text, check_output_path
from ..interrupt import TrainingInterrupted
from ..models import AutoModelForCausalLM
from ..precision import check_precision
from ..tasks import get_task
from ..tokenizer import Tokenizer
from ..train import evaluate
from .compare_metrics import (
    StepTimer,
    forgetting,
    is_mergeable,
    language_model_view,
    latency_ms_per_token,
    merged_latency,
    peak_step_bytes,
    stored_bytes,
)
from .compare_report import write_outputs
from .finetune import METHODS, context_limit, finetune, load_base, task_data

__all__ = ["COMPARE_METHODS", "MEMORY_FIELDS", "QUICK", "TIMING_FIELDS", "compare"]

# The seed's line-up, in reading order: full fine-tuning, LoRA's family, QLoRA, bottleneck
# adapters, IA3, the prompt-side methods and MAM (prefix + parallel adapter); then any other
# method the registry holds, so a newly registered one is compared without touching this file.
# OLoRA is left out by default: PiSSA's sibling (another SVD start), one `--methods olora` away.
SEED_LINEUP = ("full", "lora", "rslora", "dora", "pissa", "adalora", "qlora", "seq_bn",
               "double_seq_bn", "par_bn", "ia3", "prompt", "prefix", "ptuning", "mam")  # fmt: skip
LEFT_OUT = ("olora",)
COMPARE_METHODS = (*SEED_LINEUP, *(m for m in METHODS if m not in SEED_LINEUP + LEFT_OUT))
DEFAULT_STEPS = 100
# --quick: fewer, smaller steps and capped evaluations (the same for every method).
QUICK: dict[str, Any] = {"steps": 30, "batch_size": 8, "eval_batches": 4, "repeats": 5}
FULL: dict[str, Any] = {"batch_size": 16, "eval_batches": None, "repeats": 9}
# Fields that are wall-clock timings: the only ones a re-run may change freely.
TIMING_FIELDS = (
    "step_ms",
    "train_s",
    "latency_ms_per_token",
    "latency_merged_ms_per_token",
    "latency_vs_base",
    "latency_merged_vs_base",
)
# Traced memory: NumPy's buffers repeat exactly; Python's own small objects (an id's int, a
# dict's growth) move the trace by a few dozen bytes between runs, never by a KiB.
MEMORY_FIELDS = ("peak_step_bytes", "transient_bytes")
RESULTS, RUN = "results.json", "run.json"


def _settings(methods: Any, task: str | None, model: str | None, steps: int | None,
              quick: bool, seed: int) -> dict[str, Any]:  # fmt: skip
    from .pretrain import default_base_dir  # noqa: PLC0415

    methods = list(methods or COMPARE_METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"--methods: unknown method {unknown[0]!r}; expected some of "
                         f"{', '.join(METHODS)}")  # fmt: skip
    if len(set(methods)) != len(methods):
        raise ValueError(f"--methods: {methods} names a method twice")
    task = task or "docstrings"
    get_task(task)  # an unknown task fails here, naming the known ones
    steps = steps if steps is not None else QUICK["steps"] if quick else DEFAULT_STEPS
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"--steps: expected an integer >= 1, found {steps!r}")
    if model is not None:
        model = _check_model(model)
    return {"methods": methods, "task": task, "model": os.fspath(model or default_base_dir()),
            "steps": steps, "quick": bool(quick), "seed": int(seed)}  # fmt: skip


def _check_model(model: str) -> str:
    """A model folder (config.json), a .gguf file or a known checkpoint name's file."""
    from ..models.checkpoints import known_names_hint, resolve_model  # noqa: PLC0415

    path = os.fspath(resolve_model(model))
    if path.lower().endswith(".gguf") and Path(path).is_file():
        return path
    if not (Path(path) / "config.json").is_file():
        what = "is not a folder" if not Path(path).is_dir() else "has no config.json"
        raise ValueError(f"--model {path!r} {what}: expected a Hugging Face model folder, a "
                         f".gguf file or a checkpoint name ({known_names_hint()})")  # fmt: skip
    return path


def _prepare(out: Path, settings: dict[str, Any], given: dict[str, Any], resume: bool,
             overwrite: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:  # fmt: skip
    """Check ``out``; return the settings to use and the rows already finished."""
    check_output_path(out, {"the base model": settings["model"]})
    if resume and overwrite:
        raise ValueError("--resume continues the comparison in --out, --overwrite discards it")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {os.fspath(out)!r} is a file; expected a folder")
    run_file, results = out / RUN, out / RESULTS
    if resume:
        if not run_file.is_file():
            raise ValueError(f"--resume: no comparison to continue in {os.fspath(out)!r} "
                             f"(no {RUN} there)")  # fmt: skip
        recorded = json.loads(run_file.read_text(encoding="utf-8"))["settings"]
        for key, value in given.items():
            if value is not None and recorded.get(key) != value:
                raise ValueError(f"--resume: the comparison in {os.fspath(out)!r} was started "
                                 f"with {key}={recorded.get(key)!r}, this command asks "
                                 f"{key}={value!r}; leave it out to continue")  # fmt: skip
        rows = json.loads(results.read_text(encoding="utf-8"))["methods"] if results.is_file() \
            else []  # fmt: skip
        return recorded, rows
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            what = "an unfinished comparison" if not (out / "report.md").is_file() else \
                "a comparison"  # fmt: skip
            raise ValueError(f"--out {os.fspath(out)!r} already holds {what}; pass --resume to "
                             "continue it, --overwrite to start over, or another "
                             "--out")  # fmt: skip
        for name in (RUN, RESULTS, "results.csv", "report.md"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "runs", ignore_errors=True)
        for png in out.glob("*.png"):
            png.unlink()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_file, json.dumps({"job": "compare", "settings": settings}, indent=2))
    return settings, []


class _Context:
    """What every method's measurements share: the tokenizer, the pretraining corpus's
    validation text and the base's loss on it (per block size), batches per block size."""

    def __init__(self, s: dict[str, Any], device: str, precision: str = "fp32") -> None:
        self.s, self.device, self.precision = s, device, precision
        self.mode = QUICK if s["quick"] else FULL
        self.task = get_task(s["task"])
        self.tokenizer = Tokenizer.from_pretrained(s["model"])
        _, val_docs = train_val_split(load_corpus(None), val_fraction=0.1, seed=0)
        self.old_ids = tokenize_documents(self.tokenizer, val_docs)
        self._old_base: dict[int, float] = {}
        self._data: dict[int, Any] = {}
        self._reference: Any = None

    def reference(self) -> Any:
        """The untuned base that every latency is measured in turn with (loaded once)."""
        if self._reference is None:
            self._reference = load_base(self.s["model"], self.task, self.tokenizer, self.device,
                                        self.s["seed"])  # fmt: skip
        return self._reference

    def base_lm(self) -> Any:
        return AutoModelForCausalLM.from_pretrained(self.s["model"], device=self.device)

    def old_loss(self, model: Any, block: int) -> float:
        """Loss on the pretraining corpus's validation split (the split ``pretrain`` used)."""
        blocks = lm_blocks(self.old_ids, min(block, 128))
        batches = iterate_batches(blocks, 16, shuffle=False)
        return evaluate(model, batches, self.device, self.mode["eval_batches"])["loss"]

    def old_base_loss(self, block: int) -> float:
        if block not in self._old_base:
            self._old_base[block] = self.old_loss(self.base_lm(), block)
        return self._old_base[block]

    def data(self, block: int) -> Any:
        if block not in self._data:
            self._data[block] = task_data(self.task, self.tokenizer, block,
                                          self.mode["batch_size"])  # fmt: skip
        return self._data[block]


def _base_row(ctx: _Context) -> dict[str, Any]:
    """The untrained base: its held-out metric, old-domain loss and latency (the reference)."""
    model = ctx.reference()
    block = min(128, model.config.max_position_embeddings)
    data = ctx.data(block)
    metrics = evaluate(model, data.test(ctx.s["seed"], 0), ctx.device, ctx.mode["eval_batches"])
    ms, _ = latency_ms_per_token(model, ctx.task.kind, ctx.device, limit=block,
                                 repeats=ctx.mode["repeats"])  # fmt: skip
    return {"method": "base", "eval": metrics, "pretrain_loss": ctx.old_base_loss(block),
            "latency_ms_per_token": ms}  # fmt: skip


def _measure(ctx: _Context, method: str, res: Any, timer: StepTimer) -> dict[str, Any]:
    s, device, kind = ctx.s, ctx.device, ctx.task.kind
    model = res.model
    limit = context_limit(s["model"], method, res.settings, kind)
    block = min(res.settings["block_size"], limit)
    old = ctx.old_loss(language_model_view(model, ctx.base_lm), block)
    row: dict[str, Any] = {
        "method": method, "status": "ok", "reason": None,
        "trainable_params": res.trainable_params, "all_params": res.all_params,
        "trainable_pct": 100.0 * res.trainable_params / res.all_params,
        "stored_bytes": stored_bytes(res.adapter_path), "lr": res.settings["lr"],
        "steps": res.settings["steps"], "metric": res.metric,
        "eval_loss": res.after["loss"], "eval_perplexity": math.exp(min(res.after["loss"], 700)),
        "eval_accuracy": res.after.get("accuracy"),
        "pretrain_loss": old, "forgetting": forgetting(ctx.old_base_loss(block), old),
        "curve": [[h["step"], h["loss"]] for h in res.history if "loss" in h],
        "step_ms": timer.median_ms, "train_s": res.seconds,
    }  # fmt: skip
    lat = {"limit": limit, "repeats": ctx.mode["repeats"], "reference": ctx.reference()}
    ms, ref = latency_ms_per_token(model, kind, device, **lat)
    row.update(latency_ms_per_token=ms, latency_vs_base=ms / ref, mergeable=is_mergeable(model))
    row.update(latency_merged_ms_per_token=None, latency_merged_vs_base=None,
               merged_logit_drift=None)  # fmt: skip
    if row["mergeable"]:
        ms, ref, drift = merged_latency(model, kind, device, **lat)
        row.update(latency_merged_ms_per_token=ms, latency_merged_vs_base=ms / ref,
                   merged_logit_drift=drift)  # fmt: skip
    batch = next(iter(ctx.data(block).train(s["seed"], 0)))
    mem = peak_step_bytes(model, batch, device)  # last: the step moves the weights
    row.update(peak_step_bytes=mem["peak"], resident_bytes=mem["resident"],
               transient_bytes=mem["transient"])  # fmt: skip
    return row


def _not_applicable(method: str, why: str) -> dict[str, Any]:
    return {"method": method, "status": "not applicable", "reason": why}


def compare(
    out: str | os.PathLike[str] = "runs/compare",
    methods: list[str] | None = None,
    task: str | None = None,
    model: str | os.PathLike[str] | None = None,
    steps: int | None = None,
    quick: bool = False,
    seed: int = 0,
    device: str = "cpu",
    precision: str = "fp32",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Run the comparison into ``out`` and return what ``results.json`` holds.

    ``methods`` default to :data:`COMPARE_METHODS`, ``task`` to docstrings, ``model`` to the
    cached base (pretrained first when absent, as ``quickstart`` does), ``steps`` to 100 (30
    with ``quick``, which also halves the batch and caps evaluations). A method that cannot
    run on this task or model gets a row saying why and the others go on. Ctrl-C keeps every
    finished row (and the running method's checkpoint); ``resume`` continues. ``precision``
    (fp32, tf32, fp16, bf16) is that of every fine-tune.
    """
    given = {"methods": list(methods) if methods else None, "task": task,
             "model": None if model is None else os.fspath(model), "steps": steps,
             "quick": quick or None}  # fmt: skip
    fresh = _settings(methods, task, None if model is None else os.fspath(model), steps, quick,
                      seed)  # fmt: skip
    out = Path(out)
    s, rows = _prepare(out, fresh, given, resume, overwrite)
    if s["model"] == fresh["model"] and model is None:
        _ensure_default_base(s["model"], device, progress, log)
    ctx = _Context(s, device, check_precision(precision))
    results = {"minipeft": __version__, "settings": s, "device": device, "precision": precision,
               "methods": rows}  # fmt: skip
    results["base"] = _base_row(ctx)
    done = {r["method"] for r in rows}
    todo = [m for m in s["methods"] if m not in done]
    if done:
        log(f"resuming: {len(done)} of {len(s['methods'])} methods already measured")
    spent: list[float] = []
    for i, method in enumerate(todo, len(done) + 1):
        left = f"about {_minutes(sum(spent) / len(spent) * (len(todo) - len(spent)))} left" \
            if spent else "estimating the time left after the first method"  # fmt: skip
        log(f"[{i}/{len(s['methods'])}] {method}: {s['steps']} steps ({left})")
        start = time.perf_counter()
        rows.append(_run_method(ctx, out, method, resume, progress, log))
        spent.append(time.perf_counter() - start)
        _save(out, results)
    write_outputs(out, results, log)
    return results


def _run_method(ctx: _Context, out: Path, method: str, resume: bool, progress: bool,
                log: Any) -> dict[str, Any]:  # fmt: skip
    s, run = ctx.s, out / "runs" / method
    unfinished = resume and (run / "checkpoint" / "trainer_state.json").is_file()
    timer = StepTimer()
    try:
        res = finetune(s["model"], task=s["task"], out=run, method=method, steps=s["steps"],
                       batch_size=ctx.mode["batch_size"], seed=s["seed"], device=ctx.device,
                       precision=ctx.precision, resume=unfinished, overwrite=not unfinished,
                       progress=progress, log=lambda *a: None, callbacks=[timer],
                       log_every=max(1, s["steps"] // 30), eval_every=0,
                       eval_batches=ctx.mode["eval_batches"])  # fmt: skip
        return _measure(ctx, method, res, timer)
    except TrainingInterrupted:
        raise
    except (ValueError, NotImplementedError) as exc:  # the method does not fit this setting
        log(f"  {method}: not applicable here: {exc}")
        return _not_applicable(method, str(exc))


def _ensure_default_base(path: str, device: str, progress: bool, log: Any) -> None:
    from .pretrain import pretrain  # noqa: PLC0415

    base = Path(path)
    if (base / "config.json").is_file():
        return
    unfinished = (base / "checkpoint" / "trainer_state.json").is_file()
    log(f"{'resuming the pretraining of' if unfinished else 'pretraining'} the default base "
        f"model in {base} (made once, then cached; a few minutes)")  # fmt: skip
    pretrain(out=base, device=device, progress=progress, log=log, resume=unfinished,
             overwrite=not unfinished)  # fmt: skip


def _save(out: Path, results: dict[str, Any]) -> None:
    atomic_write_text(out / RESULTS, json.dumps(results, indent=2) + "\n")


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
