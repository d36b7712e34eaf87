"""Adapters move between minipeft and Hugging Face PEFT 0.21.2 on the same transformers model.

Tiny random GPT-2 (n_embd 32, 2 layers) and LLaMA (grouped-query attention, 4 query / 2 key-value
heads) are made with transformers, saved with ``save_pretrained`` and loaded here with
``AutoModelForCausalLM.from_pretrained``. Then, both ways, an adapter with a non-zero B saved by one
library loads in the other with the same logits (≤ 1e-4), the printed trainable-parameter lines are
identical, a SEQ_CLS adapter carries its ``score`` head, and a model merged here loads in
transformers with the logits of PEFT's merged model.

HF GPT-2 uses ``Conv1D`` (PEFT then saves ``fan_in_fan_out=True``); ours uses ``Linear``: loading
and merging must still agree, including on the square ``c_proj``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import minipeft as mp  # noqa: E402
from minipeft.models import AutoModelForCausalLM, AutoModelForSequenceClassification  # noqa: E402
from minipeft.peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402

# Expected: both libraries warn when a saved fan_in_fan_out does not fit the layer, and fix it.
pytestmark = [
    pytest.mark.filterwarnings("ignore:fan_in_fan_out"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

IDS = np.array([[3, 14, 15, 9, 26, 5], [35, 8, 9, 7, 9, 32]])
CLS_IDS = np.array([[3, 14, 15, 9, 26, 5], [35, 8, 9, 0, 0, 0]])  # pad_token_id 0 on the right
CLS_MASK = (CLS_IDS != 0).astype(np.int64)
TOL = 1e-4
GPT2_TARGETS = ["c_attn", "c_proj", "c_fc"]  # attn.c_proj is square: fan_in_fan_out matters


def _randomize(model) -> None:
    """HF's init (std 0.02) makes near-zero logits; larger weights make the checks meaningful."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.15)


def _save_hf(model, folder) -> str:
    _randomize(model)
    model.eval().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> str:
    cfg = transformers.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=64,
        n_positions=16,
        bos_token_id=1,
        eos_token_id=2,
    )
    return _save_hf(transformers.GPT2LMHeadModel(cfg), tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> str:
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16,
    )
    return _save_hf(transformers.LlamaForCausalLM(cfg), tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def gpt2_cls_dir(tmp_path_factory) -> str:
    cfg = transformers.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=64,
        n_positions=16,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        num_labels=3,
    )
    model = transformers.GPT2ForSequenceClassification(cfg)
    return _save_hf(model, tmp_path_factory.mktemp("gpt2_cls"))


def hf_model(folder: str, cls: bool = False):
    auto = (
        transformers.AutoModelForSequenceClassification
        if cls
        else (transformers.AutoModelForCausalLM)
    )
    return auto.from_pretrained(folder).eval()


def our_model(folder: str, cls: bool = False):
    auto = AutoModelForSequenceClassification if cls else AutoModelForCausalLM
    return auto.from_pretrained(folder)


def hf_logits(model, ids: np.ndarray = IDS, mask: np.ndarray | None = None) -> np.ndarray:
    kw = {} if mask is None else {"attention_mask": torch.tensor(mask)}
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), **kw).logits.float().numpy()


def our_logits(model, ids: np.ndarray = IDS, mask: np.ndarray | None = None) -> np.ndarray:
    kw = {} if mask is None else {"attention_mask": mask}
    with mp.no_grad():
        return model(input_ids=ids, **kw).logits.numpy()


def test_base_models_agree(gpt2_dir: str, llama_dir: str) -> None:
    for folder in (gpt2_dir, llama_dir):
        np.testing.assert_allclose(
            our_logits(our_model(folder)), hf_logits(hf_model(folder)), atol=TOL, rtol=0
        )


@pytest.mark.parametrize(("arch", "targets"), [("gpt2", GPT2_TARGETS), ("llama", "all-linear")])
def test_adapter_made_here_loads_in_peft(arch, targets, gpt2_dir, llama_dir, tmp_path) -> None:
    folder = {"gpt2": gpt2_dir, "llama": llama_dir}[arch]
    ours = get_peft_model(
        our_model(folder),
        LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=targets),
    )
    expected = our_logits(ours)
    assert np.abs(expected - hf_logits(hf_model(folder))).max() > 1e-2  # the adapter matters
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(hf_model(folder), str(tmp_path))
    np.testing.assert_allclose(hf_logits(theirs), expected, atol=TOL, rtol=0)


