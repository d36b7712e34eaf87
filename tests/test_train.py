"""The training loop: learning, config validation, gradient accumulation, exact resume,
callbacks, PEFT (only the adapter trains), evaluation metrics and a quiet mode.

Every model is a tiny GPT-2 (C = 32, 1-2 layers, V = 64, no dropout) fed batches of random ids
from a seeded NumPy generator, so each test runs in well under a second.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import minipeft as mp
from minipeft.models import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel
from minipeft.optim import SGD, AdamW
from minipeft.peft import LoraConfig, get_peft_model
from minipeft.train import Callback, TrainConfig, Trainer, evaluate

V, T = 64, 12  # vocabulary size, sequence length


def tiny_config(**overrides) -> GPT2Config:
    sizes = dict(vocab_size=V, n_positions=16, n_embd=32, n_layer=1, n_head=2,
                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    return GPT2Config(**{**sizes, **overrides})


def tiny_lm(seed: int = 0, **overrides) -> GPT2LMHeadModel:
    return GPT2LMHeadModel(tiny_config(**overrides), seed=seed)


def lm_batches(n: int, batch_size: int = 4, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` LM batches {"input_ids", "labels"} (B, T) of random int64 ids."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = rng.integers(0, V, size=(batch_size, T), dtype=np.int64)
        out.append({"input_ids": ids, "labels": ids.copy()})
    return out


def epoch_data(seed: int, epoch: int):
    """A data factory ``(seed, epoch) -> 2 batches``: different batches every epoch."""
    return iter(lm_batches(2, seed=1000 * seed + epoch))


def quiet(**kw) -> TrainConfig:
    return TrainConfig(**{"progress": False, **kw})


def params_of(model) -> dict[str, np.ndarray]:
    return {n: p.numpy().copy() for n, p in model.named_parameters()}


# ---------------------------------------------------------------------------- learning
def test_loss_falls_on_a_fixed_batch_stream(device):
    model = tiny_lm().to(device)
    cfg = quiet(max_steps=30, lr=1e-2, log_every=1, device=device)
    result = Trainer(model, cfg, lm_batches(2)).train()
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 30 and result.step == 30
    assert losses[0] == pytest.approx(math.log(V), abs=0.1)  # an untrained model: uniform
    assert np.mean(losses[-5:]) < losses[0] - 1.0
    assert result.tokens == 30 * 4 * T


# ---------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "field, value",
    [
        ("max_steps", 0), ("max_steps", 2.5), ("max_steps", "10"), ("lr", 0.0),
        ("lr", float("nan")), ("weight_decay", -0.1), ("betas", (0.9, 1.0)), ("eps", 0.0),
        ("warmup_steps", 200), ("warmup_steps", -1), ("schedule", "step"), ("grad_clip", 0.0),
        ("grad_accum_steps", 0), ("eval_every", -1), ("eval_batches", 0), ("log_every", 0),
        ("save_every", -1), ("device", "tpu"),
    ],
)  # fmt: skip
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field}: expected .*found"):
        TrainConfig(**{field: value})


def test_trainer_needs_trainable_parameters():
    model = tiny_lm()
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        Trainer(model, quiet(max_steps=1), lm_batches(1))


# ---------------------------------------------------------------------------- accumulation
@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_grad_accumulation_matches_one_full_batch(opt):
    """Two half batches with grad_accum_steps=2 == one full batch (float64, one step).

    The loss is a mean over tokens; both halves hold the same number of tokens, so the mean of
    the two half-batch means is the full-batch mean and the gradients agree to rounding.
    """
    (full,) = lm_batches(1, batch_size=4)
    halves = [{k: v[:2] for k, v in full.items()}, {k: v[2:] for k, v in full.items()}]

    def one_step(data, accum):
        model = tiny_lm(n_layer=2).to(mp.float64)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = SGD(params, lr=0.5) if opt == "sgd" else AdamW(params, lr=1e-2)
        cfg = quiet(max_steps=1, grad_accum_steps=accum, grad_clip=None, schedule="constant")
        Trainer(model, cfg, data, optimizer=optimizer).train()
        return params_of(model)

    start = params_of(tiny_lm(n_layer=2).to(mp.float64))
    once, accumulated = one_step([full], 1), one_step(halves, 2)
    for name, value in once.items():
        assert value.dtype == np.float64
        np.testing.assert_allclose(accumulated[name], value, rtol=1e-9, atol=1e-12, err_msg=name)
    assert any(not np.array_equal(start[n], once[n]) for n in once)  # the step did something


# ---------------------------------------------------------------------------- checkpoints
class SimulatedCrashError(Exception):
    """Raised by :class:`CrashAt` to stop a run the way a crash would."""


class CrashAt(Callback):
    """Simulates a crash in the middle of step ``step`` (after the optimizer update)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_optimizer_step(self, trainer, step):
        if step == self.step:
            raise SimulatedCrashError


