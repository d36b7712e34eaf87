"""IA3's invariants, as properties over shapes, feed-forward choices, layouts and dtypes, and its
files against Hugging Face PEFT 0.21.2.

A toy network (no HF ``config``, so targets and feed-forward modules are always named) is
wrapped by ``get_peft_model``; for every drawn setup:

* trainable count = Σ_targets d_in (feed-forward: l (1, d_in)) or d_out (l (d_out, 1));
* l = 1 at init ⇒ exactly the base output; ``disable_adapter`` ⇒ exactly the base output;
* merged ≡ unmerged (float32 1e-5, float64 1e-10) and unmerge restores W and b;
* several active adapters multiply; only ``ia3_l`` parameters get gradients; a gradcheck;
* save → ``adapter_config.json`` + ``adapter_model.safetensors`` with PEFT's keys, and back.

Interop (skipped without torch / transformers / peft): tiny GPT-2 and LLaMA saved by
transformers; an adapter with random vectors made here loads in PEFT with the same logits
(≤ 1e-5), and one made by PEFT loads here, merged or not.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import ia3_setups
from toys import Toy, inputs, out, weights

import minipeft as mp
from minipeft import nn
from minipeft.fileio import load_safetensors
from minipeft.gradcheck import gradcheck
from minipeft.optim import SGD
from minipeft.peft.config import PeftConfig
from minipeft.peft.peft_model import PeftModel, get_peft_model
from minipeft.peft.registry import method_for, preset
from minipeft.peft.tuners.ia3 import IA3Config, IA3Layer, IA3Model
from minipeft.peft.tuners.ia3.model import is_feedforward_module

TOL = {"float32": 1e-5, "float64": 1e-10}
pytestmark = [
    pytest.mark.filterwarnings("ignore:Unmerge result can be inaccurate"),  # PEFT's warning
    pytest.mark.filterwarnings("ignore:fan_in_fan_out"),  # PEFT saves True for GPT-2's Conv1D
    pytest.mark.filterwarnings("ignore::FutureWarning"),  # transformers' deprecations
]


# feedforward_modules choices for targets ["fc1", "fc2"], with the modules each makes
# feed-forward: lists by PEFT's suffix rule, strings by re.fullmatch.
def fixed(**overrides) -> dict:
    """One setup, for the tests that are not properties."""
    setup = {"dims": (3, 5, 4), "conv": False, "dtype": "float64", "feedforward": [], "seed": 0}
    return {**setup, "batch": (2,), **overrides}


def config_of(setup: dict, **overrides) -> IA3Config:
    kw = {"target_modules": ["fc1", "fc2"], "feedforward_modules": setup["feedforward"]}
    return IA3Config(**{**kw, "fan_in_fan_out": setup["conv"], **overrides})


def build(setup: dict, device: str = "cpu", **overrides) -> tuple[Toy, PeftModel]:
    """(a fresh base model, a PEFT model around an identical copy) on ``device``."""
    args = (setup["dims"], setup["dtype"], setup["conv"], setup["seed"])
    config = config_of(setup, **overrides)
    return Toy(*args[0], *args[1:]).to(device), get_peft_model(
        Toy(*args[0], *args[1:]).to(device), config
    )


def randomize(model: nn.Module, seed: int = 0) -> None:
    """Every IA3 vector to values ±[0.5, 2] (away from 0, where unmerging divides)."""
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if ".ia3_l." in name:
            values = rng.uniform(0.5, 2.0, p.shape) * rng.choice([-1, 1], p.shape)
            p.data[...] = mp.tensor(values, dtype=p.dtype, device=p.device).data


# ---------------------------------------------------------------------------- counts, init
@settings(max_examples=25)
@given(setup=ia3_setups())
def test_trainable_count_and_shapes_are_peft_s(setup: dict) -> None:
    d_in, d_hid, d_out = setup["dims"]
    base, pm = build(setup)
    ff = setup["expected_ff"]
    sizes = {"fc1": (d_in, d_hid), "fc2": (d_hid, d_out)}
    shapes = {m: (1, n_in) if m in ff else (n_out, 1) for m, (n_in, n_out) in sizes.items()}
    n_ia3 = sum(int(np.prod(s)) for s in shapes.values())  # Σ d_in (feed-forward) or d_out
    n_base = sum(p.numel() for p in base.parameters())
    assert pm.get_nb_trainable_parameters() == (n_ia3, n_base + n_ia3)
    trainable = {n: tuple(p.shape) for n, p in pm.named_parameters() if p.requires_grad}
    assert trainable == {f"base_model.model.{m}.ia3_l.default": s for m, s in shapes.items()}
    for m in sizes:
        layer = pm.get_base_model().get_submodule(m)
        assert isinstance(layer, IA3Layer) and layer.is_feedforward == (m in ff)
        assert layer.fan_in_fan_out == (m == "fc2" and setup["conv"])


@settings(max_examples=15)
@given(setup=ia3_setups())
def test_vectors_of_ones_give_the_base_output_bit_for_bit(setup: dict, device: str) -> None:
    base, pm = build(setup, device)
    for layer in pm.base_model.tuner_layers():
        assert (layer.ia3_l["default"].numpy() == 1).all()
        assert layer.ia3_l["default"].dtype == np.dtype(setup["dtype"])
    x = inputs(setup, device)
    np.testing.assert_array_equal(out(pm, x), out(base, x))


def test_init_ia3_weights_false_draws_random_vectors() -> None:
    setup = fixed(feedforward=["fc2"])
    mp.manual_seed(0)
    base, pm = build(setup, init_ia3_weights=False)
    vectors = np.concatenate([p.numpy().ravel() for p in pm.parameters() if p.requires_grad])
    assert len(np.unique(vectors)) == vectors.size  # PEFT: torch.randn, N(0, 1)
    assert np.abs(out(pm, inputs(setup)) - out(base, inputs(setup))).max() > 1e-3


# ---------------------------------------------------------------------------- merging
@settings(max_examples=25)
@given(setup=ia3_setups())
def test_merge_equals_unmerged_and_unmerge_restores_weights(setup: dict, device: str) -> None:
    base, pm = build(setup, device)
    randomize(pm, setup["seed"])
    x, tol = inputs(setup, device), TOL[setup["dtype"]]
    before = weights(pm)
    unmerged = out(pm, x)
    assert np.abs(unmerged - out(base, x)).max() > 0  # the vectors make a difference
    pm.merge_adapter()
    assert all(layer.merged for layer in pm.base_model.tuner_layers())
    np.testing.assert_allclose(out(pm, x), unmerged, rtol=tol, atol=tol)
    pm.unmerge_adapter()  # W ⊙ l / (l + 1e-8): equal up to 1e-8 / |l| and one rounding
    restore = {"float32": 1e-6, "float64": 1e-7}[setup["dtype"]]
    for key, value in weights(pm).items():
        np.testing.assert_allclose(value, before[key], rtol=restore, atol=restore, err_msg=key)
    unmerged = out(pm, x)  # on the restored weights
    merged = pm.merge_and_unload()  # a plain Toy with the same function, no IA3 left
    assert type(merged) is Toy and not any(isinstance(m, IA3Layer) for m in merged.modules())
    assert not any("ia3_" in n for n, _ in merged.named_parameters())
    np.testing.assert_allclose(out(merged, x), unmerged, rtol=tol, atol=tol)


def test_merge_scales_rows_columns_and_bias_as_peft_does() -> None:
    for ff, conv in ((False, False), (True, False), (False, True), (True, True)):
        setup = fixed(conv=conv, feedforward=["fc2"] if ff else [], seed=1)
        _, pm = build(setup)
        randomize(pm)
        fc2 = pm.get_base_model().fc2
        w, b = fc2.base_layer.weight.numpy().copy(), fc2.base_layer.bias.numpy().copy()
        vec = fc2.ia3_l["default"].numpy()  # (1, d_in) or (d_out, 1)
        pm.merge_adapter()
        expected_w = w * (vec.T if conv else vec)  # Conv1D stores W (d_in, d_out)
        np.testing.assert_array_equal(fc2.base_layer.weight.numpy(), expected_w)
        expected_b = b if ff else b * vec.ravel()  # only an output vector scales the bias
        np.testing.assert_array_equal(fc2.base_layer.bias.numpy(), expected_b)


@settings(max_examples=15)
@given(setup=ia3_setups())
def test_disable_adapter_gives_base_output_then_restores(setup: dict, device: str) -> None:
    base, pm = build(setup, device)
    randomize(pm, setup["seed"])
    x = inputs(setup, device)
    adapted = out(pm, x)
    with pm.disable_adapter():
        np.testing.assert_array_equal(out(pm, x), out(base, x))
    np.testing.assert_array_equal(out(pm, x), adapted)


def test_several_active_adapters_multiply() -> None:
    setup = fixed(conv=True, feedforward=["fc1"], seed=2, batch=(2, 3))
    _, pm = build(setup)
    pm.add_adapter("other", config_of(setup))
    randomize(pm, seed=3)
    x = inputs(setup)
    one = out(pm, x)  # only "default" is active
    pm.set_adapter(["default", "other"])
    both = out(pm, x)
    _, product = build(setup)  # one adapter holding l_default ⊙ l_other
    for name in ("fc1", "fc2"):
        layer = pm.get_base_model().get_submodule(name)
        target = product.get_base_model().get_submodule(name).ia3_l["default"]
        target.data[...] = layer.ia3_l["default"].data * layer.ia3_l["other"].data
    np.testing.assert_allclose(both, out(product, x), rtol=1e-12, atol=1e-12)
    assert np.abs(both - one).max() > 1e-3
    pm.merge_adapter()  # both merged, both unmerged (last first)
    np.testing.assert_allclose(out(pm, x), both, rtol=1e-10, atol=1e-10)
    pm.unmerge_adapter()  # dividing by l + 1e-8 twice: exact up to ~1e-8 / |l| per adapter
    np.testing.assert_allclose(out(pm, x), both, rtol=1e-6, atol=1e-6)
    pm.set_adapter("default")
    pm.delete_adapter("other")
    assert all(layer.adapter_names() == ["default"] for layer in pm.base_model.tuner_layers())
    np.testing.assert_allclose(out(pm, x), one, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------- training
@settings(max_examples=15)
@given(setup=ia3_setups())
def test_only_ia3_vectors_get_grads_and_change(setup: dict, device: str) -> None:
    _, pm = build(setup, device)
    randomize(pm, setup["seed"])
    x = inputs(setup, device)
    before = {n: p.numpy().copy() for n, p in pm.named_parameters()}
    opt = SGD(list(pm.parameters()), lr=0.1, momentum=0.9, weight_decay=0.1)
    for _ in range(2):
        opt.zero_grad()
        (pm(x) ** 2).mean().backward()
        for name, p in pm.named_parameters():
            assert (p.grad is not None) == (".ia3_l." in name), name  # frozen means free
        opt.step()
    for name, p in pm.named_parameters():
        if ".ia3_l." in name:
            assert np.isfinite(p.numpy()).all() and not np.array_equal(p.numpy(), before[name])
        else:
            np.testing.assert_array_equal(p.numpy(), before[name], err_msg=name)


@settings(max_examples=10)
@given(
    feedforward=st.booleans(),
    dims=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    batch=st.lists(st.integers(1, 3), min_size=1, max_size=2),
    seed=st.integers(0, 2**16),
)
def test_ia3_layer_gradcheck(feedforward: bool, dims, batch, seed: int) -> None:
    rng = np.random.default_rng(seed)
    layer = IA3Layer(nn.Linear(*dims, dtype="float64"), is_feedforward=feedforward)
    layer.update_layer("a")
    layer.update_layer("b")
    layer.set_adapter(["a", "b"])  # the gradient of a product of two vectors
    for name in ("a", "b"):
        layer.ia3_l[name].data[...] = rng.normal(size=layer.ia3_l[name].shape)
    x = mp.tensor(rng.normal(size=(*batch, dims[0])), dtype="float64", requires_grad=True)
    assert gradcheck(lambda x_, a, b: layer(x_), x, layer.ia3_l["a"], layer.ia3_l["b"])


def test_a_float16_base_keeps_float32_vectors() -> None:
    for ff in (False, True):
        base = nn.Linear(4, 3, dtype="float16")
        layer = IA3Layer(base, is_feedforward=ff)
        layer.update_layer("default", init_ia3_weights=False)
        assert layer.ia3_l["default"].dtype == np.float32
        x = mp.randn(2, 4, dtype="float16")
        base_out, adapted = out(base, x), out(layer, x)
        assert adapted.dtype == np.float16 and np.abs(adapted - base_out).max() > 1e-2
        layer.merge()
        assert base.weight.dtype == np.float16 and base.bias.dtype == np.float16
        np.testing.assert_allclose(out(layer, x), adapted, rtol=1e-2, atol=1e-2)


# ---------------------------------------------------------------------------- bad input
def test_a_target_that_is_not_linear_is_refused_before_any_change() -> None:
    model = Toy(3, 4, 5, "float32")
    model.norm = nn.LayerNorm(5)
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(TypeError, match="'norm' is a LayerNorm; IA3 supports linear layers"):
        get_peft_model(model, IA3Config(target_modules=["fc1", "norm"], feedforward_modules=[]))
    assert not any(isinstance(m, IA3Layer) for m in model.modules())  # fc1 was not wrapped
    assert [p.requires_grad for p in model.parameters()] == flags
    with pytest.raises(TypeError, match="IA3 wraps linear layers.*found LayerNorm"):
        IA3Layer(nn.LayerNorm(4))


def test_targets_matching_nothing_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"target_modules \['nothing'\] matched none.*fc1"):
        get_peft_model(
            Toy(3, 4, 5, "float32"), IA3Config(target_modules=["nothing"], feedforward_modules=[])
        )


def test_config_errors_name_the_field() -> None:
    subset = r"IA3Config.feedforward_modules: expected a subset of target_modules \['fc1'\], "
    with pytest.raises(ValueError, match=subset + r"found \['fc2'\] \(\['fc2'\] not in"):
        IA3Config(target_modules=["fc1"], feedforward_modules=["fc2"])
    with pytest.raises(ValueError, match="IA3Config.init_ia3_weights: expected a bool, found 'no'"):
        IA3Config(init_ia3_weights="no")
    with pytest.raises(ValueError, match="IA3Config.fan_in_fan_out: expected a bool, found 1"):
        IA3Config(fan_in_fan_out=1)
    with pytest.raises(ValueError, match="IA3Config.feedforward_modules: expected None, a regex"):
        IA3Config(feedforward_modules=3)
    with pytest.raises(ValueError, match="IA3Config.target_modules: expected a valid regular"):
        IA3Config(target_modules="fc[")
    with pytest.raises(ValueError, match="IA3Config.modules_to_save: expected None or a list"):
        IA3Config(modules_to_save="head")
    with pytest.raises(ValueError, match="IA3Config.peft_type: expected 'IA3', found 'LORA'"):
        IA3Config(peft_type="LORA")
    IA3Config(target_modules="fc.", feedforward_modules=["fc2"])  # a regex: not compared (PEFT)


def test_a_model_without_defaults_needs_feedforward_modules() -> None:
    model = Toy(3, 4, 5, "float32")
    with pytest.raises(
        ValueError,
        match=r"IA3Config.feedforward_modules: expected a list of "
        r"module names \(or \[\] for none\) for model_type None",
    ):
        get_peft_model(model, IA3Config(target_modules=["fc1"]))
    assert not any(isinstance(m, IA3Layer) for m in model.modules())
    with pytest.raises(ValueError, match="target_modules is None and no model_type was given"):
        get_peft_model(model, IA3Config(feedforward_modules=[]))


# ---------------------------------------------------------------------------- config, registry
PEFT_KEYS = {
    "auto_mapping",
    "base_model_name_or_path",
    "exclude_modules",
    "fan_in_fan_out",
    "feedforward_modules",
    "inference_mode",
    "init_ia3_weights",
    "modules_to_save",
    "peft_type",
    "peft_version",
    "revision",
    "target_modules",
    "task_type",
}


def test_config_keys_round_trip_and_registry() -> None:
    data = IA3Config(target_modules=["b", "a"], feedforward_modules=["a"]).to_dict()
    assert set(data) == PEFT_KEYS and data["peft_type"] == "IA3"
    assert data["target_modules"] == ["a", "b"]  # sorted unique, as minipeft saves lists
    again = PeftConfig.from_dict(data)
    assert type(again) is IA3Config and again.to_dict() == data
    method = method_for("IA3")
    assert method.config_class is IA3Config and method.tuner_class() is IA3Model
    assert method.prefix == "ia3_" and method.files == "peft"
    assert method.default_target_modules("gpt2") == ["c_attn", "mlp.c_proj"]
    assert method.default_target_modules("llama") == ["k_proj", "v_proj", "down_proj"]
    assert type(preset("ia3", init_ia3_weights=False)) is IA3Config


def test_config_defaults_equal_peft_s() -> None:
    peft = pytest.importorskip("peft")
    theirs, ours = peft.IA3Config().to_dict(), IA3Config().to_dict()
    assert set(theirs) == set(ours) == PEFT_KEYS
    for key in PEFT_KEYS - {"peft_version"}:
        assert ours[key] == theirs[key], key


@settings(max_examples=50)
@given(
    name=st.lists(
        st.sampled_from(["mlp", "c_proj", "xc_proj", "h", "0", "down_proj"]), min_size=1, max_size=4
    ).map(".".join),
    entries=st.one_of(
        st.lists(st.sampled_from(["c_proj", "mlp.c_proj", "proj", "down_proj", "h.0"]), max_size=3),
        st.sampled_from([".*c_proj", "mlp\\.c_proj", "h\\..*"]),
    ),
)
def test_feedforward_rule_is_peft_s(name: str, entries) -> None:
    peft = pytest.importorskip("peft")
    config = SimpleNamespace(feedforward_modules=entries)
    check = peft.tuners.ia3.IA3Model._check_target_module_feedforward
    assert is_feedforward_module(name, entries) == check(config, name)


# ---------------------------------------------------------------------------- files
def test_save_writes_peft_s_files_and_loads_back_exactly(tmp_path) -> None:
    setup = fixed(conv=True, dtype="float32", feedforward=["fc2"], seed=4)
    _, pm = build(setup)
    randomize(pm)
    x = inputs(setup)
    expected = out(pm, x)
    pm.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    tensors = load_safetensors(str(tmp_path / "adapter_model.safetensors"))
    assert {k: v.shape for k, v in tensors.items()} == {
        "base_model.model.fc1.ia3_l": (5, 1),  # output vector (d_out, 1)
        "base_model.model.fc2.ia3_l": (1, 5),  # feed-forward vector (1, d_in)
    }
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert set(saved) == PEFT_KEYS and saved["peft_type"] == "IA3"
    assert saved["feedforward_modules"] == ["fc2"] and saved["inference_mode"] is True
    loaded = PeftModel.from_pretrained(Toy(*setup["dims"], "float32", True, 4), tmp_path)
    np.testing.assert_array_equal(out(loaded, x), expected)
    assert not any(p.requires_grad for p in loaded.parameters())  # inference_mode
    pm.load_adapter(tmp_path, "copy")  # the name on disk is only a label
    copy_keys = [k for k in pm.state_dict() if k.endswith(".ia3_l.copy")]
    assert len(copy_keys) == 2


# ---------------------------------------------------------------------------- interop
INTEROP_TOL = 1e-5
IDS = np.array([[3, 14, 15, 9, 26, 5], [35, 8, 9, 7, 9, 32]])
# (arch, config fields): PEFT's defaults; GPT-2 with the square attn.c_proj and a feed-forward
# c_fc (fan_in_fan_out matters for both when merging); LLaMA with two feed-forward targets.
# "all-linear" goes one way only: see test_peft_s_all_linear_folder_is_refused_by_both.
CASES = [
    ("gpt2", {}),
    ("gpt2", {"target_modules": ["c_attn", "c_proj", "c_fc"], "feedforward_modules": ["c_fc"]}),
    ("llama", {}),
    (
        "llama",
        {
            "target_modules": ["q_proj", "up_proj", "down_proj"],
            "feedforward_modules": ["up_proj", "down_proj"],
        },
    ),
]
ALL_LINEAR = ("llama", {"target_modules": "all-linear"})


@pytest.fixture(scope="module")
def hf():
    """torch, transformers and peft, or a clean skip of the interop tests."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return SimpleNamespace(torch=torch, transformers=transformers, peft=peft)


