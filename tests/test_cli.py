"""The ``minipeft`` command end to end, on the "nano" preset (a 1-layer, C = 32 GPT-2).

One module-scoped base model (a 512-token BPE trained on the pydoc corpus, then 3 steps) and
one LoRA adapter serve every test: pretrain → finetune (LM and classification) → merge →
generate → quickstart, plus the error paths (exit code 2 and one line on stderr).
``MINIPEFT_CACHE`` points into a temporary folder so nothing touches ``~/.cache``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minipeft
from minipeft.cli import main
from minipeft.creation import tensor
from minipeft.jobs import quickstart as quickstart_module
from minipeft.models import AutoModelForCausalLM
from minipeft.peft import PeftModel

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory):
    """A temporary folder holding the cache (``MINIPEFT_CACHE``) and every run's output."""
    root = tmp_path_factory.mktemp("cli")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINIPEFT_CACHE", str(root / "cache"))
        yield root


@pytest.fixture(scope="module")
def base(work: Path) -> Path:
    out = work / "base"
    assert main(["pretrain", "--preset", "nano", "--steps", "3", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def adapter(work: Path, base: Path) -> Path:
    out = work / "ad"
    argv = ["finetune", "--method", "lora", "--model", str(base), "--task", "docstrings",
            "--steps", "2", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    return out


# ---------------------------------------------------------------------------- version, info
def test_version_and_info(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"minipeft {minipeft.__version__}"

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"minipeft {minipeft.__version__}" in out
    assert "numpy" in out and "cupy" in out
    devices = next(line for line in out.splitlines() if line.startswith("devices"))
    assert "cpu" in devices


def test_python_dash_m_prints_the_version():
    run = subprocess.run([sys.executable, "-m", "minipeft", "--version"], capture_output=True,
                         text=True, timeout=60, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"minipeft {minipeft.__version__}"


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "usage: minipeft" in capsys.readouterr().out


# ---------------------------------------------------------------------------- the pipeline
def test_pretrain_writes_a_loadable_hf_folder(base: Path):
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (base / name).is_file(), name
    config = json.loads((base / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["n_layer"] == 1 and config["n_embd"] == 32
    model = AutoModelForCausalLM.from_pretrained(base)
    logits = model(input_ids=tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, config["vocab_size"])
    assert np.isfinite(logits.numpy()).all()


def test_finetune_lora_saves_an_adapter(adapter: Path):
    for name in ADAPTER_FILES:
        assert (adapter / name).is_file(), name
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"


@pytest.mark.filterwarnings("ignore:.*newly initialised")  # the fresh ``score`` head, expected
def test_finetune_sequence_classification(work: Path, base: Path, capsys):
    out = work / "ad-topic"
    argv = ["finetune", "--method", "lora", "--model", str(base), "--task", "docstring-topic",
            "--steps", "2", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert "docstring-topic: accuracy" in capsys.readouterr().out
    for name in ADAPTER_FILES:
        assert (out / name).is_file(), name
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS"


def test_merge_computes_the_same_logits(work: Path, base: Path, adapter: Path, capsys):
    out = work / "merged"
    argv = ["merge", "--model", str(base), "--adapter", str(adapter), "--out", str(out)]
    assert main(argv) == 0
    assert str(out) in capsys.readouterr().out
    assert (out / "tokenizer.json").is_file()  # the merged folder is self-contained

    merged = AutoModelForCausalLM.from_pretrained(out)
    ids = tensor(np.arange(40, dtype=np.int64)[None, :] % merged.config.vocab_size)
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    plain = AutoModelForCausalLM.from_pretrained(base)
    with minipeft.no_grad():
        want = peft(input_ids=ids).logits.numpy()
        got = merged(input_ids=ids).logits.numpy()
        before = plain(input_ids=ids).logits.numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert not np.array_equal(got, before)  # the adapter did change the model


def test_generate_prints_text(base: Path, adapter: Path, capsys):
    argv = ["generate", "--model", str(base), "--adapter", str(adapter), "--prompt", "def",
            "--max-new-tokens", "5"]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out.strip()
    assert text.startswith("def") and len(text) > len("def")


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "argv, message",
    [
        (["finetune", "--model", "{work}/no-such-model", "--steps", "1", "--quiet"],
         "no-such-model"),
        (["finetune", "--model", "{base}", "--task", "no-such-task", "--steps", "1", "--quiet"],
         "unknown task 'no-such-task'"),
        (["pretrain", "--preset", "nano", "--device", "tpu", "--out", "{work}/x", "--quiet"],
         "unknown device 'tpu'"),
        (["generate", "--model", "{base}", "--prompt", "def", "--device", "tpu"],
         "unknown device 'tpu'"),
        (["merge", "--model", "{base}", "--adapter", "{work}/no-such-adapter", "--out", "{work}/m"],
         "no-such-adapter"),
        (["generate", "--model", "{base}", "--prompt", ""], "encodes to no tokens"),
    ],
)  # fmt: skip
def test_bad_input_gives_exit_code_2_and_one_line(argv, message, work, base, capsys):
    argv = [a.format(work=work, base=base) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"minipeft {argv[0]}: error: ") and message in lines[0]
    assert not (work / "x").exists()  # the bad device was caught before any work


def test_unknown_option_value_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--method", "qlora"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'qlora'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- quickstart
def test_quickstart_prints_the_table(work: Path, base: Path, monkeypatch, capsys):
    monkeypatch.setattr(quickstart_module, "default_base_dir", lambda: base)
    result = quickstart_module.quickstart(out=str(work / "qs"), steps=2, progress=False)
    out = capsys.readouterr().out
    assert "using the cached base model" in out  # no pretraining: the nano base is reused
    for row in ("docstrings held-out loss", "pydoc (pretraining) loss", "parameters trained",
                "size on disk", "time"):  # fmt: skip
        assert any(line.startswith(row) for line in out.splitlines()), row
    assert {"before", "after", "pretrain_domain", "trainable", "adapter_bytes"} <= result.keys()
    assert result["trainable"] > 0 and result["adapter_bytes"] > 0
    assert all(np.isfinite(v) for v in result["pretrain_domain"])
    assert (work / "qs" / "merged" / "model.safetensors").is_file()
