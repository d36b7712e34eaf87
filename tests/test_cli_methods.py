"""``minipeft finetune --method NAME``: every registered PEFT method through one CLI path.

The job builds the method's config from the registry (defaults, short flags, ``--set``), so
each method trains, saves in its own format (PEFT's or AdapterHub's), and its adapter runs in
``generate`` / ``eval``; flags a method does not have are refused before anything is written.
"""

from __future__ import annotations

import json
import warnings

import pytest

from minipeft.cli import main
from minipeft.cli_commands import _field_overrides
from minipeft.peft.registry import COMBINATIONS, preset_class, preset_names

PEFT_METHODS = [m for m in preset_names() if m != "lora"] + list(COMBINATIONS)  # LoRA: test_cli


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_every_method_trains_saves_and_generates(method, work, base, capsys):
    out = work / method
    argv = ["finetune", "--method", method, "--model", str(base), "--task", "docstrings",
            "--steps", "2", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "docstrings: loss" in said and "adapter saved to" in said
    config = json.loads((out / "adapter_config.json").read_text())
    if "peft_type" in config:  # PEFT's files
        part = COMBINATIONS.get(method, (method,))[0]
        assert config["peft_type"] == preset_class(part).PEFT_TYPE.value
        assert (out / "adapter_model.safetensors").is_file()
    else:  # AdapterHub's
        assert config["version"] == "adapters.1.3.0"
        assert config["minipeft"]["adapter_type"] == method
        assert (out / "adapter.safetensors").is_file()
    for part in COMBINATIONS.get(method, ())[1:]:  # the other parts, beside the first
        assert (out / part / "adapter_config.json").is_file()
    gen = ["generate", "--model", str(base), "--adapter", str(out), "--prompt", "def f(x):",
           "--max-new-tokens", "4"]  # fmt: skip
    assert main(gen) == 0
    assert capsys.readouterr().out.startswith("def f(x):")


def test_adalora_allocates_over_the_run_and_prints_its_ranks(work, base, capsys):
    out = work / "adalora-ranks"
    argv = ["finetune", "--method", "adalora", "--model", str(base), "--steps", "3", "--out",
            str(out), "--quiet", "--set", "init_r=4", "target_r=2"]  # fmt: skip
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "AdaLoRA ranks (adapter 'default'): 2/4 triplets kept" in said
    assert "transformer.h.0.attn.c_attn       4        2" in said
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["total_step"] == 3  # the run's --steps
    assert list(config["rank_pattern"]) == ["transformer.h.0.attn.c_attn.lora_E"]
    assert sum(config["rank_pattern"]["transformer.h.0.attn.c_attn.lora_E"]) == 2
    assert main([*argv, "total_step=6", "--overwrite"]) == 0  # --set wins over --steps
    assert json.loads((out / "adapter_config.json").read_text())["total_step"] == 6


def test_short_flags_and_set_reach_the_config(work, base):
    out = work / "custom"
    argv = ["finetune", "--method", "par_bn", "--model", str(base), "--steps", "1", "--out",
            str(out), "--quiet", "--reduction-factor", "4", "--non-linearity", "gelu",
            "--set", "scaling=learned", "leave_out=[0]", "--set", "dropout=0.1"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # leave_out=[0] on a one-layer base leaves nothing...
        code = main(argv)
    assert code == 2  # ... which is refused
    argv[argv.index("leave_out=[0]")] = "leave_out=[]"
    assert main(argv) == 0
    config = json.loads((out / "adapter_config.json").read_text())["config"]
    assert (config["reduction_factor"], config["non_linearity"]) == (4, "gelu")
    assert (config["scaling"], config["dropout"]) == ("learned", 0.1)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "seq_bn", "--r", "4"], "--r: method 'seq_bn' has no such setting"),
        (["--method", "lora", "--reduction-factor", "4"], "--reduction-factor: method 'lora'"),
        (["--method", "seq_bn", "--set", "rank=2"], "--set rank: AdapterConfig has no field"),
        (["--method", "lora", "--set", "r"], "--set: expected FIELD=VALUE, found 'r'"),
        (["--method", "lora", "--set", "r=0"], "LoraConfig.r: expected a positive integer"),
        (["--method", "seq_bn", "--non-linearity", "mish"], "non_linearity: expected one of"),
    ],
)
def test_bad_method_settings_fail_before_anything_is_written(extra, message, work, base, capsys):
    out = work / "bad"
    argv = ["finetune", "--model", str(base), "--steps", "1", "--out", str(out), "--quiet", *extra]
    assert main(argv) == 2
    assert message in _one_error_line(capsys)
    assert not out.exists()


