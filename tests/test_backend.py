"""The array backend: devices, array modules, host copies, seeded RNG, erf and scatter-add."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minipeft import backend as B


def test_devices_and_device_names() -> None:
    assert B.DEVICES == ("cpu", "cuda")
    assert B.check_device(None) == "cpu"
    assert B.check_device("cpu") == "cpu" and B.check_device("CPU") == "cpu"
    assert isinstance(B.cuda_available(), bool)
    if B.cuda_available():
        assert B.check_device("cuda:0") == "cuda"
    with pytest.raises(B.DeviceError, match=r"'cpu', 'cuda' or 'cuda:0', found 'cuda:1'"):
        B.check_device("cuda:1")
    with pytest.raises(B.DeviceError, match=r"unknown device 'mps'"):
        B.check_device("mps")


@pytest.mark.parametrize(
    ("error", "hint"),
    [
        ("CuPy is not installed", "install the CUDA extra"),
        ("CuPy is installed but no CUDA GPU was found", "nvidia-smi"),
        ("CuPy could not reach a GPU (CUDARuntimeError: driver too old)", "nvidia-smi"),
    ],
)
def test_cuda_unavailable_error_gives_the_hint_for_its_cause(
    monkeypatch: pytest.MonkeyPatch, error: str, hint: str
) -> None:
    monkeypatch.setattr(B, "_cupy_checked", True)
    monkeypatch.setattr(B, "_cupy", None)
    monkeypatch.setattr(B, "_cupy_error", error)
    with pytest.raises(B.DeviceError) as info:
        B.check_device("cuda")
    message = str(info.value)
    assert error in message and hint in message
    # installing CuPy does not help when it is already installed
    assert ("pip install" in message) == (error == "CuPy is not installed")


def test_array_modules_follow_the_data(device: str) -> None:
    xp = B.get_xp(device)
    arr = xp.arange(3.0)
    assert B.xp_of(arr) is xp and B.device_of(arr) == device
    assert B.get_xp("cpu") is np and B.xp_of(1.5) is np and B.device_of(np.ones(2)) == "cpu"
    host = B.to_numpy(arr)
    assert type(host) is np.ndarray and host.tolist() == [0.0, 1.0, 2.0]
    assert B.to_device(arr, device) is arr  # already there: no copy
    back = B.to_device(B.to_device(arr, "cpu"), device)
    assert B.device_of(back) == device and B.to_numpy(back).tolist() == [0.0, 1.0, 2.0]


def test_to_numpy_of_host_data() -> None:
    arr = np.ones(3)
    assert B.to_numpy(arr) is arr
    assert B.to_numpy(np.float32(2.0)).dtype == np.float32


def test_manual_seed_makes_draws_reproducible(device: str) -> None:
    B.manual_seed(42)
    first = B.to_numpy(B.get_rng(device).standard_normal(5))
    more = B.to_numpy(B.get_rng(device).standard_normal(5))
    B.manual_seed(42)
    assert np.array_equal(B.to_numpy(B.get_rng(device).standard_normal(5)), first)
    assert not np.array_equal(first, more)  # one stream, it advances
    B.manual_seed(43)
    assert not np.array_equal(B.to_numpy(B.get_rng(device).standard_normal(5)), first)


def test_a_seeded_generator_is_fresh_and_independent() -> None:
    B.manual_seed(0)
    expected = B.get_rng().random(3)
    B.manual_seed(0)
    a, b = B.get_rng(seed=9).random(3), B.get_rng(seed=9).random(3)
    assert np.array_equal(a, b)
    assert np.array_equal(B.get_rng().random(3), expected)  # the global stream is untouched


@pytest.mark.parametrize("seed", [-1, 1.5, "1"])
def test_manual_seed_rejects_bad_seeds(seed: object) -> None:
    with pytest.raises(ValueError, match="non-negative int"):
        B.manual_seed(seed)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_erf_matches_math_erf(device: str, dtype: type) -> None:
    values = np.array([-30.0, -3.0, -1.0, -0.5, -1e-8, 0.0, 1e-8, 0.3, 1.0, 2.5, 6.0, np.inf])
    xp = B.get_xp(device)
    got = B.erf(xp.asarray(values.astype(dtype)))
    assert got.dtype == dtype and got.shape == values.shape
    want = [math.erf(float(v)) for v in values.astype(dtype)]
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(B.to_numpy(got), want, rtol=rtol, atol=0)
    assert math.isnan(float(B.erf(xp.asarray(np.array([np.nan])))[0]))


def test_erf_of_a_0d_array() -> None:
    out = B.erf(np.array(0.5))
    assert out.shape == () and float(out) == pytest.approx(math.erf(0.5), rel=1e-15)


def test_scatter_add_adds_repeated_indices(device: str) -> None:
    xp = B.get_xp(device)
    target = xp.zeros(4)
    B.scatter_add(target, xp.asarray([0, 0, 3, 0]), xp.asarray([1.0, 2.0, 3.0, 4.0]))
    assert B.to_numpy(target).tolist() == [7.0, 0.0, 0.0, 3.0]
    rows = xp.zeros((3, 2))
    B.scatter_add(rows, xp.asarray([2, 2, 0]), xp.ones((3, 2)))
    assert B.to_numpy(rows).tolist() == [[1.0, 1.0], [0.0, 0.0], [2.0, 2.0]]


def test_broadcast_shapes() -> None:
    assert B.broadcast_shapes((2, 1, 3), (4, 1), ()) == (2, 4, 3)
    with pytest.raises(ValueError):
        B.broadcast_shapes((2, 3), (4,))


def test_backend_info_reports_what_is_available() -> None:
    info = B.backend_info()
    assert set(info) == {"numpy", "devices", "cupy", "cuda"}
    assert info["numpy"] == np.__version__ and info["devices"][0] == "cpu"
    if info["cupy"] is None:
        assert info["devices"] == ["cpu"] and isinstance(info["cuda"], str) and info["cuda"]
    else:
        assert "cuda" in info["devices"]
