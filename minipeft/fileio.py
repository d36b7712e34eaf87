"""Files on the host: atomic writes and safetensors tensors (no torch, no engine).

Every file minipeft writes goes through :func:`atomic_write_bytes`: a temporary file in the same
folder, flushed, then ``os.replace``-d into place, so a crash never leaves a half-written file
under the final name. Tensors are only ever stored as safetensors (never pickled).

A folder that is one artefact (a model, an adapter) is written by :func:`atomic_folder`: into a
sibling temporary folder, then swapped in by two renames, so a failure leaves the old folder or
nothing, never a mix; :func:`check_output_path` refuses an output that is, holds or lies inside
one of the command's own inputs before anything is written.

A safetensors file is ``[8-byte little-endian header length N][N bytes of JSON header][data]``;
the header maps each tensor name to ``{"dtype": "F32", "shape": [...], "data_offsets": [b, e]}``
(byte offsets into the data section) plus an optional ``"__metadata__"`` dict of strings.
NumPy has no bfloat16, so BF16 tensors are widened to float32 exactly: a bfloat16 is the high
16 bits of a float32, hence ``float32_bits = uint32(bf16_bits) << 16``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file as _st_load_file
from safetensors.numpy import save as _st_save

__all__ = [
    "atomic_folder",
    "atomic_write_bytes",
    "check_output_path",
    "atomic_write_text",
    "load_safetensors",
    "safetensors_metadata",
    "save_safetensors",
]

# safetensors dtype code -> little-endian numpy dtype; BF16 is read as raw uint16 bits.
_DTYPES = {
    "BOOL": "|b1", "U8": "|u1", "I8": "|i1", "U16": "<u2", "I16": "<i2", "F16": "<f2",
    "BF16": "<u2", "U32": "<u4", "I32": "<i4", "F32": "<f4", "U64": "<u8", "I64": "<i8",
    "F64": "<f8",
}  # fmt: skip


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, then ``os.replace`` it into place,
    so a crash never leaves a half-written file under the final name."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text (JSON configs, tokenizer files)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _read_header(path: str) -> tuple[dict[str, dict], dict[str, str], int]:
    """Parse and check a safetensors header: (tensor infos, metadata, data section start)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(
                f"{path}: not a safetensors file: expected at least 8 bytes (the header "
                f"length), found {size}"
            )
        n = int.from_bytes(raw, "little")
        if n > size - 8:
            raise ValueError(
                f"{path}: truncated or corrupt safetensors file: the header claims {n} bytes "
                f"but only {size - 8} follow the 8-byte length"
            )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: corrupt safetensors header: not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise ValueError(f"{path}: corrupt safetensors header: expected a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data_size = size - 8 - n
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            if not all(_is_count(x) for x in (*shape, begin, end)):
                raise ValueError
        except (TypeError, KeyError, ValueError):
            raise ValueError(
                f"{path}: corrupt safetensors header: tensor {name!r} needs dtype, shape and "
                f"data_offsets [begin, end], found {info!r}"
            ) from None
        if dtype not in _DTYPES:
            raise ValueError(
                f"{path}: tensor {name!r} has dtype {dtype!r}; minipeft reads {sorted(_DTYPES)}"
            )
        nbytes = math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize
        if end - begin != nbytes:
            raise ValueError(
                f"{path}: corrupt safetensors header: tensor {name!r} ({dtype} {shape}) needs "
                f"{nbytes} bytes, found data_offsets [{begin}, {end}]"
            )
        if end > data_size:
            raise ValueError(
                f"{path}: truncated safetensors file: tensor {name!r} ends at data byte {end} "
                f"but the file holds only {data_size} data bytes"
            )
    return header, metadata, 8 + n


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _check_file(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"safetensors file not found: {path}")
    return path


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` dict of a safetensors file (e.g. ``{"format": "pt"}``)."""
    return _read_header(_check_file(path))[1]


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every tensor of a safetensors file into host NumPy arrays (native byte order).

    BF16 tensors come back as float32 (exact); all other dtypes keep their dtype.
    """
    path = _check_file(path)
    header, _, start = _read_header(path)
    if not any(info["dtype"] == "BF16" for info in header.values()):
        try:
            return dict(_st_load_file(path))
        except Exception as e:  # safetensors' own error type varies between versions
            raise ValueError(f"{path}: could not read safetensors file: {e}") from e
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        for name, info in header.items():
            begin, end = info["data_offsets"]
            f.seek(start + begin)
            arr = np.frombuffer(f.read(end - begin), dtype=_DTYPES[info["dtype"]])
            if info["dtype"] == "BF16":
                arr = (arr.astype(np.uint32) << 16).view(np.float32)  # bf16 = high half of f32
            else:
                arr = arr.astype(arr.dtype.newbyteorder("="))  # native order, owned copy
            out[name] = arr.reshape(info["shape"])
    return out


def save_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``tensors`` to a safetensors file atomically.

    ``metadata`` defaults to ``{"format": "pt"}``; "format" is always set, because transformers
    refuses files without it.
    """
    meta = {"format": "pt", **(metadata or {})}
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"{os.fspath(path)}: metadata must map str to str, found {k!r}: {v!r}")
    arrays = {}
    for name, arr in tensors.items():
        if not isinstance(name, str) or not name:
            raise TypeError(
                f"{os.fspath(path)}: tensor names must be non-empty str, found {name!r}"
            )
        if not isinstance(arr, (np.ndarray, np.generic)):
            raise TypeError(
                f"{os.fspath(path)}: tensor {name!r}: expected a host numpy array, "
                f"found {type(arr).__name__} (convert with to_numpy first)"
            )
        arrays[name] = np.asarray(arr, order="C")  # contiguous; keeps 0-d arrays 0-d
    atomic_write_bytes(path, _st_save(arrays, metadata=meta))


# ----------------------------------------------------------------------------------- folders


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path)))).resolve()


def check_output_path(
    out: str | os.PathLike, inputs: Mapping[str, str | os.PathLike | None], option: str = "--out"
) -> None:
    """Raise ``ValueError`` if ``out`` is, contains or lies inside one of ``inputs``.

    ``inputs`` maps a description ("the base model") to a path (None entries are skipped).
    Symbolic links are resolved, so two spellings of one folder are caught. Called before a job
    writes anything: a writer must never destroy what it reads.
    """
    target = _resolved(out)
    for what, path in inputs.items():
        if path is None:
            continue
        src = _resolved(path)
        if target == src:
            relation = "is"
        elif src.is_relative_to(target):
            relation = "contains"
        elif target.is_relative_to(src) and src.is_dir():
            relation = "is inside"
        else:
            continue
        raise ValueError(
            f"{option} {os.fspath(out)!r} {relation} {what} ({os.fspath(path)!r}); writing there "
            f"would destroy an input of this command: expected an output folder apart from it"
        )


@contextlib.contextmanager
def atomic_folder(
    path: str | os.PathLike, keep: Callable[[str], bool] | None = None
) -> Iterator[Path]:
    """Write a whole folder atomically: ``with atomic_folder(out) as tmp: save into tmp``.

    The body writes into a fresh sibling folder ``.<name>.tmp-*``. On success, entries of an
    existing ``path`` that the new content lacks and ``keep(entry_name)`` accepts are moved
    across (a run's ``checkpoint/`` or ``metrics.jsonl``, other adapters' subfolders), then the
    old folder is renamed aside, the new one renamed into place and the old one deleted. On any
    failure (an exception or Ctrl-C) the temporary folder is removed and ``path`` is untouched.
    """
    final = Path(os.path.abspath(os.fspath(path)))
    if final.exists() and not final.is_dir():
        raise ValueError(f"{os.fspath(path)!r} is a file; expected a folder (or a new path)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    moved: list[str] = []
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if not final.exists():
            os.replace(tmp, final)
            return
        for entry in sorted(os.listdir(final)) if keep is not None else []:
            if not (tmp / entry).exists() and keep(entry):
                os.replace(final / entry, tmp / entry)
                moved.append(entry)
        old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-"))
        os.replace(final, old / "content")  # a folder cannot replace a non-empty folder
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(old / "content", final)
            raise
        moved.clear()
        shutil.rmtree(old, ignore_errors=True)
    finally:
        for entry in moved:  # the swap failed: give the carried entries back
            with contextlib.suppress(OSError):
                os.replace(tmp / entry, final / entry)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