def test_checkpoint_and_resume_is_exact(tmp_path, device):
    # warmup + cosine, AdamW state, and an epoch of 2 batches: the checkpoint at step 3 falls
    # mid-epoch and mid-schedule, so every piece of loop state must be restored.
    def config(out=None, save_every=0):
        return quiet(max_steps=6, lr=1e-2, warmup_steps=2, log_every=1, output_dir=out,
                     save_every=save_every, device=device)  # fmt: skip

    def tiny_lm():
        return GPT2LMHeadModel(tiny_config(), seed=0).to(device)

    straight = tiny_lm()
    Trainer(straight, config(), epoch_data).train()

    out = str(tmp_path / "run")
    first = tiny_lm()
    with pytest.raises(SimulatedCrashError):
        Trainer(first, config(out, save_every=3), epoch_data, callbacks=[CrashAt(4)]).train()
    ckpt = tmp_path / "run" / "checkpoint"
    for name in ("trainer_state.json", "trainable.safetensors", "optimizer.safetensors"):
        assert (ckpt / name).is_file(), name
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 3

    resumed = tiny_lm()  # a fresh model: everything trainable comes from the checkpoint
    result = Trainer(resumed, config(out, save_every=3), epoch_data).train(resume=True)
    assert result.step == 6
    want, got = params_of(straight), params_of(resumed)
    assert want.keys() == got.keys()
    for name in want:
        assert np.array_equal(want[name], got[name]), name

    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]  # the crashed step never logged
    assert all({"loss", "lr", "tokens_per_s"} <= r.keys() for r in records)
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 6


def test_resume_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="output_dir"):
        Trainer(tiny_lm(), quiet(max_steps=1), lm_batches(1)).train(resume=True)
    cfg = quiet(max_steps=1, output_dir=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="trainer_state.json"):
        Trainer(tiny_lm(), cfg, lm_batches(1)).train(resume=True)


# ---------------------------------------------------------------------------- callbacks
class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.steps: list[int] = []
        self.logs: list[dict] = []

    def on_train_begin(self, trainer):
        self.events.append("begin")

    def on_optimizer_step(self, trainer, step):
        # AdaLoRA's rank allocation reads the gradients here: they must still be present.
        assert all(p.grad is not None for p in trainer.params)
        assert step == trainer.step
        self.steps.append(step)

    def on_log(self, trainer, logs):
        self.logs.append(dict(logs))

    def on_train_end(self, trainer):
        self.events.append("end")


def test_callbacks_see_gradients_and_logs():
    rec = Recorder()
    model = tiny_lm()
    trainer = Trainer(model, quiet(max_steps=4, log_every=2), lm_batches(3), callbacks=[rec])
    trainer.train()
    assert rec.events == ["begin", "end"]
    assert rec.steps == [1, 2, 3, 4]
    assert [log["step"] for log in rec.logs] == [2, 4]
    for log in rec.logs:
        assert {"loss", "lr", "tokens_per_s"} <= log.keys()
        assert math.isfinite(log["loss"]) and log["lr"] >= 0 and log["tokens_per_s"] > 0
    assert all(p.grad is None for p in model.parameters())  # zeroed after the callbacks


