"""Which modules get an adapter: PEFT 0.21.2's target-module rules, on module *names* only.

Names are relative to the base model, as PEFT sees them when injecting
(``transformer.h.0.attn.c_attn`` for GPT-2, ``model.layers.3.self_attn.q_proj`` for LLaMA).
A name is targeted when, in order:

1. it is not excluded: ``exclude_modules`` as a list (equal, or ends with ``"." + entry``) or as a
   regex (``re.fullmatch``);
2. it is not inside a ``modules_to_save`` module (those are trained whole, never wrapped);
3. it matches ``target_modules``: a regex string must ``re.fullmatch`` the whole name; a list entry
   must equal the name (accepted at once) or be a ``"." + entry`` suffix of it;
4. for a suffix match, when ``layers_to_transform`` is set, the layer index read from the name is
   one of them. The index is the number after the first ``<layers_pattern>.`` (e.g. ``h.0.`` or
   ``layers.3.``); without ``layers_pattern`` it is the first ``.<segment>.<digits>.`` after a dot.

``"all-linear"`` needs the model's Linear modules, so :func:`find_targets` takes them as
``linear_names`` and drops the output head.
"""

from __future__ import annotations

import re
from typing import Any

from minipeft.peft.config import resolve_target_modules

__all__ = [
    "ALL_LINEAR",
    "SEQ_CLS_HEAD_NAMES",
    "find_targets",
    "is_all_linear",
    "is_module_to_save",
    "is_target",
    "layer_index",
    "unmatched_pattern_keys",
]

ALL_LINEAR = "all-linear"
OUTPUT_HEAD_NAME = "lm_head"  # the output embedding of a causal LM
SEQ_CLS_HEAD_NAMES = ("score", "classifier")  # PEFT's guesses for a classification head


def is_all_linear(config: Any) -> bool:
    """True when ``target_modules`` is the ``"all-linear"`` shorthand (any case)."""
    targets = getattr(config, "target_modules", None)
    return isinstance(targets, str) and targets.lower() == ALL_LINEAR


def _in_name_list(name: str, entries: Any) -> bool:
    """PEFT's list rule: equal, or a dotted suffix (``c_attn`` matches ``h.0.attn.c_attn``)."""
    return name in entries or any(name.endswith("." + e) for e in entries)


def _excluded(name: str, config: Any) -> bool:
    exclude = getattr(config, "exclude_modules", None)
    if exclude:
        if isinstance(exclude, str):
            if re.fullmatch(exclude, name):
                return True
        elif _in_name_list(name, exclude):
            return True
    # A module inside modules_to_save is trained as a whole copy; an adapter on it would conflict.
    for m in getattr(config, "modules_to_save", None) or ():
        if re.match(rf"(^|.*\.){m}($|\..*)", name):
            return True
    return False


