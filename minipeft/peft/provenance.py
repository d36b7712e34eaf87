"""Which base an adapter belongs to: a content fingerprint of the base weights, and class names.

An adapter is a *difference* from one particular base model; on another base its numbers mean
nothing, and nothing in the tensors' shapes says so (a re-pretrained base of the same size loads
any old adapter without a word and generates garbage). So minipeft records, in the adapter's
own safetensors metadata (which PEFT ignores, so the files stay PEFT's):

- ``minipeft.base_fingerprint``: a hash of every base weight the adapter does not replace, and
- ``minipeft.id2label``: a classifier's class names (JSON), which PEFT's files have no place for,

beside the ``base_model_name_or_path`` PEFT itself writes into ``adapter_config.json``.

The fingerprint is BLAKE2b (128 bits) over, for each weight in name order, its name, its shape
and its values rounded to float16. Rounding makes a base and its float16 copy one base (the
same checkpoint in another storage dtype), while any real change of the weights (retraining,
another checkpoint, a merged adapter) changes it. Weights of ``modules_to_save`` (a SEQ_CLS
head, newly initialised on every load) are left out: the adapter carries its own copy.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from typing import Any

import numpy as np

from ..backend import to_numpy
from ..nn import Module
from .matching import is_module_to_save

__all__ = [
    "FINGERPRINT_KEY",
    "LABELS_KEY",
    "BaseModelMismatchWarning",
    "base_fingerprint",
    "base_mismatch",
    "labels_from_metadata",
    "labels_metadata",
    "warn_base_mismatch",
]

FINGERPRINT_KEY = "minipeft.base_fingerprint"
LABELS_KEY = "minipeft.id2label"


class BaseModelMismatchWarning(UserWarning):
    """An adapter is being loaded on another base model than the one it was trained on."""


def _excluded(param_name: str, modules_to_save: list[str] | None) -> bool:
    parts = param_name.split(".")
    return any(
        is_module_to_save(".".join(parts[:i]), modules_to_save) for i in range(1, len(parts))
    )


def base_fingerprint(model: Module, modules_to_save: list[str] | None = None) -> str:
    """Hex digest identifying ``model``'s weights (see the module docstring)."""
    h = hashlib.blake2b(digest_size=16)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if _excluded(name, modules_to_save):
            continue
        values = np.ascontiguousarray(to_numpy(p.data).astype(np.float16))
        h.update(f"{name}:{values.shape};".encode())
        h.update(values.tobytes())
    return h.hexdigest()


def base_mismatch(
    metadata: dict[str, str], model: Module, config: Any, source: Any, strict: bool = False
) -> str | None:
    """Why ``model`` is not the base the adapter recorded (None when it is); ``strict`` raises
    ValueError instead. Call it before injecting (the weights must be the base's own); warn
    with :func:`warn_base_mismatch` once the adapter has loaded.

    Adapters without a fingerprint (made by PEFT, or by an older minipeft) are not checked.
    """
    recorded = metadata.get(FINGERPRINT_KEY)
    if not recorded:
        return None
    found = base_fingerprint(model, getattr(config, "modules_to_save", None))
    if found == recorded:
        return None
    named = getattr(config, "base_model_name_or_path", None)
    where = f" (it was saved from {named!r})" if named else ""
    message = (
        f"the adapter in {str(source)!r} was trained on a different base model{where}: base "
        f"fingerprint {recorded}, this model's {found}. Its outputs on this base will be "
        "wrong; load it on the base it was trained on"
    )
    if strict:
        raise ValueError(message)
    return message + " (pass strict=True / --strict to make this an error)"


def warn_base_mismatch(message: str | None) -> None:
    if message:
        warnings.warn(message, BaseModelMismatchWarning, stacklevel=3)


def labels_metadata(model: Module) -> dict[str, str]:
    """``{LABELS_KEY: json}`` for a classifier whose config names its classes, else ``{}``."""
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    if not id2label:
        return {}
    return {LABELS_KEY: json.dumps({str(k): v for k, v in sorted(id2label.items())})}


def labels_from_metadata(metadata: dict[str, str]) -> dict[int, str] | None:
    """The class names an adapter recorded, as ``{id: name}``, or None."""
    raw = metadata.get(LABELS_KEY)
    if not raw:
        return None
    return {int(k): v for k, v in json.loads(raw).items()}
