"""Micro-benchmark: the per-op cost of autograd on tiny tensors, minipeft vs PyTorch (vs NumPy).

A chain of ``--ops`` (200) elementwise ops on a small tensor (``--shape``, 32 × 32 by default),
cycling ``y * a``, ``y + b``, ``tanh(y)`` (``a``, ``b`` constant tensors of the same shape), then
``sum()``. On arrays this small the arithmetic takes well under a microsecond, so the time is
what each library spends *around* it: Python dispatch (argument checks, dtype/device rules,
creating the output Tensor) and, with autograd on, graph bookkeeping (a node per op, saved
inputs) and the backward walk over that graph (topological order, one backward call and one
gradient accumulation per node). Rows:

* ``forward+backward`` — ``x`` requires grad: the chain, ``sum()``, ``backward()``, reading
  ``x.grad``;
* ``forward (no grad)`` — the chain and ``sum()`` under ``no_grad``: dispatch alone.

Columns: µs per op (total time / ops; the sum and the backward walk are included in the
forward+backward row, so its figure is "forward op + its backward"), for minipeft and PyTorch,
their ratio (minipeft / torch, lower is better), and the same chain on raw NumPy arrays (no
Tensor, no graph): the floor, so minipeft − NumPy is the engine's own overhead. Interleaved with
train_step's :func:`measure` (medians of ``--repeats`` rounds after ``--warmup``), one thread
each side. Asserts nothing about time.

    python benchmarks/autograd_overhead.py [--ops 200] [--shape 32 32] [--repeats 20]
        [--warmup 2] [--json out.json]
"""

from __future__ import annotations

import os

# As in train_step.py: torch's OpenMP threads would otherwise spin between ops and starve
# NumPy's; it must be set before torch or numpy is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from train_step import measure, write_json  # noqa: E402 — this folder is on sys.path

import minipeft as mp  # noqa: E402


def _chain(x: Any, a: Any, b: Any, ops: int, tanh: Callable[[Any], Any]) -> Any:
    y = x
    for i in range(ops):
        k = i % 3
        y = y * a if k == 0 else y + b if k == 1 else tanh(y)
    return y


def cases(ops: int, shape: tuple[int, ...]) -> dict[str, dict[str, Callable[[], None]]]:
    """row -> side -> a callable running that row once."""
    rng = np.random.default_rng(0)
    x0, a0, b0 = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    a0 = 0.5 + 0.25 * np.tanh(a0)  # keep |y| moderate over hundreds of ops
    out: dict[str, dict[str, Callable[[], None]]] = {
        "forward+backward": {},
        "forward (no grad)": {},
    }

    x, a, b = mp.tensor(x0, requires_grad=True), mp.tensor(a0), mp.tensor(b0)

    def mp_backward() -> None:
        x.grad = None
        _chain(x, a, b, ops, lambda t: t.tanh()).sum().backward()
        np.asarray(x.grad)  # minipeft keeps .grad as a raw array

    def mp_forward() -> None:
        with mp.no_grad():
            _chain(x, a, b, ops, lambda t: t.tanh()).sum().item()

    out["forward+backward"]["minipeft"] = mp_backward
    out["forward (no grad)"]["minipeft"] = mp_forward
    out["forward (no grad)"]["numpy"] = lambda: float(_chain(x0, a0, b0, ops, np.tanh).sum())

    if importlib.util.find_spec("torch") is not None:
        import torch  # noqa: PLC0415

        tx = torch.tensor(x0, requires_grad=True)
        ta, tb = torch.tensor(a0), torch.tensor(b0)

        def torch_backward() -> None:
            tx.grad = None
            _chain(tx, ta, tb, ops, torch.tanh).sum().backward()
            tx.grad.numpy()

        def torch_forward() -> None:
            with torch.no_grad():
                _chain(tx, ta, tb, ops, torch.tanh).sum().item()

        out["forward+backward"]["torch"] = torch_backward
        out["forward (no grad)"]["torch"] = torch_forward
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--shape", type=int, nargs="+", default=[32, 32])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.ops < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--ops and --repeats must be >= 1, --warmup >= 0")
    mp.set_num_threads(1)
    built = cases(args.ops, tuple(args.shape))
    if "torch" in built["forward+backward"]:
        import torch  # noqa: PLC0415

        torch.set_num_threads(1)
    rows = []
    for row, sides in built.items():
        seconds = dict(zip(sides, measure(list(sides.values()), args.repeats, args.warmup)))
        us = {side: s * 1e6 / args.ops for side, s in seconds.items()}
        mine, ref = us["minipeft"], us.get("torch")
        rows.append({"row": row, "minipeft_us_per_op": mine, "torch_us_per_op": ref,
                     "ratio": mine / ref if ref else None,
                     "numpy_us_per_op": us.get("numpy")})  # fmt: skip
    print(f"{args.ops} ops on shape {tuple(args.shape)} (cycling *, +, tanh), one thread each")
    print(f"{'row':<20}{'minipeft us/op':>15}{'torch us/op':>13}{'ratio':>7}{'numpy us/op':>13}")
    for r in rows:
        cells = [r["torch_us_per_op"], r["ratio"], r["numpy_us_per_op"]]
        torch_us, ratio, numpy_us = ("n/a" if v is None else f"{v:.2f}" for v in cells)
        print(f"{r['row']:<20}{r['minipeft_us_per_op']:>15.2f}{torch_us:>13}{ratio:>7}"
              f"{numpy_us:>13}")  # fmt: skip
    print("ratio = minipeft / torch (lower is better); numpy = the same chain on raw arrays")
    if args.json:
        write_json(args.json, {"ops": args.ops, "shape": list(args.shape),
                               "repeats": args.repeats, "rows": rows})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
