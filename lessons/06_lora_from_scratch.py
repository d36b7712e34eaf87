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
# # Lesson 6 — LoRA from scratch
#
# LoRA (Hu et al., 2021) fine-tunes a linear layer y = W x + b, W of shape (d_out, d_in),
# without touching W. It freezes W and learns a **low-rank** change
#
#     ΔW = B A,    A (r, d_in),  B (d_out, r),  r ≪ min(d_in, d_out)
#
#     y = W x + b + s · B (A x),    s = α / r        (rsLoRA: s = α / √r)
#
# This lesson builds that layer by hand from Tensors, shows it is exactly minipeft's
# `LoraLayer`, counts its parameters, explains the scaling s, the zero initialisation of B,
# merging ΔW into W for inference, and the adapter file Hugging Face PEFT reads.

# %%
import json
import math
import os
import shutil
import tempfile
import time

import numpy as np

import minipeft as mp
from minipeft import nn
from minipeft.models import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel
from minipeft.peft import LoraConfig, LoraLayer, PeftModel, get_peft_model

mp.manual_seed(0)
LESSON_START = time.perf_counter()
work = tempfile.mkdtemp(prefix="minipeft-lesson06-")

# %% [markdown]
# ## 1. A LoRA linear layer by hand
#
# The base layer is frozen. A and B are new trainable matrices. Normally B starts at zero
# (section 4); here we give it random values, as after some training, so the update shows.

# %%
d_in, d_out, r, alpha = 32, 48, 4, 8
base = nn.Linear(d_in, d_out)  # W (d_out, d_in), b (d_out,)
base.requires_grad_(False)  # frozen
A = (mp.randn(r, d_in) / math.sqrt(d_in)).requires_grad_()  # (r, d_in)
B = (mp.randn(d_out, r) * 0.1).requires_grad_()  # (d_out, r)
s = alpha / r


def lora_forward(x):
    """x (..., d_in) → A x (..., r) → B A x (..., d_out), plus the frozen base."""
    return base(x) + s * ((x @ A.transpose(0, 1)) @ B.transpose(0, 1))


x = mp.randn(5, 7, d_in)  # (B, T, d_in)
y = lora_forward(x)
print("x", x.shape, "→ A x", (x @ A.transpose(0, 1)).shape, "→ y", y.shape)

# %% [markdown]
# The update is a (d_out, d_in) matrix of rank at most r, and the layer is the same as a dense
# layer with weight W + s·B A. Computing it as B (A x) costs r·(d_in + d_out) multiply-adds per
# token instead of d_in·d_out. Gradients reach A and B only: the frozen W gets none.

# %%
delta_w = (B @ A).numpy()  # (d_out, d_in)
print(f"ΔW {delta_w.shape}, rank {np.linalg.matrix_rank(delta_w)} (r = {r})")
assert delta_w.shape == (d_out, d_in) and np.linalg.matrix_rank(delta_w) == r

dense = x.numpy() @ (base.weight.numpy() + s * delta_w).T + base.bias.numpy()
assert np.abs(dense - y.numpy()).max() < 1e-5

y.sum().backward()
print("grad of A:", A.grad.shape, " grad of B:", B.grad.shape, " grad of W:", base.weight.grad)
assert A.grad is not None and B.grad is not None and base.weight.grad is None

# %% [markdown]
# **The same layer in minipeft.peft.** `LoraLayer` wraps the base layer (it never edits it)
# and keeps named adapters, as Hugging Face PEFT does: `lora_A["default"]` is a bias-free
# Linear(d_in, r) whose weight *is* A (r, d_in), and `lora_B["default"]` a Linear(r, d_out)
# whose weight is B (d_out, r). Given our A and B it computes the same output.

# %%
layer = LoraLayer(base)
layer.update_layer("default", r=r, lora_alpha=alpha)
print(layer)
layer.lora_A["default"].weight.data[...] = A.numpy()
layer.lora_B["default"].weight.data[...] = B.numpy()
err = np.abs(layer(x).numpy() - y.numpy()).max()
print(f"scaling {layer.scaling['default']} = α/r;  max |by hand − LoraLayer| = {err:.1e}")
assert layer.scaling["default"] == alpha / r and err < 1e-6

