"""Hypothesis strategies for the engine tests — the one file they live in.

Shapes stay small (sides ≤ 3) so that a gradcheck, which runs two forward passes per input
element, stays fast; they include 0-d tensors and size-1 axes, where broadcasting bugs hide.

Every array is float64 and drawn from a named **domain** that keeps the op away from points where
its derivative is undefined or ill-conditioned (a central difference there would be meaningless):

    real      [-3, 3]                         smooth ops: add, mul, tanh, sum, matmul, ...
    small     [-2, 2]                         exponents: exp, pow's exponent
    positive  [0.5, 3]                        log, sqrt, the base of a tensor power
    nonzero   ±[0.5, 3]                       divisors
    grid      k / 10                          multiples of 0.1
    offgrid   (k + ½) / 10                    ≥ 0.05 from every multiple of 0.1: away from the kinks
                                              of relu/abs (0) and clip (±0.5, 1), and never tied
                                              with a ``grid`` value (maximum/minimum)
    distinct  k / 10, all elements different  max reductions: no ties for the arg-max

Strategies that depend on a shape (a reduction's dims, an index, a reshape target) take the
shape and return a strategy; the ``*_example`` ones draw input shapes and op parameters together
and return ``(shapes, params)``, the form the op table in test_ops.py consumes. The
``*_setups`` ones draw a whole layer configuration as a dict (``lora_embedding_setups``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

Shape = tuple[int, ...]
MAX_SIDE = 3


def _floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


DOMAINS: dict[str, st.SearchStrategy[float]] = {
    "real": _floats(-3.0, 3.0),
    "small": _floats(-2.0, 2.0),
    "positive": _floats(0.5, 3.0),
    "nonzero": st.tuples(st.booleans(), _floats(0.5, 3.0)).map(lambda t: -t[1] if t[0] else t[1]),
    "grid": st.integers(-30, 30).map(lambda k: k / 10),
    "offgrid": st.integers(-30, 29).map(lambda k: (k + 0.5) / 10),
    "distinct": st.integers(-60, 60).map(lambda k: k / 10),
}


# ---------------------------------------------------------------------------- shapes
def shapes(
    min_dims: int = 0, max_dims: int = 3, min_side: int = 1, max_side: int = MAX_SIDE
) -> st.SearchStrategy[Shape]:
    """Array shapes, 0-d included by default; sides from ``min_side`` (1: size-1 axes)."""
    return hnp.array_shapes(
        min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side
    )


def broadcast_shapes(
    n: int = 2, min_dims: int = 0, max_dims: int = 3, max_side: int = MAX_SIDE
) -> st.SearchStrategy[tuple[Shape, ...]]:
    """``n`` mutually broadcastable shapes (different ranks, stretched size-1 axes)."""
    return hnp.mutually_broadcastable_shapes(
        num_shapes=n, min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=max_side
    ).map(lambda b: b.input_shapes)


def arrays(shape: Shape, domain: str = "real") -> st.SearchStrategy[np.ndarray]:
    """A float64 array of ``shape`` with values from a named domain (see the module docstring)."""
    return hnp.arrays(np.float64, shape, elements=DOMAINS[domain], unique=domain == "distinct")


def index_arrays(n: int, shape: st.SearchStrategy[Shape] | None = None) -> st.SearchStrategy:
    """int64 indices into an axis of size ``n``: negatives and repeats included."""
    return hnp.arrays(np.int64, shape or shapes(1, 2), elements=st.integers(-n, n - 1))


# ---------------------------------------------------------------------------- op parameters
def dims(ndim: int) -> st.SearchStrategy[Any]:
    """A reduction's ``dim``: None (all), one axis, or a tuple of distinct axes (± spelled)."""
    if ndim == 0:
        return st.none()
    one = st.integers(-ndim, ndim - 1)
    axes = st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True)
    several = axes.flatmap(lambda a: st.tuples(*[st.sampled_from([i, i - ndim]) for i in a]))
    return st.one_of(st.none(), one, several)


