"""Make AdapterHub (`adapters` 1.3.0) reference fixtures for bottleneck adapters.

What it writes, under ``tests/fixtures/adapterhub/``:

* ``gpt2/base/`` and ``llama/base/``: tiny, randomly initialised (seeded)
  ``GPT2LMHeadModel`` / ``LlamaForCausalLM`` saved with
  ``save_pretrained(..., safe_serialization=True)`` (config.json +
  model.safetensors, float32).
* ``<arch>/<name>/``: one folder per bottleneck adapter, written by
  ``model.save_adapter(folder, name, use_safetensors=True)``
  (adapter_config.json + adapter.safetensors). Adapters: ``seq_bn``,
  ``double_seq_bn``, ``par_bn``, ``seq_bn_custom``, ``par_bn_channel`` (see
  ``ADAPTERS`` below). Every adapter parameter is overwritten with seeded,
  non-zero random values so that each adapter really changes the outputs.
* ``<arch>/reference.safetensors``: ``input_ids`` (int64, (2, 7)) and float64
  logits: ``logits.base`` (no adapter active), ``logits.<name>`` (that adapter
  alone active) and ``logits.stack.<a>.<b>`` (``Stack(a, b)`` active).
  The model is cast with ``model.double()`` after its weights are set and the
  forward runs in float64 (no attention mask, no padding).

Nothing is downloaded: models are built from configs.

Recreate the environment (CPU is enough)::

    python3 -m venv .venv-adapters
    .venv-adapters/bin/pip install torch==2.13.0 adapters==1.3.0

(adapters 1.3.0 pulls in transformers 4.57.x; the fixtures were made with
transformers 4.57.6.) Then, from the repository root::

    .venv-adapters/bin/python scripts/adapterhub/make_fixtures.py

Check a fixture by re-loading it through AdapterHub with
``scripts/adapterhub/check_load.py``.
"""

import shutil
from pathlib import Path

import adapters
import torch
from adapters import DoubleSeqBnConfig, ParBnConfig, SeqBnConfig
from adapters.composition import Stack
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "adapterhub"

VOCAB = 96
BATCH, SEQ = 2, 7


def adapter_configs():
    return {
        "seq_bn": SeqBnConfig(),
        "double_seq_bn": DoubleSeqBnConfig(),
        "par_bn": ParBnConfig(),
        "seq_bn_custom": SeqBnConfig(
            reduction_factor=8,
            non_linearity="gelu",
            original_ln_before=False,
            residual_before_ln=False,
            scaling="learned",
            ln_after=True,
            leave_out=[1],
            mh_adapter=True,
        ),
        "par_bn_channel": ParBnConfig(reduction_factor=4, scaling="channel", non_linearity="swish"),
    }


# Stack compositions stored as logits.stack.<a>.<b>
STACKS = [
    ("seq_bn", "par_bn"),
    ("double_seq_bn", "seq_bn"),
    ("par_bn", "seq_bn"),
]


def build_base(arch):
    if arch == "gpt2":
        torch.manual_seed(1000)
        config = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4)
        model = GPT2LMHeadModel(config)
    elif arch == "llama":
        torch.manual_seed(2000)
        config = LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=32,
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(config)
    else:
        raise ValueError(arch)
    return model.float().eval()


def randomize_adapter(model, name, seed):
    """Overwrite every parameter of adapter `name` with seeded non-zero values."""
    gen = torch.Generator().manual_seed(seed)
    marker = f".adapters.{name}."
    touched = []
    with torch.no_grad():
        for pname, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if marker not in pname:
                continue
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "adapter_norm" in pname and pname.endswith(".weight"):
                value = 1.0 + 0.1 * noise  # layer-norm gain
            elif pname.endswith(".scaling"):
                value = 1.0 + 0.2 * noise  # learned / channel scaling
            else:
                value = 0.2 * noise  # weights and biases
            p.copy_(value)
            touched.append(pname)
    # every state-dict entry of the adapter must be a parameter we set
    sd_keys = [k for k in model.state_dict() if marker in k]
    assert sorted(sd_keys) == sorted(touched), (sd_keys, touched)
    assert touched, name
    return touched


@torch.no_grad()
def logits_of(model, input_ids, setup):
    model.set_active_adapters(setup)
    model.eval()
    out = model(input_ids=input_ids).logits
    assert out.dtype == torch.float64
    return out.detach().clone().contiguous()


def make_arch(arch, arch_seed):
    arch_dir = OUT / arch
    if arch_dir.exists():
        shutil.rmtree(arch_dir)
    arch_dir.mkdir(parents=True)

    model = build_base(arch)
    model.save_pretrained(arch_dir / "base", safe_serialization=True)

    torch.manual_seed(arch_seed)
    input_ids = torch.randint(0, VOCAB, (BATCH, SEQ), dtype=torch.int64)

    # base logits before adapters.init (float64 copy of the same weights)
    with torch.no_grad():
        base_pre = model.double()(input_ids=input_ids).logits.clone()
    model.float()

    adapters.init(model)
    configs = adapter_configs()
    for i, (name, cfg) in enumerate(configs.items()):
        model.add_adapter(name, config=cfg)
        randomize_adapter(model, name, seed=arch_seed + 10 * (i + 1))
        model.save_adapter(str(arch_dir / name), name, use_safetensors=True)

    model.double()
    model.eval()
    ref = {"input_ids": input_ids}
    ref["logits.base"] = logits_of(model, input_ids, None)
    d = (ref["logits.base"] - base_pre).abs().max().item()
    assert d == 0.0, f"adapters.init changed base logits by {d}"
    for name in configs:
        ref[f"logits.{name}"] = logits_of(model, input_ids, name)
    for a, b in STACKS:
        ref[f"logits.stack.{a}.{b}"] = logits_of(model, input_ids, Stack(a, b))
    model.set_active_adapters(None)

    report = {}
    for key, val in ref.items():
        if key.startswith("logits.") and key != "logits.base":
            diff = (val - ref["logits.base"]).abs().max().item()
            report[key] = diff
            assert diff > 1e-3, f"{arch}: {key} differs from base by only {diff}"
    # no metadata: safetensors writes the metadata map in random order (the bytes would differ)
    save_file(ref, str(arch_dir / "reference.safetensors"))
    print(f"[{arch}] |logits.base| max = {ref['logits.base'].abs().max().item():.4g}")
    for key, diff in report.items():
        print(f"[{arch}] max |{key} - logits.base| = {diff:.4g}")
    return ref


def main():
    torch.set_default_dtype(torch.float32)
    make_arch("gpt2", arch_seed=1)
    make_arch("llama", arch_seed=2)
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"total fixture size: {total} bytes")
    assert total < 1_000_000


if __name__ == "__main__":
    main()