def test_a_bottleneck_adapter_cannot_be_merged(work, base, capsys):
    adapter = work / "seq_bn"
    if not adapter.exists():
        argv = ["finetune", "--method", "seq_bn", "--model", str(base), "--steps", "1",
                "--out", str(adapter), "--quiet"]  # fmt: skip
        assert main(argv) == 0
    merged = work / "merged"
    argv = ["merge", "--model", str(base), "--adapter", str(adapter), "--out", str(merged)]
    assert main(argv) == 2
    assert "cannot be merged" in _one_error_line(capsys)
    assert not merged.exists()


def test_field_overrides_read_json_lists_and_strings():
    got = _field_overrides(["r=16", "target_modules=q_proj,v_proj", "scaling=learned",
                            "leave_out=[1, 2]", "use_rslora=true", "x=null"])  # fmt: skip
    assert got == {"r": 16, "target_modules": ["q_proj", "v_proj"], "scaling": "learned",
                   "leave_out": [1, 2], "use_rslora": True, "x": None}  # fmt: skip


# ---------------------------------------------------------------------------- 4 bits
def test_quantize_writes_a_4bit_folder_and_reports_memory(work, base, capsys):
    out = work / "base-4bit"
    assert main(["quantize", "--model", str(base), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "NF4 + double quant" in said and "peak step memory, QLoRA" in said
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["bnb_4bit_quant_type"] == "nf4"
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert main(["quantize", "--model", str(base), "--out", str(out)]) == 2  # no --overwrite
    assert "--overwrite" in _one_error_line(capsys)
    assert main(["quantize", "--model", str(base), "--out", str(base / "inside")]) == 2
    assert "inside" in _one_error_line(capsys)


def test_qlora_trains_lora_on_the_4bit_base(work, base, capsys):
    out = work / "qlora"
    argv = ["finetune", "--method", "qlora", "--model", str(base), "--steps", "2", "--out",
            str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "bits/param" in said and "adapter saved to" in said
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    gen = ["generate", "--model", str(base), "--adapter", str(out), "--prompt", "def f(x):",
           "--max-new-tokens", "3"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the adapter records the float base: no mismatch warning
        assert main(gen) == 0


# ---------------------------------------------------------------------------- PiSSA, OLoRA
@pytest.mark.parametrize("method", ["pissa", "olora"])
def test_pissa_and_olora_save_plain_lora_for_the_original_base(method, work, base, capsys):
    """The job saves the adapter converted to plain LoRA (rank 2r) relative to the original
    base, so eval and merge on the unchanged checkpoint give the trained model's numbers."""
    from minipeft.jobs.finetune import finetune
    from minipeft.jobs.predict import evaluate_task

    out = work / f"{method}-converted"
    result = finetune(base, "docstrings", out, method=method, steps=2, progress=False,
                      log=lambda *_: None)  # fmt: skip
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["init_lora_weights"], config["r"], config["lora_alpha"]) == (True, 16, 32.0)
    again = evaluate_task(base, "docstrings", adapter=out)
    assert again["loss"] == pytest.approx(result.after["loss"], rel=1e-5)
    merged = work / f"{method}-merged"
    assert main(["merge", "--model", str(base), "--adapter", str(out), "--out", str(merged)]) == 0
    assert evaluate_task(merged, "docstrings")["loss"] == pytest.approx(again["loss"], rel=1e-4)