def reduced_count(shape: Shape, dim: Any) -> int:
    """How many elements a reduction over ``dim`` combines into each output element."""
    if dim is None:
        return int(np.prod(shape))
    axes = (dim,) if isinstance(dim, int) else dim
    return int(np.prod([shape[a] for a in axes]))


@st.composite
def reduce_example(draw: st.DrawFn, domain_shapes: st.SearchStrategy[Shape] | None = None,
                   var: bool = False) -> tuple[tuple[Shape], dict[str, Any]]:  # fmt: skip
    """One input shape and ``dim``/``keepdim`` (+ ``correction`` ∈ {0, 1} for a variance)."""
    shape = draw(domain_shapes or shapes())
    params = {"dim": draw(dims(len(shape))), "keepdim": draw(st.booleans())}
    if var:  # correction 1 needs at least two elements per group (else 0/0)
        ok = [0, 1] if reduced_count(shape, params["dim"]) >= 2 else [0]
        params["correction"] = draw(st.sampled_from(ok))
    return (shape,), params


@st.composite
def max_dim_example(draw: st.DrawFn) -> tuple[tuple[Shape], dict[str, Any]]:
    """``x.max(dim, keepdim)``: one axis (PyTorch's max returns values and indices)."""
    shape = draw(shapes(min_dims=1))
    return (shape,), {"dim": draw(st.integers(-len(shape), len(shape) - 1)),
                      "keepdim": draw(st.booleans())}  # fmt: skip


@st.composite
def reshape_example(draw: st.DrawFn) -> tuple[tuple[Shape], dict[str, Any]]:
    """A shape and a target with the same element count: sides permuted, merged, 1s inserted,
    and maybe one side spelled -1."""
    shape = draw(shapes())
    sides = list(draw(st.permutations(shape)))
    if len(sides) >= 2 and draw(st.booleans()):
        i = draw(st.integers(0, len(sides) - 2))
        sides[i : i + 2] = [sides[i] * sides[i + 1]]
    for _ in range(draw(st.integers(0, 2))):
        sides.insert(draw(st.integers(0, len(sides))), 1)
    if sides and draw(st.booleans()):
        sides[draw(st.integers(0, len(sides) - 1))] = -1
    return (shape,), {"shape": tuple(sides)}


@st.composite
def broadcast_to_example(draw: st.DrawFn, expand: bool = False) -> tuple[tuple[Shape], dict]:
    """An input shape and a target it broadcasts to (``expand``: kept sides may be -1)."""
    target = list(draw(shapes(max_dims=4)))
    n_in = draw(st.integers(0, len(target)))
    src = [1 if draw(st.booleans()) else s for s in target[len(target) - n_in :]]
    if expand:
        for i in range(len(target) - n_in, len(target)):
            if src[i - (len(target) - n_in)] == target[i] and draw(st.booleans()):
                target[i] = -1
    return (tuple(src),), {"shape": tuple(target)}


@st.composite
def axis_example(draw: st.DrawFn, kind: str) -> tuple[tuple[Shape], dict[str, Any]]:
    """A shape and the axis arguments of permute/transpose/unsqueeze/squeeze/flatten."""
    shape = draw(shapes(min_dims=0 if kind in ("unsqueeze", "squeeze") else 1))
    n = len(shape)
    if kind == "permute":
        return (shape,), {"dims": tuple(draw(st.permutations(range(n))))}
    if kind == "transpose":
        d = st.integers(-n, n - 1)
        return (shape,), {"dim0": draw(d), "dim1": draw(d)}
    if kind == "unsqueeze":
        return (shape,), {"dim": draw(st.integers(-n - 1, n))}
    if kind == "squeeze":
        return (shape,), {"dim": draw(st.none() | st.integers(-n, n - 1)) if n else None}
    start = draw(st.integers(0, n - 1))
    return (shape,), {"start_dim": start, "end_dim": draw(st.integers(start, n - 1))}


