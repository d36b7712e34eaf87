# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 1 — Tensors and automatic differentiation
#
# Training a network means nudging every weight against its gradient, ∂loss/∂weight. A model
# has millions of weights, so we need the computer to find all those derivatives for us, exactly
# and for a small multiple of the cost of one forward pass. That is **reverse-mode automatic
# differentiation** (backpropagation), and it is the heart of minipeft.
#
# In this lesson you will:
#
# 1. meet the `Tensor`;
# 2. differentiate a tiny formula **by hand**, one local derivative at a time;
# 3. watch the engine (`requires_grad`, `backward`, `.grad`) produce the same numbers;
# 4. see the graph it records and the order it walks it in;
# 5. learn the rules that matter in practice: gradients **accumulate**, broadcasting turns into
#    **sums**, `no_grad` and `detach` cut the graph, and **frozen tensors cost nothing**;
# 6. check gradients numerically with `mp.gradcheck`, and see why that needs float64.
#
# Every claim below is checked with `assert`, so if the engine ever breaks, this lesson fails.

# %%
import math

import numpy as np

import minipeft as mp
from minipeft.autograd import iter_graph

mp.manual_seed(0)  # mp.randn draws from minipeft's generator: same numbers every run

# %% [markdown]
# ## 1. Tensors in one minute
#
# A `Tensor` wraps an n-dimensional array (`.data`, a NumPy array on the CPU) and adds what
# differentiation needs. It looks like NumPy: `shape`, `dtype`, elementwise `+ - * /`, `@` for
# matrix products, reductions with PyTorch's `dim=` / `keepdim=`. Python floats become
# **float32** by default (as in PyTorch); integers stay integers.
#
# One rule is stricter than NumPy's: two *different float dtypes never mix silently*. Adding a
# float32 and a float64 tensor raises, instead of quietly doubling memory or losing precision.

# %%
A = mp.tensor([[1.0, 2.0], [3.0, 4.0]])
print(A.shape, A.dtype, type(A.data).__name__)
print("A @ A =", (A @ A).tolist(), "  A.sum(dim=0) =", A.sum(dim=0).tolist())
assert A.dtype == mp.float32 and mp.tensor([1, 2]).dtype == mp.int64
assert np.array_equal((A @ A).numpy(), A.numpy() @ A.numpy())

try:
    A + A.to(mp.float64)
except TypeError as err:
    print("refused:", err)
else:
    raise AssertionError("float32 + float64 must raise")

# %% [markdown]
# ## 2. A scalar graph, worked by hand
#
# Take two numbers a = 2 and b = −3 and the formula
#
#     f(a, b) = (a·b + b) · tanh(a)
#
# Break it into elementary steps, each with a derivative we know by heart:
#
# | step          | value   | local derivatives                         |
# |---------------|---------|-------------------------------------------|
# | c = a · b     | −6      | ∂c/∂a = b,  ∂c/∂b = a                     |
# | d = c + b     | −9      | ∂d/∂c = 1,  ∂d/∂b = 1                     |
# | e = tanh(a)   | 0.964   | ∂e/∂a = 1 − tanh²(a) = 1 − e²             |
# | f = d · e     | −8.68   | ∂f/∂d = e,  ∂f/∂e = d                     |

# %%
a, b = 2.0, -3.0
c = a * b
d = c + b
e = math.tanh(a)
f = d * e
print(f"c = {c},  d = {d},  e = {e:.6f},  f = {f:.6f}")

# %% [markdown]
# The **chain rule** multiplies local derivatives along each path from f back to an input, and
# **adds** over paths. Going backwards from f, write f̄ for ∂f/∂(something) — the "adjoint":
#
#     f̄_f = 1
#     f̄_d = ∂f/∂d = e                f̄_e = ∂f/∂e = d
#     f̄_c = f̄_d · ∂d/∂c = e
#     ∂f/∂a = f̄_c · ∂c/∂a + f̄_e · ∂e/∂a = e·b + d·(1 − e²)     ← a is used twice: two paths
#     ∂f/∂b = f̄_c · ∂c/∂b + f̄_d · ∂d/∂b = e·a + e               ← so is b
#
# Each adjoint is computed **once** and reused by everything upstream of it. That reuse is why
# reverse mode costs a small constant multiple of one forward pass, however many inputs there
# are.

# %%
adj_d, adj_e = e, d
adj_c = adj_d * 1.0
dfda = adj_c * b + adj_e * (1 - e**2)
dfdb = adj_c * a + adj_d * 1.0
print(f"by hand:  df/da = {dfda:.6f}   df/db = {dfdb:.6f}")

