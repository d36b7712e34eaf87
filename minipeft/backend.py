"""Array backends: NumPy on ``"cpu"``, CuPy on ``"cuda"``.

This is the only module that imports numpy/cupy *to compute*. Everything else asks it for the
array module of the data it holds (``xp = xp_of(arr)``), so the same code runs on both devices
and mixing devices fails loudly instead of silently copying.

Devices are the strings ``"cpu"`` and ``"cuda"`` (``"cuda:0"`` is accepted and normalised;
minipeft uses one GPU). Random numbers come from one seeded generator per device
(:func:`manual_seed` reseeds all of them), so runs are reproducible.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "DEVICES",
    "DeviceError",
    "check_device",
    "cuda_available",
    "get_xp",
    "xp_of",
    "device_of",
    "to_numpy",
    "to_device",
    "manual_seed",
    "get_rng",
    "erf",
    "scatter_add",
    "broadcast_shapes",
    "backend_info",
]

DEVICES = ("cpu", "cuda")

_CUDA_HINT = (
    "install the CUDA extra that matches your driver: pip install -e '.[cuda12]' "
    "(cupy-cuda12x) or pip install -e '.[cuda13]' (cupy-cuda13x)"
)
_GPU_HINT = "check that `nvidia-smi` lists a GPU and that CUDA_VISIBLE_DEVICES does not hide it"
_NO_CUPY = "CuPy is not installed"


class DeviceError(RuntimeError):
    """Raised for unknown devices, unavailable CUDA, or arrays on mixed devices."""


_cupy: Any = None
_cupy_checked = False
_cupy_error = ""


def _load_cupy() -> Any:
    """Import CuPy once; remember why it failed so errors can say so."""
    global _cupy, _cupy_checked, _cupy_error
    if not _cupy_checked:
        _cupy_checked = True
        try:
            import cupy  # noqa: PLC0415 — optional dependency, imported lazily

            if cupy.cuda.runtime.getDeviceCount() < 1:
                _cupy_error = "CuPy is installed but no CUDA GPU was found"
            else:
                _cupy = cupy
        except ImportError:
            _cupy_error = _NO_CUPY
        except Exception as exc:  # a driver/runtime error: report it, don't crash
            _cupy_error = f"CuPy could not reach a GPU ({type(exc).__name__}: {exc})"
    return _cupy


def cuda_available() -> bool:
    """True when CuPy imports and at least one CUDA GPU is visible."""
    return _load_cupy() is not None


def check_device(device: Any) -> str:
    """Normalise a device spec to ``"cpu"`` or ``"cuda"``; raise :class:`DeviceError` otherwise."""
    if device is None:
        return "cpu"
    name = str(device).lower()
    if name.startswith("cuda"):
        if name not in ("cuda", "cuda:0"):
            raise DeviceError(f"expected device 'cpu', 'cuda' or 'cuda:0', found {device!r}")
        if not cuda_available():
            # installing CuPy only helps when it is missing; otherwise the GPU/driver is the issue
            hint = _CUDA_HINT if _cupy_error == _NO_CUPY else _GPU_HINT
            raise DeviceError(f"device 'cuda' is not available: {_cupy_error}; {hint}")
        return "cuda"
    if name != "cpu":
        raise DeviceError(f"unknown device {device!r}: expected one of {DEVICES}")
    return "cpu"


def get_xp(device: str) -> Any:
    """The array module for a device: ``numpy`` for cpu, ``cupy`` for cuda."""
    return _cupy if check_device(device) == "cuda" else np


def xp_of(arr: Any) -> Any:
    """The array module that owns ``arr`` (numpy for host arrays and Python scalars)."""
    if _cupy is not None and isinstance(arr, _cupy.ndarray):
        return _cupy
    return np


def device_of(arr: Any) -> str:
    """``"cuda"`` for a CuPy array, ``"cpu"`` otherwise."""
    return "cuda" if xp_of(arr) is not np else "cpu"


def to_numpy(arr: Any) -> np.ndarray:
    """A host NumPy array with the same values (copies from the GPU when needed)."""
    if xp_of(arr) is not np:
        return arr.get()
    return np.asarray(arr)


def to_device(arr: Any, device: str) -> Any:
    """``arr`` on ``device``; returns the same object when it is already there."""
    device = check_device(device)
    if device == device_of(arr):
        return arr
    if device == "cuda":
        return _cupy.asarray(arr)
    return to_numpy(arr)


_SEED = 0
_rngs: dict[str, Any] = {}


def manual_seed(seed: int) -> None:
    """Reseed the generator of every device (the ones already made and those made later)."""
    global _SEED
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, found {seed!r}")
    _SEED = int(seed)
    _rngs.clear()


def get_rng(device: str = "cpu", seed: int | None = None) -> Any:
    """The device's global generator, or a fresh one when ``seed`` is given.

    NumPy's and CuPy's ``default_rng`` share an API (``random``, ``standard_normal``,
    ``integers``), so callers never branch on the device.
    """
    device = check_device(device)
    xp = get_xp(device)
    if seed is not None:
        return xp.random.default_rng(seed)
    if device not in _rngs:
        _rngs[device] = xp.random.default_rng(_SEED)
    return _rngs[device]


_erf_scalar = np.frompyfunc(math.erf, 1, 1)


def erf(x: Any) -> Any:
    """The error function, elementwise, to full precision on both devices.

    NumPy has no ``erf``; ``math.erf`` applied elementwise is exact (it is only used by exact
    GELU, which GPT-2 and LLaMA do not use on their hot path). CuPy has a native kernel.
    """
    xp = xp_of(x)
    if xp is not np:
        import cupyx.scipy.special  # noqa: PLC0415

        return cupyx.scipy.special.erf(x)
    x = np.asarray(x)
    # asarray: on a 0-d input the ufunc returns a bare Python float, which has no .astype
    return np.asarray(_erf_scalar(x), dtype=x.dtype)


def scatter_add(target: Any, index: Any, values: Any) -> None:
    """``target[index] += values`` in place, with repeated indices adding up (unbuffered).

    NumPy spells it ``np.add.at``; CuPy ``cupyx.scatter_add``.
    """
    if xp_of(target) is not np:
        import cupyx  # noqa: PLC0415

        cupyx.scatter_add(target, index, values)
    else:
        np.add.at(target, index, values)


def broadcast_shapes(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    """The broadcast result of shapes (host-side shape arithmetic; raises ValueError)."""
    return tuple(np.broadcast_shapes(*shapes))


def backend_info() -> dict[str, Any]:
    """What is available: numpy version, cupy version or why not, GPU names."""
    info: dict[str, Any] = {"numpy": np.__version__, "devices": ["cpu"]}
    cp = _load_cupy()
    if cp is None:
        info["cupy"] = None
        info["cuda"] = _cupy_error
    else:
        info["cupy"] = cp.__version__
        info["devices"].append("cuda")
        props = cp.cuda.runtime.getDeviceProperties(0)
        name = props["name"]
        info["cuda"] = name.decode() if isinstance(name, bytes) else str(name)
    return info
