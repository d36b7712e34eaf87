"""Shared test setup: the ``device`` fixture and the hypothesis profiles.

* ``device`` runs a test on ``"cpu"`` and on ``"cuda"``; the CUDA case skips cleanly when CuPy
  or a GPU is missing, so the same suite passes on a laptop and exercises the GPU where there is
  one.
* Hypothesis profiles: ``ci`` (the default) is deterministic — the same examples on every run, no
  example database, no deadline — so a failure in CI reproduces locally with no extra flags;
  ``dev`` explores randomly and longer. Pick one with ``HYPOTHESIS_PROFILE=dev pytest ...``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

import minipeft

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=25,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=200,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
# CI (env var CI set) and plain local runs both get the deterministic profile unless asked.
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: the test runs on the CUDA device (needs CuPy + GPU)")


@pytest.fixture(
    scope="session",  # session scope: hypothesis tests may use it (no per-example reset needed)
    params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)],
)
def device(request: pytest.FixtureRequest) -> str:
    """The device a test runs on; ``"cuda"`` skips when ``minipeft.cuda_available()`` is False."""
    if request.param == "cuda" and not minipeft.cuda_available():
        pytest.skip("CUDA is not available here (needs CuPy and an NVIDIA GPU)")
    return request.param


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """A temporary folder for a test module's jobs, which is also their cache
    (``MINIPEFT_CACHE``), so nothing reads or writes the user's own cached base."""
    root = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    with pytest.MonkeyPatch.context() as m:
        m.setenv("MINIPEFT_CACHE", str(root / "cache"))
        yield root


@pytest.fixture(scope="module")
def base(work: Path) -> Path:
    """A seconds-old base model: ``minipeft pretrain --preset nano`` for 3 steps."""
    from minipeft.cli import main  # noqa: PLC0415

    out = work / "base"
    assert main(["pretrain", "--preset", "nano", "--steps", "3", "--out", str(out), "--quiet"]) == 0
    return out