# %% [markdown]
# Is that right? The definition of a derivative gives an independent check. The **central
# difference** (f(a + ε) − f(a − ε)) / 2ε is accurate to O(ε²) (section 8 explains the error).


# %%
def f_py(a: float, b: float) -> float:
    return (a * b + b) * math.tanh(a)


eps = 1e-6
num_a = (f_py(a + eps, b) - f_py(a - eps, b)) / (2 * eps)
num_b = (f_py(a, b + eps) - f_py(a, b - eps)) / (2 * eps)
print(f"numeric:  df/da = {num_a:.6f}   df/db = {num_b:.6f}")
assert abs(num_a - dfda) < 1e-8 and abs(num_b - dfdb) < 1e-8

# %% [markdown]
# ## 3. The same thing, done by the engine
#
# A `Tensor` holds an array in `.data`. Mark the inputs you want derivatives for with
# `requires_grad=True`; every operation on them is then **recorded**. Calling `.backward()` on
# the scalar result walks that record in reverse, exactly as we did, and stores ∂f/∂x in `x.grad`
# for every leaf x that requires grad.
#
# We use float64 so the engine's numbers can be compared with Python's floats to ~1e-12.
# (The default dtype is float32, like PyTorch's.) `retain_grad()` asks the engine to also keep the
# adjoints of the intermediate tensors, which it normally throws away.

# %%
ta = mp.tensor(a, dtype=mp.float64, requires_grad=True)
tb = mp.tensor(b, dtype=mp.float64, requires_grad=True)
tc = ta * tb
td = tc + tb
te = ta.tanh()
tf = td * te
for t in (tc, td, te):
    t.retain_grad()
tf.backward()

print(tf)
print(f"engine:   df/da = {ta.grad:.6f}   df/db = {tb.grad:.6f}")
assert math.isclose(tf.item(), f, rel_tol=1e-12)
assert math.isclose(float(ta.grad), dfda, rel_tol=1e-12)
assert math.isclose(float(tb.grad), dfdb, rel_tol=1e-12)
# the adjoints of the intermediates are the ones we wrote down by hand
assert math.isclose(float(tc.grad), adj_c, rel_tol=1e-12)
assert math.isclose(float(td.grad), adj_d, rel_tol=1e-12)
assert math.isclose(float(te.grad), adj_e, rel_tol=1e-12)

# %% [markdown]
# ## 4. The recorded graph, and the order backward walks it
#
# Each op made a *node* that remembers which Function ran (`Mul`, `Tanh`, ...) and its input
# tensors. `minipeft.autograd.iter_graph(t)` yields the nodes reachable from t; the first one is
# the node that made t itself (a leaf, made by you, has none: `t.is_leaf`).
#
# Backward must finish an adjoint before using it, so it visits nodes in **reverse topological
# order**: a node only after every node that consumes its output. Here is that order, computed
# with a depth-first search just like the engine's (which uses an explicit stack instead of
# recursion, so a 10,000-op chain is fine).

# %%
names = {id(ta): "a", id(tb): "b", id(tc): "c", id(td): "d", id(te): "e", id(tf): "f"}


def producer(t: mp.Tensor):
    """The node that made t, or None for a leaf."""
    return next(iter_graph(t), None)


def topological_order(root: mp.Tensor) -> list[mp.Tensor]:
    order, seen = [], set()

    def visit(t: mp.Tensor) -> None:
        if id(t) in seen:
            return
        seen.add(id(t))
        node = producer(t)
        if node is not None:
            for inp in node.inputs:
                visit(inp)
        order.append(t)

    visit(root)
    return order


order = topological_order(tf)
for t in order:
    node = producer(t)
    if node is None:
        print(f"{names[id(t)]} = leaf")
    else:
        args = ", ".join(names[id(i)] for i in node.inputs)
        print(f"{names[id(t)]} = {node.fn.__name__}({args})")
print("backward visits:", " → ".join(names[id(t)] for t in reversed(order)))

# every tensor appears after the inputs it was made from
position = {id(t): i for i, t in enumerate(order)}
for t in order:
    if producer(t) is not None:
        assert all(position[id(i)] < position[id(t)] for i in producer(t).inputs)
assert ta.is_leaf and tb.is_leaf and not tf.is_leaf
assert len(list(iter_graph(tf))) == 4  # Mul, Add, Tanh, Mul

