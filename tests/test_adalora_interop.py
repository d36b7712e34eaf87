"""AdaLoRA against Hugging Face PEFT 0.21.2 on the same transformers models (tiny GPT-2 and
grouped-query LLaMA, saved by transformers, loaded here with ``from_pretrained``).

* the same SGD steps from the same weights give the same losses, the same E after every step
  and the same ``rank_pattern`` (PEFT's RankAllocator vs ours), in eval mode (no dropout);
* an adapter trained and pruned here loads in PEFT with the same logits, and one trained and
  pruned by PEFT (its ``update_and_allocate``) loads here, merged or not; both saved files have
  the same keys, shapes and ``rank_pattern``;
* ``print_trainable_parameters`` prints PEFT's line.

Skipped without torch / transformers / peft.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import minipeft as mp  # noqa: E402
from minipeft.fileio import load_safetensors  # noqa: E402
from minipeft.models import AutoModelForCausalLM  # noqa: E402
from minipeft.optim import SGD  # noqa: E402
from minipeft.peft import AdaLoraConfig, PeftModel, get_peft_model  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:fan_in_fan_out"),  # GPT-2's Conv1D: both fix the flag
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore:The following rank_pattern keys"),  # PEFT, on loading
]
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

IDS = np.array([[3, 14, 15, 9, 26, 5], [35, 8, 9, 7, 9, 32]])
TOL = 1e-4
# A schedule with every phase in 5 steps: prune at 1..3, the final allocation at 4, then fixed.
SCHEDULE = {"init_r": 4, "target_r": 2, "total_step": 5, "tinit": 0, "tfinal": 1,
            "lora_alpha": 2, "task_type": "CAUSAL_LM"}  # fmt: skip
TARGETS = {"gpt2": ["c_attn", "c_proj"], "llama": ["q_proj", "v_proj", "down_proj"]}


def _save_hf(model, folder) -> str:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # HF's init (std 0.02) gives near-zero logits: make them matter
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.15)
    model.eval().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    gpt2 = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64,
                                   n_positions=16, bos_token_id=1, eos_token_id=2)  # fmt: skip
    llama = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                     num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, max_position_embeddings=16)  # fmt: skip
    return {
        "gpt2": _save_hf(transformers.GPT2LMHeadModel(gpt2), tmp_path_factory.mktemp("gpt2")),
        "llama": _save_hf(transformers.LlamaForCausalLM(llama), tmp_path_factory.mktemp("llama")),
    }


def hf_model(folder: str):
    return transformers.AutoModelForCausalLM.from_pretrained(folder).eval()


def hf_logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor(IDS)).logits.numpy()


def our_logits(model) -> np.ndarray:
    with mp.no_grad():
        return model(input_ids=IDS).logits.numpy()


def pair(arch: str, folder: str, seed: int = 0):
    """(PEFT's model, ours) with the same AdaLoRA weights: E ~ N(0, 1) so it matters."""
    torch.manual_seed(seed)
    config = {**SCHEDULE, "target_modules": TARGETS[arch]}
    theirs = peft.get_peft_model(hf_model(folder), peft.AdaLoraConfig(**config))
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if ".lora_E." in name:
                p.normal_(0.0, 1.0)
    ours = get_peft_model(AutoModelForCausalLM.from_pretrained(folder), AdaLoraConfig(**config))
    ours.eval()  # no dropout: both compute the same function
    params = dict(ours.named_parameters())
    for name, p in theirs.named_parameters():
        if ".lora_" in name:
            params[name].data[...] = p.detach().numpy()
    return theirs, ours


def step(model, number: int, ours: bool, lr: float = 0.5) -> tuple[float, dict | None]:
    """One SGD step (plain SGD keeps no state) on the LM loss (+ the penalty), then
    ``update_and_allocate(number)``; returns (loss, rank pattern)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = SGD(params, lr=lr) if ours else torch.optim.SGD(params, lr=lr)
    ids = IDS if ours else torch.tensor(IDS)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    (model if ours else model.base_model).update_and_allocate(number)
    opt.zero_grad()
    pattern = model.peft_config["default"].rank_pattern
    return loss.item(), dict(pattern) if pattern else None


def steps(model, n: int, ours: bool) -> None:
    for number in range(1, n + 1):
        step(model, number, ours)


def e_values(model, ours: bool) -> dict[str, np.ndarray]:
    return {n: (p.numpy() if ours else p.detach().numpy()) for n, p in model.named_parameters()
            if ".lora_E." in n}  # fmt: skip


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_the_same_steps_allocate_the_same_ranks_as_peft(arch, folders) -> None:
    theirs, ours = pair(arch, folders[arch])
    for number in range(1, 6):  # one step at a time, comparing after each
        loss_t, pattern_t = step(theirs, number, ours=False)
        loss_o, pattern_o = step(ours, number, ours=True)
        assert loss_o == pytest.approx(loss_t, rel=1e-5, abs=1e-5)
        assert pattern_o == pattern_t, number
        e_t, e_o = e_values(theirs, False), e_values(ours, True)
        for name in e_t:
            np.testing.assert_allclose(e_o[name], e_t[name], atol=1e-5, err_msg=name)
            assert ((e_o[name] == 0) == (e_t[name] == 0)).all(), name  # the same pruned entries
    kept = sum(map(sum, ours.peft_config["default"].rank_pattern.values()))
    assert kept == 2 * len(ours.peft_config["default"].rank_pattern)  # target_r on average


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_pruned_adapter_made_here_loads_in_peft(arch, folders, tmp_path) -> None:
    _, ours = pair(arch, folders[arch], seed=1)
    steps(ours, 4, ours=True)
    expected = our_logits(ours)
    assert np.abs(expected - hf_logits(hf_model(folders[arch]))).max() > 1e-2
    ours.save_pretrained(tmp_path)
    pattern = json.loads((tmp_path / "adapter_config.json").read_text())["rank_pattern"]
    assert any(not all(keep) for keep in pattern.values())  # something was pruned
    theirs = peft.PeftModel.from_pretrained(hf_model(folders[arch]), str(tmp_path))
    np.testing.assert_allclose(hf_logits(theirs), expected, atol=TOL, rtol=0)
    for name, keep in pattern.items():  # PEFT resized each module to its kept triplets
        module = theirs.base_model.model.get_submodule(name.removesuffix(".lora_E"))
        assert module.lora_A["default"].shape[0] == sum(keep)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_pruned_adapter_made_by_peft_loads_here(arch, folders, tmp_path) -> None:
    theirs, ours_twin = pair(arch, folders[arch], seed=2)
    steps(theirs, 4, ours=False)
    expected = hf_logits(theirs)
    theirs.save_pretrained(str(tmp_path / "peft"))
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folders[arch]),
                                       tmp_path / "peft")  # fmt: skip
    np.testing.assert_allclose(our_logits(loaded), expected, atol=TOL, rtol=0)
    loaded.merge_adapter()
    np.testing.assert_allclose(our_logits(loaded), expected, atol=TOL, rtol=0)
    # The same steps here save the same files: keys, shapes and rank_pattern.
    steps(ours_twin, 4, ours=True)
    ours_twin.save_pretrained(tmp_path / "ours")
    a = load_safetensors(tmp_path / "peft" / "adapter_model.safetensors")
    b = load_safetensors(tmp_path / "ours" / "adapter_model.safetensors")
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    for key in a:
        np.testing.assert_allclose(b[key], a[key], atol=1e-5, err_msg=key)
    configs = [
        json.loads((tmp_path / d / "adapter_config.json").read_text()) for d in ("peft", "ours")
    ]
    assert configs[0]["rank_pattern"] == configs[1]["rank_pattern"]


def test_print_trainable_parameters_matches_peft(folders, capsys) -> None:
    for arch, folder in folders.items():
        config = {**SCHEDULE, "target_modules": TARGETS[arch]}
        peft.get_peft_model(
            hf_model(folder), peft.AdaLoraConfig(**config)
        ).print_trainable_parameters()
        expected = capsys.readouterr().out
        model = AutoModelForCausalLM.from_pretrained(folder)
        get_peft_model(model, AdaLoraConfig(**config)).print_trainable_parameters()
        assert capsys.readouterr().out == expected