# %% [markdown]
# ## 2. How many parameters?
#
# Per wrapped layer LoRA trains r·(d_in + d_out) numbers instead of d_in·d_out. GPT-2's
# attention input `c_attn` maps C → 3C (q, k and v at once), so LoRA on `c_attn` in L layers
# trains L·r·(C + 3C) numbers. `get_nb_trainable_parameters()` returns (trainable, all).

# %%
gpt_config = GPT2Config(vocab_size=512, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
C, L = gpt_config.n_embd, gpt_config.n_layer
print(f"c_attn: d_in = {C}, d_out = {3 * C}, d_in·d_out = {C * 3 * C:,} per layer")
print(f"{'r':>3s} {'r·(d_in+d_out)·L':>17s} {'trainable':>10s} {'all':>8s} {'% of c_attn':>12s}")
for rank in (1, 2, 4, 8, 16):
    peft_model = get_peft_model(
        GPT2LMHeadModel(gpt_config, seed=0), LoraConfig(r=rank, target_modules=["c_attn"])
    )
    trainable, total = peft_model.get_nb_trainable_parameters()
    formula = L * rank * (C + 3 * C)
    print(f"{rank:3d} {formula:17,d} {trainable:10,d} {total:8,d} "
          f"{100 * rank * (C + 3 * C) / (C * 3 * C):11.1f}%")  # fmt: skip
    assert trainable == formula
    assert total == GPT2LMHeadModel(gpt_config, seed=0).num_parameters() + formula

# %% [markdown]
# `c_attn` is also what PEFT targets by default for GPT-2 (LLaMA: `q_proj` and `v_proj`):

# %%
default = get_peft_model(GPT2LMHeadModel(gpt_config, seed=0), LoraConfig(r=8))
print("default target_modules:", default.peft_config["default"].target_modules)
default.print_trainable_parameters()

# %% [markdown]
# ## 3. The scaling s: α/r or α/√r?
#
# Hu et al. divide by r so that α, once chosen, need not be retuned when r changes. Does
# that hold? Think of A and B with entries of a fixed size, whatever r (that is what
# initialisation and training produce). Then (B A x)_k = Σ_{l=1..r} B_kl (A x)_l is a sum of r
# roughly independent terms, so its size
# grows like √r:
#
#     ‖B A x‖ ∝ √r   ⇒   ‖(α/r) B A x‖ ∝ 1/√r  (shrinks as r grows)
#                        ‖(α/√r) B A x‖ ∝ 1   (stable)
#
# With α/r a larger rank makes the update — and the gradients through it — smaller, so high
# ranks learn slower and gain nothing; rank-stabilised LoRA (Kalajdzievski, 2023) uses α/√r,
# `LoraConfig(use_rslora=True)`. We measure the root-mean-square ‖s · B A x‖ over 256 inputs,
# with `LoraLayer`'s own s and A's default init, and B ~ N(0, 1) entries.

# %%
d = 512
xs = mp.randn(256, d)  # 256 inputs
print(f"{'r':>4s} {'α/r':>7s} {'‖update‖':>9s} {'α/√r':>7s} {'‖update‖':>9s}   (α = 16)")
norms = {False: [], True: []}
for rank in (2, 8, 32, 128):
    row = []
    for rslora in (False, True):
        lyr = LoraLayer(nn.Linear(d, d))
        lyr.update_layer("default", r=rank, lora_alpha=16, use_rslora=rslora)
        lyr.lora_B["default"].weight.data[...] = mp.randn(d, rank).numpy()
        update = lyr(xs) - lyr.base_layer(xs)  # s · B A x, (256, d)
        norm = float(np.sqrt((update.numpy() ** 2).sum(-1).mean()))  # RMS over the inputs
        norms[rslora].append(norm)
        row += [lyr.scaling["default"], norm]
    print(f"{rank:4d} {row[0]:7.3f} {row[1]:9.2f} {row[2]:7.3f} {row[3]:9.2f}")
spread = {k: max(v) / min(v) for k, v in norms.items()}
print(f"largest / smallest norm: α/r {spread[False]:.1f}× (√(128/2) = 8), α/√r {spread[True]:.2f}×")
assert spread[False] > 5 and spread[True] < 1.3

# %% [markdown]
# ## 4. Zero-initialised B: training starts from the base model
#
# `LoraLayer` draws A like a Linear weight (Kaiming-uniform) and sets **B = 0**, so ΔW = B A = 0
# and the wrapped model computes exactly what the base model did: fine-tuning starts from the
# pretrained function, not from a perturbed one. (A ≠ 0 matters: with both zero, the
# gradients ∂L/∂A = s·Bᵀ(...) and ∂L/∂B = s·(...)(A x)ᵀ would both be zero forever.)

# %%
model = GPT2LMHeadModel(gpt_config, seed=0)
ids = mp.randint(0, gpt_config.vocab_size, (2, 16))
base_logits = model(input_ids=ids).logits.numpy()
lora_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16,
                                              target_modules=["c_attn", "c_proj"]))  # fmt: skip
