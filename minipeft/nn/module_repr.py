"""Printing a module tree: the text behind ``repr(module)``, as PyTorch prints it.

Each module prints as ``Name(<extra_repr>)``; one with children lists them, one per line, as
``(name): <child repr>`` indented by two spaces per level:

    Sequential(
      (0): Linear(in_features=2, out_features=3, bias=True)
      (1): LayerNorm((3,), eps=1e-05, elementwise_affine=True)
    )
"""

from __future__ import annotations

from typing import Any

__all__ = ["module_repr"]


def _addindent(text: str, spaces: int) -> str:
    lines = text.split("\n")
    return lines[0] + "".join("\n" + " " * spaces + line for line in lines[1:])


def module_repr(module: Any) -> str:
    """``Name(extra)`` on one line for a leaf with one line of settings, else a nested block."""
    extra = module.extra_repr()
    extra_lines = extra.split("\n") if extra else []
    child_lines = [f"({name}): {_addindent(repr(m), 2)}" for name, m in module._modules.items()]
    lines = extra_lines + child_lines
    body = ""
    if len(extra_lines) == 1 and not child_lines:
        body = extra_lines[0]
    elif lines:
        body = "\n  " + "\n  ".join(lines) + "\n"
    return f"{type(module).__name__}({body})"
