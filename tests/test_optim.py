"""Tests for minipeft.optim: AdamW/SGD vs PyTorch, frozen params, schedules vs Hugging Face,
gradient clipping, and optimizer checkpoints that resume identically."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import minipeft as mp
import minipeft.nn as nn
from minipeft.optim import (
    SGD,
    AdamW,
    LambdaLR,
    clip_grad_norm_,
    flatten_state_dict,
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
    get_schedule,
    unflatten_state_dict,
)

# --------------------------------------------------------------------------- AdamW worked example
# p0 = [0.5, -1, 2, 0], lr 0.1, betas (0.9, 0.99), eps 1e-8, weight_decay 0.1, three gradients.
# Expected values computed once with torch 2.13 torch.optim.AdamW (float32) and pasted here.
P0 = [0.5, -1.0, 2.0, 0.0]
GRADS = [[0.1, -0.2, 0.3, 0.0], [-0.5, 0.4, 0.0, 1.0], [0.25, 0.25, -1.0, 2.0]]
EXPECTED = [
    [0.39499998092651367, -0.8899999856948853, 1.8799999952316284, 0.0],
    [0.4507608711719513, -0.9176607728004456, 1.7940419912338257, -0.07424598187208176],
    [0.45963534712791443, -0.964346706867218, 1.8222498893737793, -0.15606242418289185],
]
EXP_AVG = [-0.011899996548891068, 0.04480000212788582, -0.07569999247789383, 0.28999999165534973]
EXP_AVG_SQ = [
    0.003198009915649891,
    0.0026010400615632534,
    0.010882089845836163,
    0.04989999905228615,
]


def test_adamw_worked_example():
    p = nn.Parameter(P0)
    opt = AdamW([p], lr=0.1, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    for g, expected in zip(GRADS, EXPECTED):
        p.grad = np.array(g, dtype=np.float32)
        opt.step()
        np.testing.assert_allclose(p.numpy(), expected, rtol=0, atol=1e-6)
    state = opt.state[p]
    assert state["step"] == 3
    np.testing.assert_allclose(state["exp_avg"], EXP_AVG, atol=1e-7)
    np.testing.assert_allclose(state["exp_avg_sq"], EXP_AVG_SQ, atol=1e-7)


def test_adamw_worked_example_on_device(device):
    p = nn.Parameter(mp.tensor(P0, device=device))
    opt = AdamW([p], lr=0.1, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    for g in GRADS:
        p.grad = mp.tensor(g, device=device).data
        opt.step()
    assert p.device == device and opt.state_dict()["state"][0]["exp_avg"].shape == (4,)
    np.testing.assert_allclose(p.numpy(), EXPECTED[-1], rtol=0, atol=1e-6)


def test_adamw_first_step_by_hand():
    # step 1: m̂ = g, v̂ = g², so p ← p(1 − lr·wd) − lr·g/(|g| + eps)
    p = nn.Parameter([1.0, -2.0], requires_grad=True)
    opt = AdamW([p], lr=0.01, weight_decay=0.5)
    p.grad = np.array([3.0, -0.5], np.float32)
    opt.step()
    expected = np.array([1.0, -2.0]) * (1 - 0.005) - 0.01 * np.sign([3.0, -0.5])
    np.testing.assert_allclose(p.numpy(), expected, atol=1e-6)


def _pairs(torch, shapes, seed=0):
    rng = np.random.default_rng(seed)
    ours, theirs = [], []
    for shape in shapes:
        v = rng.standard_normal(shape).astype(np.float32)
        ours.append(nn.Parameter(v.copy()))
        theirs.append(torch.nn.Parameter(torch.from_numpy(v.copy())))
    return ours, theirs


def _run_both(torch, ours, theirs, opt_o, opt_t, steps, seed=1):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        for po, pt in zip(ours, theirs):
            g = rng.standard_normal(po.shape).astype(np.float32)
            po.grad, pt.grad = g.copy(), torch.from_numpy(g.copy())
        opt_o.step()
        opt_t.step()
        for po, pt in zip(ours, theirs):
            np.testing.assert_allclose(po.numpy(), pt.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_adamw_matches_torch_live_with_param_groups():
    torch = pytest.importorskip("torch")
    ours, theirs = _pairs(torch, [(3, 4), (4,), (2, 2, 3)])
    kw = dict(lr=3e-2, betas=(0.8, 0.95), eps=1e-6)
    opt_o = AdamW([{"params": ours[:2]}, {"params": ours[2:], "weight_decay": 0.0}],
                  weight_decay=0.05, **kw)  # fmt: skip
    opt_t = torch.optim.AdamW([{"params": theirs[:2]}, {"params": theirs[2:],
                               "weight_decay": 0.0}], weight_decay=0.05, **kw)  # fmt: skip
    _run_both(torch, ours, theirs, opt_o, opt_t, steps=6)


def test_adamw_small_beta1_uses_torch_lerp_branch():
    torch = pytest.importorskip("torch")
    ours, theirs = _pairs(torch, [(5,)])
    opt_o = AdamW(ours, lr=0.1, betas=(0.3, 0.9))
    opt_t = torch.optim.AdamW(theirs, lr=0.1, betas=(0.3, 0.9))
    _run_both(torch, ours, theirs, opt_o, opt_t, steps=4)


@pytest.mark.parametrize(
    "kw",
    [
        dict(lr=0.1),
        dict(lr=0.05, momentum=0.9),
        dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01),
        dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1),
    ],
)
def test_sgd_matches_torch_live(kw):
    torch = pytest.importorskip("torch")
    ours, theirs = _pairs(torch, [(3, 2), (2,)])
    _run_both(torch, ours, theirs, SGD(ours, **kw), torch.optim.SGD(theirs, **kw), steps=5)


def test_sgd_by_hand():
    p = nn.Parameter([1.0])
    opt = SGD([p], lr=0.5, momentum=0.5)
    for _ in range(2):
        p.grad = np.array([1.0], np.float32)
        opt.step()
    # b1 = 1 → p = 0.5;  b2 = 0.5·1 + 1 = 1.5 → p = 0.5 − 0.75 = −0.25
    np.testing.assert_allclose(p.numpy(), [-0.25])


# --------------------------------------------------------------------------- frozen and in place
def test_frozen_and_gradless_params_are_untouched_and_stateless():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    frozen_before = model[0].weight.numpy().copy()
    opt = AdamW(model.parameters(), lr=0.1, weight_decay=0.5)  # frozen ones included on purpose
    model(mp.randn(5, 3)).sum().backward()
    model[0].weight.grad = np.ones((4, 3), np.float32)  # a stale grad on a frozen param
    model[1].bias.grad = None  # a trainable param without a grad this step
    bias_before = model[1].bias.numpy().copy()
    opt.step()
    np.testing.assert_array_equal(model[0].weight.numpy(), frozen_before)
    np.testing.assert_array_equal(model[1].bias.numpy(), bias_before)
    assert model[0].weight not in opt.state and model[1].bias not in opt.state
    assert model[1].weight in opt.state and len(opt.state) == 1


def test_step_updates_in_place_so_tied_weights_stay_tied():
    emb = nn.Embedding(5, 3)
    head = nn.Linear(3, 5, bias=False)
    head.weight = emb.weight
    arr = emb.weight.data
    opt = AdamW([emb.weight], lr=0.1)
    emb.weight.grad = np.ones((5, 3), np.float32)
    opt.step()
    assert emb.weight.data is arr and head.weight is emb.weight


def test_zero_grad_and_param_group_errors():
    p = nn.Parameter(mp.ones(2))
    opt = SGD([p], lr=0.1)
    p.grad = np.ones(2, np.float32)
    opt.zero_grad(set_to_none=False)
    assert p.grad is not None and np.all(p.grad == 0)
    opt.zero_grad()
    assert p.grad is None
    with pytest.raises(ValueError, match="empty parameter list"):
        AdamW([])
    with pytest.raises(TypeError, match="single Tensor"):
        AdamW(p)
    with pytest.raises(ValueError, match="more than one place"):
        AdamW([{"params": [p]}, {"params": [p]}])
    with pytest.raises(ValueError, match="unknown option"):
        AdamW([{"params": [p], "momentum": 0.9}])
    with pytest.raises(ValueError, match="betas"):
        AdamW([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="lr must be >= 0"):
        SGD([p], lr=-1.0)
    with pytest.raises(ValueError, match="nesterov"):
        SGD([p], lr=0.1, nesterov=True)


# --------------------------------------------------------------------------- checkpoints
def _train(model, opt, sched, steps, seed):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        x = mp.tensor(rng.standard_normal((4, 3)).astype(np.float32))
        opt.zero_grad()
        (model(x) ** 2).mean().backward()
        opt.step()
        sched.step()


def _setup(seed):
    mp.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    opt = AdamW(model.parameters(), lr=0.05)
    sched = get_cosine_schedule_with_warmup(opt, 2, 10)
    return model, opt, sched


def test_optimizer_state_dict_round_trip_resumes_identically(tmp_path):
    from safetensors.numpy import load_file, save_file

    model, opt, sched = _setup(0)
    _train(model, opt, sched, 3, seed=1)
    # checkpoint the way the training loop does: flat arrays -> safetensors, the rest -> JSON
    arrays, meta = flatten_state_dict(opt.state_dict())
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    assert "state.0.exp_avg" in arrays and meta["scalars"]["0"]["step"] == 3
    save_file(arrays, str(tmp_path / "opt.safetensors"))
    (tmp_path / "meta.json").write_text(json.dumps({"opt": meta, "sched": sched.state_dict()}))
    weights = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    _train(model, opt, sched, 3, seed=2)
    expected = [p.numpy().copy() for p in model.parameters()]

    model2, opt2, sched2 = _setup(99)  # different init, fresh state
    model2.load_state_dict(weights)
    saved = json.loads((tmp_path / "meta.json").read_text())
    opt2.load_state_dict(unflatten_state_dict(load_file(str(tmp_path / "opt.safetensors")),
                                              saved["opt"]))  # fmt: skip
    sched2.load_state_dict(saved["sched"])
    assert sched2.get_last_lr() == [opt2.param_groups[0]["lr"]]
    _train(model2, opt2, sched2, 3, seed=2)
    for a, b in zip(expected, model2.parameters()):
        np.testing.assert_array_equal(a, b.numpy())


def test_optimizer_state_dict_is_a_copy_and_checks_shapes():
    p = nn.Parameter(mp.ones(3))
    opt = AdamW([p], lr=0.1)
    p.grad = np.ones(3, np.float32)
    opt.step()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["params"] == [0] and sd["param_groups"][0]["betas"] == [0.9, 0.999]
    opt.step()
    assert sd["state"][0]["step"] == 1  # not aliased to live state
    sd["state"][0]["exp_avg"] = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match=r"expected shape \(3,\), found \(4,\)"):
        opt.load_state_dict(sd)
    assert opt.state[p]["step"] == 2  # unchanged after the failed load


# --------------------------------------------------------------------------- schedules
def test_schedules_by_hand():
    p = nn.Parameter(mp.ones(1))
    opt = SGD([p], lr=2.0)
    s = get_linear_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=6)
    lrs = [s.get_last_lr()[0]]
    for _ in range(7):
        opt.step()
        s.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.0, 1.0, 2.0, 1.5, 1.0, 0.5, 0.0, 0.0])

    opt = SGD([p], lr=1.0)
    s = get_cosine_schedule_with_warmup(opt, num_warmup_steps=1, num_training_steps=5)
    lrs = [s.get_last_lr()[0]] + [(s.step(), s.get_last_lr()[0])[1] for _ in range(5)]
    # after warmup: ½(1 + cos(π·k/4)) for k = 0..4
    assert lrs == pytest.approx([0.0] + [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(5)])

    opt = SGD([p], lr=1.0)
    s = get_constant_schedule_with_warmup(opt, num_warmup_steps=4)
    assert [(s.step(), s.get_last_lr()[0])[1] for _ in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


@pytest.mark.parametrize(
    "name",
    [
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "constant",
        "constant_with_warmup",
    ],  # fmt: skip
)
def test_schedules_match_transformers(name):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.3)
    ref = transformers.get_scheduler(name, ref_opt, num_warmup_steps=3, num_training_steps=12)
    opt = SGD([nn.Parameter(mp.ones(1))], lr=0.3)
    ours = get_schedule(name, opt, num_warmup_steps=3, num_training_steps=12)
    for _ in range(15):
        assert ours.get_last_lr() == pytest.approx(ref.get_last_lr(), abs=1e-12)
        assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
        ours.step()


def test_cosine_num_cycles_matches_transformers():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0)
    ref = transformers.get_cosine_schedule_with_warmup(ref_opt, 2, 10, num_cycles=1.5)
    ours = get_cosine_schedule_with_warmup(SGD([nn.Parameter(mp.ones(1))], lr=1.0), 2, 10,
                                           num_cycles=1.5)  # fmt: skip
    for _ in range(12):
        assert ours.get_last_lr() == pytest.approx(ref.get_last_lr(), abs=1e-12)
        ref_opt.step()
        ref.step()
        ours.step()


def test_lambda_lr_per_group_and_errors():
    a, b = nn.Parameter(mp.ones(1)), nn.Parameter(mp.ones(1))
    opt = SGD([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 10.0}])
    s = LambdaLR(opt, [lambda k: 1.0 / (k + 1), lambda k: 2.0])
    s.step()
    assert s.get_last_lr() == [0.5, 20.0]
    with pytest.raises(ValueError, match="unknown schedule"):
        get_schedule("exponential", opt, 0, 10)
    with pytest.raises(ValueError, match="num_training_steps"):
        get_schedule("linear", opt, 0)


# --------------------------------------------------------------------------- clipping
def test_clip_grad_norm_scales_and_returns_total_norm():
    a, b = nn.Parameter(mp.zeros(2)), nn.Parameter(mp.zeros(1))
    a.grad = np.array([3.0, 0.0], np.float32)
    b.grad = np.array([4.0], np.float32)
    total = clip_grad_norm_([a, b], max_norm=1.0)
    assert float(total) == pytest.approx(5.0)
    np.testing.assert_allclose(np.concatenate([a.grad, b.grad]), [0.6, 0.0, 0.8], rtol=1e-5)
    total = clip_grad_norm_([a, b], max_norm=10.0)  # below the limit: unchanged
    assert float(total) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(a.grad, [0.6, 0.0], rtol=1e-5)
    assert float(clip_grad_norm_([nn.Parameter(mp.zeros(1))], 1.0)) == 0.0  # no grads at all


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, "inf"])
def test_clip_grad_norm_matches_torch(norm_type):
    torch = pytest.importorskip("torch")
    ours, theirs = _pairs(torch, [(3, 4), (5,)])
    rng = np.random.default_rng(3)
    for po, pt in zip(ours, theirs):
        g = (rng.standard_normal(po.shape) * 3).astype(np.float32)
        po.grad, pt.grad = g.copy(), torch.from_numpy(g.copy())
    nt = math.inf if norm_type == "inf" else norm_type
    ref = torch.nn.utils.clip_grad_norm_(theirs, max_norm=2.0, norm_type=nt)
    total = clip_grad_norm_(ours, max_norm=2.0, norm_type=norm_type)
    assert total.item() == pytest.approx(ref.item(), rel=1e-5)
    for po, pt in zip(ours, theirs):
        np.testing.assert_allclose(po.grad, pt.grad.numpy(), rtol=1e-5, atol=1e-7)
