"""Training precision: dynamic loss scaling, fp32 master weights, fp16/bf16 training, TF32.

The float16 path runs on NumPy's float16 (slow — no BLAS — but exact IEEE half), so everything
here is checked on the CPU; the ``device`` fixture repeats the training checks on CUDA.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minipeft as mp
from minipeft.models import GPT2Config, GPT2LMHeadModel
from minipeft.optim import LossScaler
from minipeft.peft import LoraConfig, get_peft_model
from minipeft.precision import MixedPrecision, check_precision, round_to_bf16, set_matmul_precision
from minipeft.train import Callback, TrainConfig, Trainer


def _model(device: str = "cpu") -> GPT2LMHeadModel:
    cfg = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    return GPT2LMHeadModel(cfg, seed=0).to(device)


def _data(seed: int, epoch: int):
    """A learnable stream: every odd token is a function of the token before it."""
    rng = np.random.default_rng(seed + epoch)
    for _ in range(20):
        x = rng.integers(0, 16, size=(4, 16))
        x[:, 1::2] = (x[:, 0::2] * 3 + 1) % 64
        yield {"input_ids": x, "labels": x}


def _train(precision: str, device: str = "cpu", steps: int = 60, **kw):
    model = kw.pop("model", None) or _model(device)
    cfg = TrainConfig(max_steps=steps, lr=3e-3, precision=precision, device=device,
                      progress=False, log_every=10, **kw)  # fmt: skip
    trainer = Trainer(model, cfg, _data)
    return trainer, trainer.train()


# ---------------------------------------------------------------- the loss scaler
def test_loss_scaler_backs_off_on_overflow_and_grows_after_an_interval():
    s = LossScaler(init_scale=1024.0, growth_interval=3)
    s.update(found_inf=True)
    assert (s.scale, s.growth_tracker, s.skipped) == (512.0, 0, 1)
    for _ in range(2):
        s.update(False)
    assert s.scale == 512.0 and s.growth_tracker == 2
    s.update(False)
    assert s.scale == 1024.0 and s.growth_tracker == 0
    restored = LossScaler()
    restored.load_state_dict(s.state_dict())
    assert restored.state_dict() == s.state_dict()


@pytest.mark.parametrize(
    ("field", "value"),
    [("init_scale", 0.0), ("init_scale", float("inf")), ("growth_factor", 1.0),
     ("backoff_factor", 1.0), ("growth_interval", 0)],
)  # fmt: skip
def test_loss_scaler_rejects_bad_settings_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"LossScaler.{field}"):
        LossScaler(**{field: value})


def test_precision_is_validated():
    assert check_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match="fp32, tf32, fp16, bf16"):
        check_precision("fp8")
    with pytest.raises(ValueError, match="TrainConfig.precision"):
        TrainConfig(precision="half")


# ---------------------------------------------------------------- bfloat16 rounding
@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_round_to_bf16_is_the_nearest_bfloat16(x):
    """The result has bfloat16's 8-bit significand (low 16 bits zero) and is within half an
    ulp of x: |r - x| ≤ 2⁻⁸ · 2^⌊log₂|x|⌋ (values past bfloat16's largest round to inf)."""
    r = round_to_bf16(np.array([x], dtype=np.float32))
    assert r.view(np.uint32)[0] & 0xFFFF == 0
    if np.isfinite(r[0]) and x != 0:
        ulp = 2.0 ** (np.floor(np.log2(abs(x))) - 7)
        assert abs(float(r[0]) - x) <= ulp / 2


def test_round_to_bf16_ties_to_even_and_keeps_specials():
    one = np.float32(1.0).view(np.uint32)
    # 1 + half an ulp ties to 1 (even); 1 + 3 half-ulps ties up to 1 + 2 ulps (even)
    xs = np.array([one + 0x8000, one + 0x18000], dtype=np.uint32).view(np.float32)
    assert round_to_bf16(xs).tolist() == [1.0, 1.0 + 2 * 2.0**-7]
    specials = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0], dtype=np.float32)
    out = round_to_bf16(specials)
    assert out[0] == np.inf and out[1] == -np.inf and np.isnan(out[2])
    assert np.signbit(out[4]) and out[3] == 0
    with pytest.raises(TypeError, match="float32"):
        round_to_bf16(np.ones(2))


def test_round_to_bf16_matches_torch_bfloat16():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal(10_000).astype(np.float32) * 100
    want = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(round_to_bf16(x), want)


# ---------------------------------------------------------------- master weights
def test_cast_and_restore_keep_fp32_masters_and_unscale_gradients():
    model = _model()
    params = [p for p in model.parameters()]
    amp = MixedPrecision(model, params, "fp16", scaler=LossScaler(init_scale=8.0))
    masters = [p.data for p in params]
    amp.cast()
    assert all(p.dtype == np.float16 for p in params)
    ids = mp.tensor(np.arange(12).reshape(2, 6))
    loss = model(input_ids=ids, labels=ids).loss
    assert loss.dtype == np.float32  # cross-entropy runs in float32 on float16 logits
    (loss * amp.loss_scale).backward()
    scaled = params[0].grad.astype(np.float32)
    assert amp.restore()
    assert all(p.data is m for p, m in zip(params, masters))
    assert all(p.grad.dtype == np.float32 for p in params)
    np.testing.assert_allclose(params[0].grad, scaled / 8.0)