lora_layers = {n: m for n, m in lora_model.named_modules() if isinstance(m, LoraLayer)}
print(f"{len(lora_layers)} LoRA layers, e.g. {next(iter(lora_layers))}")
assert all(not m.lora_B["default"].weight.numpy().any() for m in lora_layers.values())
assert all(m.lora_A["default"].weight.numpy().any() for m in lora_layers.values())
wrapped_logits = lora_model(input_ids=ids).logits.numpy()
print("wrapped model == base model, exactly:", np.array_equal(wrapped_logits, base_logits))
assert np.array_equal(wrapped_logits, base_logits)

# %% [markdown]
# ## 5. Merging for inference
#
# After training, W' = W + s·B A is an ordinary weight of the same shape. **Merging** writes
# it into the base layer, so inference pays nothing for the adapter; **unmerging** subtracts it
# again (to train more, or to switch adapters). In exact arithmetic the outputs are identical;
# in float32 they differ by rounding only. We give B random values, as after training.


# %%
def pretend_training(layers, std=0.02):
    for m in layers.values():
        w = m.lora_B["default"].weight
        w.data[...] = (mp.randn(*w.shape, dtype=w.dtype) * std).numpy()


pretend_training(lora_layers)
c_attn = lora_layers["base_model.model.transformer.h.0.attn.c_attn"]
W_before = c_attn.base_layer.weight.numpy().copy()
unmerged = lora_model(input_ids=ids).logits.numpy()
lora_model.merge_adapter()
merged = lora_model(input_ids=ids).logits.numpy()
delta = c_attn.get_delta_weight("default")  # s · B A laid out like W
w_err = np.abs(c_attn.base_layer.weight.numpy() - (W_before + delta)).max()
lora_model.unmerge_adapter()
restore_err = np.abs(c_attn.base_layer.weight.numpy() - W_before).max()
merge_err = np.abs(merged - unmerged).max()
print(f"float32: max |merged − unmerged logits| = {merge_err:.1e}; W' = W + sBA: {w_err:.1e}; "
      f"unmerge restores W: {restore_err:.1e}")  # fmt: skip
assert merge_err <= 1e-5 and w_err <= 1e-6 and restore_err <= 1e-6
assert np.abs(lora_model(input_ids=ids).logits.numpy() - unmerged).max() <= 1e-5

# %% [markdown]
# In float64 the rounding error shrinks by ~9 orders of magnitude, which shows the two are
# the same function:

# %%
model64 = GPT2LMHeadModel(gpt_config, seed=0).to(mp.float64)
lora64 = get_peft_model(
    model64, LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn", "c_proj"])
)
pretend_training({n: m for n, m in lora64.named_modules() if isinstance(m, LoraLayer)})
unmerged64 = lora64(input_ids=ids).logits.numpy()
lora64.merge_adapter()
merge_err64 = np.abs(lora64(input_ids=ids).logits.numpy() - unmerged64).max()
print(f"float64: max |merged − unmerged logits| = {merge_err64:.1e}  (dtype {unmerged64.dtype})")
assert unmerged64.dtype == np.float64 and merge_err64 <= 1e-10