def test_eval_runs_at_eval_every_and_at_the_end():
    rec = Recorder()
    cfg = quiet(max_steps=5, eval_every=2, log_every=100)
    result = Trainer(tiny_lm(), cfg, lm_batches(2), lm_batches(2, seed=9), [rec]).train()
    assert [log["step"] for log in rec.logs if "eval_loss" in log] == [2, 4, 5]
    assert result.metrics["loss"] == pytest.approx(rec.logs[-1]["eval_loss"], abs=1e-6)


# ---------------------------------------------------------------------------- PEFT
def test_lora_trains_only_the_adapter():
    model = get_peft_model(
        tiny_lm(n_layer=2), LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"])
    )
    named = dict(model.named_parameters())
    adapter = {n for n in named if "lora_" in n}
    assert adapter and all(named[n].requires_grad == (n in adapter) for n in named)
    before = params_of(model)

    trainer = Trainer(model, quiet(max_steps=3, lr=1e-2), lm_batches(2))
    trainer.train()

    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(named[n]) for n in adapter}
    assert {id(p) for p in trainer.optimizer.state} == in_optimizer  # state only for the adapter
    after = params_of(model)
    for name in named:
        if name in adapter:
            continue
        assert np.array_equal(before[name], after[name]), f"frozen {name} changed"
    assert any(not np.array_equal(before[n], after[n]) for n in adapter if "lora_B" in n)


# ---------------------------------------------------------------------------- evaluate
def test_evaluate_lm_loss_and_perplexity():
    model = tiny_lm()
    model.train()
    batches = lm_batches(2) + lm_batches(1, batch_size=1, seed=5)  # a smaller last batch
    metrics = evaluate(model, batches)
    assert set(metrics) == {"loss", "perplexity"}
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]))
    assert model.training  # evaluate restores the mode it found

    # Token-weighted: the same as one batch holding every row.
    together = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    assert metrics["loss"] == pytest.approx(evaluate(model, [together])["loss"], rel=1e-6)
    assert evaluate(model, batches, max_batches=1)["loss"] == pytest.approx(
        evaluate(model, batches[:1])["loss"]
    )
    with pytest.raises(ValueError, match="no batch"):
        evaluate(model, [])


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_evaluate_classifier_reports_accuracy():
    pad = 0
    model = GPT2ForSequenceClassification(tiny_config(num_labels=3, pad_token_id=pad), seed=0)
    rng = np.random.default_rng(3)
    batches = []
    for rows, lengths in ((3, [T, 5, 8]), (1, [4])):  # unequal batch sizes and paddings
        ids = rng.integers(1, V, size=(rows, T), dtype=np.int64)
        mask = np.arange(T)[None, :] < np.array(lengths)[:, None]
        batches.append({"input_ids": np.where(mask, ids, pad),
                        "attention_mask": mask.astype(np.int64),
                        "labels": rng.integers(0, 3, size=rows, dtype=np.int64)})  # fmt: skip
    metrics = evaluate(model, batches)

    # By hand: the mean loss over the 4 examples (not over tokens) and the argmax accuracy.
    logp, labels = [], []
    with mp.no_grad():
        for b in batches:
            out = model(**{k: mp.tensor(v) for k, v in b.items()})
            logp.append(_log_softmax(out.logits.numpy().astype(np.float64)))
            labels.append(b["labels"])
    logp, labels = np.concatenate(logp), np.concatenate(labels)
    assert metrics["loss"] == pytest.approx(-logp[np.arange(4), labels].mean(), rel=1e-5)
    assert metrics["accuracy"] == pytest.approx(np.mean(logp.argmax(-1) == labels))
    assert 0.0 <= metrics["accuracy"] <= 1.0


# ---------------------------------------------------------------------------- output
def test_progress_false_prints_nothing(capsys, tmp_path):
    cfg = quiet(max_steps=3, log_every=1, output_dir=str(tmp_path / "q"))
    Trainer(tiny_lm(), cfg, lm_batches(2), lm_batches(1)).train()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_progress_bar_is_shown_by_default(capsys):
    Trainer(tiny_lm(), TrainConfig(max_steps=2), lm_batches(1)).train()
    assert "train" in capsys.readouterr().err