@st.composite
def getitem_example(draw: st.DrawFn, kind: str) -> tuple[tuple[Shape], dict[str, Any]]:
    """A shape and an index: ``basic`` (ints, slices with negative steps, None, Ellipsis),
    ``int_array`` (integer arrays with repeats, alone or mixed with slices) or ``bool_mask``."""
    if kind == "basic":
        shape = draw(shapes())
        index = draw(hnp.basic_indices(shape, min_dims=0, allow_newaxis=True))
        return (shape,), {"index": index}
    shape = draw(shapes(min_dims=1))
    if kind == "bool_mask":
        k = draw(st.integers(1, len(shape)))
        return (shape,), {"index": draw(hnp.arrays(np.bool_, shape[:k]))}
    if draw(st.booleans()):  # one integer array on one axis, slices elsewhere
        axis = draw(st.integers(0, len(shape) - 1))
        index: Any = (slice(None),) * axis + (draw(index_arrays(shape[axis])),)
    else:  # an integer array for every axis, broadcast together
        index = draw(hnp.integer_array_indices(shape, result_shape=shapes(1, 2)))
    return (shape,), {"index": index}


@st.composite
def cat_example(draw: st.DrawFn, stack: bool = False) -> tuple[tuple[Shape, ...], dict]:
    """2-3 shapes that agree except along ``dim`` (``stack``: equal shapes, a new dim)."""
    base = list(draw(shapes(min_dims=0 if stack else 1)))
    n = draw(st.integers(2, 3))
    if stack:
        dim = draw(st.integers(-len(base) - 1, len(base)))
        return (tuple(base),) * n, {"dim": dim}
    dim = draw(st.integers(-len(base), len(base) - 1))
    out = []
    for _ in range(n):
        base[dim] = draw(st.integers(1, MAX_SIDE))
        out.append(tuple(base))
    return tuple(out), {"dim": dim}


@st.composite
def split_example(draw: st.DrawFn, chunk: bool = False) -> tuple[tuple[Shape], dict[str, Any]]:
    """A shape, a ``dim``, and a split size or list of sizes (``chunk``: a number of chunks)."""
    shape = draw(shapes(min_dims=1, max_side=4))
    dim = draw(st.integers(-len(shape), len(shape) - 1))
    n = shape[dim]
    if chunk:
        return (shape,), {"chunks": draw(st.integers(1, 4)), "dim": dim}
    if draw(st.booleans()):
        return (shape,), {"split_size_or_sections": draw(st.integers(1, n)), "dim": dim}
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=3)))
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, n])]
    return (shape,), {"split_size_or_sections": sizes, "dim": dim}


@st.composite
def matmul_shapes(draw: st.DrawFn) -> tuple[Shape, Shape]:
    """Operand shapes for ``a @ b``: matrices with broadcasting batch axes, and the 1-D cases
    (vector @ matrix, matrix @ vector, vector @ vector → 0-d)."""
    n, k, m = (draw(st.integers(1, MAX_SIDE)) for _ in range(3))
    ba, bb = draw(broadcast_shapes(2, max_dims=2))
    kind = draw(st.sampled_from(["mat", "vec@mat", "mat@vec", "vec@vec"]))
    a = (k,) if kind.startswith("vec@") else (*ba, n, k)
    b = (k,) if kind.endswith("@vec") else (*bb, k, m)
    return a, b


@st.composite
def linear_example(draw: st.DrawFn, bias: bool) -> tuple[tuple[Shape, ...], dict[str, Any]]:
    """``x (..., in)``, ``W (out, in)`` and, with ``bias``, ``b (out,)``."""
    lead = draw(shapes(min_dims=0, max_dims=2))
    d_in, d_out = draw(st.integers(1, MAX_SIDE)), draw(st.integers(1, MAX_SIDE))
    out = ((*lead, d_in), (d_out, d_in)) + (((d_out,),) if bias else ())
    return out, {}