@pytest.mark.parametrize(("arch", "targets"), [("gpt2", GPT2_TARGETS), ("llama", None)])
def test_adapter_made_by_peft_loads_here(arch, targets, gpt2_dir, llama_dir, tmp_path) -> None:
    folder = {"gpt2": gpt2_dir, "llama": llama_dir}[arch]
    config = peft.LoraConfig(r=4, lora_alpha=16, init_lora_weights=False, target_modules=targets)
    theirs = peft.get_peft_model(hf_model(folder), config)
    expected = hf_logits(theirs)
    theirs.save_pretrained(str(tmp_path))
    ours = PeftModel.from_pretrained(our_model(folder), tmp_path)
    np.testing.assert_allclose(our_logits(ours), expected, atol=TOL, rtol=0)
    ours.merge_adapter()  # the saved fan_in_fan_out=True must not transpose our Linear deltas
    np.testing.assert_allclose(our_logits(ours), expected, atol=TOL, rtol=0)


@pytest.mark.parametrize(
    ("arch", "kwargs"),
    [
        ("gpt2", {}),
        ("gpt2", {"target_modules": "all-linear", "bias": "all"}),
        ("llama", {}),
        ("llama", {"target_modules": ["q_proj", "k_proj", "down_proj"], "r": 3}),
    ],
)
def test_print_trainable_parameters_matches_peft(arch, kwargs, gpt2_dir, llama_dir, capsys):
    folder = {"gpt2": gpt2_dir, "llama": llama_dir}[arch]
    kwargs = {"r": 4, **kwargs}
    theirs = peft.get_peft_model(hf_model(folder), peft.LoraConfig(**kwargs))
    theirs.print_trainable_parameters()
    expected = capsys.readouterr().out
    ours = get_peft_model(our_model(folder), LoraConfig(**kwargs))
    ours.print_trainable_parameters()
    assert capsys.readouterr().out == expected
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()


def test_seq_cls_adapter_and_score_round_trip(gpt2_cls_dir: str, tmp_path, capsys) -> None:
    def cls_logits(model, ours: bool) -> np.ndarray:
        return (our_logits if ours else hf_logits)(model, CLS_IDS, CLS_MASK)

    base = cls_logits(hf_model(gpt2_cls_dir, cls=True), ours=False)
    np.testing.assert_allclose(
        cls_logits(our_model(gpt2_cls_dir, cls=True), ours=True), base, atol=TOL, rtol=0
    )
    kwargs = {"r": 4, "task_type": "SEQ_CLS", "init_lora_weights": False}

    # minipeft -> PEFT
    ours = get_peft_model(our_model(gpt2_cls_dir, cls=True), LoraConfig(**kwargs))
    ours.get_base_model().score.modules_to_save["default"].weight.data[...] += 0.5  # "trained"
    expected = cls_logits(ours, ours=True)
    ours.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(
        hf_model(gpt2_cls_dir, cls=True), str(tmp_path / "ours")
    )
    np.testing.assert_allclose(cls_logits(theirs, ours=False), expected, atol=TOL, rtol=0)
    with theirs.disable_adapter():
        np.testing.assert_allclose(cls_logits(theirs, ours=False), base, atol=TOL, rtol=0)

    # PEFT -> minipeft
    theirs = peft.get_peft_model(hf_model(gpt2_cls_dir, cls=True), peft.LoraConfig(**kwargs))
    with torch.no_grad():
        theirs.base_model.model.score.modules_to_save["default"].weight.add_(0.5)
    expected = cls_logits(theirs, ours=False)
    assert np.abs(expected - base).max() > 1e-2
    theirs.save_pretrained(str(tmp_path / "theirs"))
    ours = PeftModel.from_pretrained(our_model(gpt2_cls_dir, cls=True), tmp_path / "theirs")
    np.testing.assert_allclose(cls_logits(ours, ours=True), expected, atol=TOL, rtol=0)
    saved = [
        json.loads((tmp_path / d / "adapter_config.json").read_text()) for d in ("ours", "theirs")
    ]
    assert saved[0]["modules_to_save"] == saved[1]["modules_to_save"] == ["classifier", "score"]
    assert set(saved[0]) == set(saved[1])  # the same adapter_config.json keys as PEFT

    # Same trainable count (LoRA + score copy), same printed line.
    theirs.print_trainable_parameters()
    line = capsys.readouterr().out
    ours = get_peft_model(our_model(gpt2_cls_dir, cls=True), LoraConfig(**kwargs))
    ours.print_trainable_parameters()
    assert capsys.readouterr().out == line


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_merged_here_loads_in_transformers(arch, gpt2_dir, llama_dir, tmp_path) -> None:
    folder = {"gpt2": gpt2_dir, "llama": llama_dir}[arch]
    targets = GPT2_TARGETS if arch == "gpt2" else "all-linear"
    ours = get_peft_model(
        our_model(folder),
        LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=targets),
    )
    ours.save_pretrained(tmp_path / "adapter")
    theirs = peft.PeftModel.from_pretrained(hf_model(folder), str(tmp_path / "adapter"))
    their_merged = hf_logits(theirs.merge_and_unload())

    ours.merge_and_unload().save_pretrained(tmp_path / "merged")
    reloaded = hf_model(str(tmp_path / "merged"))
    assert type(reloaded).__name__ == type(hf_model(folder)).__name__
    np.testing.assert_allclose(hf_logits(reloaded), their_merged, atol=TOL, rtol=0)


