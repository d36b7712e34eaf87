"""``minipeft compare``: every method's row, the formulas its counts follow, exact re-runs,
resuming, bad input, and each metric's computation on its own."""

from __future__ import annotations

import json
import math
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import minipeft as mp
from minipeft.cli import main
from minipeft.jobs import compare as compare_module
from minipeft.jobs.compare import COMPARE_METHODS, MEMORY_FIELDS, TIMING_FIELDS, compare
from minipeft.jobs.compare_metrics import (
    _traced_peak,
    forgetting,
    peak_step_bytes,
    resident_bytes,
    stored_bytes,
)
from minipeft.jobs.compare_report import CSV_FIELDS
from minipeft.models import GPT2Config, GPT2LMHeadModel

MERGEABLE = {"lora", "rslora", "dora", "pissa", "adalora", "qlora", "ia3"}
ROW_FIELDS = {"method", "status", "trainable_params", "all_params", "trainable_pct",
              "stored_bytes", "peak_step_bytes", "resident_bytes", "transient_bytes", "step_ms",
              "train_s", "eval_loss", "eval_perplexity", "eval_accuracy", "pretrain_loss",
              "forgetting", "latency_ms_per_token", "latency_vs_base", "mergeable",
              "latency_merged_ms_per_token", "latency_merged_vs_base", "merged_logit_drift",
              "curve", "lr", "steps"}  # fmt: skip


def quiet(*_a: object) -> None:
    pass


def two_layer_base(base: Path, folder: Path, n_positions: int) -> Path:
    """A seeded 2-layer GPT-2 with the nano base's tokenizer (a short context on request)."""
    cfg = json.loads((base / "config.json").read_text())
    mp.manual_seed(1)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=cfg["vocab_size"], n_positions=n_positions,
                                       n_embd=32, n_layer=2, n_head=2))  # fmt: skip
    model.save_pretrained(folder)
    for f in base.glob("tokenizer*.json"):
        shutil.copy(f, folder / f.name)
    shutil.copy(base / "special_tokens_map.json", folder)
    return folder


@pytest.fixture(scope="module")
def results(work: Path, base: Path) -> dict:
    return compare(work / "cmp", model=base, steps=2, quick=True, progress=False, log=quiet)


def test_every_method_has_every_field_and_finite_numbers(results, work):
    rows = {r["method"]: r for r in results["methods"]}
    assert list(rows) == list(COMPARE_METHODS)
    for method, row in rows.items():
        assert row["status"] == "ok", (method, row.get("reason"))
        assert ROW_FIELDS <= set(row), (method, ROW_FIELDS - set(row))
        for key, value in row.items():
            if isinstance(value, float):
                assert math.isfinite(value), (method, key, value)
        assert row["eval_perplexity"] == pytest.approx(math.exp(row["eval_loss"]))
        assert row["peak_step_bytes"] == row["resident_bytes"] + row["transient_bytes"]
        assert row["stored_bytes"] > 0 and row["step_ms"] > 0
        assert row["eval_accuracy"] is None  # a language-modelling task
    saved = json.loads((work / "cmp" / "results.json").read_text())
    assert [r["method"] for r in saved["methods"]] == list(COMPARE_METHODS)
    header = (work / "cmp" / "results.csv").read_text().splitlines()[0]
    assert header.split(",") == list(CSV_FIELDS)
    report = (work / "cmp" / "report.md").read_text()
    assert "| lora |" in report and "claims, measured" in report


def test_merged_latency_exactly_for_mergeable_methods(results):
    for row in results["methods"]:
        mergeable = row["method"] in MERGEABLE
        assert row["mergeable"] is mergeable, row["method"]
        assert (row["latency_merged_ms_per_token"] is not None) is mergeable, row["method"]
        assert (row["latency_merged_vs_base"] is not None) is mergeable, row["method"]
        if mergeable:  # merging keeps the function: float32 rounding (4 bits: requantizing)
            assert row["merged_logit_drift"] < (0.5 if row["method"] == "qlora" else 1e-3)