@pytest.fixture(scope="module")
def folders(hf, tmp_path_factory) -> dict[str, str]:
    """Tiny random GPT-2 and LLaMA (grouped-query attention) saved by transformers."""
    t = hf.transformers
    models = {
        "gpt2": t.GPT2LMHeadModel(
            t.GPT2Config(
                n_layer=2,
                n_embd=32,
                n_head=4,
                vocab_size=64,
                n_positions=16,
                bos_token_id=1,
                eos_token_id=2,
            )
        ),
        "llama": t.LlamaForCausalLM(
            t.LlamaConfig(
                vocab_size=64,
                hidden_size=32,
                intermediate_size=48,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=16,
            )
        ),
    }
    out_dirs = {}
    gen = hf.torch.Generator().manual_seed(0)
    for arch, model in models.items():
        with hf.torch.no_grad():  # HF's init (std 0.02) gives near-zero logits; make them larger
            for p in model.parameters():
                p.add_(hf.torch.randn(p.shape, generator=gen) * 0.15)
        out_dirs[arch] = str(tmp_path_factory.mktemp(arch))
        model.eval().save_pretrained(out_dirs[arch])
    return out_dirs


def hf_model(hf, folder: str):
    return hf.transformers.AutoModelForCausalLM.from_pretrained(folder).eval()


