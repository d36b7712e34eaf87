"""The command line a user can trust: refusals, resumable runs, Ctrl-C, provenance, classifiers.

Every test runs the real ``minipeft`` entry point (``main``; one test a real subprocess and a
real SIGINT) on a nano base model pretrained once for the module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from minipeft import threads
from minipeft.cli import main
from minipeft.fileio import load_safetensors
from minipeft.jobs import quickstart as quickstart_module
from minipeft.models import AutoModelForSequenceClassification
from minipeft.peft.provenance import BaseModelMismatchWarning
from minipeft.train import Callback, Trainer

NANO = ["--preset", "nano", "--steps", "3", "--quiet"]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINIPEFT_CACHE", str(root / "cache"))
        mp.delenv("MINIPEFT_NUM_THREADS", raising=False)
        yield root
    threads.set_num_threads(0)  # the CLI pins one BLAS thread; give the rest back the default


@pytest.fixture(scope="module")
def base(work: Path) -> Path:
    assert main(["pretrain", *NANO, "--out", str(work / "base")]) == 0
    return work / "base"


@pytest.fixture(scope="module")
def other_base(work: Path) -> Path:
    """Same architecture, other weights (another seed): adapters of ``base`` fit it in shape."""
    assert main(["pretrain", *NANO, "--seed", "1", "--out", str(work / "base-seed1")]) == 0
    return work / "base-seed1"


def _finetune(base: Path, out: Path, *extra: str) -> list[str]:
    return ["finetune", "--model", str(base), "--out", str(out), "--steps", "4", "--quiet",
            *extra]  # fmt: skip


@pytest.fixture(scope="module")
def lm_adapter(work: Path, base: Path) -> Path:
    assert main(_finetune(base, work / "lm-adapter")) == 0
    return work / "lm-adapter"


@pytest.fixture(scope="module")
def topic_adapter(work: Path, base: Path) -> Path:
    assert main(_finetune(base, work / "topic-adapter", "--task", "docstring-topic")) == 0
    return work / "topic-adapter"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ---------------------------------------------------------------------------- writers
@pytest.mark.parametrize("where", ["base", "inside-base", "parent-of-base", "adapter"])
def test_merge_refuses_to_write_over_its_inputs(where, work, base, lm_adapter, capsys):
    out = {"base": base, "inside-base": base / "merged", "parent-of-base": work,
           "adapter": lm_adapter}[where]  # fmt: skip
    before_base, before_adapter = _snapshot(base), _snapshot(lm_adapter)
    argv = ["merge", "--model", str(base), "--adapter", str(lm_adapter), "--out", str(out)]
    assert main([*argv, "--overwrite"]) == 2  # not even --overwrite makes that allowed
    line = _one_error_line(capsys)
    assert "would destroy an input of this command" in line
    assert _snapshot(base) == before_base and _snapshot(lm_adapter) == before_adapter


def test_merge_into_an_existing_folder_needs_overwrite(work, base, lm_adapter, capsys):
    out = work / "merged"
    argv = ["merge", "--model", str(base), "--adapter", str(lm_adapter), "--out", str(out)]
    assert main(argv) == 0
    first = _snapshot(out)
    assert main(argv) == 2
    assert "pass --overwrite to replace it" in _one_error_line(capsys)
    assert _snapshot(out) == first
    assert main([*argv, "--overwrite"]) == 0
    assert not [p for p in work.iterdir() if p.name.startswith(".merged.")]  # no temp left


def test_pretrain_into_the_cached_base_needs_overwrite(work, capsys):
    cache = Path(os.environ["MINIPEFT_CACHE"]) / "base-gpt2"
    assert main(["pretrain", *NANO]) == 0
    first = _snapshot(cache)
    assert main(["pretrain", *NANO, "--seed", "3"]) == 2
    line = _one_error_line(capsys)
    assert "(the cached base model) already holds a model" in line and "--overwrite" in line
    assert _snapshot(cache) == first
    assert main(["pretrain", *NANO, "--seed", "3", "--overwrite"]) == 0
    after = _snapshot(cache)
    assert after["model.safetensors"] != first["model.safetensors"]
    assert "checkpoint/trainer_state.json" not in after  # the run finished: state removed
    assert json.loads(after["run.json"])["settings"]["seed"] == 3


def test_pretrain_refuses_an_out_that_holds_its_corpus(work, capsys):
    corpus = work / "corpus-run" / "text.txt"
    corpus.parent.mkdir()
    corpus.write_text("words " * 5000)
    assert main(["pretrain", *NANO, "--corpus", str(corpus), "--out", str(corpus.parent)]) == 2
    assert "contains the corpus" in _one_error_line(capsys)
    assert sorted(os.listdir(corpus.parent)) == ["text.txt"]


def test_finetune_refuses_to_replace_a_result_or_an_unfinished_run(work, base, capsys):
    out = work / "ft-twice"
    assert main(_finetune(base, out)) == 0
    assert main(_finetune(base, out)) == 2
    assert "already holds a saved result (adapter_config.json)" in _one_error_line(capsys)
    assert main([*_finetune(base, out), "--overwrite"]) == 0
    assert main([*_finetune(base, out), "--resume"]) == 2
    assert "no unfinished finetune run to continue" in _one_error_line(capsys)
    assert main(_finetune(base, base / "adapter")) == 2
    assert "is inside the base model" in _one_error_line(capsys)


# ---------------------------------------------------------------------------- Ctrl-C, resume
class _CtrlCAt(Callback):
    """Sends the process a real SIGINT after optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_optimizer_step(self, trainer, step):
        if step == self.step:
            signal.raise_signal(signal.SIGINT)