# %% [markdown]
# ## 5. Gradients accumulate
#
# When a value feeds two places, the chain rule **adds** the two contributions — we saw it for a
# and b above. The engine implements this by *accumulating*: `.grad` is summed into, never
# overwritten. Two consequences:
#
# * y = x · x gives ∂y/∂x = x + x = 2x (the two inputs of `Mul` are the same tensor);
# * calling `backward` twice adds the gradients twice. That is handy for gradient accumulation
#   over micro-batches, and a classic bug otherwise — training loops reset `.grad` (an
#   optimizer's `zero_grad()`) before every backward.
#
# By default backward frees the arrays each node saved, so a second `backward` through the same
# graph is refused; `retain_graph=True` keeps them.

# %%
x = mp.tensor([1.0, 2.0, 3.0], requires_grad=True)
y = (x * x).sum()
y.backward(retain_graph=True)
print("after one backward:", x.grad)
assert np.allclose(x.grad, 2 * x.numpy())

y.backward()
print("after two backwards:", x.grad)
assert np.allclose(x.grad, 4 * x.numpy())

try:
    y.backward()
except RuntimeError as err:
    print("third backward refused:", err)
else:
    raise AssertionError("a freed graph must not backward again")

x.grad = None  # what zero_grad() does
(x * x).sum().backward()
assert np.allclose(x.grad, 2 * x.numpy())

# %% [markdown]
# ## 6. Broadcasting becomes a sum
#
# Like NumPy, binary ops **broadcast**: shapes are aligned from the right and size-1 (or
# missing) axes are stretched. Adding a bias b of shape (C,) to a batch X of shape (N, C) uses
# each b_j in N places, so its gradient collects N contributions:
#
#     Z = X + b,   Z_ij = X_ij + b_j   ⇒   ∂L/∂b_j = Σ_i ∂L/∂Z_ij
#
# In general the gradient of a broadcast input is **summed over the broadcast axes**, which
# always gives back the input's own shape. (Lesson 2 shows the one helper that does this.)

# %%
rng = np.random.default_rng(0)
X = mp.tensor(rng.standard_normal((5, 3)), requires_grad=True)
bias = mp.tensor(np.zeros(3), requires_grad=True)
R = rng.standard_normal((5, 3))  # a stand-in for dL/dZ
loss = ((X + bias) * mp.tensor(R)).sum()
loss.backward()
print("X.grad shape:", X.grad.shape, "  bias.grad shape:", bias.grad.shape)
print("bias.grad      =", bias.grad)
print("R.sum(axis=0)  =", R.sum(axis=0))
assert bias.grad.shape == (3,) and np.allclose(bias.grad, R.sum(axis=0))
assert np.allclose(X.grad, R)

# both operands stretched: (3, 1) + (1, 4) -> (3, 4)
col = mp.ones(3, 1, requires_grad=True)
row = mp.ones(1, 4, requires_grad=True)
(col + row).sum().backward()
print("col.grad:", col.grad.ravel(), " row.grad:", row.grad.ravel())
assert np.all(col.grad == 4) and np.all(row.grad == 3)

# %% [markdown]
# ## 7. Cutting the graph: `no_grad`, `detach`, and frozen tensors
#
# * Inside `with mp.no_grad():` nothing is recorded. Use it for evaluation and for updating
#   weights: it saves the memory that saved arrays would take.
# * `t.detach()` is the same data (no copy) as a new leaf that is cut from the graph. Gradients
#   stop there — a "stop-gradient".
# * A tensor with `requires_grad=False` is **frozen**: it gets no `.grad`, and an op whose
#   inputs are all frozen is not recorded at all. *Frozen means free*: this is what makes PEFT
#   cheap — the big pretrained weights are frozen, and backward only does work for the small
#   adapter.

# %%
w = mp.tensor([1.0, 2.0, 3.0], requires_grad=True)
with mp.no_grad():
    z = w * 2
print("under no_grad: requires_grad =", z.requires_grad, " is_leaf =", z.is_leaf)
assert not z.requires_grad and z.is_leaf
assert mp.is_grad_enabled()  # recording is back on after the block

w.grad = None
(w * w.detach()).sum().backward()  # d/dw (w · const) = const = w, not 2w
print("grad through w * w.detach():", w.grad)
assert np.allclose(w.grad, w.numpy())
assert np.shares_memory(w.detach().data, w.data)

# %%
W = mp.randn(4, 3)  # frozen: requires_grad defaults to False
v = mp.randn(3, requires_grad=True)  # trainable
h = W * 2.0  # only frozen inputs: nothing is recorded
print("W * 2 recorded a node?", not h.is_leaf)
assert h.is_leaf and not h.requires_grad

out = (W @ v).tanh().sum()
out.backward()
print("W.grad =", W.grad, "   v.grad =", v.grad)
assert W.grad is None and v.grad is not None
expected = W.numpy().T @ (1 - np.tanh(W.numpy() @ v.numpy()) ** 2)
assert np.allclose(v.grad, expected, atol=1e-6)

