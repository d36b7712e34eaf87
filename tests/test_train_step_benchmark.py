"""benchmarks/train_step.py and benchmarks/autograd_overhead.py in tiny settings: they run, and
their JSON has every row with positive figures. Nothing here asserts anything about time."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN_STEP = ROOT / "benchmarks" / "train_step.py"
AUTOGRAD = ROOT / "benchmarks" / "autograd_overhead.py"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1"}  # fmt: skip


def _torch_side_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "peft"))


def _run(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], env=_env(), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_cpu_tiny_rows_write_json(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "train_step.json"
    proc = _run([str(TRAIN_STEP), "--preset", "cpu-tiny", "--threads", "1", "--repeats", "1",
                 "--warmup", "0", "--rows", "lora,forward,qlora", "--no-memory",
                 "--json", str(out)])  # fmt: skip
    assert "minipeft ms" in proc.stdout and "FLOP floor" in proc.stdout
    assert not list(out.parent.glob("*.tmp"))  # the atomic write left no temporary behind
    data = json.loads(out.read_text())
    assert data["preset"] == "cpu-tiny" and data["threads"] == [1] and data["memory"] is None
    assert [(r["threads"], r["row"]) for r in data["rows"]] == [
        (1, "lora"), (1, "forward"), (1, "qlora"),
    ]  # fmt: skip
    torch_ok = _torch_side_available()
    for r in data["rows"]:
        assert r["skipped"] is None and r["minipeft_ms"] > 0 and r["minipeft_tok_s"] > 0, r
        if r["row"] == "qlora":  # compared with minipeft's own LoRA step, never with torch
            assert r["reference"] == "ours lora" and r["reference_ms"] > 0 and r["ratio"] > 0
        elif torch_ok:
            assert r["reference"] == "torch" and r["reference_ms"] > 0 and r["ratio"] > 0, r
        else:
            assert r["reference_ms"] is None and "not installed" in r["reference_skipped"]
    (floor,) = data["floor"]
    assert abs(floor["gflop"] - 18.8) < 0.05  # forward 9.1 + input-gradient backward 9.7
    assert floor["blas_gflops"] > 0 and floor["floor_ms"] > 0 and floor["achieved_fraction"] > 0


def test_memory_child_reports_positive_peaks(tmp_path: Path, monkeypatch) -> None:
    # the parent's job first: save the cpu-tiny weights the child loads
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    bench_cases = importlib.import_module("bench_cases")
    weights = bench_cases.prepare_weights(bench_cases.PRESETS["cpu-tiny"], str(tmp_path))
    proc = _run([str(TRAIN_STEP), "--memory-child", "minipeft", "forward", "--preset", "cpu-tiny",
                 "--weights", weights, "--threads", "1"])  # fmt: skip
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (result["side"], result["row"]) == ("minipeft", "forward")
    assert result["load_peak_mib"] > 0 and result["row_peak_mib"] > 0, result
    assert result["method"]


def test_autograd_overhead_tiny(tmp_path: Path) -> None:
    out = tmp_path / "autograd.json"
    proc = _run([str(AUTOGRAD), "--ops", "12", "--shape", "4", "4", "--repeats", "1",
                 "--warmup", "0", "--json", str(out)])  # fmt: skip
    assert "us/op" in proc.stdout
    data = json.loads(out.read_text())
    assert data["ops"] == 12 and data["shape"] == [4, 4]
    assert [r["row"] for r in data["rows"]] == ["forward+backward", "forward (no grad)"]
    has_torch = importlib.util.find_spec("torch") is not None
    for r in data["rows"]:
        assert r["minipeft_us_per_op"] > 0
        assert (r["torch_us_per_op"] is not None and r["torch_us_per_op"] > 0) == has_torch
    assert data["rows"][1]["numpy_us_per_op"] > 0