@st.composite
def embedding_example(draw: st.DrawFn) -> tuple[tuple[Shape], dict[str, Any]]:
    """A weight ``(V, C)`` and token ids (1-2 dims, values in [0, V), repeats likely)."""
    v, c = draw(st.integers(1, 4)), draw(st.integers(1, MAX_SIDE))
    ids = draw(hnp.arrays(np.int64, shapes(1, 2, max_side=4), elements=st.integers(0, v - 1)))
    return ((v, c),), {"ids": ids}


@st.composite
def where_example(draw: st.DrawFn, masked_fill: bool = False) -> tuple[tuple[Shape, ...], dict]:
    """``where``: two value shapes and a bool condition, all mutually broadcastable.
    ``masked_fill``: one value shape, a mask and a fill value."""
    a, b, c = draw(broadcast_shapes(3))
    cond = draw(hnp.arrays(np.bool_, c))
    if masked_fill:
        return (a,), {"mask": cond, "value": draw(st.sampled_from([0.0, -2.5, 1e4]))}
    return (a, b), {"cond": cond}


def unary_example(shape: st.SearchStrategy[Shape] | None = None, **params: Any) -> Any:
    """One shape, fixed params."""
    return (shape or shapes()).map(lambda s: ((s,), dict(params)))


def binary_example(**params: Any) -> Any:
    """Two broadcastable shapes, fixed params."""
    return broadcast_shapes(2).map(lambda ss: (ss, dict(params)))


def param_example(shape: st.SearchStrategy[Shape] | None = None, **params: Any) -> Any:
    """One shape and params each drawn from its own strategy: ``param_example(p=st.just(2))``."""
    return st.tuples(shape or shapes(), st.fixed_dictionaries(params)).map(
        lambda t: ((t[0],), t[1])
    )


# ---------------------------------------------------------------------------- LoRA
@st.composite
def lora_embedding_setups(draw: st.DrawFn) -> dict[str, Any]:
    """A LoRA-on-embedding setup: table (V, C), rank r, α, rsLoRA, an optional ``padding_idx``
    and token ids (1-2 dims, values in [0, V), repeats likely), plus a seed for the weights.

    r may exceed min(V, C) (PEFT allows it; ΔE's rank is then min(V, C, r))."""
    v, c, r = draw(st.integers(1, 12)), draw(st.integers(1, 6)), draw(st.integers(1, 5))
    return {
        "v": v,
        "c": c,
        "r": r,
        "alpha": draw(st.sampled_from([0.5, 1, 4, 8, 16, 32])),
        "rslora": draw(st.booleans()),
        "padding_idx": draw(st.none() | st.integers(0, v - 1)),
        "ids": draw(hnp.arrays(np.int64, shapes(1, 2, max_side=5), elements=st.integers(0, v - 1))),
        "seed": draw(st.integers(0, 2**16)),
    }


@st.composite
def dora_setups(draw: st.DrawFn) -> dict[str, Any]:
    """One DoRA layer: sizes d_in, d_out, rank r, α, rsLoRA, the layout (``conv``: a GPT-2
    Conv1D, W stored (d_in, d_out)), a dtype, a batch shape (x is (*batch, d_in)) and a seed."""
    return {
        "d_in": draw(st.integers(1, 5)),
        "d_out": draw(st.integers(1, 5)),
        "r": draw(st.integers(1, 4)),
        "alpha": draw(st.sampled_from([0.5, 1, 4, 8, 16])),
        "rslora": draw(st.booleans()),
        "conv": draw(st.booleans()),
        "dtype": draw(st.sampled_from(["float32", "float64"])),
        "batch": tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))),
        "seed": draw(st.integers(0, 2**16)),
    }


