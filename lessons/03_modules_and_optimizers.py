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
# # Lesson 3 — Modules, optimizers and a real training loop
#
# Lessons 1 and 2 were about single ops. A model is many of them, organised: **Modules** own
# the weights and say how to combine them, an **optimizer** turns gradients into weight updates,
# a **schedule** sets the learning rate over time, and a **checkpoint** saves what was learned.
# These are exactly the pieces PEFT will later rearrange (freeze most weights, add a few).
#
# Our task: classify points of two interleaved spirals — impossible for a straight line, easy
# for a small multi-layer perceptron (MLP).

# %%
import math
import os
import tempfile

import numpy as np

import minipeft as mp
import minipeft.functional as F
from minipeft import nn, optim
from minipeft.fileio import load_safetensors, save_safetensors

# %% [markdown]
# ## 1. The data: two spirals
#
# Arm k ∈ {0, 1} is the curve r = θ / 3π, angle θ + kπ, for θ ∈ [0, 3π]: one and a half turns,
# the second arm rotated half a turn from the first. Each point gets a little Gaussian noise.
# We draw a training set and, with the same recipe, a separate test set.


# %%
def two_spirals(n_per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Points X (2n, 2) float32 and labels y (2n,) int64 in {0, 1}."""
    theta = np.sqrt(rng.random(n_per_class)) * 3 * np.pi  # sqrt: even density along the arm
    r = theta / (3 * np.pi)
    arms = []
    for k in (0, 1):  # arm k is turned by k·π
        angle = theta + k * np.pi
        arms.append(np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1))
    X = np.concatenate(arms) + rng.normal(0.0, 0.02, (2 * n_per_class, 2))
    y = np.repeat([0, 1], n_per_class)
    return X.astype(np.float32), y.astype(np.int64)


rng = np.random.default_rng(0)
X_train, y_train = two_spirals(200, rng)
X_test, y_test = two_spirals(100, rng)
print("train:", X_train.shape, np.bincount(y_train), "  test:", X_test.shape)
assert X_train.shape == (400, 2) and X_test.shape == (200, 2)

# %% [markdown]
# ## 2. A model is a tree of Modules
#
# `nn.Module` is PyTorch's: a subclass assigns layers and parameters as attributes in
# `__init__` (assignment *registers* them) and says in `forward` how to combine them;
# calling the module calls `forward`. `nn.Sequential(a, b, c)` is a module whose forward is
# c(b(a(x))).
#
# `nn.Linear(n_in, n_out)` computes y = x Wᵀ + b with W of shape (n_out, n_in) and b of shape
# (n_out,). Between the linear layers sits a nonlinearity (tanh), without which the whole stack
# would collapse into one linear map, and a `Dropout` layer (section 7).


# %%
class MLP(nn.Module):
    """x (N, 2) → logits (N, 2):  Linear → tanh → Dropout → Linear → tanh → Dropout → Linear."""

    def __init__(self, hidden: int = 32, p_drop: float = 0.05) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2, hidden), nn.Tanh(), nn.Dropout(p_drop),
            nn.Linear(hidden, hidden), nn.Tanh(), nn.Dropout(p_drop),
            nn.Linear(hidden, 2),
        )  # fmt: skip

    def forward(self, x: mp.Tensor) -> mp.Tensor:
        return self.net(x)


mp.manual_seed(0)  # the layers draw their initial weights from minipeft's seeded generator
model = MLP()
print(model)

# %% [markdown]
# `named_parameters()` walks the tree and names every parameter by its dotted path — the same
# naming that PEFT later uses to find the layers to adapt (`"net.3.weight"` is the weight of
# the Linear at position 3 of the Sequential called `net`).
#
# A Linear layer n_in → n_out has n_in·n_out weights and n_out biases, so this MLP has
#
#     Σ_layers (n_in · n_out + n_out) = (2·32 + 32) + (32·32 + 32) + (32·2 + 2) = 1218

# %%
for name, p in model.named_parameters():
    print(f"{name:14} {str(p.shape):10} {p.numel():5d}")

widths = [2, 32, 32, 2]
formula = sum(n_in * n_out + n_out for n_in, n_out in zip(widths[:-1], widths[1:]))
counted = sum(p.numel() for p in model.parameters())
print("parameters:", counted)
assert counted == formula == model.num_parameters() == 1218
assert [n for n, _ in model.named_parameters()] == [
    "net.0.weight", "net.0.bias", "net.3.weight", "net.3.bias", "net.6.weight", "net.6.bias",
]  # fmt: skip

# %% [markdown]
# ## 3. The loss, and a sanity check before training
#
# The model outputs two *logits* z per point. Softmax turns them into probabilities and the
# **cross-entropy** loss is the average negative log-probability of the right class:
#
#     ℓ = −(1/N) Σ_i log softmax(z_i)[y_i]
#
# An untrained model is unsure, p ≈ ½ for each class, so the initial loss should be close to
# log 2 ≈ 0.693. Checking this before training catches many bugs (wrong labels, wrong axis).

# %%
Xtr, ytr = mp.tensor(X_train), mp.tensor(y_train)
Xte, yte = mp.tensor(X_test), mp.tensor(y_test)

model.eval()  # no dropout for a measurement (section 7)
with mp.no_grad():
    initial_loss = F.cross_entropy(model(Xtr), ytr).item()
print(f"initial loss {initial_loss:.3f}   (log 2 = {math.log(2):.3f})")
assert abs(initial_loss - math.log(2)) < 0.1

# %% [markdown]
# ## 4. AdamW, one step checked by hand
#
# Plain gradient descent, p ← p − lr·g, uses one step size for every weight. **Adam** keeps,
# for each weight, running averages of its gradient and squared gradient and divides one by the
# square root of the other, so every weight moves at a similar, well-scaled rate. **AdamW**
# adds weight decay *decoupled* from the gradient (Loshchilov & Hutter, 2019). At step t, for
# each parameter p with gradient g:
#
#     p ← p − lr·λ·p                                (decoupled weight decay λ)
#     m ← β₁·m + (1 − β₁)·g                          (first moment)
#     v ← β₂·v + (1 − β₂)·g²                         (second moment)
#     m̂ = m / (1 − β₁ᵗ),   v̂ = v / (1 − β₂ᵗ)           (bias correction: m, v start at 0)
#     p ← p − lr · m̂ / (√v̂ + ε)
#
# The defaults are β₁ = 0.9, β₂ = 0.999, ε = 1e-8. The optimizer keeps m, v and t per
# parameter in `opt.state[p]`. Let's take three steps, then compute the fourth by hand and
# compare with `opt.step()` for every parameter.

# %%
lr, wd = 3e-2, 0.01
opt = optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
model.train()


def compute_grads() -> None:
    opt.zero_grad()  # gradients accumulate (lesson 1): reset them before each backward
    F.cross_entropy(model(Xtr), ytr).backward()


for _ in range(3):
    compute_grads()
    opt.step()

compute_grads()
b1, b2 = opt.param_groups[0]["betas"]
eps = opt.param_groups[0]["eps"]
expected = {}
for name, p in model.named_parameters():
    st = opt.state[p]
    t = st["step"] + 1
    g = p.grad.astype(np.float64)
    m = b1 * st["exp_avg"] + (1 - b1) * g
    v = b2 * st["exp_avg_sq"] + (1 - b2) * g**2
    m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
    p_new = p.numpy() * (1 - lr * wd)
    expected[name] = p_new - lr * m_hat / (np.sqrt(v_hat) + eps)
opt.step()

worst = max(np.abs(p.numpy() - expected[n]).max() for n, p in model.named_parameters())
t_now = opt.state[model.net[0].weight]["step"]
print(f"step t = {t_now}: largest |optimizer − hand| = {worst:.1e}")
assert worst < 1e-6

# %% [markdown]
# A consequence worth knowing: on the **first** step m̂ = g and v̂ = g², so the update is
# lr · g / (|g| + ε) ≈ lr · sign(g). Every weight moves by about lr, whatever the scale of its
# gradient. That is why Adam's lr is "the size of a step in weight space", and why the same lr
# works for layers whose gradients differ by orders of magnitude.

# %%
probe = MLP()
probe_opt = optim.AdamW(probe.parameters(), lr=lr, weight_decay=0.0)
F.cross_entropy(probe(Xtr), ytr).backward()
before = {n: p.numpy().copy() for n, p in probe.named_parameters()}
probe_opt.step()
for n, p in probe.named_parameters():
    grad_size, step_size = np.median(np.abs(p.grad)), np.median(np.abs(p.numpy() - before[n]))
    print(f"{n:14} |grad| median {grad_size:.1e}   |step| median {step_size:.1e}")
    assert np.isclose(step_size, lr, rtol=0.01)

# %% [markdown]
# ## 5. A learning-rate schedule: warmup, then cosine
#
# Transformers are usually trained with a schedule that multiplies the base lr by λ(s) at step
# s. With w warmup steps out of N:
#
#     λ(s) = s / w                                   for s < w   (linear warmup from 0)
#     λ(s) = ½ · (1 + cos(π · (s − w) / (N − w)))    after       (cosine decay to 0)
#
# Warmup protects the first steps, when Adam's moment estimates are still noisy; the decay
# lets training settle into a minimum. `optim.get_cosine_schedule_with_warmup` is Hugging
# Face's schedule of the same name. Call `scheduler.step()` after every `optimizer.step()`.
# Like Hugging Face's, it sets λ(0) = 0 when created, so the very first update has lr = 0.

# %%
mp.manual_seed(0)
model = MLP()  # start again from the same initial weights
steps, warmup = 400, 20
opt = optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
sched = optim.get_cosine_schedule_with_warmup(
    opt, num_warmup_steps=warmup, num_training_steps=steps
)


def cosine_with_warmup(s: int) -> float:
    if s < warmup:
        return s / warmup
    return 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup)))


# %% [markdown]
# ## 6. Training
#
# The loop is always the same four lines: forward and loss, `zero_grad`, `backward`, `step`.
# We use the whole training set as one batch (400 points) and log every 50 steps.

# %%
model.train()
lrs, losses = [], []
for s in range(steps):
    lrs.append(opt.param_groups[0]["lr"])
    loss = F.cross_entropy(model(Xtr), ytr)
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    losses.append(loss.item())
    if s % 50 == 0 or s == steps - 1:
        print(f"step {s:3d}   lr {lrs[-1]:.5f}   loss {losses[-1]:.4f}")

assert lrs[0] == 0.0 and math.isclose(lrs[warmup], lr) and lrs[-1] < 1e-6
assert all(math.isclose(x, lr * cosine_with_warmup(s), abs_tol=1e-12) for s, x in enumerate(lrs))
assert all(a < b for a, b in zip(lrs[:warmup], lrs[1 : warmup + 1]))  # rises during warmup
assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1 :]))  # then only falls


# %%
def evaluate(m: nn.Module, X: mp.Tensor, y: mp.Tensor) -> tuple[float, float]:
    """(loss, accuracy) with dropout off and no graph recorded."""
    m.eval()
    with mp.no_grad():
        logits = m(X)
        loss = F.cross_entropy(logits, y).item()
    return loss, float((logits.numpy().argmax(1) == y.numpy()).mean())


train_loss, train_acc = evaluate(model, Xtr, ytr)
test_loss, test_acc = evaluate(model, Xte, yte)
print(f"train loss {train_loss:.4f}  accuracy {train_acc:.1%}")
print(f"test  loss {test_loss:.4f}  accuracy {test_acc:.1%}")
assert train_loss < 0.05 and train_acc > 0.98
assert test_acc > 0.95  # it learned the spirals, not just the 400 training points

# %% [markdown]
# ## 7. `train()` and `eval()`
#
# Some layers behave differently while training. **Dropout** zeroes each activation with
# probability p and scales the survivors by 1/(1 − p), so the expected activation is unchanged
# ("inverted dropout"); it discourages neurons from relying on each other. At evaluation time
# we want a deterministic model, so `model.eval()` switches every Dropout in the tree to the
# identity and `model.train()` switches them back. (`eval()` does *not* stop graph recording;
# that is `no_grad`'s job — we used both in `evaluate`.)

# %%
model.train()
with mp.no_grad():
    a, b = model(Xte).numpy(), model(Xte).numpy()
print("train mode: two passes differ?", not np.array_equal(a, b))
assert not np.array_equal(a, b) and all(m.training for m in model.modules())

model.eval()
with mp.no_grad():
    a, b = model(Xte).numpy(), model(Xte).numpy()
    no_dropout = nn.Sequential(*[m for m in model.net if not isinstance(m, nn.Dropout)])
    c = no_dropout(Xte).numpy()
print("eval mode:  two passes differ?", not np.array_equal(a, b))
assert np.array_equal(a, b) and np.array_equal(a, c)  # eval-mode dropout is the identity
assert not any(m.training for m in model.modules())

# %% [markdown]
# ## 8. Saving and loading: `state_dict` and safetensors
#
# `model.state_dict()` maps each parameter's dotted name to its tensor. We store it as a
# **safetensors** file: a small JSON header (names, dtypes, shapes, byte offsets) followed by
# the raw bytes. Unlike Python's pickle, loading it cannot run code, and it is the format
# Hugging Face uses. A new model with *different* random weights then loads the file and must
# predict exactly what the trained one does.

# %%
state = model.state_dict()
with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "mlp.safetensors")
    save_safetensors(path, {name: t.numpy() for name, t in state.items()})
    size = os.path.getsize(path)
    loaded = load_safetensors(path)
print(f"saved {len(loaded)} tensors, {size} bytes = {4 * counted} bytes of float32 + header")
assert sorted(loaded) == sorted(state) and size > 4 * counted

mp.manual_seed(123)
fresh = MLP().eval()
with mp.no_grad():
    assert not np.allclose(fresh(Xte).numpy(), model(Xte).numpy())  # different weights...
    fresh.load_state_dict(loaded)
    same = np.array_equal(fresh(Xte).numpy(), model(Xte).numpy())
print("identical predictions after loading:", same)
assert same  # ...until loaded: bit-for-bit the same predictions
assert evaluate(fresh, Xte, yte) == (test_loss, test_acc)

# %% [markdown]
# ## Summary
#
# * A **Module** registers the parameters and sub-modules assigned to it; `named_parameters()`
#   names them by dotted path; a Linear n_in → n_out holds n_in·n_out + n_out numbers.
# * The training loop: loss → `zero_grad()` → `backward()` → `optimizer.step()` →
#   `scheduler.step()`.
# * **AdamW** scales each weight's step by its own gradient statistics (m̂ / √v̂) and decays
#   weights separately; its first step moves every weight by about lr.
# * **Warmup + cosine** ramps the lr up from 0, then decays it smoothly back to 0.
# * `train()` / `eval()` switch layers like Dropout; `no_grad()` switches off recording.
# * `state_dict()` + safetensors save a model; `load_state_dict` restores it exactly.
#
# Next, lesson 4 builds a Transformer from these pieces.
