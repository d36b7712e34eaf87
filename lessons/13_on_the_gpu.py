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
# # Lesson 13 — On the GPU
#
# Everything so far ran on NumPy. The same code runs on an NVIDIA GPU through CuPy, which has
# NumPy's API: every op asks its data for its array module (`xp = xp_of(arr)`), so
# `device="cuda"` changes where the arrays live and nothing else. What does change is *cost*:
#
# 1. the same model, `device="cuda"`: the same logits to float32 rounding, and what moving
#    costs;
# 2. fused kernels: where NumPy makes five passes over memory, one CUDA kernel makes one;
# 3. lower precision: TF32 matmuls, and float16 / bfloat16 training with fp32 master weights
#    and dynamic loss scaling — the part of this lesson that runs on the CPU too, on NumPy's
#    float16.
#
# The GPU cells skip without a GPU (they print why); the precision cells always run.

# %%
import time

import numpy as np

import minipeft as mp
from minipeft.models import GPT2Config, GPT2LMHeadModel
from minipeft.optim import LossScaler
from minipeft.precision import round_to_bf16
from minipeft.train import TrainConfig, Trainer

GPU = mp.cuda_available()
print("backends:", mp.backend.backend_info())


def tiny_gpt2(device="cpu"):
    cfg = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    return GPT2LMHeadModel(cfg, seed=0).to(device)


ids = np.random.default_rng(0).integers(0, 64, (2, 16))

# %% [markdown]
# ## 1. The same code on another device
#
# `model.to("cuda")` moves every parameter and buffer in place (the Parameter objects an
# optimizer holds stay the same); inputs go with `mp.tensor(..., device="cuda")`. Mixing
# devices in one op fails loudly instead of copying behind your back.

# %%
cpu_logits = tiny_gpt2()(input_ids=mp.tensor(ids)).logits.numpy()
if GPU:
    model = tiny_gpt2("cuda")
    t0 = time.perf_counter()
    gpu_logits = model(input_ids=mp.tensor(ids, device="cuda")).logits.numpy()  # .numpy() syncs
    print(f"first CUDA forward {time.perf_counter() - t0:.2f} s (kernels compile once, cached)")
    print("max |CPU - GPU| logits:", float(np.abs(cpu_logits - gpu_logits).max()))
    assert np.allclose(cpu_logits, gpu_logits, atol=1e-4)
    try:
        model(input_ids=mp.tensor(ids))  # CPU ids into a CUDA model
    except mp.backend.DeviceError as err:
        print("mixing devices:", err)
else:
    print("no GPU here: the CUDA cells are skipped (minipeft.cuda_available() is False)")

# %% [markdown]
# ## 2. Why fused kernels
#
# On a GPU the arithmetic is nearly free; what costs is reading and writing memory. The array
# form of layer norm — mean, subtract, square, mean, divide, multiply, add — reads or writes the
# (M, K) activations about ten times; `minipeft.ops.cuda_kernels.layer_norm_forward` reads x
# once and writes y once. Cross-entropy is the extreme case: the logits of GPT-2 small at batch
# 8 × 1024 are 8192 × 50257 floats, 1.6 GB; the kernel keeps one log-sum-exp per row for the
# backward instead of a second (N, V) array. Count the passes of the array code here:

# %%
M, K = 8 * 1024, 768
passes = {"mean": 1, "x - mean": 2, "square": 2, "mean of squares": 1, "÷ σ": 2, "· w": 2,
          "+ b": 2}  # fmt: skip
array_bytes = sum(passes.values()) * M * K * 4
kernel_bytes = 2 * M * K * 4  # read x, write y
print(
    f"layer norm of ({M}, {K}) float32: array code moves {array_bytes / 2**20:.0f} MiB, "
    f"the kernel {kernel_bytes / 2**20:.0f} MiB ({array_bytes / kernel_bytes:.0f}× less)"
)
assert array_bytes / kernel_bytes == 6
if GPU:
    from minipeft.ops.cuda_kernels import use_kernels

    x = mp.randn(M, K, device="cuda")
    w = mp.ones(K, device="cuda")
    for on in (False, True):
        with use_kernels(on):
            mp.functional.layer_norm(x, K, w, w).numpy()  # warm up
            t0 = time.perf_counter()
            for _ in range(20):
                y = mp.functional.layer_norm(x, K, w, w)
            y.numpy()
            print(
                f"kernels {'on ' if on else 'off'}: {(time.perf_counter() - t0) / 20 * 1e3:.3f} ms"
            )

# %% [markdown]
# ## 3. Lower precision
#
# **TF32** keeps float32 arrays but lets the GPU's tensor cores multiply with a 10-bit
# mantissa (`--precision tf32`). **bfloat16** keeps float32's 8-bit exponent with a 7-bit
# mantissa: the range of float32, the precision of three decimal digits. **float16** has a
# 10-bit mantissa but only a 5-bit exponent: nothing above 65504, and below 6·10⁻⁵ precision
# fades (subnormals) down to 6·10⁻⁸, under which a number is 0.