@st.composite
def lora_init_setups(draw: st.DrawFn) -> dict[str, Any]:
    """PiSSA / OLoRA on the toy fc1 → fc2: sizes (d_in, d_hid, d_out), ranks r ≤ min(d_in,
    d_hid) for fc1 and ≤ min(d_hid, d_out) for fc2 (``rank_pattern``), α, rsLoRA, the init
    ("pissa", "pissa_niter_<0-3>", "olora"), the fc2 layout, a batch shape and a seed."""
    d_in, d_hid, d_out = (draw(st.integers(1, 6)) for _ in range(3))
    init = draw(st.sampled_from(["pissa", "olora", "pissa_niter_"]))
    if init == "pissa_niter_":
        init += str(draw(st.integers(0, 3)))
    return {
        "dims": (d_in, d_hid, d_out),
        "r1": draw(st.integers(1, min(d_in, d_hid))),
        "r2": draw(st.integers(1, min(d_hid, d_out))),
        "alpha": draw(st.sampled_from([0.5, 1, 4, 8, 16])),
        "rslora": draw(st.booleans()),
        "init": init,
        "conv": draw(st.booleans()),
        "dtype": "float64",
        "batch": tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))),
        "seed": draw(st.integers(0, 2**16)),
    }


# ---------------------------------------------------------------------------- IA3
# feedforward_modules for a toy fc1 -> fc2 model, and the targets each one makes feed-forward.
FEEDFORWARD = [
    ([], set()),
    (["fc1"], {"fc1"}),
    (["fc2"], {"fc2"}),
    (["fc1", "fc2"], {"fc1", "fc2"}),
    ("fc2", {"fc2"}),
    ("fc[12]", {"fc1", "fc2"}),
]


@st.composite
def ia3_setups(draw: st.DrawFn) -> dict:
    """Layer sizes, which targets are feed-forward, the fc2 layout, a dtype and a batch shape."""
    feedforward, expected = draw(st.sampled_from(FEEDFORWARD))
    return {
        "dims": tuple(draw(st.integers(1, 6)) for _ in range(3)),
        "conv": draw(st.booleans()),
        "dtype": draw(st.sampled_from(["float32", "float64"])),
        "feedforward": feedforward,
        "expected_ff": expected,
        "seed": draw(st.integers(0, 2**16)),
        "batch": tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))),  # (B[, T])
    }


# ---------------------------------------------------------------------------- AdaLoRA
@st.composite
def adalora_schedules(draw: st.DrawFn) -> dict:
    """An AdaLoRA budget schedule: init_r ≥ target_r, a module count, tinit, tfinal and
    total_step leaving a budgeting phase (PEFT's rule tinit < total_step − tfinal), deltaT."""
    init_r = draw(st.integers(1, 12))
    tinit, tfinal = draw(st.integers(0, 10)), draw(st.integers(0, 10))
    return {
        "init_r": init_r,
        "target_r": draw(st.integers(0, init_r)),
        "modules": draw(st.integers(1, 6)),
        "tinit": tinit,
        "tfinal": tfinal,
        "total_step": tinit + tfinal + draw(st.integers(1, 40)),
        "deltaT": draw(st.integers(1, 5)),
    }


@st.composite
def adalora_setups(draw: st.DrawFn) -> dict:
    """Toy sizes (d_in, d_hid, d_out), an initial rank, α, the fc2 layout, a dtype, a batch
    shape and a seed, for the AdaLoRA layer properties."""
    return {
        "dims": tuple(draw(st.integers(1, 6)) for _ in range(3)),
        "init_r": draw(st.integers(1, 5)),
        "alpha": draw(st.sampled_from([0.5, 1, 8, 32])),
        "conv": draw(st.booleans()),
        "dtype": draw(st.sampled_from(["float32", "float64"])),
        "seed": draw(st.integers(0, 2**16)),
        "batch": tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))),  # (B[, T])
    }