# %% [markdown]
# ## 8. Checking gradients numerically with `mp.gradcheck`
#
# A gradient check compares the engine's gradient with central differences for **every**
# input element. `mp.gradcheck(fn, *inputs)` contracts the output with a fixed random tensor R
# (so every output element matters), perturbs each input element by ±ε, and raises if any
# analytic value disagrees with the numeric one.
#
# Here fn(W, x) = tanh(W x), a vector function with W of shape (3, 4) and x of shape (4,):

# %%
W64 = mp.randn(3, 4, dtype=mp.float64, requires_grad=True)
x64 = mp.randn(4, dtype=mp.float64, requires_grad=True)
ok = mp.gradcheck(lambda W, x: (W @ x).tanh(), W64, x64)
print("gradcheck(tanh(W x)) passed:", ok)
assert ok

try:
    mp.gradcheck(lambda W, x: (W @ x).tanh(), W64.to(mp.float32).requires_grad_(), x64)
except TypeError as err:
    print("float32 refused:", err)
else:
    raise AssertionError("gradcheck must refuse float32 inputs")

# %% [markdown]
# ### Why float64?
#
# The central difference has two errors pulling in opposite directions:
#
# * **truncation**: Taylor's theorem gives (f(x+ε) − f(x−ε)) / 2ε = f′(x) + f‴(x)·ε²/6 + …,
#   an error of O(ε²) that shrinks as ε does;
# * **rounding**: each f value is off by about ε_machine·|f|, and dividing by 2ε blows that up
#   to ~ε_machine·|f| / ε, which *grows* as ε shrinks.
#
# Balancing ε² against ε_machine/ε, the total is smallest near ε ≈ ε_machine^(1/3), where it is
# of order ε_machine^(2/3). For float64 (ε_machine ≈ 2.2e-16) that is ε ≈ 1e-5 and an error
# around 1e-11. For float32 (ε_machine ≈ 1.2e-7) it is ε ≈ 5e-3 and an error around 1e-5 —
# and only if you tune ε just right. A gradcheck that tolerates 1e-5 could not tell a correct
# gradient from a slightly wrong one. Let's measure it on g(x) = tanh(x)·eˣ at x = 0.5:


# %%
def g(t: mp.Tensor) -> mp.Tensor:
    return t.tanh() * t.exp()


x0 = mp.tensor(0.5, dtype=mp.float64, requires_grad=True)
g(x0).backward()
exact = float(x0.grad)  # the engine's derivative, which we already trust


def central_error(dtype, eps: float) -> float:
    with mp.no_grad():
        plus = g(mp.tensor(0.5 + eps, dtype=dtype)).item()
        minus = g(mp.tensor(0.5 - eps, dtype=dtype)).item()
    return abs((plus - minus) / (2 * eps) - exact)


print(f"{'eps':>7} | {'error, float32':>14} | {'error, float64':>14}")
errors = {mp.float32: [], mp.float64: []}
for k in range(1, 10):
    eps = 10.0**-k
    for dt in errors:
        errors[dt].append(central_error(dt, eps))
    print(f"{eps:7.0e} | {errors[mp.float32][-1]:14.2e} | {errors[mp.float64][-1]:14.2e}")

best32, best64 = min(errors[mp.float32]), min(errors[mp.float64])
print(f"best float32 error {best32:.1e},  best float64 error {best64:.1e}")
assert best64 < 1e-9 and best32 > 100 * best64  # float64 wins by orders of magnitude
assert errors[mp.float64][5] < 1e-8  # gradcheck's default eps = 1e-6 is accurate in float64
assert errors[mp.float32][5] > 1e-3  # ...and useless in float32

# %% [markdown]
# ## Summary
#
# * A Tensor with `requires_grad=True` records every op on it; `backward()` walks the record in
#   reverse topological order, multiplying local derivatives (the chain rule), and leaves
#   ∂f/∂x in `x.grad`.
# * Gradients **accumulate**: a value used twice gets the sum of both paths, and repeated
#   `backward` calls add up — reset `.grad` between steps.
# * The gradient of a **broadcast** input is summed over the broadcast axes.
# * `no_grad` records nothing; `detach` stops gradients; **frozen** tensors get no gradient and
#   no recorded work.
# * `mp.gradcheck` compares against central differences, in float64 because their error is
#   O(ε²) + O(ε_machine / ε).
#
# Next, lesson 2 opens the box: how one op — a `Function` with a forward and a backward — is
# written, and why some ops are fused into a single one.
