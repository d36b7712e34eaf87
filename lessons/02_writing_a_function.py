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
# # Lesson 2 — Writing a Function: forward, backward, broadcasting, fusion
#
# Lesson 1 used the engine. Now we extend it. Every operation in minipeft — `+`, `exp`,
# `matmul`, `softmax`, attention — is a small class with two static methods:
#
#     class MyOp(minipeft.Function):
#         @staticmethod
#         def forward(ctx, *arrays, **params):   # raw arrays in, one raw array out
#             ...                                 # ctx.save_for_backward(...) what backward needs
#         @staticmethod
#         def backward(ctx, grad):               # grad = ∂L/∂output, same shape as the output
#             ...                                 # return ∂L/∂input, one per array input
#
# `MyOp.apply(t1, t2, ..., **params)` unwraps the tensors, runs `forward` and, if some input
# requires grad, records a node so that `backward` is called during `loss.backward()`.
#
# Note what backward computes: not a Jacobian, but the **vector-Jacobian product**
# ∂L/∂x = (∂y/∂x)ᵀ · ∂L/∂y. It never builds the (often huge) Jacobian matrix.
#
# In this lesson you will write an op, check it, break it on purpose, handle broadcasting, and
# then compare a *fused* softmax with one *composed* of primitives.

# %%
import time

import numpy as np

import minipeft as mp
import minipeft.functional as F
from minipeft.autograd import iter_graph, unbroadcast
from minipeft.backend import xp_of

np.set_printoptions(precision=4, suppress=True)  # print 1000.0 as 1000., not 1.0000e+03
mp.manual_seed(0)  # mp.randn draws from minipeft's generator: same numbers every run

# %% [markdown]
# ## 1. A first op: softplus
#
#     softplus(x) = log(1 + eˣ)              (a smooth ReLU)
#     d softplus/dx = eˣ / (1 + eˣ) = σ(x)   (the logistic sigmoid)
#
# Two details make it robust:
#
# * log(1 + eˣ) overflows for x ≳ 89 in float32 (and ≳ 710 in float64). The same value written
#   as max(x, 0) + log(1 + e^(−|x|)) only ever exponentiates a non-positive number.
# * For backward we save x and y and use σ(x) = e^(x − y): since y ≥ x, the exponent is ≤ 0, so
#   this cannot overflow either.
#
# Arrays may live on the CPU (NumPy) or the GPU (CuPy). `xp_of(array)` returns the right module,
# so the same code runs on both.


# %%
class Softplus(mp.Function):
    """y = log(1 + eˣ);  dy/dx = σ(x) = e^(x − y)."""

    @staticmethod
    def forward(ctx, x):
        xp = xp_of(x)
        y = xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))
        ctx.save_for_backward(x, y)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        return grad * xp_of(x).exp(x - y)


x = mp.tensor([-1000.0, -2.0, 0.0, 2.0, 1000.0], requires_grad=True)
y = Softplus.apply(x)
y.sum().backward()
print("x           =", x.numpy())
print("softplus(x) =", y.numpy())
print("dy/dx       =", x.grad)
print(y)  # the output remembers the Function that made it
assert np.all(np.isfinite(y.numpy())) and np.isclose(y.numpy()[2], np.log(2.0))
assert np.allclose(y.numpy()[[0, 4]], [0.0, 1000.0])  # → ReLU far from zero
sigma = 1 / (1 + np.exp(-np.array([-2.0, 2.0])))
assert np.allclose(x.grad, [0.0, sigma[0], 0.5, sigma[1], 1.0])  # σ(x), even at x = ±1000

# %% [markdown]
# The "textbook" version built from primitives, `(1 + x.exp()).log()`, agrees for moderate x
# but overflows to `inf` at x = 1000 — one reason hot ops are written by hand.

# %%
with np.errstate(over="ignore"):  # silence NumPy's overflow warning
    naive = (1 + x.exp()).log()