@pytest.mark.parametrize("method", ["lora", "adalora", "full"])  # adalora: allocator state too
def test_ctrl_c_then_resume_equals_an_uninterrupted_run(method, work, base, monkeypatch, capsys):
    argv = ["finetune", "--model", str(base), "--task", "docstring-topic", "--method", method,
            "--steps", "8", "--save-every", "3", "--quiet"]  # fmt: skip
    whole, parts = work / f"whole-{method}", work / f"parts-{method}"
    assert main([*argv, "--out", str(whole)]) == 0

    init = Trainer.__init__

    def with_ctrl_c(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.callbacks.append(_CtrlCAt(5))

    monkeypatch.setattr(Trainer, "__init__", with_ctrl_c)
    capsys.readouterr()
    assert main([*argv, "--out", str(parts)]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last == (f"minipeft finetune: training interrupted after step 5/8; checkpoint saved "
                    f"to {parts}/checkpoint; to continue: minipeft finetune --out {parts} "
                    "--resume")  # fmt: skip
    state = json.loads((parts / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 5
    monkeypatch.setattr(Trainer, "__init__", init)

    assert main(["finetune", "--out", str(parts), "--resume", "--quiet"]) == 0
    name = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    a, b = load_safetensors(whole / name), load_safetensors(parts / name)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # bit for bit

    def steps_and_losses(folder):
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"], r.get("eval_accuracy")) for r in rows]

    assert steps_and_losses(parts) == steps_and_losses(whole)
    assert not (parts / "checkpoint").exists()


def test_resume_refuses_other_settings(work, base, monkeypatch, capsys):
    out = work / "resume-settings"
    init = Trainer.__init__

    def with_ctrl_c(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.callbacks.append(_CtrlCAt(2))

    monkeypatch.setattr(Trainer, "__init__", with_ctrl_c)
    assert main([*_finetune(base, out, "--steps", "6")]) == 130
    monkeypatch.setattr(Trainer, "__init__", init)
    capsys.readouterr()
    assert main(["finetune", "--out", str(out), "--resume", "--lr", "0.5", "--quiet"]) == 2
    assert "was started with lr=0.01, this command asks lr=0.5" in _one_error_line(capsys)
    assert main(_finetune(base, out)) == 2
    assert "an unfinished finetune run (checkpoint at step 2); pass --resume" in (
        _one_error_line(capsys)
    )
    assert main(["finetune", "--out", str(out), "--resume", "--quiet"]) == 0


def test_a_real_sigint_stops_a_subprocess_cleanly(work, base):
    out = work / "sigint"
    cmd = [sys.executable, "-m", "minipeft", *_finetune(base, out, "--steps", "100000")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").is_file():  # the training loop is running
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith(f"minipeft finetune --out {out} --resume")
    assert (out / "checkpoint" / "trainer_state.json").is_file()


# ---------------------------------------------------------------------------- provenance
def test_an_adapter_on_another_base_warns_and_strict_refuses(base, other_base, lm_adapter,
                                                             capsys):  # fmt: skip
    gen = ["generate", "--adapter", str(lm_adapter), "--prompt", "def", "--max-new-tokens", "2"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main([*gen, "--model", str(base)]) == 0  # its own base: silent
    with pytest.warns(BaseModelMismatchWarning, match="trained on a different base model"):
        assert main([*gen, "--model", str(other_base)]) == 0
    capsys.readouterr()
    assert main([*gen, "--model", str(other_base), "--strict"]) == 2
    line = _one_error_line(capsys)
    assert f"was trained on a different base model (it was saved from {str(base)!r})" in line


def test_the_adapter_records_its_base(base, lm_adapter):
    config = json.loads((lm_adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base)
    from minipeft.fileio import safetensors_metadata

    meta = safetensors_metadata(lm_adapter / "adapter_model.safetensors")
    assert meta["format"] == "pt" and len(meta["minipeft.base_fingerprint"]) == 32


def test_without_model_an_adapter_runs_on_the_base_it_recorded(lm_adapter, capsys):
    assert main(["generate", "--adapter", str(lm_adapter), "--prompt", "def",
                 "--max-new-tokens", "2"]) == 0  # fmt: skip


# ---------------------------------------------------------------------------- classifiers
def test_predict_names_the_task_classes(work, base, topic_adapter, capsys):
    texts = work / "texts.txt"
    texts.write_text("Return the arc tangent of y/x.\n\nOpen a TCP connection to host.\n")
    argv = ["predict", "--model", str(base), "--adapter", str(topic_adapter), "--json"]
    assert main([*argv, "--file", str(texts)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["Return the arc tangent of y/x.",
                                         "Open a TCP connection to host."]  # fmt: skip
    names = ["text", "numbers", "files", "concurrency-net"]
    for r in rows:
        assert list(r["probabilities"]) == names and r["label"] in names
        assert sum(r["probabilities"].values()) == pytest.approx(1.0)
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)


def test_predict_refuses_a_language_model(base, lm_adapter, capsys):
    assert main(["predict", "--model", str(base), "--text", "x"]) == 2
    assert "predict needs a classifier" in _one_error_line(capsys)


def test_eval_reports_the_held_out_metric(base, topic_adapter, lm_adapter, capsys):
    assert main(["eval", "--adapter", str(topic_adapter), "--task", "docstring-topic"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("docstring-topic (held-out split): loss ") and "accuracy 0." in out
    assert main(["eval", "--adapter", str(lm_adapter), "--task", "docstrings"]) == 0
    assert "perplexity" in capsys.readouterr().out
    assert main(["eval", "--adapter", str(lm_adapter), "--task", "docstring-topic"]) == 2
    assert "needs a seq_cls model; this one is causal_lm" in _one_error_line(capsys)


def test_a_merged_classifier_has_the_class_names(work, base, topic_adapter, capsys):
    out = work / "merged-topic"
    assert main(["merge", "--adapter", str(topic_adapter), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "text", "1": "numbers", "2": "files",
                                  "3": "concurrency-net"}  # fmt: skip
    assert config["label2id"]["files"] == 2
    assert AutoModelForSequenceClassification.from_pretrained(out).config.num_labels == 4
    capsys.readouterr()
    assert main(["predict", "--model", str(out), "--text", "Read the file."]) == 0
    label = capsys.readouterr().out.split("\t")[0]
    assert label in config["id2label"].values()


def test_full_fine_tuning_saves_a_model_folder(work, base, capsys):
    out = work / "full-topic"
    assert main(_finetune(base, out, "--method", "full", "--task", "docstring-topic")) == 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "run.json"):
        assert (out / name).is_file(), name
    assert main(["eval", "--model", str(out), "--task", "docstring-topic"]) == 0


# ---------------------------------------------------------------------------- smaller items
def test_alpha_zero_is_refused(work, base, capsys):
    assert main(_finetune(base, work / "alpha0", "--alpha", "0")) == 2
    assert "alpha: expected a number > 0" in _one_error_line(capsys)
    assert not (work / "alpha0").exists()


def test_no_base_yet_says_what_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINIPEFT_CACHE", str(tmp_path))
    for argv in (["generate", "--prompt", "def"], ["finetune", "--quiet"]):
        assert main(argv) == 2
        line = _one_error_line(capsys)
        assert "no base model yet at" in line and "`minipeft pretrain`" in line
    assert main(["generate", "--model", "gpt2", "--prompt", "def"]) == 2
    line = _one_error_line(capsys)
    assert "is not a folder" in line and "hub ids such as 'gpt2' are not fetched" in line


def test_quickstart_passes_its_seed(monkeypatch):
    seen = {}

    def fake(**kwargs):
        seen.update(kwargs)
        return {}

    monkeypatch.setattr(quickstart_module, "quickstart", fake)
    assert main(["quickstart", "--seed", "7", "--quiet"]) == 0
    assert seen["seed"] == 7


def test_threads_flag_and_environment(monkeypatch, capsys):
    monkeypatch.delenv("MINIPEFT_NUM_THREADS", raising=False)
    try:
        assert main(["info"]) == 0
        assert "threads  1 BLAS thread(s)" in capsys.readouterr().out  # the CLI default
        monkeypatch.setenv("MINIPEFT_NUM_THREADS", "2")
        assert main(["info"]) == 0
        assert f"threads  {min(2, os.cpu_count() or 2)} BLAS" in capsys.readouterr().out
        assert main(["info", "--threads", "1"]) == 0  # the flag wins over the environment
        assert "threads  1 BLAS" in capsys.readouterr().out
        monkeypatch.setenv("MINIPEFT_NUM_THREADS", "many")
        assert main(["info"]) == 2
        assert "MINIPEFT_NUM_THREADS: expected an integer >= 0, found 'many'" in (
            _one_error_line(capsys)
        )
    finally:
        threads.set_num_threads(0)


def test_the_package_summary_names_only_methods_that_exist():
    from importlib.metadata import metadata

    import minipeft.peft as peft

    summary = metadata("minipeft")["Summary"]
    assert "LoRA" in summary
    needs = {"AdaLoRA": "AdaLoraConfig", "QLoRA": "Linear4bit", "NF4": "Linear4bit",
             "IA3": "IA3Config", "adapters": "AdapterConfig", "prefix": "PrefixTuningConfig",
             "prompt": "PromptTuningConfig"}  # fmt: skip
    for word, attribute in needs.items():
        if word in summary:
            assert hasattr(peft, attribute), f"the summary names {word}, which does not exist"
    if "DoRA" in summary:  # a LoRA variant: the config must accept it
        assert peft.LoraConfig(use_dora=True).use_dora
    if "PiSSA" in summary:
        assert peft.LoraConfig(init_lora_weights="pissa").init_lora_weights == "pissa"
    if "combining" in summary:
        assert hasattr(peft.PeftModel, "add_weighted_adapter")


def _interrupt_at(monkeypatch, step: int) -> None:
    init = Trainer.__init__

    def with_ctrl_c(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.callbacks.append(_CtrlCAt(step))

    monkeypatch.setattr(Trainer, "__init__", with_ctrl_c)


def test_pretrain_resumes_bit_for_bit(work, monkeypatch, capsys):
    argv = ["pretrain", "--preset", "nano", "--steps", "6", "--save-every", "2", "--quiet"]
    assert main([*argv, "--out", str(work / "pt-whole")]) == 0
    with monkeypatch.context() as m:
        _interrupt_at(m, 3)
        assert main([*argv, "--out", str(work / "pt-parts")]) == 130
    assert "minipeft pretrain --out" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (work / "pt-parts" / "config.json").exists()  # no half-made model
    assert main(["pretrain", "--out", str(work / "pt-parts"), "--resume", "--quiet"]) == 0
    a = load_safetensors(work / "pt-whole" / "model.safetensors")
    b = load_safetensors(work / "pt-parts" / "model.safetensors")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert (work / "pt-whole" / "tokenizer.json").read_bytes() == (
        work / "pt-parts" / "tokenizer.json"
    ).read_bytes()


def test_resume_on_a_changed_base_is_refused(work, monkeypatch, capsys):
    base = work / "base-to-change"
    assert main(["pretrain", *NANO, "--out", str(base)]) == 0
    out = work / "resume-changed-base"
    with monkeypatch.context() as m:
        _interrupt_at(m, 2)
        assert main(_finetune(base, out, "--steps", "6")) == 130
    assert main(["pretrain", *NANO, "--seed", "5", "--out", str(base), "--overwrite"]) == 0
    capsys.readouterr()
    assert main(["finetune", "--out", str(out), "--resume", "--quiet"]) == 2
    assert "was started on another base model" in _one_error_line(capsys)