def test_parameter_counts_follow_each_formula(results, base):
    cfg = json.loads((base / "config.json").read_text())
    c, n_layers, t_v = cfg["n_embd"], cfg["n_layer"], 20
    r, init_r = 8, 12  # LoRA's job default r; AdaLoRA's init_r

    def bottleneck(m: int) -> int:  # down (C·m + m) + up (m·C + C)
        return 2 * c * m + c + m

    lora = n_layers * r * (c + 3 * c)  # c_attn: C -> 3C
    expected = {
        "lora": lora, "rslora": lora, "pissa": lora, "qlora": lora,
        "dora": lora + n_layers * 3 * c,  # + a magnitude per output feature
        "adalora": n_layers * (init_r * (c + 3 * c) + init_r),  # A, B and E
        "seq_bn": n_layers * bottleneck(c // 16),
        "double_seq_bn": n_layers * 2 * bottleneck(c // 16),
        "par_bn": n_layers * bottleneck(c // 2),
        "ia3": n_layers * (3 * c + 4 * c),  # c_attn's output, the MLP c_proj's input
        "prompt": t_v * c,
        "prefix": t_v * 2 * n_layers * c,  # keys and values of every layer
        "ptuning": t_v * c + 3 * (c * c + c),  # the MLP encoder C -> C -> C -> C
        "mam": t_v * 2 * n_layers * c + n_layers * bottleneck(c // 2),
    }  # fmt: skip
    rows = {row["method"]: row for row in results["methods"]}
    total = rows["full"]["all_params"]
    assert rows["full"]["trainable_params"] == total and rows["full"]["trainable_pct"] == 100.0
    for method, n in expected.items():
        assert rows[method]["trainable_params"] == n, method
        assert rows[method]["trainable_pct"] == pytest.approx(100 * n / rows[method]["all_params"])


def test_a_rerun_gives_the_same_numbers_timings_aside(results, work, base):
    again = compare(work / "cmp-again", model=base, steps=2, quick=True, progress=False, log=quiet)
    assert again["base"]["eval"] == results["base"]["eval"]
    for a, b in zip(results["methods"], again["methods"], strict=True):
        for key in set(a) - set(TIMING_FIELDS) - set(MEMORY_FIELDS):
            assert a[key] == b[key], (a["method"], key)
        for key in MEMORY_FIELDS:  # Python's own objects move the trace by a few bytes
            assert abs(a[key] - b[key]) < 1024, (a["method"], key)


def test_interrupted_comparison_keeps_its_rows_and_resumes(work, base, monkeypatch):
    out = work / "cmp-resume"
    real = compare_module._measure
    calls = {"n": 0}

    def measure_then_stop(ctx, method, res, timer):
        calls["n"] += 1
        if method == "ia3" and calls["n"] == 2:
            raise KeyboardInterrupt
        return real(ctx, method, res, timer)

    monkeypatch.setattr(compare_module, "_measure", measure_then_stop)
    with pytest.raises(KeyboardInterrupt):
        compare(out, methods=["lora", "ia3"], model=base, steps=2, quick=True, progress=False,
                log=quiet)  # fmt: skip
    kept = json.loads((out / "results.json").read_text())["methods"]
    assert [r["method"] for r in kept] == ["lora"]
    with pytest.raises(ValueError, match="--resume"):
        compare(out, methods=["lora", "ia3"], model=base, steps=2, quick=True, log=quiet)
    with pytest.raises(ValueError, match="steps=2"):
        compare(out, steps=3, resume=True, log=quiet)
    done = compare(out, resume=True, progress=False, log=quiet)
    assert [r["method"] for r in done["methods"]] == ["lora", "ia3"]
    assert done["methods"][0] == kept[0]  # the finished row is kept, not recomputed


def test_a_method_that_does_not_fit_gets_a_row_saying_why(work, base):
    short = two_layer_base(base, work / "short", n_positions=20)  # no room for 20 virtual
    res = compare(work / "cmp-short", methods=["lora", "prompt", "seq_bn"], model=short,
                  steps=1, quick=True, progress=False, log=quiet)  # fmt: skip
    rows = {r["method"]: r for r in res["methods"]}
    assert rows["prompt"]["status"] == "not applicable"
    assert "num_virtual_tokens" in rows["prompt"]["reason"]
    assert rows["lora"]["status"] == rows["seq_bn"]["status"] == "ok"
    assert rows["lora"]["trainable_params"] == 2 * 8 * (32 + 96)  # two layers this time
    assert "prompt: not applicable" in (work / "cmp-short" / "report.md").read_text()


def test_a_llama_folder_and_its_gguf_file_compare_alike(work, base):
    """``--model`` takes a LLaMA (GQA heads, SwiGLU) as an HF folder or a GGUF file."""
    from minipeft.models import LlamaConfig, LlamaForCausalLM

    folder = work / "llama"
    mp.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(folder)
    for f in [*base.glob("tokenizer*.json"), base / "special_tokens_map.json"]:
        shutil.copy(f, folder / f.name)
    methods = ["lora", "seq_bn", "prefix"]
    res = compare(work / "cmp-llama", methods=methods, model=folder, steps=1, quick=True,
                  progress=False, log=quiet)  # fmt: skip
    rows = {r["method"]: r for r in res["methods"]}
    assert all(r["status"] == "ok" for r in rows.values())
    # LoRA's LLaMA defaults: q_proj (C -> C) and v_proj (C -> C/2 with 2 of 4 kv heads).
    assert rows["lora"]["trainable_params"] == 2 * 8 * ((32 + 32) + (32 + 16))
    pytest.importorskip("gguf")  # writing the GGUF file needs llama.cpp's package
    from minipeft.jobs.export import export

    gguf_file = work / "llama.gguf"
    export(folder, gguf_file)
    again = compare(work / "cmp-llama-gguf", methods=methods, model=gguf_file, steps=1,
                    quick=True, progress=False, log=quiet)  # fmt: skip
    for a, b in zip(res["methods"], again["methods"], strict=True):
        for key in ("trainable_params", "eval_loss", "forgetting", "mergeable"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), (a["method"], key)


def test_classification_task_reports_accuracy(work, base):
    res = compare(work / "cmp-topic", methods=["lora", "prefix", "full"], task="docstring-topic",
                  model=base, steps=2, quick=True, progress=False, log=quiet)  # fmt: skip
    rows = {r["method"]: r for r in res["methods"]}
    for row in rows.values():
        assert row["status"] == "ok", row.get("reason")
        assert 0.0 <= row["eval_accuracy"] <= 1.0 and math.isfinite(row["forgetting"])
    # A prompt-side classifier leaves its backbone as it was: nothing forgotten.
    assert rows["prefix"]["forgetting"] == 0.0
    assert 0.0 <= res["base"]["eval"]["accuracy"] <= 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"methods": ["lora", "nope"]}, "unknown method 'nope'"),
        ({"task": "nope"}, "nope"),
        ({"steps": 0}, "--steps: expected an integer >= 1"),
        ({"model": "/definitely/not/a/model"}, "is not a folder"),
    ],
)
def test_bad_input_is_refused_before_anything_runs(work, base, kwargs, match):
    kwargs = {"model": base, **kwargs}
    with pytest.raises(ValueError, match=match):
        compare(work / "cmp-bad", log=quiet, **kwargs)
    assert not (work / "cmp-bad" / "results.json").exists()


