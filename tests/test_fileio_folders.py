"""Folder-level atomic writes and the output-is-not-an-input check (``minipeft.fileio``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from minipeft.fileio import atomic_folder, check_output_path


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in folder.rglob("*") if p.is_file()}


def test_a_new_folder_appears_whole(tmp_path):
    out = tmp_path / "model"
    with atomic_folder(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.tmp-")
        (tmp / "a.txt").write_text("a")
        assert not out.exists()  # nothing under the final name until the body is done
    assert _tree(out) == {"a.txt": "a"}
    assert sorted(os.listdir(tmp_path)) == ["model"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failure_leaves_the_old_content(tmp_path, error):
    out = tmp_path / "model"
    out.mkdir()
    (out / "a.txt").write_text("old")
    with pytest.raises(error), atomic_folder(out, keep=lambda name: True) as tmp:
        (tmp / "a.txt").write_text("new")
        raise error
    assert _tree(out) == {"a.txt": "old"}
    assert sorted(os.listdir(tmp_path)) == ["model"]  # the temporary folder is gone


def test_replacing_keeps_only_what_keep_accepts(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "state.json").write_text("{}")
    (out / "metrics.jsonl").write_text("{}\n")
    (out / "model-00001-of-00002.safetensors").write_text("stale shard")
    (out / "weights.bin").write_text("old weights")
    with atomic_folder(out, keep=lambda name: name in ("checkpoint", "metrics.jsonl")) as tmp:
        (tmp / "weights.bin").write_text("new weights")
    assert _tree(out) == {"checkpoint/state.json": "{}", "metrics.jsonl": "{}\n",
                          "weights.bin": "new weights"}  # fmt: skip
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_a_file_in_the_way_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a file; expected a folder"):
        with atomic_folder(tmp_path / "f"):
            pass


@pytest.mark.parametrize(
    "out, relation",
    [("base", "is"), ("base/sub", "is inside"), (".", "contains"), ("link", "is")],
)
def test_an_output_that_overlaps_an_input_is_refused(tmp_path, monkeypatch, out, relation):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "base")  # another spelling of the same folder
    with pytest.raises(ValueError, match=rf"--out '{out}' {relation} the base model"):
        check_output_path(out, {"the base model": "base"})


def test_unrelated_outputs_pass(tmp_path):
    (tmp_path / "base").mkdir()
    check_output_path(tmp_path / "base-merged", {"the base model": tmp_path / "base", "x": None})
    check_output_path(tmp_path / "out", {"the corpus": tmp_path / "corpus.txt"})
