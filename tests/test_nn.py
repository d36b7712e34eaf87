"""Tests for minipeft.nn: registration and naming, surgery, state dicts, modes, moves, layers."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minipeft as mp
import minipeft.nn as nn


# --------------------------------------------------------------------------- a tiny GPT-ish tree
class Attn(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.c_attn = nn.Linear(c, 3 * c)
        self.c_proj = nn.Linear(c, c)

    def forward(self, x):
        q, k, v = self.c_attn(x).split(x.shape[-1], dim=-1)
        return self.c_proj(q * k + v)


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(c)
        self.attn = Attn(c)

    def forward(self, x):
        return x + self.attn(self.ln_1(x))


class Tiny(nn.Module):
    """wte -> blocks -> ln_f -> lm_head, with lm_head.weight tied to wte.weight."""

    def __init__(self, vocab: int = 11, c: int = 4, n_layer: int = 2) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, c)
        self.h = nn.ModuleList([Block(c) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(c)
        self.lm_head = nn.Linear(c, vocab, bias=False)
        self.lm_head.weight = self.wte.weight
        self.register_buffer("pos", mp.arange(8))
        self.register_buffer("scratch", mp.zeros(2), persistent=False)

    def forward(self, ids):
        x = self.wte(ids)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def tiny(seed: int = 0) -> Tiny:
    mp.manual_seed(seed)
    return Tiny()


IDS = np.array([[1, 2, 3], [4, 5, 10]])


# --------------------------------------------------------------------------- registration
def test_named_parameters_use_dotted_paths_through_module_lists():
    names = [n for n, _ in tiny().named_parameters()]
    assert names[:3] == ["wte.weight", "h.0.ln_1.weight", "h.0.ln_1.bias"]
    assert "h.0.attn.c_attn.weight" in names and "h.1.attn.c_proj.bias" in names
    assert "lm_head.weight" not in names  # tied: listed once, under its first name
    mods = dict(tiny().named_modules())
    assert "" in mods and "h.0.attn.c_attn" in mods and isinstance(mods["h"], nn.ModuleList)


def test_tied_weight_once_in_parameters_every_name_in_state_dict():
    m = tiny()
    assert m.lm_head.weight is m.wte.weight
    params = list(m.parameters())
    assert len(params) == len({id(p) for p in params})
    sd = m.state_dict()
    assert "lm_head.weight" in sd and "wte.weight" in sd
    assert np.shares_memory(sd["lm_head.weight"].data, sd["wte.weight"].data)
    assert "pos" in sd and "scratch" not in sd  # non-persistent buffers are not saved
    assert m.num_parameters() == sum(p.numel() for p in params)
    names = [n for n, _ in m.named_parameters(remove_duplicate=False)]
    assert "lm_head.weight" in names


def test_setattr_registration_rules():
    m = nn.Module()
    m.w = nn.Parameter(mp.ones(2))
    m.sub = nn.Linear(2, 2)
    assert list(m._parameters) == ["w"] and list(m._modules) == ["sub"]
    with pytest.raises(TypeError, match="Parameter"):
        m.w = mp.ones(2)  # a plain Tensor in a parameter slot is a mistake, not a silent drop
    m.w = None  # None removes the registration
    assert "w" not in m._parameters and m.w is None
    m.sub = 3  # a plain value replaces the module
    assert "sub" not in m._modules and m.sub == 3
    m.register_buffer("b", mp.zeros(3))
    m.b = mp.ones(3)  # replacing a buffer keeps it a buffer
    assert m._buffers["b"].numpy().tolist() == [1, 1, 1]
    del m.b
    assert not hasattr(m, "b")
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        _ = m.nope
    with pytest.raises(KeyError, match="'.'"):
        m.register_buffer("a.b", mp.zeros(1))

    class Forgot(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(1, 1)

    with pytest.raises(AttributeError, match="super\\(\\).__init__"):
        Forgot()


# --------------------------------------------------------------------------- surgery
def test_get_and_set_submodule_through_module_list():
    m = tiny()
    old = m.get_submodule("h.0.attn.c_attn")
    assert isinstance(old, nn.Linear) and old.in_features == 4 and old.out_features == 12

    class Wrapper(nn.Module):  # what a LoRA layer does: wrap, never mutate
        def __init__(self, base):
            super().__init__()
            self.base_layer = base

        def forward(self, x):
            return self.base_layer(x) * 2

    m.set_submodule("h.0.attn.c_attn", Wrapper(old))
    assert m.h[0].attn.c_attn.base_layer is old
    assert "h.0.attn.c_attn.base_layer.weight" in dict(m.named_parameters())
    m.set_submodule("h.1", Block(4))  # a ModuleList index
    assert list(m.h._modules) == ["0", "1"]
    assert m.get_parameter("h.0.attn.c_attn.base_layer.bias") is old.bias
    assert m.get_submodule("") is m


def test_submodule_errors_name_the_missing_part():
    m = tiny()
    with pytest.raises(AttributeError, match="'7'.*children: \\['0', '1'\\]"):
        m.get_submodule("h.7.attn")
    with pytest.raises(AttributeError, match="'nope'"):
        m.get_submodule("h.0.nope.c_attn")
    with pytest.raises(AttributeError, match="missing.*does not exist"):
        m.set_submodule("h.0.missing", nn.Identity(), strict=True)
    with pytest.raises(AttributeError, match="no parameter 'gamma'"):
        m.get_parameter("h.0.ln_1.gamma")
    with pytest.raises(TypeError):
        m.set_submodule("h.0", "not a module")


# --------------------------------------------------------------------------- state dicts
def test_state_dict_round_trip_reproduces_outputs_exactly():
    a, b = tiny(0), tiny(1)
    ids = mp.tensor(IDS)
    assert not np.allclose(a(ids).numpy(), b(ids).numpy())
    params_before = {n: p for n, p in b.named_parameters()}
    result = b.load_state_dict(a.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    np.testing.assert_array_equal(a(ids).numpy(), b(ids).numpy())
    for n, p in b.named_parameters():
        assert p is params_before[n]  # loaded in place: optimizers keep working
    assert b.lm_head.weight is b.wte.weight


def test_load_accepts_numpy_arrays_and_casts_dtype():
    a, b = tiny(0), tiny(1)
    sd = {k: v.numpy().astype(np.float64) if v.dtype.kind == "f" else v.numpy()
          for k, v in a.state_dict().items()}  # fmt: skip
    b.load_state_dict(sd)
    assert b.wte.weight.dtype == np.float32
    np.testing.assert_array_equal(a.wte.weight.numpy(), b.wte.weight.numpy())


def test_load_errors_list_everything_and_change_nothing():
    m = tiny(0)
    before = {k: v.numpy().copy() for k, v in m.state_dict().items()}
    sd = {k: v.numpy() + 1.0 for k, v in tiny(1).state_dict().items()}
    del sd["h.0.ln_1.bias"]
    sd["h.9.extra"] = np.zeros(3)
    sd["h.1.attn.c_proj.weight"] = np.zeros((5, 4))
    with pytest.raises(RuntimeError) as err:
        m.load_state_dict(sd)
    msg = str(err.value)
    assert "missing keys: 'h.0.ln_1.bias'" in msg
    assert "unexpected keys: 'h.9.extra'" in msg
    assert "h.1.attn.c_proj.weight: shape mismatch, expected (4, 4)" in msg and "(5, 4)" in msg
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), before[k])  # nothing half-applied
    # not strict: missing/unexpected are reported, but a shape mismatch still raises
    with pytest.raises(RuntimeError, match="shape mismatch"):
        m.load_state_dict(sd, strict=False)
    sd["h.1.attn.c_proj.weight"] = np.zeros((4, 4))
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert missing == ["h.0.ln_1.bias"] and unexpected == ["h.9.extra"]
    assert np.all(m.h[1].attn.c_proj.weight.numpy() == 0)


def test_state_dict_is_detached():
    m = nn.Linear(2, 3)
    sd = m.state_dict()
    assert not sd["weight"].requires_grad and type(sd["weight"]) is mp.Tensor
    assert m.state_dict(keep_vars=True)["weight"] is m.weight


# --------------------------------------------------------------------------- modes and moves
def test_train_eval_propagate_and_dropout_is_identity_in_eval():
    m = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.Sequential(nn.Dropout(0.9)))
    assert all(sub.training for sub in m.modules())
    assert m.eval() is m and not any(sub.training for sub in m.modules())
    x = mp.randn(4, 3)
    np.testing.assert_array_equal(m(x).numpy(), m[0](x).numpy())
    m.train()
    assert all(sub.training for sub in m.modules())
    y = nn.Dropout(0.5)(mp.ones(1000))
    assert set(np.unique(y.numpy())) <= {0.0, 2.0} and 300 < (y.numpy() == 0).sum() < 700


def test_dropout_accepts_p_one_like_pytorch():
    layer, x = nn.Dropout(1.0), mp.randn(3, 4)
    assert not layer(x).numpy().any()  # training: everything dropped
    np.testing.assert_array_equal(layer.eval()(x).numpy(), x.numpy())
    for p in (-0.1, 1.1):
        with pytest.raises(ValueError, match=rf"\[0, 1\], found {p}"):
            nn.Dropout(p)


def test_to_float64_keeps_identity_and_int_buffers():
    m = tiny()
    params = list(m.parameters())
    m.wte.weight.grad = np.ones(m.wte.weight.shape, np.float32)
    assert m.to(mp.float64) is m
    assert [id(p) for p in m.parameters()] == [id(p) for p in params]
    assert all(p.dtype == np.float64 for p in m.parameters())
    assert m.wte.weight.grad.dtype == np.float64
    assert m.pos.dtype == np.int64  # only float tensors change dtype
    assert m.lm_head.weight is m.wte.weight
    assert m(mp.tensor(IDS)).dtype == np.float64
    m.float()
    assert m.ln_f.weight.dtype == np.float32
    with pytest.raises(TypeError, match="device"):
        m.to("tpu")


def test_to_device_moves_everything(device):
    m = tiny().to(device)
    assert {p.device for p in m.parameters()} == {device} and m.pos.device == device
    assert m(mp.tensor(IDS, device=device)).device == device


def test_requires_grad_zero_grad_apply_num_parameters():
    m = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    assert m.num_parameters() == 2 * 3 + 3 + 3 + 1
    m[0].requires_grad_(False)
    assert m.num_parameters(only_trainable=True) == 4
    m(mp.randn(5, 2)).sum().backward()
    assert m[0].weight.grad is None and m[1].weight.grad is not None  # frozen means free
    m.zero_grad(set_to_none=False)
    assert np.all(m[1].weight.grad == 0)
    m.zero_grad()
    assert m[1].weight.grad is None
    seen = []
    m.apply(lambda mod: seen.append(type(mod).__name__))
    assert seen == ["Linear", "Linear", "Sequential"]


def test_deepcopy_makes_independent_parameters():
    m = tiny()
    c = copy.deepcopy(m)
    assert c.lm_head.weight is c.wte.weight and c.wte.weight is not m.wte.weight
    c.wte.weight.data[...] = 0
    assert np.any(m.wte.weight.numpy() != 0)


# --------------------------------------------------------------------------- containers
def test_module_list_api():
    ml = nn.ModuleList([nn.Linear(1, 1), nn.Linear(1, 2)])
    ml.append(nn.Linear(1, 3)).extend([nn.Linear(1, 4)])
    ml.insert(0, nn.Identity())
    assert len(ml) == 5 and list(ml._modules) == ["0", "1", "2", "3", "4"]
    assert isinstance(ml[0], nn.Identity) and ml[-1].out_features == 4
    assert [m.out_features for m in ml[1:3]] == [1, 2] and isinstance(ml[1:3], nn.ModuleList)
    ml[0] = nn.Linear(1, 9)
    assert ml[0].out_features == 9 and list(ml._modules)[0] == "0"
    del ml[0]
    assert list(ml._modules) == ["0", "1", "2", "3"] and ml[0].out_features == 1
    assert [m.out_features for m in ml] == [1, 2, 3, 4]
    with pytest.raises(IndexError, match="out of range"):
        ml[10]


def test_sequential_and_module_dict():
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    x = mp.randn(4, 2)
    ref = seq[2](seq[0](x).relu())
    np.testing.assert_allclose(seq(x).numpy(), ref.numpy())
    assert isinstance(seq[:2], nn.Sequential) and len(seq[:2]) == 2
    assert [n for n, _ in seq.named_children()] == ["0", "1", "2"]
    d = nn.ModuleDict({"q_proj": nn.Linear(2, 2)})
    d["v_proj"] = nn.Linear(2, 2)
    assert "q_proj" in d and "k_proj" not in d and d.keys() == ["q_proj", "v_proj"]
    assert [k for k, _ in d.items()] == list(d) and len(d.values()) == 2
    assert [n for n, _ in d.named_parameters()][0] == "q_proj.weight"
    with pytest.raises(KeyError, match="k_proj"):
        d["k_proj"]
    with pytest.raises(KeyError, match="already exists"):
        d["keys"] = nn.Identity()  # would shadow a method


# --------------------------------------------------------------------------- layers
@settings(max_examples=25, deadline=None)
@given(st.integers(1, 64), st.integers(1, 64), st.integers(0, 2**16))
def test_linear_init_bounds(n_in, n_out, seed):
    mp.manual_seed(seed)
    lin = nn.Linear(n_in, n_out)
    bound = 1 / math.sqrt(n_in)
    assert lin.weight.shape == (n_out, n_in) and lin.bias.shape == (n_out,)
    assert np.abs(lin.weight.numpy()).max() <= bound
    assert np.abs(lin.bias.numpy()).max() <= bound
    if n_in * n_out >= 256:  # U(-b, b) has std b/√3
        assert abs(lin.weight.numpy().std() - bound / math.sqrt(3)) < 0.25 * bound


def test_init_is_seeded_and_takes_a_generator():
    mp.manual_seed(3)
    a = nn.Linear(5, 5).weight.numpy()
    mp.manual_seed(3)
    b = nn.Linear(5, 5).weight.numpy()
    np.testing.assert_array_equal(a, b)
    w = nn.Parameter(mp.zeros(3, 4))
    from minipeft.backend import get_rng

    nn.init.normal_(w, 0.0, 2.0, generator=get_rng("cpu", seed=1))
    ref = 2.0 * np.random.default_rng(1).standard_normal((3, 4))
    np.testing.assert_allclose(w.numpy(), ref.astype(np.float32))
    nn.init.zeros_(w)
    assert np.all(w.numpy() == 0)
    with pytest.raises(ValueError, match="at least 2 dims"):
        nn.init.kaiming_uniform_(nn.Parameter(mp.zeros(3)))


def test_linear_matches_numpy_and_rejects_wrong_width():
    lin = nn.Linear(3, 2)
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    ref = x @ lin.weight.numpy().T + lin.bias.numpy()
    np.testing.assert_allclose(lin(mp.tensor(x)).numpy(), ref, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"expected input \(\.\.\., 3\), found shape \(2, 4\)"):
        lin(mp.randn(2, 4))


def _ln_ref(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def test_norms_and_embedding_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6))
    ln = nn.LayerNorm(6, dtype=mp.float64)
    ln.weight.data[...] = rng.standard_normal(6)
    ln.bias.data[...] = rng.standard_normal(6)
    ref = _ln_ref(x, ln.weight.numpy(), ln.bias.numpy(), 1e-5)
    np.testing.assert_allclose(ln(mp.tensor(x)).numpy(), ref, rtol=1e-10, atol=1e-10)
    rms = nn.RMSNorm(6, eps=1e-6, dtype=mp.float64)
    rms.weight.data[...] = rng.standard_normal(6)
    ref = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6) * rms.weight.numpy()
    np.testing.assert_allclose(rms(mp.tensor(x)).numpy(), ref, rtol=1e-10, atol=1e-10)
    emb = nn.Embedding(7, 3)
    np.testing.assert_array_equal(emb(mp.tensor(IDS % 7)).numpy(), emb.weight.numpy()[IDS % 7])
    assert emb(mp.tensor(IDS % 7)).shape == (2, 3, 3)


def test_rmsnorm_accepts_hf_variance_epsilon():
    r = nn.RMSNorm(4, variance_epsilon=1e-5)
    assert r.eps == 1e-5 and r.variance_epsilon == 1e-5
    r.variance_epsilon = 1e-3
    assert r.eps == 1e-3 and "eps" not in r._parameters
    assert np.all(r.weight.numpy() == 1)


def test_layer_gradchecks_float64():
    rng = np.random.default_rng(1)
    x = mp.tensor(rng.standard_normal((2, 3, 4)), dtype=mp.float64, requires_grad=True)
    lin = nn.Linear(4, 3, dtype=mp.float64)
    assert mp.gradcheck(lambda x, w, b: lin(x), x, lin.weight, lin.bias)
    ln = nn.LayerNorm(4, dtype=mp.float64)
    ln.weight.data[...] = rng.standard_normal(4)
    assert mp.gradcheck(lambda x, w, b: ln(x), x, ln.weight, ln.bias)
    rms = nn.RMSNorm(4, dtype=mp.float64)
    rms.weight.data[...] = rng.standard_normal(4)
    assert mp.gradcheck(lambda x, w: rms(x), x, rms.weight)
    emb = nn.Embedding(5, 3, dtype=mp.float64)
    ids = mp.tensor([[0, 1, 1], [4, 0, 2]])
    assert mp.gradcheck(lambda w: emb(ids), emb.weight)


def test_embedding_padding_idx_gets_no_gradient():
    emb = nn.Embedding(5, 3, padding_idx=0)
    assert np.all(emb.weight.numpy()[0] == 0)
    out = emb(mp.tensor([[0, 1, 0, 2]]))
    (out * out + out).sum().backward()
    g = emb.weight.grad
    assert np.all(g[0] == 0) and np.all(g[1] != 0) and np.all(g[3] == 0)
    with pytest.raises(IndexError, match=r"\[0, 5\)"):
        emb(mp.tensor([5]))


def test_reprs():
    assert repr(nn.Linear(2, 3)) == "Linear(in_features=2, out_features=3, bias=True)"
    assert repr(nn.Embedding(10, 4, padding_idx=1)) == "Embedding(10, 4, padding_idx=1)"
    assert repr(nn.LayerNorm(8)) == "LayerNorm((8,), eps=1e-05, elementwise_affine=True)"
    assert repr(nn.RMSNorm(8)) == "RMSNorm((8,), eps=1e-06)"
    assert repr(nn.Dropout(0.2)) == "Dropout(p=0.2)"
    seq = nn.Sequential(nn.Linear(1, 2), nn.Sequential(nn.ReLU()))
    assert repr(seq) == (
        "Sequential(\n"
        "  (0): Linear(in_features=1, out_features=2, bias=True)\n"
        "  (1): Sequential(\n"
        "    (0): ReLU()\n"
        "  )\n"
        ")"
    )
    assert repr(nn.Parameter([1.0])).startswith("Parameter containing:\ntensor(")


# --------------------------------------------------------------------------- against PyTorch
def test_linear_and_layernorm_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 6)).astype(np.float32)
    ours, ref = nn.Linear(6, 4), torch.nn.Linear(6, 4)
    ref.load_state_dict({k: torch.from_numpy(v.numpy().copy())
                         for k, v in ours.state_dict().items()})  # fmt: skip
    xt = torch.tensor(x, requires_grad=True)
    xo = mp.tensor(x, requires_grad=True)
    ref(xt).pow(2).sum().backward()
    (ours(xo) ** 2).sum().backward()
    np.testing.assert_allclose(ours(xo).numpy(), ref(xt).detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours.weight.grad, ref.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(xo.grad, xt.grad.numpy(), rtol=1e-4, atol=1e-5)

    ln_o, ln_t = nn.LayerNorm(6), torch.nn.LayerNorm(6)
    w, b = rng.standard_normal(6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    ln_o.load_state_dict({"weight": w, "bias": b})
    ln_t.load_state_dict({"weight": torch.from_numpy(w), "bias": torch.from_numpy(b)})
    np.testing.assert_allclose(
        ln_o(mp.tensor(x)).numpy(), ln_t(torch.from_numpy(x)).detach().numpy(), atol=1e-5
    )
    # PyTorch's state-dict keys are ours
    assert list(ln_t.state_dict()) == list(ln_o.state_dict())