print("naive log(1 + eˣ) =", naive.numpy())
assert np.isinf(naive.numpy()[4])
assert np.allclose(naive.numpy()[1:4], y.numpy()[1:4])

# %% [markdown]
# ## 2. Check it: `mp.gradcheck`, and a bug it catches
#
# Never trust a hand-written backward until it passes a gradient check (lesson 1, section 8)
# in float64, at points that exercise both branches of `max(x, 0)`:

# %%
x64 = mp.tensor(np.linspace(-4, 4, 9), dtype=mp.float64, requires_grad=True)
assert mp.gradcheck(Softplus.apply, x64)
print("Softplus passes gradcheck")

# %% [markdown]
# The most common backward bug is forgetting the upstream gradient: returning the local
# derivative dy/dx instead of grad · dy/dx. With loss = y.sum() the upstream gradient is all
# ones, so a test with `.sum()` would not notice. gradcheck contracts the output with a *random*
# tensor R, so it does: below, the "analytic" value is σ(4) ≈ 0.982 — the local derivative alone
# — while the true gradient is R₈ · σ(4).


# %%
class BuggySoftplus(Softplus):
    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        return xp_of(x).exp(x - y)  # BUG: should be grad * ...


try:
    mp.gradcheck(BuggySoftplus.apply, x64)
except mp.GradcheckError as err:
    print("caught:", err)
else:
    raise AssertionError("gradcheck should catch the missing upstream gradient")

# %% [markdown]
# ## 3. Two inputs, broadcasting and `unbroadcast`
#
# Now a binary op, hypot(a, b) = √(a² + b²), with
#
#     ∂z/∂a = a / z,   ∂z/∂b = b / z.
#
# Binary ops broadcast, so `a` of shape (3, 1) and `b` of shape (4,) give z of shape (3, 4).
# The upstream gradient has z's shape, but `backward` must return gradients shaped like a and
# b. Broadcasting *copied* each b_j into 3 rows; in the chain rule each copy contributes, so
#
#     ∂L/∂b_j = Σ_i ∂L/∂z_ij · ∂z_ij/∂b_j
#
# — the gradient of a broadcast input is a **sum over the broadcast axes**. The engine has one
# helper for it, `unbroadcast(grad, shape)`: it sums the leading axes broadcasting added, then
# the axes it stretched from size 1 (keeping them as size 1).

# %%
g = np.ones((2, 3, 4))
print("unbroadcast (2, 3, 4) → (3, 1):", unbroadcast(g, (3, 1)).ravel(), "(each sums 2·4)")
print("unbroadcast (2, 3, 4) → (4,):  ", unbroadcast(g, (4,)), "(each sums 2·3)")
assert unbroadcast(g, (3, 1)).shape == (3, 1) and np.all(unbroadcast(g, (3, 1)) == 8)
assert unbroadcast(g, (4,)).shape == (4,) and np.all(unbroadcast(g, (4,)) == 6)

# %% [markdown]
# `ctx.needs_input_grad` tells backward which inputs want a gradient. Skipping the others is
# what makes frozen weights free (lesson 1): a frozen input's gradient is never even computed.
# We log what our backward computes to see it.

# %%
computed: list[str] = []


class Hypot(mp.Function):
    """z = √(a² + b²) (broadcasting);  ∂z/∂a = a/z,  ∂z/∂b = b/z."""

    @staticmethod
    def forward(ctx, a, b):
        z = xp_of(a).sqrt(a * a + b * b)
        ctx.save_for_backward(a, b, z)
        return z

    @staticmethod
    def backward(ctx, grad):
        a, b, z = ctx.saved_tensors
        need_a, need_b = ctx.needs_input_grad
        da = db = None  # None = "no gradient for this input"
        if need_a:
            computed.append("da")
            da = unbroadcast(grad * a / z, a.shape)
        if need_b:
            computed.append("db")
            db = unbroadcast(grad * b / z, b.shape)
        return da, db


