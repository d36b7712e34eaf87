"""AdaLoRA's rank allocation: the budget schedule, pruning to the budget, the phases of
``update_and_allocate``, training with the Trainer, pruned files, and the rank report.

* the budget equals the closed form (Eq. 8 with PEFT's int()) at every step, for any schedule;
* pruning keeps exactly the budget: #(E_i ≠ 0) = #kept = b, and the kept triplets are the b
  highest scores S_i = s(E_i) + mean s(A_i·) + mean s(B_·i);
* after ``total_step − tfinal`` the final pattern keeps pruned entries at 0; the Trainer's
  ``UpdateAndAllocate`` callback ends a run at target_r per module on average;
* save → load: tensors cut to the pattern, keys without the adapter name, equal outputs, a
  module pruned to rank 0 included; the report's rows and table.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import adalora_schedules
from toys import Toy, inputs, out

import minipeft as mp
from minipeft.fileio import load_safetensors
from minipeft.optim import SGD
from minipeft.peft import AdaLoraConfig, PeftModel, get_peft_model
from minipeft.peft.tuners.adalora import (
    RankAllocator,
    budget_schedule,
    format_rank_table,
    plot_rank_report,
    rank_rows,
)
from minipeft.train import Callback, TrainConfig, Trainer, UpdateAndAllocate

SETUP = {"dims": (4, 6, 5), "dtype": "float64", "seed": 0, "batch": (3,)}


def build(**overrides) -> PeftModel:
    kw = {"target_modules": ["fc1", "fc2"], "init_r": 4, "target_r": 2, "total_step": 8}
    return get_peft_model(Toy(4, 6, 5, "float64"), AdaLoraConfig(**{**kw, **overrides}))


def train(pm: PeftModel, steps: int, lr: float = 0.05, start: int = 1) -> None:
    """SGD on ‖y‖² + the penalty, with PEFT's call after each step (E starts at 0: A and B
    first get gradients once E moved)."""
    x = inputs(SETUP)
    opt = SGD([p for p in pm.parameters() if p.requires_grad], lr=lr)
    for step in range(start, start + steps):
        y = pm(x)
        ((y * y).mean() + pm.base_model.regularization_loss()).backward()
        opt.step()
        pm.update_and_allocate(step)
        opt.zero_grad()


# ---------------------------------------------------------------------------- the schedule
@settings(max_examples=50)
@given(s=adalora_schedules())
def test_budget_equals_the_closed_form_at_every_step(s: dict) -> None:
    b0, bt = s["init_r"] * s["modules"], s["target_r"] * s["modules"]
    ti, tf, total = s["tinit"], s["tfinal"], s["total_step"]
    for step in range(total + 3):
        budget, mask = budget_schedule(step, b0, bt, ti, tf, total, s["deltaT"])
        if step <= ti:
            assert (budget, mask) == (b0, False)
        elif step > total - tf:
            assert (budget, mask) == (bt, True)
        else:
            progress = (step - ti) / (total - tf - ti)  # 0 after warm-up, 1 at the end
            assert budget == int((b0 - bt) * (1 - progress) ** 3 + bt)
            assert bt <= budget <= b0 and mask == (step % s["deltaT"] == 0)
    assert budget_schedule(total - tf, b0, bt, ti, tf, total, 1)[0] == bt  # reached at the end


@settings(max_examples=30)
@given(budget_fraction=st.floats(0, 1), seed=st.integers(0, 2**16), init_r=st.integers(1, 5))
def test_pruning_keeps_exactly_the_budget_and_the_best_triplets(budget_fraction, seed, init_r):
    pm = build(init_r=init_r, target_r=0)
    allocator: RankAllocator = pm.base_model.rankallocator
    assert (allocator.init_bgt, allocator.target_bgt) == (2 * init_r, 0)
    rng = np.random.default_rng(seed)
    model = pm.base_model.model
    for name, layer in allocator.layers(model):
        for f in ("lora_A", "lora_E", "lora_B"):
            p = getattr(layer, f)["default"]
            p.data[...] = rng.uniform(0.5, 2, p.shape)  # E ≠ 0 everywhere
            key = f"{name}.{f}.default"
            allocator.exp_avg_ipt[key] = rng.uniform(0, 1, p.shape)  # distinct scores
            allocator.exp_avg_unc[key] = rng.uniform(0, 1, p.shape)
    scores = allocator.triplet_scores(model)
    budget = int(round(budget_fraction * allocator.init_bgt))
    pattern = allocator.mask_to_budget(model, budget)
    nonzero = sum(int((layer.lora_E["default"].numpy() != 0).sum()) for layer in
                  pm.base_model.tuner_layers())  # fmt: skip
    assert nonzero == sum(map(sum, pattern.values())) == budget
    every = np.concatenate([scores[n] for n in ("fc1", "fc2")])
    kept = np.concatenate([pattern[f"{n}.lora_E.default"] for n in ("fc1", "fc2")])
    assert set(np.flatnonzero(kept)) == set(np.argsort(every)[::-1][:budget])  # the best ones
    s_a = allocator.exp_avg_ipt["fc1.lora_A.default"] * allocator.exp_avg_unc["fc1.lora_A.default"]
    s_e = allocator.exp_avg_ipt["fc1.lora_E.default"] * allocator.exp_avg_unc["fc1.lora_E.default"]
    s_b = allocator.exp_avg_ipt["fc1.lora_B.default"] * allocator.exp_avg_unc["fc1.lora_B.default"]
    np.testing.assert_allclose(scores["fc1"], s_e[:, 0] + s_a.mean(1) + s_b.mean(0), rtol=1e-12)


def test_scores_are_peft_s_moving_averages() -> None:
    pm = build(beta1=0.6, beta2=0.7)
    allocator, model = pm.base_model.rankallocator, pm.base_model.model
    p = model.fc1.lora_E["default"]
    expected_ipt = expected_unc = 0
    for value, grad in ((1.0, 2.0), (-3.0, 0.5), (0.5, -4.0)):
        p.data[...], p.grad = value, np.full(p.shape, grad)
        allocator.update_ipt(model)
        ipt = abs(value * grad)
        expected_ipt = 0.6 * expected_ipt + 0.4 * ipt
        expected_unc = 0.7 * expected_unc + 0.3 * abs(ipt - expected_ipt)
    np.testing.assert_allclose(allocator.exp_avg_ipt["fc1.lora_E.default"], expected_ipt)
    np.testing.assert_allclose(allocator.exp_avg_unc["fc1.lora_E.default"], expected_unc)


# ---------------------------------------------------------------------------- the phases
def test_update_and_allocate_phases() -> None:
    pm = build(tinit=1, tfinal=2, total_step=8)
    config = pm.peft_config["default"]
    train(pm, 1)
    assert config.rank_pattern is None  # warm-up: no pruning
    train(pm, 5, start=2)  # steps 2..6: the final allocation happens at step 8 - 2 = 6
    final = config.rank_pattern
    assert sum(map(sum, final.values())) == 2 * 2  # target_r per module on average
    assert pm.base_model.rankallocator.ipt == {}  # reset after the final allocation
    layer = pm.base_model.model.fc1
    pruned = [i for i, keep in enumerate(final["fc1.lora_E.default"]) if not keep]
    layer.lora_E["default"].data[pruned] = 1.0  # as if an optimizer step moved them
    pm.update_and_allocate(7)  # past total_step - tfinal: the final pattern is enforced
    assert not layer.lora_E["default"].numpy()[pruned].any()
    assert config.rank_pattern is final


class LossToy(Toy):
    """The toy with a loss, as the Trainer expects of a model: ‖y‖² (mean)."""

    def forward(self, x):
        y = super().forward(mp.tensor(x))
        return type("Out", (), {"loss": (y * y).mean(), "logits": y})()


def trained_with_trainer(tmp_path, total_step: int, stop_after: int | None = None) -> PeftModel:
    """8 Trainer steps with the callback (``total_step``: 8, or 10 to end mid-schedule);
    ``stop_after``: crash after that step (a checkpoint every 3 steps), then resume anew."""
    x = inputs(SETUP).numpy()
    config = AdaLoraConfig(target_modules=["fc1", "fc2"], init_r=4, target_r=2,
                           total_step=total_step, init_lora_weights=False,
                           task_type="CAUSAL_LM")  # fmt: skip
    cfg = TrainConfig(max_steps=8, lr=0.02, progress=False, grad_clip=None, save_every=3,
                      output_dir=str(tmp_path))  # fmt: skip

    class Crash(Callback):
        def on_optimizer_step(self, trainer, step):
            if step == stop_after:
                raise RuntimeError("crash")

    def run(resume: bool) -> PeftModel:
        mp.manual_seed(0)
        pm = get_peft_model(LossToy(4, 6, 5, "float64"), config)  # penalty: a task class
        callbacks = [UpdateAndAllocate(), Crash()]
        Trainer(pm, cfg, lambda s, e: iter([{"x": x}]), callbacks=callbacks).train(resume=resume)
        return pm

    if stop_after is None:
        return run(resume=False)
    with pytest.raises(RuntimeError, match="crash"):
        run(resume=False)
    stop_after = None
    return run(resume=True)


def test_the_trainer_callback_allocates_and_a_resumed_run_is_exact(tmp_path) -> None:
    whole = trained_with_trainer(tmp_path / "whole", 8)
    pattern = whole.peft_config["default"].rank_pattern
    assert sum(map(sum, pattern.values())) == 4  # the final allocation ran at step 8
    assert "4/8 triplets kept" in whole.base_model.report()
    for total in (8, 10):  # 10: the run ends mid-schedule, with the averages in use
        whole = trained_with_trainer(tmp_path / f"whole-{total}", total)
        resumed = trained_with_trainer(tmp_path / f"parts-{total}", total, stop_after=5)
        assert (
            resumed.peft_config["default"].rank_pattern == whole.peft_config["default"].rank_pattern
        )
        for (name, a), (_, b) in zip(whole.named_parameters(), resumed.named_parameters()):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)
        ours, theirs = resumed.base_model.rankallocator, whole.base_model.rankallocator
        for kind in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
            assert getattr(ours, kind).keys() == getattr(theirs, kind).keys()
            for key, value in getattr(theirs, kind).items():
                np.testing.assert_array_equal(getattr(ours, kind)[key], value, err_msg=key)


# ---------------------------------------------------------------------------- files
def test_save_cuts_to_the_pattern_and_load_resizes(tmp_path) -> None:
    pm = build(init_lora_weights=False, lora_alpha=2)
    train(pm, 8, lr=0.01)
    x = inputs(SETUP)
    expected = out(pm, x)
    pattern = pm.peft_config["default"].rank_pattern
    ranks = {k.split(".")[0]: sum(v) for k, v in pattern.items()}
    pm.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert set(saved["rank_pattern"]) == {"fc1.lora_E", "fc2.lora_E"}  # no adapter name
    tensors = load_safetensors(tmp_path / "adapter_model.safetensors")
    assert not any("ranknum" in k for k in tensors)
    for m, i, o in (("fc1", 4, 6), ("fc2", 6, 5)):
        r = ranks[m]
        assert tensors[f"base_model.model.{m}.lora_A"].shape == (r, i)
        assert tensors[f"base_model.model.{m}.lora_E"].shape == (r, 1)
        assert tensors[f"base_model.model.{m}.lora_B"].shape == (o, r)
    assert pm.peft_config["default"].rank_pattern is pattern  # saving changes nothing here
    loaded = PeftModel.from_pretrained(Toy(4, 6, 5, "float64"), tmp_path)
    np.testing.assert_allclose(out(loaded, x), expected, rtol=1e-12, atol=1e-12)
    for m in ("fc1", "fc2"):
        layer = loaded.base_model.model.get_submodule(m)
        assert layer.r["default"] == ranks[m] and layer.ranknum["default"].item() == 4
    loaded.save_pretrained(tmp_path / "again")  # already cut: saved as it is
    again = load_safetensors(tmp_path / "again" / "adapter_model.safetensors")
    assert all(np.array_equal(again[k], v) for k, v in tensors.items())


def test_a_module_pruned_to_rank_zero_round_trips(tmp_path) -> None:
    pm = build(init_lora_weights=False)
    base_fc2 = out(pm.base_model.model.fc2.base_layer, inputs({**SETUP, "dims": (6,)}))
    pm.peft_config["default"].rank_pattern = {"fc1.lora_E.default": [True, False, True, True],
                                              "fc2.lora_E.default": [False] * 4}  # fmt: skip
    pm.base_model.rankallocator.mask_using_rank_pattern(
        pm.base_model.model, pm.peft_config["default"].rank_pattern
    )
    x = inputs(SETUP)
    expected = out(pm, x)
    pm.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(Toy(4, 6, 5, "float64"), tmp_path)
    assert loaded.base_model.model.fc2.lora_A["default"].shape == (0, 6)
    np.testing.assert_allclose(out(loaded, x), expected, rtol=1e-12, atol=1e-12)
    fc2_in = inputs({**SETUP, "dims": (6,)})
    np.testing.assert_array_equal(out(loaded.base_model.model.fc2, fc2_in), base_fc2)


# ---------------------------------------------------------------------------- the report
def test_rank_report_rows_table_and_plot(tmp_path, capsys) -> None:
    pm = build()
    rows = rank_rows(pm.base_model)
    assert [(r.module, r.init_r, r.final_r) for r in rows] == [("fc1", 4, 4), ("fc2", 4, 4)]
    pm.peft_config["default"].rank_pattern = {
        "fc1.lora_E": [True, False, False, True],  # as saved
        "fc2.lora_E.default": [True, True, True, False],  # as in memory
    }
    rows = rank_rows(pm.base_model)
    assert [r.final_r for r in rows] == [2, 3]
    table = format_rank_table(rows)
    assert table.splitlines()[0].endswith("5/8 triplets kept, average rank 2.50 over 2 modules")
    assert table.splitlines()[2].split() == ["fc1", "4", "2"]
    path = plot_rank_report(rows, tmp_path / "ranks.png")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert path is None and "matplotlib is not installed" in capsys.readouterr().out
    else:
        assert (tmp_path / "ranks.png").read_bytes()[:4] == b"\x89PNG"
