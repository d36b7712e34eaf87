"""``minipeft finetune`` and ``minipeft merge``: PEFT or full fine-tuning on a base checkpoint.

A task from :mod:`minipeft.tasks` decides the head: ``causal_lm`` tasks fine-tune the language
model (metric: held-out loss), ``seq_cls`` tasks add a classification head (``score``, trained
and saved with the adapter, as PEFT's ``SEQ_CLS`` does; metric: accuracy), whose config names
the task's classes (``id2label``).

Methods: every name in the PEFT registry (``lora``, ``ia3``, ``seq_bn``, ...) trains an adapter
and saves its folder; ``full`` trains every weight and saves a model folder. The job builds the
method's registered config from its defaults, field overrides (``--set r=16``) and a few short
flags (:mod:`minipeft.jobs.methods`), so a new method needs no job code: a config field named in
``RUN_DEFAULTS`` takes the run's setting (AdaLoRA's ``total_step``: ``--steps``), the model's
``update_and_allocate`` runs after every optimizer step, and each tuner's ``report()`` (AdaLoRA's
final ranks) is printed at the end. Defaults depend on the task and the method
(:data:`TASK_DEFAULTS`, measured: see the README's "docstring-topic" section); any of them can be
set explicitly.

The output folder (``--out``) is a run folder (:mod:`minipeft.jobs.runs`): ``run.json`` (the
settings), ``metrics.jsonl``, ``checkpoint/`` while the run is unfinished, then the result.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import manual_seed
from ..data import classification_batches, iterate_batches, lm_blocks, tokenize_documents
from ..fileio import atomic_folder, atomic_write_text
from ..models import AutoModelForCausalLM, AutoModelForSequenceClassification, load_config
from ..nn import Module
from ..peft import get_peft_model
from ..peft.adapter_io import save_adapter
from ..peft.provenance import base_fingerprint
from ..peft.registry import COMBINATIONS, QUANTIZED, preset_names
from ..tasks import Task, get_task
from ..tokenizer import Tokenizer
from ..train import Callback, TrainConfig, Trainer, UpdateAndAllocate, evaluate
from .inference import TOKENIZER_FILES, load_for_inference, merge
from .methods import build_peft_configs, quantize_base
from .runs import RUN_FILE, finish_run, prepare_run

__all__ = ["METHODS", "COMBINATIONS", "TASK_DEFAULTS", "FinetuneResult", "TaskData",
           "context_limit", "finetune", "folder_bytes", "load_base", "load_for_inference",
           "merge", "task_data"]  # fmt: skip

METHODS = ("full", *preset_names(), *COMBINATIONS, *QUANTIZED)

# Settings every run has, then what each (task, method) changes. Measured on the default base
# (README, "docstring-topic"): a classifier needs a smaller learning rate than the LM task (at
# 1e-2 its loss never leaves ln 4) and twice the steps; LoRA on it also adapts the token
# embeddings, because word identity is what tells the topics apart and the frozen base's
# last-token features carry almost none of it (a linear probe on them: 0.28, chance 0.25).
BASE_DEFAULTS: dict[str, Any] = {
    "r": None, "alpha": None, "dropout": None, "targets": None, "reduction_factor": None,
    "non_linearity": None, "set": {}, "steps": 150, "lr": 1e-2, "batch_size": 16,
    "block_size": 128, "warmup": None, "grad_accum": 1, "eval_every": 0, "save_every": 50,
    "seed": 0, "embeddings": False, "log_every": 10, "eval_batches": None,
}  # fmt: skip
# A method's job defaults where they differ from its config's (LoRA: alpha 16 = 2r).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "lora": {"r": 8, "alpha": 16.0},
    "qlora": {"r": 8, "alpha": 16.0},
    **{m: {"r": 8, "alpha": 16.0} for m in ("rslora", "dora", "pissa", "olora")},  # LoRA's kin
    # AdaLoRA starts from E = 0 and scales by alpha / init_r (12): at LoRA's lr 1e-2 and
    # alpha 8 it ends at loss 5.611 on docstrings against LoRA's 5.490; alpha 32 and lr 3e-2
    # reach 5.507 (measured, 150 steps on the default base).
    "adalora": {"alpha": 32.0},
}
TASK_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("docstrings", "lora"): {},
    ("docstrings", "qlora"): {},
    ("docstrings", "adalora"): {"lr": 3e-2},
    ("docstrings", "full"): {"lr": 1e-3},
    ("docstring-topic", "lora"): {"lr": 1e-3, "steps": 300, "embeddings": True},
    ("docstring-topic", "qlora"): {"lr": 1e-3, "steps": 300, "embeddings": True},
    ("docstring-topic", "full"): {"lr": 1e-3, "steps": 300},
    ("docstring-topic", "*"): {"lr": 1e-3, "steps": 300},  # any other PEFT method
}

Batches = Callable[[int, int], Iterator[dict[str, Any]]]


@dataclass
class TaskData:
    """A task turned into batch factories ``(seed, epoch) -> iterator`` for the Trainer."""

    task: Task
    train: Batches
    test: Batches
    metric: str  # "loss" (lower is better) or "accuracy"


def task_data(task: Task, tokenizer: Tokenizer, block_size: int, batch_size: int) -> TaskData:
    """Tokenize a task once and return deterministic batch factories over it."""
    if task.kind == "causal_lm":
        train_blocks = lm_blocks(tokenize_documents(tokenizer, task.train_texts), block_size)
        test_blocks = lm_blocks(tokenize_documents(tokenizer, task.test_texts), block_size)
        return TaskData(
            task,
            lambda s, e: iterate_batches(train_blocks, batch_size, True, s, True, epoch=e),
            lambda s, e: iterate_batches(test_blocks, batch_size, shuffle=False),
            "loss",
        )
    if task.kind == "seq_cls":

        def batches(texts: Any, labels: Any, shuffle: bool) -> Batches:  # noqa: E306
            return lambda s, e: classification_batches(
                tokenizer, texts, labels, batch_size, block_size, shuffle=shuffle, seed=s + e
            )

        return TaskData(task, batches(task.train_texts, task.train_labels, True),
                        batches(task.test_texts, task.test_labels, False), "accuracy")  # fmt: skip
    raise ValueError(f"task {task.name!r} has unknown kind {task.kind!r}")


def label_config(task: Task) -> dict[str, Any]:
    """``num_labels``, ``id2label`` and ``label2id`` naming the task's classes."""
    names = list(task.label_names)
    return {"num_labels": len(names), "id2label": dict(enumerate(names)),
            "label2id": {n: i for i, n in enumerate(names)}}  # fmt: skip