a64 = mp.randn(3, 1, dtype=mp.float64, requires_grad=True)
b64 = mp.randn(4, dtype=mp.float64, requires_grad=True)
assert Hypot.apply(a64, b64).shape == (3, 4)
assert mp.gradcheck(Hypot.apply, a64, b64)
print("Hypot with broadcasting passes gradcheck")

computed.clear()
frozen_b = mp.randn(4, dtype=mp.float64)  # requires_grad=False
Hypot.apply(a64, frozen_b).sum().backward()
print("computed with a frozen b:", computed)
assert computed == ["da"]

# %% [markdown]
# Forget `unbroadcast` and the engine refuses the wrong-shaped gradient (rather than silently
# giving a wrong answer):


# %%
class HypotNoUnbroadcast(Hypot):
    @staticmethod
    def backward(ctx, grad):
        a, b, z = ctx.saved_tensors
        return grad * a / z, grad * b / z  # shapes (3, 4): wrong for a (3, 1) and b (4,)


try:
    HypotNoUnbroadcast.apply(a64, b64).sum().backward()
except RuntimeError as err:
    print("refused:", err)
else:
    raise AssertionError("a gradient of the wrong shape must be refused")

# %% [markdown]
# ## 4. Fused vs composite: softmax
#
#     softmax(x)_i = e^(x_i) / Σ_j e^(x_j)          (along the last axis)
#
# We can *compose* it from primitives — `exp`, `sum`, `/` — and autograd derives the backward
# for free. Or we can *fuse* it into one Function with a hand-derived backward, as
# `F.softmax` does. Both give the same numbers; the fused one is more stable, faster, and keeps
# less memory.
#
# **Stability.** e^1000 overflows even in float64. Softmax does not change when a constant is
# subtracted from every logit (the factor e^(−m) cancels between numerator and denominator),
# so stable implementations subtract the row maximum m first: every exponent is then ≤ 0.
# Because the result does not depend on m at all, its gradient through m is zero and we can
# `detach()` it.


# %%
def softmax_naive(x: mp.Tensor) -> mp.Tensor:
    e = x.exp()
    return e / e.sum(-1, keepdim=True)


def softmax_composite(x: mp.Tensor) -> mp.Tensor:
    e = (x - x.amax(-1, keepdim=True).detach()).exp()
    return e / e.sum(-1, keepdim=True)


big = mp.tensor([[1000.0, 999.0, 998.0]], dtype=mp.float64)
with np.errstate(over="ignore", invalid="ignore"):  # silence NumPy's overflow warnings
    naive_big = softmax_naive(big)
print("naive     :", naive_big)
print("composite :", softmax_composite(big))
print("fused     :", F.softmax(big, dim=-1))
assert np.isnan(naive_big.numpy()).all()  # e^1000 = inf, and inf / inf = nan
expected = np.exp([0.0, -1.0, -2.0]) / np.exp([0.0, -1.0, -2.0]).sum()
assert np.allclose(F.softmax(big, dim=-1).numpy(), expected)
assert np.allclose(softmax_composite(big).numpy(), expected)

# %% [markdown]
# **Same values, same gradients.** On random float64 logits the two agree to rounding error,
# in the forward pass and in the gradient (we backpropagate a random upstream gradient R).
# The composite records four nodes (subtract, exp, sum, divide; the detached max is not part of
# the graph) and saves arrays for several of them; the fused op records one node and saves only
# its output.

# %%
rng = np.random.default_rng(0)
logits = rng.standard_normal((8, 10))
R = mp.tensor(rng.standard_normal((8, 10)))

results = {}
for name, fn in [("composite", softmax_composite), ("fused", F.softmax)]:
    xt = mp.tensor(logits, requires_grad=True)
    out = fn(xt)
    (out * R).sum().backward()
    results[name] = (out.numpy(), xt.grad, len(list(iter_graph(out))))
    print(f"{name:>9}: {results[name][2]} recorded node(s)")

assert np.allclose(results["composite"][0], results["fused"][0], rtol=1e-12, atol=1e-15)
assert np.allclose(results["composite"][1], results["fused"][1], rtol=1e-10, atol=1e-14)
assert results["fused"][2] == 1 and results["composite"][2] == 4