def our_model(folder: str):
    from minipeft.models import AutoModelForCausalLM  # noqa: PLC0415 (only the interop tests)

    return AutoModelForCausalLM.from_pretrained(folder)


def hf_logits(hf, model) -> np.ndarray:
    with hf.torch.no_grad():
        return model(input_ids=hf.torch.tensor(IDS)).logits.float().numpy()


def our_logits(model) -> np.ndarray:
    with mp.no_grad():
        return model(input_ids=IDS).logits.numpy()


@pytest.mark.parametrize(("arch", "fields"), [*CASES, ALL_LINEAR])
def test_adapter_made_here_loads_in_peft(arch, fields, hf, folders, tmp_path) -> None:
    ours = get_peft_model(our_model(folders[arch]), IA3Config(**fields))
    randomize(ours)
    expected = our_logits(ours)
    assert np.abs(expected - hf_logits(hf, hf_model(hf, folders[arch]))).max() > 1e-2
    ours.save_pretrained(tmp_path)
    theirs = hf.peft.PeftModel.from_pretrained(hf_model(hf, folders[arch]), str(tmp_path))
    np.testing.assert_allclose(hf_logits(hf, theirs), expected, atol=INTEROP_TOL, rtol=0)
    theirs_config = theirs.peft_config["default"]
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert set(saved["feedforward_modules"]) == set(theirs_config.feedforward_modules)
    # merged here: a plain model transformers loads, equal to PEFT's merged model
    their_merged = hf_logits(hf, theirs.merge_and_unload())
    ours.merge_and_unload().save_pretrained(tmp_path / "merged")
    reloaded = hf_logits(hf, hf_model(hf, str(tmp_path / "merged")))
    np.testing.assert_allclose(reloaded, their_merged, atol=INTEROP_TOL, rtol=0)