@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_trained_biases_round_trip_both_ways(bias: str, gpt2_dir: str, tmp_path) -> None:
    kwargs = {"r": 4, "init_lora_weights": False, "bias": bias, "target_modules": ["c_attn"]}
    ours = get_peft_model(our_model(gpt2_dir), LoraConfig(**kwargs))
    for name, p in ours.named_parameters():
        if p.requires_grad and name.endswith("bias"):
            p.data[...] += 0.3  # "trained" biases change the output and must be saved
    expected = our_logits(ours)
    ours.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(hf_model(gpt2_dir), str(tmp_path / "ours"))
    np.testing.assert_allclose(hf_logits(theirs), expected, atol=TOL, rtol=0)

    theirs = peft.get_peft_model(hf_model(gpt2_dir), peft.LoraConfig(**kwargs))
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if p.requires_grad and name.endswith("bias"):
                p.add_(0.3)
    expected = hf_logits(theirs)
    theirs.save_pretrained(str(tmp_path / "theirs"))
    ours = PeftModel.from_pretrained(our_model(gpt2_dir), tmp_path / "theirs")
    np.testing.assert_allclose(our_logits(ours), expected, atol=TOL, rtol=0)


EMBED_TARGETS = {"gpt2": ["c_attn", "wte"], "llama": ["q_proj", "embed_tokens"]}


def _nonzero_embedding_lora(model, ours: bool) -> None:
    """A (zero at init for embeddings) gets values, so the embedding update is not zero."""
    gen = np.random.default_rng(1)
    for module in model.modules():
        table = getattr(module, "lora_embedding_A", None)
        if table is None or not len(table):
            continue
        for key in list(table.keys()):
            values = gen.normal(size=tuple(table[key].shape)).astype(np.float32) * 0.5
            if ours:
                table[key].data[...] = values
            else:
                with torch.no_grad():
                    table[key].copy_(torch.tensor(values))


@pytest.mark.filterwarnings("ignore:Setting `save_embedding_layers`")  # PEFT: embed_tokens
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_embedding_lora_moves_both_ways(arch, gpt2_dir, llama_dir, tmp_path) -> None:
    folder = {"gpt2": gpt2_dir, "llama": llama_dir}[arch]
    base = hf_logits(hf_model(folder))
    # minipeft -> PEFT
    ours = get_peft_model(
        our_model(folder), LoraConfig(r=4, lora_alpha=8, target_modules=EMBED_TARGETS[arch])
    )
    _nonzero_embedding_lora(ours, ours=True)
    expected = our_logits(ours)
    assert np.abs(expected - base).max() > 1e-2  # the embedding update matters
    ours.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(hf_model(folder), str(tmp_path / "ours"))
    np.testing.assert_allclose(hf_logits(theirs), expected, atol=TOL, rtol=0)
    # PEFT -> minipeft
    config = peft.LoraConfig(r=4, lora_alpha=16, target_modules=EMBED_TARGETS[arch])
    theirs = peft.get_peft_model(hf_model(folder), config)
    _nonzero_embedding_lora(theirs, ours=False)
    expected = hf_logits(theirs)
    assert np.abs(expected - base).max() > 1e-2
    theirs.save_pretrained(str(tmp_path / "theirs"))
    ours = PeftModel.from_pretrained(our_model(folder), tmp_path / "theirs")
    np.testing.assert_allclose(our_logits(ours), expected, atol=TOL, rtol=0)


def test_seq_cls_embedding_lora_loads_in_peft(gpt2_cls_dir: str, tmp_path) -> None:
    kwargs = {"r": 4, "task_type": "SEQ_CLS", "target_modules": ["c_attn", "wte"]}
    ours = get_peft_model(our_model(gpt2_cls_dir, cls=True), LoraConfig(**kwargs))
    _nonzero_embedding_lora(ours, ours=True)
    expected = our_logits(ours, CLS_IDS, CLS_MASK)
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(hf_model(gpt2_cls_dir, cls=True), str(tmp_path))
    np.testing.assert_allclose(hf_logits(theirs, CLS_IDS, CLS_MASK), expected, atol=TOL, rtol=0)