# %% [markdown]
# ## 5. Deriving the fused backward
#
# Let y = softmax(x) for one row, and g = ∂L/∂y the upstream gradient. Differentiate
# y_i = e^(x_i) / S with S = Σ_k e^(x_k), using ∂S/∂x_j = e^(x_j):
#
#     ∂y_i/∂x_j = (δ_ij e^(x_i) S − e^(x_i) e^(x_j)) / S² = y_i (δ_ij − y_j)
#
# so the Jacobian is J = diag(y) − y yᵀ (symmetric). The vector-Jacobian product is
#
#     dx_j = Σ_i g_i y_i (δ_ij − y_j) = y_j g_j − y_j Σ_i g_i y_i
#
#     dx = y ⊙ (g − Σ_i g_i y_i)
#
# One elementwise product, one row sum, one subtraction, one product: O(V) work per row
# instead of the O(V²) Jacobian, and only y has to be saved. Let's check it three ways on one
# row: against the explicit Jacobian, against the engine, and against central differences.

# %%
x_row = rng.standard_normal(6)
g_row = rng.standard_normal(6)
y_row = np.exp(x_row - x_row.max()) / np.exp(x_row - x_row.max()).sum()

J = np.diag(y_row) - np.outer(y_row, y_row)
dx_jacobian = J.T @ g_row
dx_formula = y_row * (g_row - (g_row * y_row).sum())

xt = mp.tensor(x_row, requires_grad=True)
F.softmax(xt, dim=-1).backward(g_row)  # backward(grad=g): start from dL/dy = g
print("Jacobian :", np.round(dx_jacobian, 6))
print("formula  :", np.round(dx_formula, 6))
print("engine   :", np.round(xt.grad, 6))
assert np.allclose(dx_formula, dx_jacobian, atol=1e-14)
assert np.allclose(xt.grad, dx_formula, atol=1e-14)
assert np.allclose(dx_formula.sum(), 0.0)  # shifting all logits changes nothing
assert mp.gradcheck(lambda t: F.softmax(t, dim=-1), mp.tensor(logits, requires_grad=True))
print("F.softmax passes gradcheck")

# %% [markdown]
# **Speed.** Time forward + backward on a (512, 2048) float32 batch, about the size of one
# layer's attention scores. We print the ratio but do not assert it: timings depend on the
# machine. The fused op makes fewer passes over memory and allocates fewer temporaries.


# %%
def time_it(fn, x_np: np.ndarray, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        xt = mp.tensor(x_np, requires_grad=True)
        start = time.perf_counter()
        fn(xt).sum().backward()
        best = min(best, time.perf_counter() - start)
    return best


x_big = rng.standard_normal((512, 2048)).astype(np.float32)
t_composite = time_it(softmax_composite, x_big)
t_fused = time_it(lambda t: F.softmax(t, dim=-1), x_big)
print(
    f"composite {t_composite * 1e3:6.1f} ms   fused {t_fused * 1e3:6.1f} ms   "
    f"ratio {t_composite / t_fused:.1f}x"
)

# %% [markdown]
# ## Summary
#
# * An op is a `Function`: `forward(ctx, *arrays)` on raw arrays, `backward(ctx, grad)`
#   returning the vector-Jacobian product, one gradient per input (None if not needed).
# * Use `xp_of(array)` for array math (CPU and GPU), `ctx.save_for_backward` for what backward
#   reads, and `ctx.needs_input_grad` to skip work for frozen inputs.
# * A broadcast input's gradient is summed over the broadcast axes: `unbroadcast(grad, shape)`.
# * Always `mp.gradcheck` a new backward in float64; it catches a forgotten upstream gradient.
# * A fused op with a hand-derived backward (softmax: dx = y ⊙ (g − Σ g ⊙ y)) matches its
#   composite twin but is stable for large inputs, records one node and runs faster.
#
# Next, lesson 3 stacks ops into modules and trains them with an optimizer.