@pytest.mark.parametrize(("arch", "fields"), CASES)
def test_adapter_made_by_peft_loads_here(arch, fields, hf, folders, tmp_path, capsys) -> None:
    config = hf.peft.IA3Config(init_ia3_weights=False, **fields)
    theirs = hf.peft.get_peft_model(hf_model(hf, folders[arch]), config)
    expected = hf_logits(hf, theirs)
    theirs.print_trainable_parameters()
    line = capsys.readouterr().out
    theirs.save_pretrained(str(tmp_path))
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    ours = PeftModel.from_pretrained(our_model(folders[arch]), tmp_path)
    np.testing.assert_allclose(our_logits(ours), expected, atol=INTEROP_TOL, rtol=0)
    ours.merge_adapter()  # PEFT's saved fan_in_fan_out=True must not transpose our Linear merges
    np.testing.assert_allclose(our_logits(ours), expected, atol=INTEROP_TOL, rtol=0)
    fresh = get_peft_model(our_model(folders[arch]), IA3Config(**fields))
    fresh.print_trainable_parameters()
    assert capsys.readouterr().out == line
    assert fresh.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    recorded = fresh.peft_config["default"]
    assert set(recorded.feedforward_modules) == set(saved["feedforward_modules"])
    if isinstance(saved["target_modules"], list):
        assert set(recorded.target_modules) == set(saved["target_modules"])


def test_peft_s_all_linear_folder_is_refused_by_both(hf, folders, tmp_path) -> None:
    """PEFT saves "all-linear" expanded to full module names, so its default feed-forward
    ["down_proj"] is no longer a subset: PEFT cannot load its own folder, and neither can we
    (the same rule, the same refusal; ours saves "all-linear" itself and loads in both)."""
    arch, fields = ALL_LINEAR
    theirs = hf.peft.get_peft_model(hf_model(hf, folders[arch]), hf.peft.IA3Config(**fields))
    theirs.save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="feedforward_modules` should be a subset"):
        hf.peft.PeftModel.from_pretrained(hf_model(hf, folders[arch]), str(tmp_path))
    with pytest.raises(ValueError, match=r"IA3Config.feedforward_modules: expected a subset"):
        PeftModel.from_pretrained(our_model(folders[arch]), tmp_path)