def load_base(model_path: str | os.PathLike[str], task: Task, tokenizer: Tokenizer,
              device: str = "cpu", seed: int = 0) -> Module:  # fmt: skip
    """The base model with the head the task needs (a fresh ``score`` for classification)."""
    if task.kind != "seq_cls":
        return AutoModelForCausalLM.from_pretrained(model_path, device=device)
    with warnings.catch_warnings():
        # A new head is exactly what fine-tuning a classifier means: no warning for it.
        warnings.filterwarnings("ignore", message=r".*not found in the checkpoint; newly init")
        return AutoModelForSequenceClassification.from_pretrained(
            model_path, device=device, seed=seed, pad_token_id=tokenizer.pad_token_id,
            **label_config(task),
        )  # fmt: skip


def folder_bytes(path: str | os.PathLike[str]) -> int:
    """Total size of the files in a folder (an adapter's footprint on disk)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def result_bytes(path: str | os.PathLike[str]) -> int:
    """Size of the saved result alone: the folder (and a combination's part folders) less the
    run's own files and its checkpoint."""
    skip = {RUN_FILE, "metrics.jsonl"}
    total = 0
    for f in Path(path).iterdir():
        if f.is_file() and f.name not in skip:
            total += f.stat().st_size
        elif f.is_dir() and f.name != "checkpoint":
            total += sum(g.stat().st_size for g in f.iterdir() if g.is_file())
    return total


@dataclass
class FinetuneResult:
    adapter_path: str  # the output folder: an adapter (lora) or a model folder (full)
    metric: str
    before: dict[str, float]
    after: dict[str, float]
    trainable_params: int
    all_params: int
    adapter_bytes: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    method: str = "lora"
    task: str = "docstrings"
    # The trained model, still in memory (for measuring it further: ``minipeft compare``).
    model: Module | None = field(default=None, repr=False, compare=False)
    settings: dict[str, Any] = field(default_factory=dict, repr=False)


def resolve_settings(task: str, method: str, given: dict[str, Any]) -> dict[str, Any]:
    """Defaults, then the task's, then what was given explicitly (None = not given)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; this version supports: {list(METHODS)}")
    by_task = TASK_DEFAULTS.get((task, method), TASK_DEFAULTS.get((task, "*"), {}))
    settings = {**BASE_DEFAULTS, **METHOD_DEFAULTS.get(method, {}), **by_task}
    settings.update({k: v for k, v in given.items() if v is not None})
    return settings


def _train_config(s: dict[str, Any], **kw: Any) -> TrainConfig:
    """The Trainer's settings (validated: a bad value names its field)."""
    warm = s["warmup"] if s["warmup"] is not None else max(1, s["steps"] // 10)
    return TrainConfig(max_steps=s["steps"], lr=s["lr"], warmup_steps=warm, seed=s["seed"],
                       eval_every=s["eval_every"], save_every=s["save_every"],
                       grad_accum_steps=s["grad_accum"], log_every=s.get("log_every", 10),
                       eval_batches=s.get("eval_batches"), **kw)  # fmt: skip


def _check_settings(s: dict[str, Any]) -> None:
    _train_config(s, progress=False)
    for name in ("batch_size", "block_size"):
        if not isinstance(s[name], int) or isinstance(s[name], bool) or s[name] < 1:
            raise ValueError(f"{name}: expected an integer >= 1, found {s[name]!r}")
    alpha = s.get("alpha")
    if alpha is not None and not (isinstance(alpha, (int, float)) and alpha > 0):
        raise ValueError(
            f"alpha: expected a number > 0 (LoRA scales its update by alpha/r, so alpha=0 "
            f"trains nothing), found {alpha!r}"
        )


def finetune(
    model_path: str | os.PathLike[str] | None = None,
    task: str | None = None,
    out: str | os.PathLike[str] | None = None,
    method: str | None = None,
    r: int | None = None,
    alpha: float | None = None,
    dropout: float | None = None,
    targets: list[str] | str | None = None,
    reduction_factor: float | None = None,
    non_linearity: str | None = None,
    overrides: dict[str, Any] | None = None,
    steps: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    block_size: int | None = None,
    warmup: int | None = None,
    grad_accum: int | None = None,
    eval_every: int | None = None,
    save_every: int | None = None,
    log_every: int | None = None,
    eval_batches: int | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    seed: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log: Any = print,
    callbacks: list[Callback] | None = None,
) -> FinetuneResult:
    """Fine-tune the checkpoint at ``model_path`` on ``task`` and save the result to ``out``.

    Arguments left as None take the (task, method) default (:data:`TASK_DEFAULTS`; the model:
    the cached base, the task: docstrings, the method: lora, ``out``: runs/<method>-<task>).
    ``resume`` continues the unfinished run in ``out`` bit for bit; ``overwrite`` replaces what
    ``out`` holds. Ctrl-C raises :class:`~minipeft.train.TrainingInterrupted` after saving a
    checkpoint. ``overrides`` sets fields of the method's config by name (``{"r": 16}``); the
    short arguments (``r``, ``alpha``, ``reduction_factor``, ...) set the field of that meaning.
    ``callbacks`` go to the Trainer after the job's own (AdaLoRA's rank allocation);
    ``precision`` is fp32, tf32, fp16 or bf16 (:mod:`minipeft.precision`).
    """
    given = {"r": r, "alpha": alpha, "dropout": dropout, "targets": targets,
             "reduction_factor": reduction_factor, "non_linearity": non_linearity,
             "set": dict(overrides) if overrides else None, "steps": steps,
             "lr": lr, "batch_size": batch_size, "block_size": block_size, "warmup": warmup,
             "grad_accum": grad_accum, "eval_every": eval_every, "save_every": save_every,
             "log_every": log_every, "eval_batches": eval_batches, "seed": seed}  # fmt: skip
    named = {"model": None if model_path is None else os.fspath(model_path), "task": task,
             "method": method}  # fmt: skip
    if out is None:
        out = Path("runs") / f"{method or 'lora'}-{task or 'docstrings'}"
    out_dir = Path(out)
    inputs = {"the base model": model_path}
    if resume:  # everything comes from run.json; what is given again must agree
        settings = prepare_run("finetune", out_dir, inputs, {}, {**named, **given}, resume=True)
    else:
        from .pretrain import default_base_dir  # noqa: PLC0415

        task, method = task or "docstrings", method or "lora"
        get_task(task)  # an unknown task fails before anything is written
        fresh = resolve_settings(task, method, given)
        _check_settings(fresh)
        if method != "full":  # a bad method setting fails before anything is written
            build_peft_configs(method, fresh, None, get_task(task).kind)
        fresh = {"model": os.fspath(model_path or default_base_dir()), "task": task,
                 "method": method, **fresh}  # fmt: skip
        settings = prepare_run("finetune", out_dir, {"the base model": fresh["model"]}, fresh,
                               {**named, **given}, overwrite=overwrite)  # fmt: skip
    the_task = get_task(settings["task"])
    method = settings["method"]
    model_path = settings["model"]
    cfg = _train_config(settings, device=device, precision=precision, progress=progress,
                        output_dir=os.fspath(out_dir))  # fmt: skip
    start = time.perf_counter()
    tokenizer = Tokenizer.from_pretrained(model_path)
    limit = context_limit(model_path, method, settings, the_task.kind)
    block_size = min(settings["block_size"], limit)
    data = task_data(the_task, tokenizer, block_size, settings["batch_size"])
    # Seed the adapters' initialisation too (the Trainer seeds the data order and dropout):
    # the same settings give the same run whatever the process did before.
    manual_seed(settings["seed"])
    model = load_base(model_path, the_task, tokenizer, device, settings["seed"])
    before = evaluate(model, data.test(settings["seed"], 0), device,
                      settings.get("eval_batches"))  # fmt: skip
    if method != "full":
        configs = build_peft_configs(method, settings, model, the_task.kind)
        float_fingerprint = None
        if method in QUANTIZED:  # QLoRA: LoRA on the base stored in 4 bits
            float_fingerprint = base_fingerprint(model, getattr(configs[0][1], "modules_to_save",
                                                                None))  # fmt: skip
            quantize_base(model, model_path, log)
        trained: Module = get_peft_model(model, configs[0][1])
        if float_fingerprint:  # the adapter belongs to the float base it was quantized from
            trained.base_fingerprint = float_fingerprint
        for name, config in configs[1:]:  # a combination: its parts train together
            trained.add_adapter(name, config)
        trained.set_adapter([name for name, _ in configs])
        initial = _initial_adapters(trained, configs)  # PiSSA / OLoRA: to convert at the end
        fingerprint = trained.base_fingerprint  # taken before injection, as saved adapters do
        trainable, total = trained.get_nb_trainable_parameters()
    else:
        trained = model
        fingerprint = base_fingerprint(model, ["score", "classifier"])
        total = trainable = sum(p.numel() for p in model.parameters())
    _check_same_base(out_dir, fingerprint, resume)
    log(f"trainable params: {trainable:,d} || all params: {total:,d} || "
        f"trainable%: {100 * trainable / total:.4f}")  # fmt: skip
    result = Trainer(
        trained, cfg, data.train, data.test, callbacks=[UpdateAndAllocate(), *(callbacks or [])]
    ).train(resume=resume)
    after = result.metrics  # the Trainer evaluates after its last step
    if method != "full":
        _save_adapters(trained, out_dir, initial)
        for tuner in trained.tuners.values():  # e.g. AdaLoRA's final ranks
            text = getattr(tuner, "report", lambda: None)()
            if text:
                log(text)
    else:
        with atomic_folder(out_dir, keep=lambda name: name not in TOKENIZER_FILES) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    finish_run(out_dir)
    return FinetuneResult(str(out_dir), data.metric, before, after, trainable, total,
                          result_bytes(out_dir), time.perf_counter() - start, result.history,
                          method, the_task.name, trained, dict(settings))  # fmt: skip


def context_limit(model_path: str | os.PathLike[str], method: str, settings: dict[str, Any],
                  task_kind: str = "causal_lm") -> int:  # fmt: skip
    """The positions left for real tokens: the model's context less the method's virtual
    tokens (prompt and prefix tuning take context positions)."""
    virtual = 0 if method == "full" else max(
        (getattr(c, "num_virtual_tokens", 0) or 0 for _, c in
         build_peft_configs(method, settings, None, task_kind)), default=0)  # fmt: skip
    limit = load_config(model_path).max_position_embeddings - virtual
    if limit < 2:
        raise ValueError(f"num_virtual_tokens: expected fewer than {limit + virtual - 1} for this "
                         f"model's {limit + virtual} positions, found {virtual}")  # fmt: skip
    return limit


def _initial_adapters(model: Any, configs: list[tuple[str, Any]]) -> dict[str, Any] | None:
    """The adapters' starting tensors (copies) when injecting them rewrote base weights
    (PiSSA / OLoRA), else None. A resumed run recomputes the same start from the same base."""
    if not any(config.changes_base_weights for _, config in configs):
        return None
    return {name: {k: np.array(v) for k, v in model.adapter_state_dict(name).items()}
            for name, _ in configs}  # fmt: skip


def _save_adapters(model: Any, out_dir: Path, initial: dict[str, Any] | None) -> None:
    """Save the adapters; with a start recorded, converted to plain LoRA for the original base
    (PEFT's ``path_initial_model_for_weight_conversion``), so that generate, eval and merge
    use the unchanged base checkpoint."""
    if initial is None:
        model.save_pretrained(out_dir)
        return
    with tempfile.TemporaryDirectory() as start:
        for name, tensors in initial.items():
            save_adapter(start, model.peft_config[name], tensors, name)
        model.save_pretrained(out_dir, path_initial_model_for_weight_conversion=start)


def _check_same_base(out_dir: Path, fingerprint: str, resume: bool) -> None:
    """Record the base in run.json; a resumed run must continue on the very same base."""
    run_file = out_dir / RUN_FILE
    record = json.loads(run_file.read_text(encoding="utf-8"))
    recorded = record.get("base_fingerprint")
    if resume and recorded and recorded != fingerprint:
        raise ValueError(
            f"--resume: the run in {os.fspath(out_dir)!r} was started on another base model "
            f"(fingerprint {recorded}, now {fingerprint}); its checkpoint only makes sense on "
            "that base"
        )
    record["base_fingerprint"] = fingerprint
    atomic_write_text(run_file, json.dumps(record, indent=2) + "\n")