# %%
f16 = np.finfo(np.float16)
print(
    f"float16: max {f16.max}, smallest normal {f16.smallest_normal:.2e}, "
    f"smallest subnormal {f16.smallest_subnormal:.1e}"
)
x = np.float32(1 + 2**-9)
print(
    f"bfloat16 rounds 1 + 2⁻⁹ to {round_to_bf16(np.array([x]))[0]} (ulp 2⁻⁷), "
    f"float16 keeps it: {np.float16(x)}"
)
assert round_to_bf16(np.array([x]))[0] == 1.0 and np.float16(x) != 1.0

# %% [markdown]
# ### Small gradients underflow in float16; loss scaling lifts them
#
# A gradient of 10⁻⁸ is 0 in float16. Multiply the loss by S = 2¹⁶ before backward and every
# gradient is S times larger — representable — then divide by S in float32, on the **master
# weights** the optimizer updates (Micikevicius et al. 2018).

# %%
g = np.float32(1e-8)
print(
    f"gradient 1e-8 in float16: {np.float16(g)}; scaled by 2^16 then unscaled: "
    f"{np.float32(np.float16(g * 2**16)) / 2**16:.3e}"
)
assert np.float16(g) == 0 and abs(np.float32(np.float16(g * 2**16)) / 2**16 - g) < 1e-10

# %% [markdown]
# S too large overflows instead (inf). A dynamic scaler starts high, halves S and skips the
# step whenever a gradient is inf/NaN, and doubles it after `growth_interval` clean steps — so
# it hovers just under the overflow point. Its rule on a made-up sequence of overflows:

# %%
scaler = LossScaler(init_scale=2.0**16, growth_interval=3)
trace = []
for overflow in [True, True, False, False, False, False, True, False]:
    scaler.update(found_inf=overflow)
    trace.append(int(scaler.scale))
print("scale after each step:", trace)
assert trace == [32768, 16384, 16384, 16384, 32768, 32768, 16384, 16384]

# %% [markdown]
# ### Training in float16 and bfloat16
#
# `TrainConfig(precision=...)` does it all: frozen weights are cast once, trainable ones keep
# float32 masters and are swapped for float16 copies around each forward and backward; loss,
# norms and softmax statistics run in float32 (they sum many numbers). First fp16 started at a
# scale that overflows, to watch the skips; then the three precisions side by side (NumPy's
# float16 has no BLAS, so fp16 is slow on the CPU; on a GPU it is the fast path).


# %%
def stream(seed, epoch):
    rng = np.random.default_rng(seed + epoch)
    for _ in range(20):
        x = rng.integers(0, 16, size=(4, 16))
        x[:, 1::2] = (x[:, 0::2] * 3 + 1) % 64  # every odd token follows from the one before
        yield {"input_ids": x, "labels": x}


device = "cuda" if GPU else "cpu"
cfg = TrainConfig(max_steps=12, lr=3e-3, precision="fp16", device=device, progress=False,
                  log_every=1)  # fmt: skip
trainer = Trainer(tiny_gpt2(device), cfg, stream)
trainer.amp.scaler.scale = 2.0**24  # too large: the first steps' gradients overflow
history = trainer.train().history
print("fp16 from S = 2^24, log2 S at each step:",
      [int(np.log2(h["loss_scale"])) for h in history])  # fmt: skip
skipped = trainer.amp.scaler.skipped
assert 0 < skipped < 12 and history[-1]["skipped_steps"] == skipped
print(
    f"{skipped} steps skipped (weights untouched), then it trained: "
    f"loss {history[0]['loss']:.3f} → {history[-1]['loss']:.3f}"
)

final = {}
for precision in ("fp32", "fp16", "bf16"):
    model = tiny_gpt2(device)
    cfg = TrainConfig(max_steps=60, lr=3e-3, precision=precision, device=device,
                      progress=False, log_every=10)  # fmt: skip
    trainer = Trainer(model, cfg, stream)
    t0 = time.perf_counter()
    result = trainer.train()
    final[precision] = result.history[-1]["loss"]
    print(f"{precision}: final loss {final[precision]:.4f} in {time.perf_counter() - t0:.1f} s")
    assert {p.dtype for p in model.parameters()} == {np.dtype("float32")}  # masters are back

assert trainer.amp.scaler is None  # bf16 needs no loss scaling: float32's exponent range
for precision in ("fp16", "bf16"):
    assert abs(final[precision] - final["fp32"]) <= 0.02 * final["fp32"], precision
print("fp16 and bf16 end within 2% of fp32")

# %% [markdown]
# ## What it costs, measured
#
# `benchmarks/gpu_step.py` times a LoRA step of GPT-2 small (batch 8 × 1024) in each precision
# against PyTorch in the same process, and `bash scripts/gpu_check.sh` runs the CUDA half of
# the test suite, that benchmark and a small fine-tune on one command. In short: the GPU wins
# by the size of the work (the tiny model above is *slower* on a GPU — launch overhead per op
# dominates), fused kernels win by the bytes they do not move, and float16 wins twice:
# tensor-core throughput and half the bytes per activation. minipeft's bf16 is an emulation
# (float32 arrays holding bfloat16 values: NumPy has no bfloat16 dtype): bfloat16's numerics,
# float32's bytes and speed.
