"""One training loop for pretraining and every PEFT method.

    trainer = Trainer(model, TrainConfig(max_steps=300, lr=3e-3), train_data, eval_data)
    result = trainer.train()

What it does each optimizer step (``grad_accum_steps`` micro-batches):

1. forward each micro-batch, ``loss / grad_accum_steps`` backward (gradients add up);
2. clip the global gradient norm (``grad_clip``), step AdamW, step the LR schedule
   (linear warmup, then cosine or linear decay);
3. run callbacks' ``on_optimizer_step`` (gradients still present: AdaLoRA's rank allocation
   reads them), then zero the gradients;
4. every ``eval_every`` steps evaluate, log a JSON line, and save a checkpoint.

The optimizer only sees parameters that require grad, so a PEFT model trains (and stores
optimizer state for) its adapter alone. Checkpoints are atomic safetensors + JSON files, and
``resume=True`` continues bit-for-bit: the data stream is a pure function of (seed, step).

Ctrl-C (SIGINT) stops at the next step boundary: the loop finishes the step it is in, saves a
checkpoint (when ``output_dir`` is set) and raises :class:`TrainingInterrupted`, which says where
the checkpoint is; a second Ctrl-C aborts at once (``KeyboardInterrupt``), keeping the last
checkpoint written.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .autograd import no_grad
from .backend import check_device, get_rng, manual_seed, to_device, to_numpy
from .evaluation import Batch, count_tokens, evaluate, to_device_batch
from .fileio import atomic_write_text, load_safetensors, save_safetensors
from .interrupt import TrainingInterrupted, stop_on_sigint
from .nn import Module
from .optim import AdamW, clip_grad_norm_, flatten_state_dict, get_schedule, unflatten_state_dict
from .precision import MixedPrecision
from .train_config import TrainConfig

__all__ = [
    "Callback",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingInterrupted",
    "UpdateAndAllocate",
    "evaluate",
    "to_device_batch",
]


class Callback:
    """Hooks into the loop; override what you need (all are no-ops here)."""

    def on_train_begin(self, trainer: Trainer) -> None: ...

    def on_optimizer_step(self, trainer: Trainer, step: int) -> None:
        """After ``optimizer.step()``, before the gradients are zeroed."""

    def on_log(self, trainer: Trainer, logs: dict[str, Any]) -> None: ...

    def on_train_end(self, trainer: Trainer) -> None: ...


class UpdateAndAllocate(Callback):
    """Calls ``trainer.model.update_and_allocate(step)`` after every optimizer step, gradients
    still present (``step`` counts from 1): AdaLoRA's importance update and rank allocation, the
    call PEFT's training loops make. Does nothing for a model without that method."""

    def on_optimizer_step(self, trainer: Trainer, step: int) -> None:
        update = getattr(trainer.model, "update_and_allocate", None)
        if update is not None:
            update(step)


@dataclass
class TrainResult:
    """What a run produced: final step, final metrics, the log history, wall time."""

    step: int
    metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0


# Settings a resumed run must share with the run that wrote the checkpoint: any other value
# would not continue that run but start a different one from its middle.
_RESUME_FIELDS = ("max_steps", "lr", "weight_decay", "betas", "eps", "warmup_steps", "schedule",
                  "grad_clip", "grad_accum_steps", "seed")  # fmt: skip