# %% [markdown]
# **Latency.** Unmerged, every wrapped layer runs two extra small matrix products (A x, then
# B(·)) and an addition; merged, the model is the plain base model. We time forward passes of
# a GPT-2 with C = 128, 4 layers, on (B, T) = (4, 64), LoRA r = 8 on every linear layer.
# (Timings depend on the machine; nothing is asserted about them.)

# %%
timing_model = get_peft_model(
    GPT2LMHeadModel(GPT2Config(vocab_size=512, n_positions=64, n_embd=128, n_layer=4,
                               n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
                    seed=0).eval(),
    LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn", "c_proj", "c_fc"]),
)  # fmt: skip
timing_ids = mp.randint(0, 512, (4, 64))


def seconds_per_forward(n=8):
    with mp.no_grad():
        timing_model(input_ids=timing_ids)  # warm-up
        best = math.inf
        for _ in range(n):
            t0 = time.perf_counter()
            timing_model(input_ids=timing_ids)
            best = min(best, time.perf_counter() - t0)  # the least disturbed run
    return best


t_unmerged = seconds_per_forward()
timing_model.merge_adapter()
t_merged = seconds_per_forward()
timing_model.unmerge_adapter()
print(f"forward: unmerged {t_unmerged * 1e3:.1f} ms, merged {t_merged * 1e3:.1f} ms, "
      f"ratio {t_unmerged / t_merged:.2f}")  # fmt: skip

# %% [markdown]
# ## 6. Saving the adapter
#
# An adapter is saved as Hugging Face PEFT saves it: `adapter_config.json` (the LoraConfig)
# and `adapter_model.safetensors` holding **only** A and B for each wrapped layer, under PEFT's
# keys (`base_model.model.<path>.lora_A.weight`; the adapter name is dropped). A safetensors
# file is simple: 8 bytes giving the header length n, n bytes of JSON header (name → dtype,
# shape, byte offsets), then the raw little-endian arrays. We read the header by hand.

# %%
base_dir, adapter_dir = os.path.join(work, "base"), os.path.join(work, "adapter")
model = GPT2LMHeadModel(gpt_config, seed=0)
model.save_pretrained(base_dir)
lora_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn"]))
pretend_training({n: m for n, m in lora_model.named_modules() if isinstance(m, LoraLayer)})
lora_model.save_pretrained(adapter_dir)
for name in sorted(os.listdir(adapter_dir)):
    print(f"  {name:28s} {os.path.getsize(os.path.join(adapter_dir, name)):>8,d} bytes")

saved = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
print({k: saved[k] for k in ("peft_type", "r", "lora_alpha", "target_modules", "use_rslora")})

path = os.path.join(adapter_dir, "adapter_model.safetensors")
with open(path, "rb") as f:
    n_header = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(n_header))
tensors = {k: v for k, v in header.items() if k != "__metadata__"}
for key, info in tensors.items():
    print(f"  {key:55s} {info['dtype']} {info['shape']}")
n_lora = lora_model.get_nb_trainable_parameters()[0]
assert len(tensors) == 2 * L
assert all(k.startswith("base_model.model.") and k.endswith(("lora_A.weight", "lora_B.weight"))
           for k in tensors)  # fmt: skip
assert os.path.getsize(path) == 8 + n_header + 4 * n_lora  # float32 A and B, nothing else

# %% [markdown]
# The adapter is a small fraction of the base checkpoint, and loading it onto a fresh copy of
# the base model gives back the fine-tuned model exactly.

# %%
base_bytes = os.path.getsize(os.path.join(base_dir, "model.safetensors"))
print(f"adapter {os.path.getsize(path):,} B vs base model {base_bytes:,} B "
      f"({100 * os.path.getsize(path) / base_bytes:.1f}%)")  # fmt: skip
reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
reload_err = np.abs(
    reloaded(input_ids=ids).logits.numpy() - lora_model(input_ids=ids).logits.numpy()
).max()
print(f"base + loaded adapter vs the trained model: max |Δ logits| = {reload_err}")
assert os.path.getsize(path) * 10 < base_bytes and reload_err == 0.0

shutil.rmtree(work)
print(f"lesson 6 ran in {time.perf_counter() - LESSON_START:.1f} s")
