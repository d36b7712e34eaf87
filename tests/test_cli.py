"""The ``minipeft`` command end to end, on the "nano" preset (a 1-layer, C = 32 GPT-2).

One module-scoped base model (a 512-token BPE trained on the pydoc corpus, then 3 steps) and
one LoRA adapter serve every test: pretrain → finetune (LM and classification) → merge →
generate → quickstart, plus the error paths (exit code 2 and one line on stderr).
``MINIPEFT_CACHE`` points into a temporary folder so nothing touches ``~/.cache``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import minipeft
from minipeft.cli import main
from minipeft.creation import tensor
from minipeft.fileio import load_safetensors
from minipeft.jobs import finetune as finetune_module
from minipeft.jobs import pretrain as pretrain_module
from minipeft.jobs import quickstart as quickstart_module
from minipeft.models import AutoModelForCausalLM, AutoModelForSequenceClassification
from minipeft.models.generation import GenerationMixin
from minipeft.peft import PeftModel

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@pytest.fixture(scope="module")
def adapter(work: Path, base: Path) -> Path:
    out = work / "ad"
    argv = ["finetune", "--method", "lora", "--model", str(base), "--task", "docstrings",
            "--steps", "2", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def cls_adapter(work: Path, base: Path) -> Path:
    """A SEQ_CLS adapter (LoRA + the trained ``score`` head) for the docstring-topic task."""
    out = work / "ad-topic"
    argv = ["finetune", "--method", "lora", "--model", str(base), "--task", "docstring-topic",
            "--steps", "2", "--out", str(out), "--quiet"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a new head is what SEQ_CLS means: no warning for it
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
    out = work / "ad-topic-2"
    argv = ["finetune", "--method", "lora", "--model", str(base), "--task", "docstring-topic",
            "--steps", "2", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert "docstring-topic: accuracy" in capsys.readouterr().out
    for name in ADAPTER_FILES:
        assert (out / name).is_file(), name
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS"


def test_merge_of_a_classification_adapter_does_not_warn_about_its_head(
    work: Path, base: Path, cls_adapter: Path, recwarn
):
    out = work / "merged-topic"
    argv = ["merge", "--model", str(base), "--adapter", str(cls_adapter), "--out", str(out)]
    assert main(argv) == 0
    messages = [str(w.message) for w in recwarn]
    assert not any("newly initialised" in m for m in messages), messages  # the adapter has it
    merged = AutoModelForSequenceClassification.from_pretrained(out)
    score = load_safetensors(cls_adapter / "adapter_model.safetensors")[
        "base_model.model.score.weight"
    ]
    np.testing.assert_array_equal(merged.score.weight.numpy(), score)


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


@pytest.mark.parametrize(
    "options, do_sample, temperature",
    [
        ([], False, None),  # greedy
        (["--temperature", "0"], False, None),
        (["--top-p", "0.9"], True, 1.0),  # a filter alone samples, at temperature 1
        (["--top-k", "5"], True, 1.0),
        (["--temperature", "0.7"], True, 0.7),
        (["--top-k", "5", "--temperature", "0.5"], True, 0.5),
    ],
)  # fmt: skip
def test_generate_samples_when_asked(options, do_sample, temperature, base, monkeypatch, capsys):
    calls = []
    original = GenerationMixin.generate

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", spy)
    argv = ["generate", "--model", str(base), "--prompt", "def", "--max-new-tokens", "3"]
    assert main(argv + options) == 0
    assert capsys.readouterr().out.startswith("def")
    (kwargs,) = calls
    assert kwargs["do_sample"] is do_sample
    if do_sample:
        assert kwargs["temperature"] == temperature


def test_generate_refuses_a_classification_adapter(work: Path, base: Path, adapter: Path, capsys):
    seq_cls = work / "ad-as-seq-cls"  # only the config is read, so relabelling one will do
    shutil.copytree(adapter, seq_cls, dirs_exist_ok=True)
    config = json.loads((seq_cls / "adapter_config.json").read_text())
    (seq_cls / "adapter_config.json").write_text(json.dumps({**config, "task_type": "SEQ_CLS"}))
    argv = ["generate", "--model", str(base), "--adapter", str(seq_cls), "--prompt", "def"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "the adapter is a SEQ_CLS (classification: use minipeft predict) adapter; " in err
    assert "generate needs a CAUSAL_LM" in err


def test_pretrain_on_a_tiny_corpus_says_what_to_do(work: Path, capsys):
    corpus = work / "tiny.txt"  # 40 short paragraphs: about 600 tokens, 9 blocks of 64
    corpus.write_text("\n\n".join(
        f"Paragraph {i}: the quick brown fox jumps over the lazy dog {i} times." for i in range(40)
    ))  # fmt: skip
    argv = ["pretrain", "--preset", "nano", "--corpus", str(corpus), "--steps", "2", "--quiet"]
    assert main([*argv, "--out", str(work / "tiny-out")]) == 2
    err = capsys.readouterr().err
    found = re.search(r"training split gave [\d,]+ tokens = (\d+) blocks of 64 tokens", err)
    assert found, err
    blocks = int(found.group(1))
    assert 0 < blocks < 16 and "fewer than batch_size=16" in err
    assert f"use a larger corpus or --batch-size {blocks} or less" in err
    assert main([*argv, "--out", str(work / "tiny-out"), "--batch-size", str(blocks)]) == 0
    assert (work / "tiny-out" / "model.safetensors").is_file()


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_bad_steps_fail_before_any_work(command, work: Path, base: Path, monkeypatch, capsys):
    def slow(*args, **kwargs):
        pytest.fail("work started before the arguments were checked")

    monkeypatch.setattr(pretrain_module, "train_bpe_tokenizer", slow)
    monkeypatch.setattr(finetune_module, "evaluate", slow)
    model = ["--preset", "nano"] if command == "pretrain" else ["--model", str(base)]
    argv = [command, *model, "--out", str(work / "x")]
    assert main([*argv, "--steps", "0", "--quiet"]) == 2
    assert "TrainConfig.max_steps: expected an integer >= 1, found 0" in capsys.readouterr().err
    assert main([*argv, "--lr", "-1", "--quiet"]) == 2
    assert "TrainConfig.lr: expected a finite number > 0, found -1.0" in capsys.readouterr().err
    assert not (work / "x").exists()


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
        (["generate", "--model", "{base}", "--prompt", "def", "--temperature", "-1"],
         "--temperature: expected a number >= 0 (0 = greedy), found -1.0"),
        (["generate", "--model", "{base}", "--prompt", "def", "--temperature", "0", "--top-k",
          "5"], "--temperature 0 means greedy decoding, which ignores --top-k/--top-p"),
        (["generate", "--model", "{base}", "--prompt", "def", "--top-p", "1.5"],
         "top_p: expected None or a probability in (0, 1], found 1.5"),
        (["generate", "--model", "{base}", "--prompt", "def", "--top-k", "0"],
         "top_k: expected None or an int >= 1, found 0"),
        (["generate", "--model", "{base}", "--prompt", "def", "--max-new-tokens", "100"],
         "more than the model's n_positions = 64"),
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
        main(["finetune", "--method", "vera"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'vera'" in capsys.readouterr().err


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


def test_combine_writes_an_adapter_equal_to_the_combination(work: Path, base: Path,
                                                            adapter: Path, capsys):  # fmt: skip
    other = work / "ad-seed1"
    argv = ["finetune", "--method", "lora", "--model", str(base), "--task", "docstrings",
            "--steps", "2", "--seed", "1", "--out", str(other), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    out = work / "combined"
    argv = ["combine", "--model", str(base), "--adapters", str(adapter), str(other),
            "--weights", "1", "0.5", "--type", "cat", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "saved to" in capsys.readouterr().out
    assert all((out / name).is_file() for name in ADAPTER_FILES)
    ids = tensor(np.arange(30, dtype=np.int64)[None, :] % 64)
    both = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    both.load_adapter(other, "other")
    both.add_weighted_adapter(["default", "other"], [1.0, 0.5], "mix", combination_type="cat")
    both.set_adapter("mix")
    combined = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out)
    with minipeft.no_grad():
        got, want = combined(input_ids=ids).logits.numpy(), both(input_ids=ids).logits.numpy()
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    # the combined adapter's r is the sum of the ranks (cat)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 16


def test_combine_refuses_bad_weights_and_its_own_inputs(work: Path, base: Path,
                                                        adapter: Path, capsys):  # fmt: skip
    argv = ["combine", "--model", str(base), "--adapters", str(adapter), "--weights", "1", "2",
            "--out", str(work / "c2")]  # fmt: skip
    assert main(argv) == 2
    assert "--weights: expected 1 numbers" in capsys.readouterr().err
    argv = ["combine", "--model", str(base), "--adapters", str(adapter), "--weights", "1",
            "--out", str(adapter)]  # fmt: skip
    assert main(argv) == 2
    capsys.readouterr()