class Trainer:
    """Runs :class:`TrainConfig` on a model.

    ``train_data`` is a callable ``(seed: int, epoch: int) -> iterator of batches`` (a fresh,
    deterministic pass over the data) or a re-iterable; ``eval_data`` likewise, or None.
    Batches are dicts of NumPy arrays passed to ``model(**batch)``, whose output has ``.loss``.
    """

    def __init__(
        self,
        model: Module,
        config: TrainConfig,
        train_data: Callable[[int, int], Iterator[Batch]] | Iterable[Batch],
        eval_data: Callable[[int, int], Iterator[Batch]] | Iterable[Batch] | None = None,
        callbacks: Iterable[Callback] = (),
        optimizer: Any = None,
    ) -> None:
        self.model = model
        self.config = config
        self.train_data = train_data
        self.eval_data = eval_data
        self.callbacks = list(callbacks)
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("Trainer: the model has no parameter with requires_grad=True")
        self.optimizer = optimizer or AdamW(
            self.params, lr=config.lr, betas=config.betas, eps=config.eps,
            weight_decay=config.weight_decay,
        )  # fmt: skip
        self.scheduler = get_schedule(
            config.schedule, self.optimizer, config.warmup_steps, config.max_steps
        )
        # fp16/bf16: frozen weights cast once, trainable ones swapped for compute copies per step
        self.amp = MixedPrecision(model, self.params, config.precision, check_device(config.device))
        self.step = 0
        self.tokens = 0
        self.history: list[dict[str, Any]] = []
        self._epoch = 0
        self._consumed = 0  # batches consumed in the current epoch (for exact resume)

    # ------------------------------------------------------------------ data
    def _epoch_iter(self, epoch: int) -> Iterator[Batch]:
        data = self.train_data
        it = data(self.config.seed, epoch) if callable(data) else iter(data)
        return iter(it)

    def _batches(self) -> Iterator[Batch]:
        """An endless stream: epoch after epoch, resuming mid-epoch after a checkpoint."""
        skip = self._consumed
        while True:
            it = self._epoch_iter(self._epoch)
            got = False
            for batch in it:
                got = True
                if skip:
                    skip -= 1
                    continue
                self._consumed += 1
                yield batch
            if not got:
                raise ValueError("Trainer: the training data yielded no batches")
            self._epoch += 1
            self._consumed = 0

    def _eval_iter(self) -> Iterable[Batch] | None:
        data = self.eval_data
        if data is None:
            return None
        return data(self.config.seed, 0) if callable(data) else data

    # ------------------------------------------------------------------ loop
    def train(self, resume: bool = False) -> TrainResult:
        cfg = self.config
        manual_seed(cfg.seed)
        if resume:
            self.load_checkpoint()
        out_dir = Path(cfg.output_dir) if cfg.output_dir else None
        if out_dir:
            out_dir.mkdir(parents=True, exist_ok=True)
        for cb in self.callbacks:
            cb.on_train_begin(self)
        self.model.train()
        stream = self._batches()
        bar = _progress(cfg.max_steps, self.step, cfg.progress)
        try:
            with stop_on_sigint() as stop:
                metrics = self._loop(stream, bar, out_dir, stop)
        finally:
            if bar is not None:
                bar.close()
        if not metrics and self._eval_iter() is not None:  # resumed from the final checkpoint
            metrics = evaluate(self.model, self._eval_iter(), cfg.device, cfg.eval_batches)
        for cb in self.callbacks:
            cb.on_train_end(self)
        return TrainResult(
            self.step, metrics, self.history, time.perf_counter() - self._start, self.tokens
        )

    def _loop(self, stream: Iterator[Batch], bar: Any, out_dir: Path | None,
              stop: list[bool]) -> dict[str, float]:  # fmt: skip
        cfg = self.config
        start, run_tokens, metrics = time.perf_counter(), 0, {}
        self._start = start
        while self.step < cfg.max_steps:
            if stop[0]:
                checkpoint = None
                if out_dir:
                    checkpoint = str(out_dir / "checkpoint")
                    self.save_checkpoint(checkpoint)
                raise TrainingInterrupted(self.step, cfg.max_steps, checkpoint)
            scale = self.amp.loss_scale
            loss_sum, finite, n = self._forward_backward(stream, scale)
            run_tokens += n
            grad_norm = None
            if finite:  # fp16: a step whose gradients overflowed is skipped (loss scaling)
                grad_norm = clip_grad_norm_(self.params, cfg.grad_clip) if cfg.grad_clip else None
                self.optimizer.step()
            self.amp.update(finite)
            self.scheduler.step()
            self.step += 1
            for cb in self.callbacks:
                cb.on_optimizer_step(self, self.step)
            self.optimizer.zero_grad()
            elapsed = time.perf_counter() - start
            logs: dict[str, Any] = {
                "step": self.step,
                "loss": round(loss_sum, 6),
                "lr": self.scheduler.get_last_lr()[0],
                "tokens_per_s": round(run_tokens / max(elapsed, 1e-9), 1),
            }
            if grad_norm is not None:
                logs["grad_norm"] = round(float(grad_norm), 6)
            if self.amp.scaler is not None:
                logs.update(loss_scale=scale, skipped_steps=self.amp.scaler.skipped)
            last = self.step == cfg.max_steps
            if self._eval_iter() is not None and (
                last or (cfg.eval_every and self.step % cfg.eval_every == 0)
            ):
                metrics = evaluate(self.model, self._eval_iter(), cfg.device, cfg.eval_batches)
                self.model.train()
                logs.update({f"eval_{k}": round(v, 6) for k, v in metrics.items()})
            if last or self.step % cfg.log_every == 0 or "eval_loss" in logs:
                self._log(logs, out_dir)
            if bar is not None:
                bar.set_postfix(loss=f"{loss_sum:.3f}", tok_s=f"{logs['tokens_per_s']:.0f}")
                bar.update(1)
            if out_dir and (last or (cfg.save_every and self.step % cfg.save_every == 0)):
                self.save_checkpoint(out_dir / "checkpoint")
        return metrics

    def _forward_backward(self, stream: Iterator[Batch], scale: float) -> tuple[float, bool, int]:
        """One optimizer step's micro-batches: forward, backward of ``scale · loss / accum``.
        Returns (mean loss, whether the gradients are finite, tokens seen)."""
        cfg, loss_sum, tokens = self.config, 0.0, 0
        self.amp.cast()
        try:
            with self.amp.quiet_overflow():
                for _ in range(cfg.grad_accum_steps):
                    batch = next(stream)
                    loss = self.model(**to_device_batch(batch, cfg.device)).loss
                    if not math.isfinite(loss.item()):
                        raise FloatingPointError(
                            f"loss became {loss.item()} at step {self.step + 1}"
                        )
                    (loss * (scale / cfg.grad_accum_steps)).backward()
                    loss_sum += loss.item() / cfg.grad_accum_steps
                    tokens += count_tokens(batch)
        finally:  # fp32 masters back even when interrupted, so a checkpoint holds them
            finite = self.amp.restore()
        self.tokens += tokens
        return loss_sum, finite, tokens

    def _log(self, logs: dict[str, Any], out_dir: Path | None) -> None:
        self.history.append(logs)
        for cb in self.callbacks:
            cb.on_log(self, logs)
        if out_dir:
            with open(out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(logs) + "\n")

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, folder: str | os.PathLike[str]) -> None:
        """Trainable weights, optimizer state and loop state, each file written atomically;
        also a model's own training state when it has one (``model.training_state()`` →
        (arrays, JSON-able meta), e.g. AdaLoRA's importance averages and rank pattern)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        names = {id(p): n for n, p in self.model.named_parameters()}
        weights = {names[id(p)]: to_numpy(p.data) for p in self.params}
        save_safetensors(folder / "trainable.safetensors", weights)
        arrays, opt_meta = flatten_state_dict(self.optimizer.state_dict())
        save_safetensors(folder / "optimizer.safetensors", arrays)
        rng = get_rng(self.config.device)
        state = {
            "step": self.step, "tokens": self.tokens, "epoch": self._epoch,
            "consumed": self._consumed, "optimizer": opt_meta,
            "scheduler": self.scheduler.state_dict(), "config": asdict(self.config),
            "rng": rng.bit_generator.state if self.config.device == "cpu" else None,
            "precision": self.amp.state_dict(),
        }  # fmt: skip
        model_arrays, model_meta = getattr(self.model, "training_state", lambda: ({}, {}))()
        if model_meta:
            save_safetensors(folder / "model_state.safetensors", model_arrays)
            state["model_state"] = model_meta
        atomic_write_text(folder / "trainer_state.json", json.dumps(state, indent=2, default=float))

    def load_checkpoint(self, folder: str | os.PathLike[str] | None = None) -> None:
        """Restore what :meth:`save_checkpoint` wrote (default: ``output_dir/checkpoint``)."""
        if folder is None:
            if not self.config.output_dir:
                raise ValueError("resume needs TrainConfig.output_dir (where checkpoints live)")
            folder = Path(self.config.output_dir) / "checkpoint"
        folder = Path(folder)
        state_file = folder / "trainer_state.json"
        if not state_file.is_file():
            raise FileNotFoundError(f"no checkpoint to resume from: {state_file} does not exist")
        state = json.loads(state_file.read_text(encoding="utf-8"))
        saved = state.get("config", {})
        for name in _RESUME_FIELDS:
            now, then = getattr(self.config, name), saved.get(name, getattr(self.config, name))
            if (list(now) if isinstance(now, tuple) else now) != then:
                raise ValueError(
                    f"cannot resume from {folder}: it was made with {name}={then!r}, this run has "
                    f"{name}={now!r}; resume with the settings of the run that wrote it"
                )
        weights = load_safetensors(folder / "trainable.safetensors")
        params = dict(self.model.named_parameters())
        names = [n for n, p in params.items() if p.requires_grad]
        missing = sorted(set(names) - set(weights))
        if missing:
            raise ValueError(f"checkpoint {folder} lacks trainable weights: {missing[:5]}")
        with no_grad():
            for n in names:
                params[n].data[...] = to_device(weights[n], params[n].device)
        arrays = load_safetensors(folder / "optimizer.safetensors")
        self.optimizer.load_state_dict(unflatten_state_dict(arrays, state["optimizer"]))
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.tokens = state["step"], state["tokens"]
        self._epoch, self._consumed = state["epoch"], state["consumed"]
        self.amp.load_state_dict(state.get("precision", {}))
        if state.get("rng") is not None:
            get_rng(self.config.device).bit_generator.state = state["rng"]
        if state.get("model_state") and hasattr(self.model, "load_training_state"):
            model_arrays = load_safetensors(folder / "model_state.safetensors")
            self.model.load_training_state(model_arrays, state["model_state"])
        self._truncate_log(self.step)

    def _truncate_log(self, step: int) -> None:
        """Drop metrics lines past ``step`` (a run killed after its last checkpoint logged
        steps that the resumed run will log again)."""
        if not self.config.output_dir:
            return
        log = Path(self.config.output_dir) / "metrics.jsonl"
        if not log.is_file():
            return
        lines = log.read_text(encoding="utf-8").splitlines()
        kept = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= step]
        if len(kept) != len(lines):
            atomic_write_text(log, "".join(ln + "\n" for ln in kept))


def _progress(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm  # noqa: PLC0415

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
