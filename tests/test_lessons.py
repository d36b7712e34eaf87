"""Every lesson runs, top to bottom, as a plain script, and is a valid percent-format notebook.

Lessons assert each claim they teach, so running them is a regression test of the engine and of
the lessons' prose. Each runs in a fresh process (as a learner would run it) from the repository
root with a headless matplotlib backend. Cell structure is checked without jupytext; when
jupytext is installed, the file must also open as a notebook.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
LESSONS_DIR = REPO_ROOT / "lessons"
LESSONS = sorted(LESSONS_DIR.glob("[0-9][0-9]_*.py"))
TIMEOUT_S = 300  # a lesson should take seconds; this only stops a hang
CELL_MARKER = re.compile(r"^# %%( \[markdown\])?\s*$")

pytestmark = pytest.mark.skipif(not LESSONS, reason="no lessons/NN_*.py files found")


def _lesson_env() -> dict[str, str]:
    env = dict(os.environ)
    env["MPLBACKEND"] = "Agg"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    # The lessons' arrays are tiny: a multi-threaded BLAS only adds overhead there, and on a
    # busy machine its spinning threads can make a 1-second lesson take 10x longer.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    return env


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_lesson_runs(path: Path) -> None:
    try:
        proc = subprocess.run(
            [sys.executable, str(path)],
            cwd=REPO_ROOT,
            env=_lesson_env(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(
            f"{path.name} did not finish within {TIMEOUT_S} s (stdout so far: {err.stdout})"
        )
    if proc.returncode != 0:
        pytest.fail(
            f"{path.name} exited with code {proc.returncode}\n"
            f"--- stderr ---\n{proc.stderr}\n--- last stdout ---\n{proc.stdout[-3000:]}"
        )


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_lesson_is_percent_format(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    markers = [(i, line) for i, line in enumerate(lines) if line.startswith("# %%")]
    assert markers, f"{path.name}: expected cells starting with '# %%', found none"
    start = 0
    if lines and lines[0] == "# ---":  # an optional jupytext YAML header, "# ---" ... "# ---"
        closing = [i for i, line in enumerate(lines[1:], 1) if line == "# ---"]
        assert closing, f"{path.name}: the '# ---' header at line 1 is never closed"
        start = closing[0] + 1
    first_content = next(i for i, line in enumerate(lines) if i >= start and line.strip())
    assert lines[first_content] == "# %% [markdown]", (
        f"{path.name}: expected the first cell to be '# %% [markdown]' (the lesson's title), "
        f"found line {first_content + 1}: {lines[first_content]!r}"
    )
    for i, line in markers:
        assert CELL_MARKER.match(line), (
            f"{path.name}:{i + 1}: expected a cell marker '# %%' or '# %% [markdown]', "
            f"found {line!r}"
        )
    kinds = {"markdown" if line.endswith("[markdown]") else "code" for _, line in markers}
    assert kinds == {"markdown", "code"}, f"{path.name}: expected markdown and code cells"
    # a markdown cell holds only comment lines (its prose) and blank lines
    for n, (start, line) in enumerate(markers):
        if not line.endswith("[markdown]"):
            continue
        end = markers[n + 1][0] if n + 1 < len(markers) else len(lines)
        for j in range(start + 1, end):
            text = lines[j]
            assert not text.strip() or text.startswith("#"), (
                f"{path.name}:{j + 1}: expected markdown prose as '# ' comment lines, "
                f"found code {text!r} inside a markdown cell"
            )


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_lesson_opens_with_jupytext(path: Path) -> None:
    jupytext = pytest.importorskip("jupytext")
    notebook = jupytext.read(path)
    kinds = [cell.cell_type for cell in notebook.cells]
    assert kinds and kinds[0] == "markdown", f"{path.name}: expected a markdown cell first"
    assert kinds.count("markdown") >= 1 and kinds.count("code") >= 1, (
        f"{path.name}: expected markdown and code cells, found {kinds}"
    )


def test_readme_lists_every_lesson() -> None:
    readme = (LESSONS_DIR / "README.md").read_text(encoding="utf-8")
    missing = [p.name for p in LESSONS if p.name not in readme]
    assert not missing, f"lessons/README.md does not mention {missing}"
