"""``add_weighted_adapter`` and mixed batches against Hugging Face PEFT 0.21.2.

Two LoRA adapters made by PEFT (non-zero B) are loaded into both libraries and combined there;
the combined adapter gives the same logits in both for every deterministic combination type
(``linear``, ``cat``, ``svd``, ``ties``, ``magnitude_prune`` and their SVD variants), and a mixed
batch gives PEFT's logits. Where PEFT is wrong (its issue #3761: one rsLoRA or DoRA adapter
with weight 1.0 does not reproduce itself) minipeft reproduces the adapter, and the test shows
PEFT's error.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from test_peft_interop import (  # noqa: E402
    IDS,
    TOL,
    gpt2_dir,  # noqa: F401 (fixtures)
    hf_logits,
    hf_model,
    llama_dir,  # noqa: F401
    our_logits,
    our_model,
)

from minipeft.peft import PeftModel  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:fan_in_fan_out"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]
TARGETS = {"gpt2": ["c_attn", "c_proj"], "llama": ["q_proj", "v_proj", "o_proj"]}


def _peft_adapters(folder: str, arch: str, tmp_path, **config) -> tuple:
    """PEFT model with adapters "one" (r=4) and "two" (r=4, another alpha), B random; saved."""
    model = hf_model(folder)
    torch.manual_seed(0)
    for i, _name in enumerate(("one", "two")):
        cfg = peft.LoraConfig(
            r=4,
            lora_alpha=8 + 4 * i,
            target_modules=TARGETS[arch],
            init_lora_weights=False,
            **config,
        )
        if i == 0:
            model = peft.get_peft_model(model, cfg, adapter_name="one")
        else:
            model.add_adapter("two", cfg)
    model.save_pretrained(str(tmp_path))
    ours = PeftModel.from_pretrained(our_model(folder), tmp_path / "one", adapter_name="one")
    ours.load_adapter(tmp_path / "two", adapter_name="two")
    return model.eval(), ours


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize(
    "kind", ["linear", "cat", "svd", "ties", "magnitude_prune", "ties_svd", "magnitude_prune_svd"]
)
def test_combinations_agree_with_peft(arch, kind, gpt2_dir, llama_dir, tmp_path) -> None:  # noqa: F811
    folder = {"gpt2": gpt2_dir, "llama": llama_dir}[arch]
    theirs, ours = _peft_adapters(folder, arch, tmp_path)
    kwargs = {"density": 0.6} if "ties" in kind or "prune" in kind else {}
    theirs.add_weighted_adapter(["one", "two"], [0.8, -0.5], "mix", combination_type=kind, **kwargs)
    ours.add_weighted_adapter(["one", "two"], [0.8, -0.5], "mix", combination_type=kind, **kwargs)
    theirs.set_adapter("mix")
    ours.set_adapter("mix")
    expected = hf_logits(theirs)
    assert np.abs(expected - hf_logits(hf_model(folder))).max() > 1e-2  # the combination matters
    np.testing.assert_allclose(our_logits(ours), expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("variant", ["use_rslora", "use_dora"])
def test_weight_one_reproduces_the_adapter_where_peft_does_not(
    variant,
    gpt2_dir,  # noqa: F811
    tmp_path,
) -> None:
    theirs, ours = _peft_adapters(gpt2_dir, "gpt2", tmp_path, **{variant: True})
    if variant == "use_dora":  # trained magnitudes (PEFT starts them at ‖W‖ and keeps that)
        _scale_magnitudes(ours, theirs)
    ours.set_adapter("one")
    original = our_logits(ours)
    theirs.set_adapter("one")
    np.testing.assert_allclose(hf_logits(theirs), original, atol=TOL, rtol=0)
    ours.add_weighted_adapter(["one"], [1.0], "mix", combination_type="linear")
    theirs.add_weighted_adapter(["one"], [1.0], "mix", combination_type="linear")
    ours.set_adapter("mix")
    theirs.set_adapter("mix")
    np.testing.assert_allclose(our_logits(ours), original, atol=TOL, rtol=0)
    assert np.abs(hf_logits(theirs) - original).max() > 1e-2  # PEFT's issue #3761


def _scale_magnitudes(ours, theirs) -> None:
    """Multiply each DoRA magnitude by the same random factors in both libraries."""
    rng = np.random.default_rng(3)
    mine = {n: p for n, p in ours.named_parameters() if "lora_magnitude_vector" in n}
    for name, p in theirs.named_parameters():
        if "lora_magnitude_vector" not in name:
            continue
        factor = rng.uniform(0.5, 1.5, size=tuple(p.shape)).astype(np.float32)
        with torch.no_grad():
            p.mul_(torch.tensor(factor))
        mine[name].data[...] *= factor


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_mixed_batch_agrees_with_peft(arch, gpt2_dir, llama_dir, tmp_path) -> None:  # noqa: F811
    folder = {"gpt2": gpt2_dir, "llama": llama_dir}[arch]
    theirs, ours = _peft_adapters(folder, arch, tmp_path)
    names = ["two", "__base__"]
    with torch.no_grad():
        expected = theirs(input_ids=torch.tensor(IDS), adapter_names=names).logits.numpy()
    ours.eval()
    got = our_logits_mixed(ours, names)
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


def our_logits_mixed(model, names: list[str]) -> np.ndarray:
    import minipeft as mp  # noqa: PLC0415

    with mp.no_grad():
        return model(input_ids=IDS, adapter_names=names).logits.numpy()
