"""benchmarks/gpu_step.py and scripts/gpu_check.sh without a GPU: the smoke preset runs on the
CPU and writes its JSON; asking for CUDA where there is none exits clearly."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import minipeft

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "gpu_step.py"
CHECK = ROOT / "scripts" / "gpu_check.sh"
ROWS = ["fp32", "tf32", "fp16", "bf16", "qlora", "nf4"]
no_gpu = pytest.mark.skipif(minipeft.cuda_available(), reason="a GPU is present here")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1"}  # fmt: skip


def _torch_side_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "peft"))


def test_smoke_preset_runs_on_cpu_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "gpu_step.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--device", "cpu", "--preset", "smoke", "--repeats", "1",
         "--json", str(out)],
        env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "minipeft s" in proc.stdout
    data = json.loads(out.read_text())
    assert not list(out.parent.glob("*.tmp"))  # the atomic write left no temporary behind
    assert [r["row"] for r in data["rows"]] == ROWS
    torch_ok = _torch_side_available()
    for r in data["rows"]:
        assert r["minipeft_error"] is None, r
        assert r["minipeft_s"] > 0, r
        if torch_ok and r["row"] in ("fp32", "tf32", "bf16"):
            assert r["torch_s"] is not None and r["torch_s"] > 0, r
            assert r["ratio"] > 0
        if r["torch_s"] is None:
            assert r["torch_skipped"], r  # a missing PyTorch time always says why
    skipped = {r["row"]: r["torch_skipped"] for r in data["rows"]}
    if torch_ok:
        assert "cpu" in skipped["fp16"].lower()  # torch fp16 autocast is not run on the CPU
    else:
        assert skipped["fp32"].endswith("not installed")
    nf4 = data["rows"][-1]
    assert nf4["minipeft_gbps"] > 0 and nf4["copy_gbps"] > 0 and nf4["fraction_of_copy"] > 0


@no_gpu
def test_cuda_without_gpu_exits_2() -> None:
    proc = subprocess.run([sys.executable, str(BENCH), "--device", "cuda"], env=_env(),
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "CUDA" in proc.stderr


def test_gpu_check_script_syntax() -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    proc = subprocess.run([bash, "-n", str(CHECK)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@no_gpu
def test_gpu_check_without_gpu_says_so(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    env = {**_env(), "OUT": str(tmp_path)}
    proc = subprocess.run([bash, str(CHECK)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode != 0
    assert "CUDA is not available" in proc.stdout + proc.stderr