def test_frozen_weights_are_cast_once_and_trainable_ones_stay_fp32():
    peft = get_peft_model(_model(), LoraConfig(r=4, lora_alpha=8, init_lora_weights=False))
    trainer, result = _train("fp16", model=peft, steps=4)
    for name, p in peft.named_parameters():
        assert p.dtype == (np.float32 if "lora_" in name else np.float16), name
    assert all(np.isfinite(h["loss"]) for h in result.history)


def test_an_overflowing_step_is_skipped_and_the_scale_recovers():
    model = _model()
    cfg = TrainConfig(max_steps=16, lr=3e-3, precision="fp16", progress=False, log_every=1)

    class Watch(Callback):  # after each step: did the weights move? how many were skipped?
        def on_train_begin(self, trainer):
            self.last, self.seen = [p.data.copy() for p in trainer.params], []

        def on_optimizer_step(self, trainer, step):
            now = [p.data.copy() for p in trainer.params]
            moved = any(not np.array_equal(a, b) for a, b in zip(now, self.last))
            self.seen.append((moved, trainer.amp.scaler.skipped, bool(trainer.optimizer.state)))
            self.last = now

    watch = Watch()
    trainer = Trainer(model, cfg, _data, callbacks=[watch])
    trainer.amp.scaler.scale = 2.0**28  # float16 gradients overflow at this scale
    result = trainer.train()
    skipped = trainer.amp.scaler.skipped
    assert 1 < skipped < 16  # it backed off until the gradients fit, then trained
    # the first `skipped` steps changed nothing (no update, no AdamW moments); the rest trained
    assert watch.seen[:skipped] == [(False, k + 1, False) for k in range(skipped)]
    assert all(moved for moved, _, _ in watch.seen[skipped:])
    assert result.history[-1]["loss_scale"] == 2.0 ** (28 - skipped)
    assert result.history[-1]["skipped_steps"] == skipped
    assert np.isfinite(result.history[-1]["loss"])


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_training_reaches_fp32_loss_within_2_percent(precision, device):
    _, ref = _train("fp32", device)
    _, got = _train(precision, device)
    assert ref.history[-1]["loss"] < 0.8 * ref.history[0]["loss"]  # it did learn
    assert abs(got.history[-1]["loss"] - ref.history[-1]["loss"]) <= 0.02 * ref.history[-1]["loss"]


def test_fp16_training_resumes_with_its_loss_scale(tmp_path):
    out = str(tmp_path / "run")
    full, _ = _train("fp16", steps=6, output_dir=out + "_full")
    part, _ = _train("fp16", steps=6, output_dir=out, save_every=3)
    part.amp.scaler.scale = 123.0
    part.save_checkpoint(tmp_path / "run" / "checkpoint")
    resumed = Trainer(_model(), part.config, _data)
    resumed.load_checkpoint()
    assert resumed.amp.scaler.scale == 123.0
    names = dict(full.model.named_parameters())
    for name, p in part.model.named_parameters():
        np.testing.assert_array_equal(p.data, names[name].data)


def test_tf32_is_a_gpu_setting_and_a_no_op_on_the_cpu(device):
    assert set_matmul_precision("tf32", device) is (device == "cuda")
    assert set_matmul_precision("fp32", device) is False
    _, a = _train("fp32", device, steps=3)
    _, b = _train("tf32", device, steps=3)
    tol = 0 if device == "cpu" else 1e-2  # TF32 rounds the matmul inputs to 10 mantissa bits
    assert abs(a.history[-1]["loss"] - b.history[-1]["loss"]) <= tol * a.history[-1]["loss"]


# ---------------------------------------------------------------- the CLI
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_finetune_cli_takes_precision_and_saves_fp32_adapters(work, base, precision):
    from minipeft.cli import main  # noqa: PLC0415
    from minipeft.fileio import load_safetensors  # noqa: PLC0415

    out = work / f"lora-{precision}"
    argv = ["finetune", "--model", str(base), "--steps", "2", "--batch-size", "2",
            "--precision", precision, "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    weights = load_safetensors(out / "adapter_model.safetensors")
    assert weights and all(w.dtype == np.float32 for w in weights.values())
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert ("loss_scale" in log[-1]) is (precision == "fp16")


def test_cli_refuses_an_unknown_precision(capsys):
    from minipeft.cli import main  # noqa: PLC0415

    with pytest.raises(SystemExit):
        main(["finetune", "--precision", "fp8"])
    assert "invalid choice: 'fp8'" in capsys.readouterr().err