def layer_index(name: str, layers_pattern: str | list[str] | None = None) -> int | None:
    """The layer number in ``name`` (PEFT's regexes), or None when it has none.

    >>> layer_index("transformer.h.11.attn.c_attn")
    11
    >>> layer_index("model.layers.2.mlp.experts.7.up", "layers")
    2
    """
    if not layers_pattern:
        # Lazy `.*?` takes the first numbered segment, not e.g. an expert index further right.
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    else:
        patterns = [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern
        match = None
        for pattern in patterns:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", name)
            if match is not None:
                break
    return int(match.group("idx")) if match else None


def is_target(module_name: str, config: Any, model_type: str | None = None) -> bool:
    """Whether LoRA wraps ``module_name`` under ``config`` (PEFT's ``check_target_module_exists``).

    ``target_modules=None`` uses the default for ``model_type``. ``"all-linear"`` cannot be decided
    from a name: use :func:`find_targets` with ``linear_names``.
    """
    if _excluded(module_name, config):
        return False
    targets = resolve_target_modules(config, model_type)
    if isinstance(targets, str):
        if targets.lower() == ALL_LINEAR:
            raise ValueError(
                "target_modules='all-linear' needs the model's Linear module names; "
                "call find_targets(module_names, config, linear_names=...) instead of is_target"
            )
        return re.fullmatch(targets, module_name) is not None
    if module_name in targets:
        return True  # named exactly: PEFT applies no layer filter here
    if not any(module_name.endswith("." + t) for t in targets):
        return False
    layers = getattr(config, "layers_to_transform", None)
    if layers is None or (isinstance(layers, list) and len(layers) == 0):
        return True
    index = layer_index(module_name, getattr(config, "layers_pattern", None))
    if index is None:
        return False
    return index == layers if isinstance(layers, int) else index in layers


def _all_linear_targets(config: Any, linear_names: set[str] | None) -> list[str]:
    """PEFT's ``_maybe_include_all_linear_layers``: every Linear but the output head."""
    if linear_names is None:
        raise ValueError(
            "target_modules='all-linear': expected linear_names (the names of the model's Linear "
            "modules), found None"
        )
    drop = {OUTPUT_HEAD_NAME} & set(linear_names)
    task = getattr(config, "task_type", None)
    if not drop and task is not None and getattr(task, "value", task) == "SEQ_CLS":
        # No output embedding: drop the first classification head found (PEFT issue 2027).
        drop = {next((h for h in SEQ_CLS_HEAD_NAMES if h in linear_names), "")}

    # (The tuner passes only names outside adapter layers: tuners.base.inside_adapter.)
    return sorted(n for n in linear_names if n not in drop)


def find_targets(
    module_names: list[str],
    config: Any,
    model_type: str | None = None,
    linear_names: set[str] | None = None,
) -> list[str]:
    """The names in ``module_names`` that LoRA wraps, in their given order.

    Raises a ValueError naming what was searched for and a sample of the available names when
    nothing matches (a typo in ``target_modules`` or an adapter meant for another architecture).
    """
    names = [n for n in module_names if n]  # "" is the root module
    if is_all_linear(config):
        wanted = _all_linear_targets(config, linear_names)
        list_config = _ListTargets(config, wanted)
        found = [n for n in names if is_target(n, list_config)]
        searched: Any = f"'all-linear' ({len(wanted)} Linear modules after dropping the head)"
    else:
        found = [n for n in names if is_target(n, config, model_type)]
        searched = resolve_target_modules(config, model_type)
    if found:
        return found
    sample = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
    extra = ""
    for attr in ("layers_to_transform", "layers_pattern", "exclude_modules", "modules_to_save"):
        value = getattr(config, attr, None)
        if value not in (None, [], ""):
            extra += f" {attr}={value!r} also applied."
    raise ValueError(
        f"target_modules {searched!r} matched none of the model's modules.{extra} "
        f"Module names available: {sample or '(none)'}"
    )


class _ListTargets:
    """``config`` seen with ``target_modules`` replaced by an explicit name list."""

    def __init__(self, config: Any, targets: list[str]) -> None:
        self._config, self.target_modules = config, targets

    def __getattr__(self, name: str) -> Any:
        return getattr(self._config, name)


def is_module_to_save(module_name: str, modules_to_save: list[str] | None) -> bool:
    """PEFT's ``_set_trainable`` rule: a module is copied for training when its name *ends with*
    an entry (a plain string suffix, no dot boundary: ``score`` also matches ``prescore``)."""
    return bool(modules_to_save) and any(module_name.endswith(m) for m in modules_to_save)


def unmatched_pattern_keys(config: Any, targeted_names: list[str]) -> dict[str, list[str]]:
    """``rank_pattern`` / ``alpha_pattern`` keys that matched no targeted module (PEFT warns)."""
    out: dict[str, list[str]] = {}
    for attr in ("rank_pattern", "alpha_pattern"):
        keys = getattr(config, attr, None) or {}
        unused = [
            k for k in keys if not any(re.match(rf"(.*\.)?({k})$", n) for n in targeted_names)
        ]
        if unused:
            out[attr] = sorted(unused)
    return out
