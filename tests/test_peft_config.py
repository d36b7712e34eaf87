"""PEFT configs, target matching and adapter files, checked against Hugging Face PEFT 0.21.2.

Pure-Python parts (no engine). PEFT / torch / transformers comparisons skip when not installed.
"""

from __future__ import annotations

import json
import os
import re
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minipeft.peft.adapter_io import (
    check_adapter_keys,
    from_peft_keys,
    load_adapter_files,
    remove_adapter_name,
    save_adapter,
    to_peft_keys,
)
from minipeft.peft.config import (
    PEFT_FORMAT_VERSION,
    PeftConfig,
    PeftType,
    TaskType,
    default_target_modules,
    get_pattern_key,
    supported_peft_types,
)
from minipeft.peft.matching import find_targets, is_target, layer_index, unmatched_pattern_keys
from minipeft.peft.tuners.lora.config import LoraConfig
from minipeft.peft.tuners.lora.model import lora_shape_hints

GPT2_NAMES = [
    "transformer",
    "transformer.wte",
    "transformer.wpe",
    "transformer.h",
    *[
        f"transformer.h.{i}.{m}"
        for i in range(3)
        for m in (
            "ln_1",
            "attn",
            "attn.c_attn",
            "attn.c_proj",
            "ln_2",
            "mlp",
            "mlp.c_fc",
            "mlp.c_proj",
        )
    ],
    "transformer.ln_f",
    "lm_head",
]
LLAMA_NAMES = [
    "model.embed_tokens",
    *[
        f"model.layers.{i}.{m}"
        for i in range(2)
        for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.up_proj")
    ],
    "model.layers.1.mlp.experts.0.up",  # a nested index: the layer is 1, not 0
    "lm_head",
]