def test_out_inside_the_model_is_refused(base):
    with pytest.raises(ValueError, match="inside"):
        compare(base / "cmp", model=base, log=quiet)


def test_cli_compare(work, base, capsys):
    out = work / "cmp-cli"
    argv = ["compare", "--quick", "--steps", "1", "--methods", "lora", "seq_bn", "--model",
            str(base), "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "base (untuned)" in printed and "seq_bn" in printed
    assert main(argv) == 2  # --out holds a comparison now
    assert "--resume" in capsys.readouterr().err
    assert main(["compare", "--methods", "bogus", "--out", str(work / "x")]) == 2


# ------------------------------------------------------------------ each metric on its own
def test_forgetting_is_the_rise_of_the_old_domain_loss():
    assert forgetting(2.5, 2.75) == pytest.approx(0.25)
    assert forgetting(2.5, 2.0) == pytest.approx(-0.5)  # a gain is negative forgetting
    with pytest.raises(ValueError, match="finite"):
        forgetting(2.5, float("nan"))


def test_stored_bytes_counts_the_result_not_the_run_files(tmp_path):
    (tmp_path / "adapter_model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "adapter_config.json").write_bytes(b"y" * 100)
    (tmp_path / "prefix").mkdir()  # a combination's second part
    (tmp_path / "prefix" / "adapter_model.safetensors").write_bytes(b"z" * 10)
    for skipped in ("run.json", "metrics.jsonl", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / skipped).write_bytes(b"s" * 5000)
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "trainable.safetensors").write_bytes(b"c" * 5000)
    assert stored_bytes(tmp_path) == 1110
    with pytest.raises(ValueError, match="not a folder"):
        stored_bytes(tmp_path / "missing")


def test_traced_peak_counts_what_the_block_allocates():
    kept = np.ones(500_000)  # allocated before: not counted
    with _traced_peak("cpu") as box:
        a = np.zeros(1_000_000)  # 8 MB
        a += 1
        del a
        b = np.zeros(250_000)  # 2 MB, after a was freed: the peak stays 8 MB
        del b
    assert 8_000_000 <= box[0] < 8_000_000 + 65_536
    assert kept.sum() == 500_000 and not tracemalloc.is_tracing()


def test_peak_step_bytes_accounts_weights_gradients_and_adam():
    mp.manual_seed(0)
    cfg = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    ids = np.arange(32).reshape(2, 16) % 64
    batch = {"input_ids": ids, "labels": ids}
    full = GPT2LMHeadModel(cfg)
    n = sum(p.numel() for p in full.parameters())
    assert resident_bytes(full) == 4 * n  # float32, the tied head counted once
    frozen = GPT2LMHeadModel(cfg)
    for name, p in frozen.named_parameters():
        p.requires_grad = name.endswith("ln_f.weight")
    a, b = peak_step_bytes(full, batch), peak_step_bytes(frozen, batch)
    assert a["peak"] == a["resident"] + a["transient"]
    # Resident: the float32 weights and AdamW's two moments of each trainable one.
    assert a["resident"] == 4 * n + 2 * 4 * n
    assert b["resident"] == 4 * n + 2 * 4 * 32  # only ln_f's 32 weights train
    # Full training also holds a gradient per weight at the step's peak (and saves every
    # block's activations for backward); the frozen model back-propagates only into ln_f.
    assert a["transient"] - b["transient"] >= 4 * (n - 32)


def test_plots_are_drawn_or_skipped_with_one_line(results, work, monkeypatch):
    from minipeft.jobs import compare_report

    out = work / "replot"
    out.mkdir()
    lines: list[str] = []
    monkeypatch.setattr(compare_report, "pyplot", lambda: None)
    compare_report.write_outputs(out, results, lines.append)
    assert any(line.startswith("plots skipped: matplotlib is not installed") for line in lines)
    assert not list(out.glob("*.png")) and (out / "report.md").is_file()
    pytest.importorskip("matplotlib")  # the test extra installs it: CI draws every plot
    monkeypatch.undo()
    compare_report.write_outputs(out, results, lines.append)
    names = ["curves.png", "forgetting_vs_metric.png", "latency.png", "metric_vs_params.png"]
    assert sorted(p.name for p in out.glob("*.png")) == names
    assert all((out / n).read_bytes().startswith(b"\x89PNG") for n in names)
    assert "![latency](latency.png)" in (out / "report.md").read_text()