def normalize(d: dict) -> dict:
    """Config dict with sets as sorted lists and enums as values (PEFT keeps sets in to_dict)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, (set, frozenset)):
            v = sorted(v)
        elif hasattr(v, "value"):
            v = v.value
        out[k] = v
    return out


# ----------------------------------------------------------------------------- config vs PEFT

NON_DEFAULT = [
    {},
    dict(r=4, lora_alpha=16, target_modules=["c_proj", "c_attn"], task_type="CAUSAL_LM"),
    dict(target_modules="transformer\\.h\\.\\d+\\.attn\\.c_attn", lora_dropout=0.1, bias="all"),
    dict(
        target_modules=["q_proj", "v_proj"],
        exclude_modules=["lm_head"],
        layers_to_transform=[0, 2],
        layers_pattern="layers",
        use_rslora=True,
        init_lora_weights="gaussian",
        rank_pattern={"q_proj": 16},
        alpha_pattern={"layers.0.q_proj": 32},
        modules_to_save=["score"],
        task_type="SEQ_CLS",
        bias="lora_only",
        fan_in_fan_out=True,
        base_model_name_or_path="gpt2",
        revision="main",
        inference_mode=True,
    ),
    dict(target_modules="all-linear", init_lora_weights=False, layers_to_transform=None),
    dict(target_modules=["c_attn"], layers_to_transform=1),
]


@pytest.mark.parametrize("kwargs", NON_DEFAULT)
def test_to_dict_matches_peft(kwargs):
    peft = pytest.importorskip("peft")
    ours = LoraConfig(**kwargs).to_dict()
    theirs = normalize(peft.LoraConfig(**kwargs).to_dict())
    assert set(ours) == set(theirs)
    assert ours.pop("peft_version") == PEFT_FORMAT_VERSION
    theirs.pop("peft_version")
    assert ours == theirs


@pytest.mark.parametrize("kwargs", NON_DEFAULT)
def test_peft_loads_ours_and_we_load_peft(tmp_path, kwargs):
    peft = pytest.importorskip("peft")
    LoraConfig(**kwargs).save_pretrained(tmp_path / "ours")
    loaded = peft.LoraConfig.from_pretrained(str(tmp_path / "ours"))
    assert normalize(loaded.to_dict()) == LoraConfig(**kwargs).to_dict()

    peft.LoraConfig(**kwargs).save_pretrained(str(tmp_path / "theirs"))
    back = PeftConfig.from_pretrained(tmp_path / "theirs")
    assert isinstance(back, LoraConfig)
    expected = LoraConfig(**kwargs).to_dict()
    expected["peft_version"] = peft.__version__
    assert back.to_dict() == expected


def test_json_layout_and_atomic_write(tmp_path):
    path = LoraConfig(target_modules=["c_attn"]).save_pretrained(tmp_path)
    text = open(path).read()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True)
    assert sorted(os.listdir(tmp_path)) == ["adapter_config.json"]  # no temp file left behind
    assert json.loads(text)["peft_type"] == "LORA" and json.loads(text)["target_modules"] == [
        "c_attn"
    ]


def test_enums_cover_peft():
    peft_types = pytest.importorskip("peft.utils.peft_types")
    assert {t.value for t in peft_types.PeftType} <= {t.value for t in PeftType}
    assert {t.value for t in peft_types.TaskType} <= {t.value for t in TaskType}


def test_unknown_keys_are_kept_with_a_warning(tmp_path):
    data = LoraConfig(r=4).to_dict() | {"use_future_trick": False, "runtime_config": {}}
    with pytest.warns(UserWarning) as record:
        config = PeftConfig.from_dict(data)
    assert any("use_future_trick" in str(w.message) for w in record)
    assert config.r == 4 and config.to_dict()["use_future_trick"] is False
    assert "runtime_config" not in config.to_dict()
    config.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="use_future_trick"):
        assert PeftConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()


@pytest.mark.parametrize("peft_type", ["BOFT", "NOT_A_METHOD"])
def test_unknown_peft_type_names_supported(peft_type):
    with pytest.raises(ValueError, match=peft_type) as info:
        PeftConfig.from_dict({"peft_type": peft_type})
    assert "LORA" in str(info.value) and "LORA" in supported_peft_types()


def test_dispatch_and_type_errors(tmp_path):
    assert type(PeftConfig.from_dict({"peft_type": "LORA", "r": 2})) is LoraConfig
    assert LoraConfig.from_dict({"r": 2}).r == 2  # no peft_type: the calling class
    with pytest.raises(ValueError, match="peft_type"):
        PeftConfig.from_dict({"r": 2})
    with pytest.raises(ValueError, match="expected 'LORA', found 'IA3'"):
        LoraConfig(peft_type="IA3")
    with pytest.raises(ValueError, match="task_type.*CAUSAL_LM.*found 'CLM'"):
        LoraConfig(task_type="CLM")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        PeftConfig.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        PeftConfig.from_pretrained(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="valid JSON"):
        PeftConfig.from_pretrained(tmp_path)


BAD = [
    (dict(r=0), "r"),
    (dict(r=2.5), "r"),
    (dict(r=True), "r"),
    (dict(lora_alpha=float("nan")), "lora_alpha"),
    (dict(lora_alpha=float("inf")), "lora_alpha"),
    (dict(lora_dropout=1.0), "lora_dropout"),
    (dict(lora_dropout=-0.1), "lora_dropout"),
    (dict(bias="some"), "bias"),
    (dict(target_modules=3), "target_modules"),
    (dict(target_modules="("), "target_modules"),
    (dict(exclude_modules=[1]), "exclude_modules"),
    (dict(modules_to_save="score"), "modules_to_save"),
    (dict(target_modules=["c_attn"], layers_to_transform=[-1]), "layers_to_transform"),
    (dict(target_modules=["c_attn"], layers_pattern="h"), "layers_to_transform"),
    (dict(target_modules=".*c_attn", layers_to_transform=0), "layers_to_transform"),
    (dict(target_modules=["c_attn"], layers_to_transform=0, layers_pattern=[3]), "layers_pattern"),
    (dict(rank_pattern={"c_attn": 0}), "rank_pattern"),
    (dict(rank_pattern={"c_attn": 2.0}), "rank_pattern"),
    (dict(alpha_pattern={"c_attn": float("nan")}), "alpha_pattern"),
    (dict(alpha_pattern={"[": 2}), "alpha_pattern"),
    (dict(init_lora_weights="kaiming"), "init_lora_weights"),
    (dict(use_rslora="yes"), "use_rslora"),
]


@pytest.mark.parametrize(("kwargs", "field_name"), BAD)
def test_validation_names_field_expected_found(kwargs, field_name):
    with pytest.raises(ValueError) as info:
        LoraConfig(**kwargs)
    message = str(info.value)
    assert f"LoraConfig.{field_name}" in message and "expected" in message and "found" in message


@pytest.mark.parametrize("init", ["loftq", "eva", "corda", "mica"])
def test_unimplemented_inits_are_refused(init):
    with pytest.raises(
        ValueError, match=f"found '{init}', a PEFT initialisation minipeft does not implement"
    ):
        LoraConfig(init_lora_weights=init)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(lora_bias=True),
        dict(target_parameters=["experts.w"]),
        dict(trainable_token_indices=[1, 2]),
        dict(layer_replication=[[0, 2]]),
        dict(use_qalora=True),
        dict(alora_invocation_tokens=[5]),
        dict(ensure_weight_tying=True),
    ],
)
def test_unimplemented_features_are_refused(kwargs):
    (name,) = kwargs
    with pytest.raises(
        ValueError, match=f"LoraConfig.{name}: expected .*, found .* \\(minipeft does not implement"
    ):
        LoraConfig(**kwargs)


def test_default_targets():
    assert default_target_modules("LORA", "gpt2") == ["c_attn"]
    assert default_target_modules("LORA", "llama") == ["q_proj", "v_proj"]
    with pytest.raises(ValueError, match="target_modules"):
        default_target_modules("LORA", "bert")
    with pytest.raises(ValueError, match="target_modules"):
        is_target("x.q_proj", LoraConfig(), model_type="mamba")


# ----------------------------------------------------------------------------- rank / alpha

PATTERN_CASES = [
    ({"c_attn": 4}, "transformer.h.0.attn.c_attn", 4),
    ({"attn.c_attn": 4}, "transformer.h.0.attn.c_attn", 4),
    ({"h.0.attn.c_attn": 4}, "transformer.h.10.attn.c_attn", 8),  # boundary: not "h.10"
    ({"h.1.attn.c_attn": 4}, "transformer.h.11.attn.c_attn", 8),
    ({"attn": 4}, "transformer.h.0.attn.c_attn", 8),  # must reach the end of the name
    ({"ttn.c_attn": 4}, "transformer.h.0.attn.c_attn", 8),  # and start at a dot
    ({"h\\.[02]\\.attn\\.c_attn": 4}, "transformer.h.2.attn.c_attn", 4),
    ({"^transformer.h.0.attn.c_attn": 4}, "transformer.h.0.attn.c_attn", 4),
    ({"c_attn": 4, "h.0.attn.c_attn": 2}, "transformer.h.0.attn.c_attn", 4),  # first key wins
    ({"h.0.attn.c_attn": 2, "c_attn": 4}, "transformer.h.0.attn.c_attn", 2),
]


@pytest.mark.parametrize(("pattern", "name", "rank"), PATTERN_CASES)
def test_rank_and_alpha_pattern(pattern, name, rank):
    config = LoraConfig(r=8, lora_alpha=16, rank_pattern=pattern, alpha_pattern=pattern)
    assert config.get_r(name) == rank
    assert config.get_alpha(name) == (rank if rank != 8 else 16)
    assert config.scaling_for(name) == pytest.approx(config.get_alpha(name) / rank)
    rs = LoraConfig(r=8, lora_alpha=16, rank_pattern=pattern, use_rslora=True)
    assert rs.scaling_for(name) == pytest.approx(16 / rank**0.5)


SEGMENTS = st.sampled_from(["h", "0", "1", "10", "attn", "c_attn", "layers", "q_proj", "mlp"])


@settings(max_examples=150, deadline=None)
@given(
    name=st.lists(SEGMENTS, min_size=1, max_size=6).map(".".join),
    keys=st.lists(st.lists(SEGMENTS, min_size=1, max_size=3).map(".".join), max_size=4),
)
def test_pattern_key_matches_peft(name, keys):
    other = pytest.importorskip("peft.utils.other")
    assert get_pattern_key(keys, name) == other.get_pattern_key(keys, name)
    pattern = {k: i + 1 for i, k in enumerate(keys)}
    expected = pattern.get(other.get_pattern_key(pattern.keys(), name), 8)
    assert LoraConfig(rank_pattern=pattern).get_r(name) == expected


def test_unmatched_pattern_keys():
    config = LoraConfig(rank_pattern={"c_attn": 2, "q_proj": 4}, alpha_pattern={"nope": 1})
    assert unmatched_pattern_keys(config, ["transformer.h.0.attn.c_attn"]) == {
        "rank_pattern": ["q_proj"],
        "alpha_pattern": ["nope"],
    }


# ----------------------------------------------------------------------------- matching

MATCH_CASES = [
    # (config kwargs, module name, expected)
    (dict(target_modules=["c_attn"]), "transformer.h.0.attn.c_attn", True),
    (dict(target_modules=["c_attn"]), "c_attn", True),  # equal
    (dict(target_modules=["attn"]), "transformer.h.0.attn.c_attn", False),  # suffix needs a dot
    (dict(target_modules=["attn.c_attn"]), "transformer.h.0.attn.c_attn", True),
    (dict(target_modules=["c_attn"]), "transformer.h.0.attn.c_attn.lora_A", False),
    (dict(target_modules=".*c_attn"), "transformer.h.0.attn.c_attn", True),
    (dict(target_modules="c_attn"), "transformer.h.0.attn.c_attn", False),  # fullmatch only
    (dict(target_modules=".*\\.h\\.[01]\\.attn\\.c_attn"), "transformer.h.1.attn.c_attn", True),
    (dict(target_modules=".*\\.h\\.[01]\\.attn\\.c_attn"), "transformer.h.2.attn.c_attn", False),
    (
        dict(target_modules=["c_attn"], exclude_modules=["h.0.attn.c_attn"]),
        "transformer.h.0.attn.c_attn",
        False,
    ),
    (
        dict(target_modules=["c_attn"], exclude_modules=["h.0.attn.c_attn"]),
        "transformer.h.1.attn.c_attn",
        True,
    ),
    (
        dict(target_modules=["c_attn"], exclude_modules=".*h\\.1\\..*"),
        "transformer.h.1.attn.c_attn",
        False,
    ),
    (
        dict(target_modules=["c_attn"], exclude_modules="h\\.1\\..*"),
        "transformer.h.1.attn.c_attn",
        True,
    ),
    (dict(target_modules=["c_attn"], layers_to_transform=1), "transformer.h.1.attn.c_attn", True),
    (dict(target_modules=["c_attn"], layers_to_transform=1), "transformer.h.0.attn.c_attn", False),
    (
        dict(target_modules=["c_attn"], layers_to_transform=[0, 2], layers_pattern="h"),
        "transformer.h.2.attn.c_attn",
        True,
    ),
    (
        dict(target_modules=["c_attn"], layers_to_transform=[0, 2], layers_pattern="h"),
        "transformer.h.1.attn.c_attn",
        False,
    ),
    (
        dict(target_modules=["c_attn"], layers_to_transform=[0], layers_pattern="layers"),
        "transformer.h.0.attn.c_attn",
        False,
    ),
    (dict(target_modules=["up"], layers_to_transform=[1]), "model.layers.1.mlp.experts.0.up", True),
    (
        dict(target_modules=["up"], layers_to_transform=[0]),
        "model.layers.1.mlp.experts.0.up",
        False,
    ),
    (
        dict(
            target_modules=["q_proj"], layers_to_transform=[0], layers_pattern=["blocks", "layers"]
        ),
        "model.layers.0.self_attn.q_proj",
        True,
    ),
    (
        dict(target_modules=["c_attn"], layers_to_transform=[0]),
        "h.0.attn.c_attn",
        False,
    ),  # no index found
    (
        dict(target_modules=["h.0.attn.c_attn"], layers_to_transform=[1]),
        "h.0.attn.c_attn",
        True,
    ),  # equal: no filter
    (dict(target_modules=["score", "c_attn"], modules_to_save=["score"]), "score", False),
]


def peft_matches(kwargs: dict, name: str) -> bool:
    peft = pytest.importorskip("peft")
    from peft.tuners.tuners_utils import check_target_module_exists

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bool(check_target_module_exists(peft.LoraConfig(**kwargs), name))


@pytest.mark.parametrize(("kwargs", "name", "expected"), MATCH_CASES)
def test_is_target_table(kwargs, name, expected):
    assert is_target(name, LoraConfig(**kwargs)) is expected
    assert peft_matches(kwargs, name) is expected


TARGET_SETS = st.sampled_from(
    [["c_attn"], ["c_proj", "mlp.c_fc"], ["q_proj", "v_proj"], ["up"], ["attn"]]
)


@settings(max_examples=120, deadline=None)
@given(
    name=st.sampled_from(GPT2_NAMES + LLAMA_NAMES),
    targets=TARGET_SETS,
    layers=st.none() | st.integers(0, 2) | st.lists(st.integers(0, 2), max_size=2),
    pattern=st.sampled_from([None, "h", "layers", ["h", "layers"]]),
    exclude=st.sampled_from([None, ["h.1.attn.c_attn"], ".*layers\\.0.*"]),
    to_save=st.sampled_from([None, ["c_attn"], ["mlp"]]),
)
def test_is_target_matches_peft(name, targets, layers, pattern, exclude, to_save):
    kwargs = dict(target_modules=targets, layers_to_transform=layers, exclude_modules=exclude)
    kwargs["modules_to_save"] = to_save
    if layers is not None:
        kwargs["layers_pattern"] = pattern
    assert is_target(name, LoraConfig(**kwargs)) == peft_matches(kwargs, name)


def test_layer_index():
    assert layer_index("transformer.h.11.attn.c_attn") == 11
    assert layer_index("model.layers.1.mlp.experts.7.up") == 1
    assert layer_index("model.layers.1.mlp.experts.7.up", "experts") == 7
    assert layer_index("h.3.attn") is None  # PEFT needs a dot before the list's name
    assert layer_index("lm_head") is None


def test_find_targets_defaults_and_errors():
    assert find_targets(GPT2_NAMES, LoraConfig(), model_type="gpt2") == [
        f"transformer.h.{i}.attn.c_attn" for i in range(3)
    ]
    assert find_targets(LLAMA_NAMES, LoraConfig(), model_type="llama") == [
        f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")
    ]
    with pytest.raises(ValueError) as info:
        find_targets(GPT2_NAMES, LoraConfig(target_modules=["q_proj"], layers_to_transform=0))
    message = str(info.value)
    assert (
        "['q_proj']" in message
        and "transformer.wte" in message
        and "layers_to_transform" in message
    )


LINEAR = {n for n in GPT2_NAMES if n.rsplit(".", 1)[-1] in ("c_attn", "c_proj", "c_fc")} | {
    "lm_head"
}


def test_find_targets_all_linear():
    config = LoraConfig(target_modules="all-linear", exclude_modules=["mlp.c_fc"])
    found = find_targets(GPT2_NAMES, config, linear_names=LINEAR)
    assert "lm_head" not in found and len(found) == 3 * 3  # c_attn, attn.c_proj, mlp.c_proj
    with pytest.raises(ValueError, match="linear_names"):
        find_targets(GPT2_NAMES, config)
    with pytest.raises(ValueError, match="find_targets"):
        is_target("transformer.h.0.attn.c_attn", config)
    names = [*GPT2_NAMES[:-1], "score"]
    cls = LoraConfig(target_modules="all-linear", task_type="SEQ_CLS")
    linear = (LINEAR - {"lm_head"}) | {"score", "transformer.h.0.attn.c_attn.base_layer"}
    found = find_targets(names, cls, linear_names=linear)
    assert "score" not in found and len(found) == 12


def test_all_linear_matches_peft_on_gpt2():
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    base = tiny_gpt2(transformers)
    names = [n for n, _ in base.named_modules()]
    linear = {n for n, m in base.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))}
    ours = find_targets(names, LoraConfig(target_modules="all-linear"), linear_names=linear)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(base, peft.LoraConfig(target_modules="all-linear"))
    assert sorted(ours) == sorted(model.base_model.targeted_module_names)


# ----------------------------------------------------------------------------- adapter keys


def tiny_gpt2(transformers, cls_name: str = "GPT2LMHeadModel"):
    config = transformers.GPT2Config(
        n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=32,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    import torch

    torch.manual_seed(0)
    return getattr(transformers, cls_name)(config)


def test_remove_adapter_name():
    assert remove_adapter_name("m.q.lora_A.default.weight", "default") == "m.q.lora_A.weight"
    assert remove_adapter_name("m.wte.lora_embedding_A.ab", "ab") == "m.wte.lora_embedding_A"
    assert (
        remove_adapter_name("default.q.lora_A.default.weight", "default")
        == "default.q.lora_A.weight"
    )
    assert remove_adapter_name("m.q.lora_A.other.weight", "default") == "m.q.lora_A.other.weight"


@pytest.mark.parametrize("bias", ["none", "all", "lora_only"])
def test_key_conversion_matches_peft(bias):
    pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from peft.utils.save_and_load import get_peft_model_state_dict

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs = dict(
            target_modules=["c_attn", "wte"], modules_to_save=["score"], task_type="SEQ_CLS"
        )
        model = peft.get_peft_model(
            tiny_gpt2(transformers, "GPT2ForSequenceClassification"),
            peft.LoraConfig(r=2, bias=bias, init_lora_weights=False, **kwargs),
        )
        adapters = ["default"]
        if bias == "none":  # PEFT allows a bias mode with one adapter only
            model.add_adapter("other", peft.LoraConfig(r=3, **kwargs))
            adapters.append("other")
        memory = model.state_dict()
        for name in adapters:
            disk = to_peft_keys(memory, name, bias=bias)
            reference = get_peft_model_state_dict(
                model, adapter_name=name, save_embedding_layers=False
            )
            assert set(disk) == set(reference)
            assert "base_model.model.score.weight" in disk
            assert "base_model.model.transformer.wte.lora_embedding_A" in disk
            back = from_peft_keys(disk, name, modules_to_save=["score"])
            assert set(back) <= set(memory)
            assert all(back[k] is memory[k] for k in back)


KEY_PARTS = st.lists(
    st.sampled_from(["h", "0", "3", "attn", "c_attn", "mlp", "q_proj"]), min_size=1, max_size=4
)


@settings(max_examples=100, deadline=None)
@given(
    modules=st.lists(KEY_PARTS.map(".".join), min_size=1, max_size=5, unique=True),
    adapter=st.sampled_from(["default", "other", "attn"]),
    embed=st.booleans(),
)
def test_key_round_trip(modules, adapter, embed):
    memory, disk_expected = {}, {}
    for m in modules:
        base = f"base_model.model.{m}"
        memory[f"{base}.base_layer.weight"] = 0
        if embed:
            memory[f"{base}.lora_embedding_A.{adapter}"] = 1
            disk_expected[f"{base}.lora_embedding_A"] = 1
        else:
            memory[f"{base}.lora_A.{adapter}.weight"] = 1
            memory[f"{base}.lora_B.{adapter}.weight"] = 2
            disk_expected |= {f"{base}.lora_A.weight": 1, f"{base}.lora_B.weight": 2}
    memory[f"base_model.model.score.modules_to_save.{adapter}.weight"] = 3
    memory["base_model.model.score.original_module.weight"] = 4
    disk_expected["base_model.model.score.weight"] = 3
    disk = to_peft_keys(memory, adapter)
    assert disk == disk_expected
    back = from_peft_keys(disk, adapter, modules_to_save=["score"])
    assert back == {k: v for k, v in memory.items() if v not in (0, 4)}


def test_key_errors_and_peft_bias_duplicates():
    with pytest.raises(ValueError, match="'b'.*found adapters \\['a'\\]"):
        to_peft_keys({"m.q.lora_A.a.weight": 1}, "b")
    with pytest.raises(ValueError, match="bias"):
        to_peft_keys({"m.q.lora_A.a.weight": 1}, "a", bias="some")
    disk = {
        "base_model.model.head.weight": 1,
        "base_model.model.head.bias": 2,
        "base_model.model.head.modules_to_save.bias": 2,  # PEFT bias="all" writes these too
        "base_model.model.head.original_module.bias": 0,
        "base_model.model.lin0.base_layer.bias": 5,
    }
    assert from_peft_keys(disk, "x", modules_to_save=["head"]) == {
        "base_model.model.head.modules_to_save.x.weight": 1,
        "base_model.model.head.modules_to_save.x.bias": 2,
        "base_model.model.lin0.base_layer.bias": 5,
    }


# ----------------------------------------------------------------------------- adapter files


def test_save_and_load_adapter(tmp_path):
    from safetensors import safe_open

    config = LoraConfig(r=2, target_modules=["c_attn"])
    tensors = {
        "base_model.model.h.0.c_attn.lora_A.weight": np.arange(8, dtype=np.float32).reshape(2, 4),
        "base_model.model.h.0.c_attn.lora_B.weight": np.ones((12, 2), np.float32),
    }
    root = save_adapter(tmp_path, config, tensors)
    other = save_adapter(tmp_path, config, tensors, adapter_name="second")
    assert root == str(tmp_path) and other == str(tmp_path / "second")
    assert sorted(os.listdir(tmp_path)) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "second",
    ]
    with safe_open(tmp_path / "adapter_model.safetensors", "np") as f:
        assert f.metadata() == {"format": "pt"}
    assert config.inference_mode is False  # the caller's config is untouched; the file says True
    for name in ("default", "second"):
        loaded_config, loaded = load_adapter_files(tmp_path, name)
        assert loaded_config.inference_mode is True and loaded_config.r == 2
        assert set(loaded) == set(tensors)
        assert all(np.array_equal(loaded[k], tensors[k]) for k in tensors)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        load_adapter_files(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter_files(tmp_path)
    LoraConfig().save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        load_adapter_files(tmp_path)
    (tmp_path / "adapter_model.bin").write_bytes(b"\x80\x04 not really a pickle")
    with pytest.raises(ValueError, match="pickle.*never"):
        load_adapter_files(tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="safetensors"):
        load_adapter_files(tmp_path)
    with pytest.raises(ValueError, match="numeric"):
        save_adapter(tmp_path, LoraConfig(), {"k": np.array(["a"])})


def test_bfloat16_is_widened(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    values = torch.tensor([[1.5, -2.0], [3.25, 0.0]], dtype=torch.bfloat16)
    LoraConfig().save_pretrained(tmp_path)
    save_file({"m.lora_A.weight": values}, str(tmp_path / "adapter_model.safetensors"))
    _, loaded = load_adapter_files(tmp_path)
    assert loaded["m.lora_A.weight"].dtype == np.float32
    np.testing.assert_array_equal(loaded["m.lora_A.weight"], values.float().numpy())


def test_check_adapter_keys(tmp_path):
    expected = {"a.lora_A.weight": (4, 16), "a.lora_B.weight": (48, 4), "b.lora_A.weight": (4, 16)}
    found = {
        "a.lora_A.weight": np.zeros((8, 16)),
        "a.lora_B.weight": np.zeros((48, 8)),
        "c.lora_A.weight": np.zeros((4, 16)),
    }
    check_adapter_keys(expected, {k: np.zeros(s) for k, s in expected.items()}, tmp_path)
    with pytest.raises(ValueError) as info:
        check_adapter_keys(expected, found, tmp_path, hints=lora_shape_hints)
    message = str(info.value)
    assert str(tmp_path) in message
    assert re.search(r"missing keys.*\n\s+b\.lora_A\.weight", message)
    assert re.search(r"unexpected keys.*\n\s+c\.lora_A\.weight", message)
    assert "a.lora_A.weight: expected (4, 16), found (8, 16)" in message
    assert "r=4 vs r=8" in message
    with pytest.raises(ValueError, match="another model"):
        check_adapter_keys(expected, {"x.weight": np.zeros(3)}, "somewhere")


def test_check_adapter_keys_hints_match_the_axis_that_differs():
    # lora_A is (r, d_in), lora_B (d_out, r): only a differing r means another rank.
    expected = {"m.lora_A.weight": (8, 32), "m.lora_B.weight": (64, 8)}

    def message(found_shapes):
        with pytest.raises(ValueError) as info:
            check_adapter_keys(
                expected,
                {k: np.zeros(s) for k, s in found_shapes.items()},
                "ad",
                hints=lora_shape_hints,
            )
        return str(info.value)

    wider = message({"m.lora_A.weight": (8, 16), "m.lora_B.weight": (32, 8)})
    assert "another rank" not in wider and "r=8 vs r=8" not in wider
    assert "lora_A columns (d_in) / lora_B rows (d_out) differ (32 vs 16, 64 vs 32)" in wider
    assert "the adapter was made for a model with another hidden size" in wider
    rank = message({"m.lora_A.weight": (4, 32), "m.lora_B.weight": (64, 4)})
    assert "(r=8 vs r=4): the adapter has another rank" in rank
    assert "another hidden size" not in rank
    both = message({"m.lora_A.weight": (4, 16), "m.lora_B.weight": (64, 4)})
    assert "r=8 vs r=4" in both and "another hidden size" in both
    in_memory = {"m.lora_A.default.weight": (8, 32)}  # keys with the adapter name work too
    with pytest.raises(ValueError, match="another hidden size"):
        check_adapter_keys(in_memory, {"m.lora_A.default.weight": np.zeros((8, 16))}, "ad",
                           hints=lora_shape_hints)  # fmt: skip


def test_adapter_files_interoperate_with_peft(tmp_path):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")

    kwargs = dict(r=2, lora_alpha=4, target_modules=["c_attn"], init_lora_weights=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trained = peft.get_peft_model(tiny_gpt2(transformers), peft.LoraConfig(**kwargs))
        memory = {k: v.detach().numpy() for k, v in trained.state_dict().items()}
        # Ours -> PEFT: save what a minipeft PeftModel would hold; PEFT loads it bit for bit.
        save_adapter(tmp_path / "ours", LoraConfig(**kwargs), to_peft_keys(memory))
        loaded = peft.PeftModel.from_pretrained(tiny_gpt2(transformers), str(tmp_path / "ours"))
        # PEFT -> ours: read PEFT's folder and map it back to in-memory keys.
        trained.save_pretrained(str(tmp_path / "theirs"))
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, trained.state_dict()[key]), key
    config, disk = load_adapter_files(tmp_path / "theirs")
    assert isinstance(config, LoraConfig) and config.target_modules == ["c_attn"]
    back = from_peft_keys(disk)
    assert back.keys() == {k for k in memory if ".lora_" in k}
    assert all(np.array_equal(back[k], memory[k]) for k in back)
    shapes = {k: v.shape for k, v in back.items()}
    check_adapter_keys(shapes, back, tmp_path / "theirs")


def test_peft_bias_all_with_biased_module_to_save(tmp_path):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin0, self.head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)

    config = dict(target_modules=["lin0"], bias="all", modules_to_save=["head"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(Tiny(), peft.LoraConfig(**config))
        model.save_pretrained(str(tmp_path))
    memory = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    expected = {k: v.shape for k, v in to_peft_keys(memory, bias="all").items()}
    assert "base_model.model.head.bias" in expected
    _, disk = load_adapter_files(tmp_path)  # PEFT also wrote head.original_module.bias etc.
    check_adapter_keys(expected, disk, tmp_path)
    back = from_peft_keys(disk, modules_to_save=["head"])
    assert all(np.array_equal(back[k], memory[k]) for k in back)
