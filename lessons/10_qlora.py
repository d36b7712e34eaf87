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
# # Lesson 10 — QLoRA
#
# LoRA (lesson 6) trains a small update B·A beside each frozen weight W. The weights are
# frozen, so they need no gradient and no optimizer state — only storage. QLoRA (Dettmers et
# al., 2023) stores them in 4 bits (lesson 9's NF4 with double quantization) and trains LoRA
# on top, in full precision:
#
#     y = x Ŵᵀ + b + (α/r) · (x Aᵀ) Bᵀ,    Ŵ = dequantize(4-bit W)   x (…, d_in) → y (…, d_out)
#
# This lesson builds a QLoRA model in three calls, checks that it starts as the 4-bit base and
# that only LoRA trains, fine-tunes it next to plain LoRA, measures the memory of a training
# step for full fine-tuning, LoRA and QLoRA on the same model (and explains what dominates at
# this size), and merges the adapter back into the 4-bit weights — where rounding strikes
# again — or into a dequantized copy, where it does not.

# %%
import copy
import os
import shutil
import tempfile
import time
import warnings

import numpy as np

import minipeft as mp
from minipeft.data import default_corpus, iterate_batches, lm_blocks, tokenize_documents
from minipeft.jobs.quantize import step_memory
from minipeft.models import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel
from minipeft.optim import AdamW
from minipeft.peft import LoraConfig, LoraLayer, get_peft_model
from minipeft.quant import dequantize_4bit, dequantize_absmax, nf4_code, quantized_nbytes
from minipeft.quant.linear4bit import MERGE_WARNING, Linear4bit
from minipeft.quant.memory import storage_bytes
from minipeft.quant.model import dequantize_model, prepare_model_for_kbit_training, quantize_model
from minipeft.tasks import get_task
from minipeft.tokenizer import train_bpe_tokenizer
from minipeft.train import TrainConfig, Trainer, evaluate

mp.manual_seed(0)
LESSON_START = time.perf_counter()
work = tempfile.mkdtemp(prefix="minipeft-lesson10-")
MiB = 2**20

# %% [markdown]
# ## 0. A pretrained base and a task
#
# Lesson 9's base: a BPE tokenizer (V = 512) and a 2-layer GPT-2 with C = 64, pretrained for
# 60 steps on the Python reference manual and saved as a Hugging Face folder. The task is
# lesson 5's: language modelling on standard-library docstrings.

# %%
corpus = default_corpus()
tokenizer = train_bpe_tokenizer(corpus, vocab_size=512)
pretrain_blocks = lm_blocks(tokenize_documents(tokenizer, corpus), 64)
config = GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=64, n_embd=64, n_layer=2,
                    n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip


def batches(blocks):
    """``train_data(seed, epoch)`` for the Trainer: one shuffled epoch of (16, 64) batches."""
    return lambda seed, epoch: iterate_batches(blocks, 16, seed=seed, epoch=epoch, drop_last=True)


base = GPT2LMHeadModel(config, seed=0)
pretrain = TrainConfig(max_steps=60, lr=3e-3, warmup_steps=10, weight_decay=0.1,
                       betas=(0.9, 0.95), progress=False)  # fmt: skip
Trainer(base, pretrain, batches(pretrain_blocks)).train()
base_dir = os.path.join(work, "base")
base.save_pretrained(base_dir)

task = get_task("docstrings")
train_blocks = lm_blocks(tokenize_documents(tokenizer, task.train_texts), 64)
test_blocks = lm_blocks(tokenize_documents(tokenizer, task.test_texts), 64)[:64]
probe = test_blocks[:4]  # (4, 64): the inputs whose logits we compare


def test_loss(model):
    return evaluate(model, iterate_batches(test_blocks, 32, shuffle=False))["loss"]


def logits(model):
    with mp.no_grad():
        return model(input_ids=probe).logits.numpy()


def max_diff(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


print(f"base: {base.num_parameters():,} parameters; docstrings: train {train_blocks.shape}, "
      f"test {test_blocks.shape}")  # fmt: skip

# %% [markdown]
# ## 1. The 4-bit base
#
# `quantize_model` replaces every `nn.Linear` but the output head by a `Linear4bit` (NF4,
# blocks of 64, double quantization: lesson 9), in place. `prepare_model_for_kbit_training`
# is PEFT's preparation step: freeze every parameter and cast any float16 parameter that
# stayed in float (norms, embeddings) to float32 — ours are float32 already. Embeddings,
# layer norms and biases stay in float (a small part of a large model), and so does
# `lm_head`, which transformers leaves out of 4-bit quantization by default (ours is also
# tied to the embeddings).


# %%
def four_bit_base():
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    quantize_model(model, quant_type="nf4", blocksize=64, compress_statistics=True)
    return prepare_model_for_kbit_training(model)


fp32 = AutoModelForCausalLM.from_pretrained(base_dir)
q4 = four_bit_base()
layer = q4.transformer.h[0].attn.c_attn
print(type(layer).__name__, layer.weight)
quantized = [m for m in q4.modules() if isinstance(m, Linear4bit)]
n_linear = sum(m.in_features * m.out_features for m in quantized)
stored_4bit = sum(quantized_nbytes(m.weight.data, m.quant_state) for m in quantized)  # lesson 9
print(f"{len(quantized)} Linear4bit layers, {n_linear:,} weights: {4 * n_linear:,} B in float32 → "
      f"{stored_4bit:,} B stored ({4 * n_linear / stored_4bit:.2f}× smaller)")  # fmt: skip
assert len(quantized) == 4 * config.n_layer and not any(p.requires_grad for p in q4.parameters())
assert stored_4bit == storage_bytes([m.in_features * m.out_features for m in quantized])["nf4+dq"]
assert 7.5 < 4 * n_linear / stored_4bit < 8  # 32 bits → 4.13 bits per weight

loss_fp32, loss_4bit = test_loss(fp32), test_loss(q4)
print(f"docstrings test loss: float32 base {loss_fp32:.4f}, 4-bit base {loss_4bit:.4f}; "
      f"max |Δ logits| = {max_diff(logits(fp32), logits(q4)):.3f}")  # fmt: skip
assert abs(loss_4bit - loss_fp32) < 0.01

# %% [markdown]
# The 4-bit model computes with Ŵ, so its logits differ from the float32 model's, but its
# loss hardly moves.
#
# ## 2. LoRA on the 4-bit base
#
# `get_peft_model` works on the quantized model unchanged: a `Linear4bit` meets the linear
# layer contract (`in_features`, `out_features`, `weight`), so LoRA wraps it like any Linear.
# That is all QLoRA is. We adapt all four linear layers of each block with r = 8, α = 16.
# `print_trainable_parameters` counts a 4-bit weight as the weights it stores (two per
# byte), as PEFT does with bitsandbytes, so "all params" is the base's count plus LoRA's.
# B starts at zero, so the model starts as the 4-bit base *exactly* — and
# `disable_adapter()` gives it back at any time.

# %%
LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["c_attn", "c_proj", "c_fc"]}
qlora = get_peft_model(four_bit_base(), LoraConfig(**LORA))
wrapped = qlora.get_base_model().transformer.h[0].attn.c_attn
print(
    f"{type(wrapped).__name__} around {type(wrapped.base_layer).__name__}: A "
    f"{wrapped.lora_A['default'].weight.shape}, B {wrapped.lora_B['default'].weight.shape}"
)
qlora.print_trainable_parameters()
trainable = [n for n, p in qlora.named_parameters() if p.requires_grad]
n_trainable, n_all = qlora.get_nb_trainable_parameters()
C, L, r = config.n_embd, config.n_layer, LORA["r"]
assert isinstance(wrapped, LoraLayer) and isinstance(wrapped.base_layer, Linear4bit)
assert all(".lora_A." in n or ".lora_B." in n for n in trainable)
assert n_trainable == L * r * ((C + 3 * C) + (C + C) + (C + 4 * C) + (4 * C + C))
assert n_all == base.num_parameters() + n_trainable
assert np.array_equal(logits(qlora), logits(q4))
with qlora.disable_adapter():
    assert np.array_equal(logits(qlora), logits(q4))
print("B = 0: QLoRA == 4-bit base, bit for bit")
try:
    wrapped.base_layer.weight.requires_grad_(True)
    raised = False
except TypeError as err:
    raised = True
    print("a 4-bit weight cannot train:", str(err).split(":")[0])
assert raised

# %% [markdown]
# The backward pass runs *through* the 4-bit layers — block 0's adapters need the gradient
# that flows back through block 1 — but stops at their weights: `Linear4bit`'s backward
# computes only the input gradient, x̄ = ȳ Ŵ (dequantizing Ŵ again instead of keeping it from
# the forward). After one backward only LoRA parameters hold gradients. And at the start
# only **B**'s are non-zero: with B = 0, ∂L/∂A = (α/r)·Bᵀ(…) = 0. A's gradient appears once
# an optimizer step has moved B (we check on a copy, to leave the model untouched).

# %%
qlora.train()
qlora(input_ids=train_blocks[:16], labels=train_blocks[:16]).loss.backward()
with_grad = {n: p.grad for n, p in qlora.named_parameters() if p.grad is not None}
print(f"{len(with_grad)} parameters hold a gradient, all LoRA: "
      f"{set(with_grad) == set(trainable)}")  # fmt: skip
assert set(with_grad) == set(trainable)
assert all(not g.any() for n, g in with_grad.items() if ".lora_A." in n)
assert all(g.any() for n, g in with_grad.items() if ".lora_B." in n)
print("∂L/∂A = 0 and ∂L/∂B ≠ 0 in every adapted layer, block 0's included")
stepped = copy.deepcopy(qlora)  # with its gradients
AdamW([p for p in stepped.parameters() if p.requires_grad], lr=1e-3).step()  # moves B
stepped.zero_grad()
stepped(input_ids=train_blocks[:16], labels=train_blocks[:16]).loss.backward()
qlora.zero_grad()
assert all(p.grad.any() for n, p in stepped.named_parameters() if ".lora_A." in n)

# %% [markdown]
# ## 3. Fine-tuning: QLoRA next to LoRA
#
# The same adapter, data, seed and 40 steps, once on the 4-bit base (QLoRA) and once on the
# float32 base (LoRA). The 4-bit base barely changes what LoRA can learn here.

# %%
STEPS = 40
finetune = TrainConfig(max_steps=STEPS, lr=5e-3, warmup_steps=4, seed=0, progress=False)
lora = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(**LORA))
results = {}
for name, model in (("LoRA", lora), ("QLoRA", qlora)):
    before = test_loss(model)
    result = Trainer(model, finetune, batches(train_blocks)).train()
    results[name] = (before, test_loss(model), result.seconds)
    print(f"{name:>5s}: test loss {before:.4f} → {results[name][1]:.4f} in {STEPS} steps "
          f"({result.seconds:.1f} s)")  # fmt: skip
for before, after, _ in results.values():
    assert before - after > 0.02  # both learn the task
assert abs(results["QLoRA"][1] - results["LoRA"][1]) < 0.02  # and end up close together

# %% [markdown]
# A trained QLoRA layer, computed by hand from its stored parts: the 4-bit codes and state
# dequantized (lesson 9), the bias, and the two LoRA matrices.

# %%
x = mp.randn(2, 5, C)
with mp.no_grad():
    y = wrapped(x).numpy()
W_hat = dequantize_4bit(wrapped.base_layer.weight.data, wrapped.base_layer.quant_state)
A = wrapped.lora_A["default"].weight.numpy()  # (r, d_in)
B_ = wrapped.lora_B["default"].weight.numpy()  # (d_out, r)
s = wrapped.scaling["default"]
by_hand = x.numpy() @ W_hat.T + wrapped.base_layer.bias.numpy() + s * (x.numpy() @ A.T) @ B_.T
print(f"x {x.shape} → y {y.shape}; s = α/r = {s}; max |layer − by hand| = "
      f"{max_diff(y, by_hand):.1e}; |B| max {np.abs(B_).max():.3f}")  # fmt: skip
assert max_diff(y, by_hand) < 1e-5 and np.abs(B_).max() > 0

# %% [markdown]
# ## 4. Memory: full fine-tuning, LoRA and QLoRA
#
# `step_memory` (what `minipeft quantize` reports) loads the same base three times — as is
# (full FT), with LoRA (r = 8 on `c_attn`), and 4-bit with LoRA (QLoRA) — and measures the
# peak bytes of one forward + backward + AdamW step with `tracemalloc`, the model's own
# weights included. We run it with a tiny batch, (B, T) = (1, 16), and a larger one,
# (16, 64): 64× the tokens. Next to it, the model state computed from the parameter counts —
# weights, gradients (4 B per trained parameter), AdamW's m and v (8 B) — and the rest of
# the peak: activations, the graph's own objects and temporaries.

# %%
memory = {bt: step_memory(base_dir, batch=bt[0], seq=bt[1]) for bt in ((1, 16), (16, 64))}
P = fp32.num_parameters()  # the tied lm_head counted once
P_lora = L * r * (C + 3 * C)  # step_memory's LoRA: c_attn only
weights = {"full FT": 4 * P, "LoRA": 4 * P + 4 * P_lora,
           "QLoRA": 4 * (P - n_linear) + stored_4bit + 4 * P_lora}  # fmt: skip
trained = {"full FT": P, "LoRA": P_lora, "QLoRA": P_lora}
state = {k: weights[k] + 12 * trained[k] for k in weights}  # + gradients + m + v
print(f"{'':>8s} {'weights':>8s} {'grads':>6s} {'AdamW':>6s} {'state':>6s} | (1, 16): "
      f"{'peak':>6s} {'rest':>6s} | (16, 64): {'peak':>6s} {'rest':>6s}   (MiB)")  # fmt: skip
for kind in weights:
    print(f"{kind:>8s} {weights[kind] / MiB:8.3f} {4 * trained[kind] / MiB:6.3f} "
          f"{8 * trained[kind] / MiB:6.3f} {state[kind] / MiB:6.3f} | {'':8s} "
          f"{memory[1, 16][kind] / MiB:6.3f} {(memory[1, 16][kind] - state[kind]) / MiB:6.3f} | "
          f"{'':9s} {memory[16, 64][kind] / MiB:6.3f} "
          f"{(memory[16, 64][kind] - state[kind]) / MiB:6.3f}")  # fmt: skip

small, large = memory[1, 16], memory[16, 64]
weight_saving = 4 * n_linear - stored_4bit
print(f"QLoRA saves {(small['LoRA'] - small['QLoRA']) / MiB:.3f} and "
      f"{(large['LoRA'] - large['QLoRA']) / MiB:.3f} MiB over LoRA; the linear weights shrink "
      f"by {weight_saving / MiB:.3f} MiB")  # fmt: skip
assert small["full FT"] > small["LoRA"] > small["QLoRA"]
assert state["full FT"] / small["full FT"] > 0.8  # full FT, tiny batch: the state is the peak
assert all(small[k] - state[k] < 0.6 * MiB for k in ("LoRA", "QLoRA"))
assert all((large[k] - state[k]) / large[k] > 0.8 for k in weights)  # large batch: the rest
for m in (small, large):  # QLoRA saves about the weights' bytes, whatever the batch
    assert 0.5 * weight_saving < m["LoRA"] - m["QLoRA"] < 1.2 * weight_saving
assert (large["LoRA"] - large["QLoRA"]) / large["LoRA"] < 0.02
print(f"large batch, LoRA - full FT: {(large['LoRA'] - large['full FT']) / MiB:+.2f} MiB")

# %% [markdown]
# What the numbers say, on this model of 0.14 M parameters:
#
# * **With a tiny batch the model state dominates.** Full FT holds weights, gradients and
#   AdamW's two moments for every parameter, 16 bytes each: about 2.1 MiB here, nearly its
#   whole peak. LoRA and QLoRA hold the frozen weights and a tiny adapter state; the rest of
#   their peak, about 0.5 MiB, is the forward's activations and graph for 16 tokens. QLoRA
#   stores the linear weights in 4.13 bits and saves most of their 0.33 MiB (not all: each
#   `Linear4bit` dequantizes its weight to float32 while it computes).
# * **With 64× the tokens the rest dominates** — the tensors the forward keeps for the
#   backward (attention probabilities (B, H, T, T), MLP activations (B, T, 4C), logits
#   (B, T, V)) grow with B·T while the weights stay fixed. QLoRA still saves about the same
#   0.3 MiB, now a percent of the peak. Here LoRA even peaks *above* full FT: minipeft's graph
#   keeps each op's input tensors until backward, so every adapted layer keeps a few extra
#   (B, T, d_out) arrays (B·A·x, its scaled copy, the sum), while full FT's AdamW moments are
#   only allocated after the backward has freed the activations.
#
# The weights' share grows with the model: they scale with L·C², the activations with
# B·T·L·C. At LLaMA-7B's 6.74 B parameters the base weights alone are 25 GiB in float32 and
# 12.6 GiB in float16, but 3.2 GiB at 4.127 bits, while LoRA with r = 16 on its four
# attention projections (32 layers, C = 4096) trains 16.8 M parameters: 256 MiB with
# gradients and AdamW state. Activations are bounded by choosing the batch (and by gradient
# checkpointing, which minipeft does not implement). That is how QLoRA fits the fine-tuning
# of a 65 B model on one 48 GB GPU: its 4-bit weights take 31 GiB.

# %%
big = {name: storage_bytes([n], blocksize=64) for name, n in (("7 B", 6_738_415_616),
                                                             ("65 B", 65_000_000_000))}  # fmt: skip
for name, table in big.items():
    print(f"{name:>4s} parameters: " + ", ".join(f"{k} {v / 2**30:.1f} GiB"
                                                  for k, v in table.items()))  # fmt: skip
lora_7b = 32 * 4 * 16 * (4096 + 4096)  # r (d_in + d_out) per projection
print(f"LoRA r = 16 on q, k, v, o of a 7 B LLaMA: {lora_7b / 1e6:.1f} M parameters, "
      f"{16 * lora_7b / MiB:.0f} MiB with gradients and AdamW")  # fmt: skip
assert round(big["7 B"]["fp32"] / 2**30) == 25 and round(big["7 B"]["fp16"] / 2**30, 1) == 12.6
assert round(big["7 B"]["nf4+dq"] / 2**30, 1) == 3.2 and round(16 * lora_7b / MiB) == 256
assert round(big["65 B"]["nf4+dq"] / 2**30) == 31 and big["65 B"]["nf4+dq"] < 48e9

# %% [markdown]
# ## 5. Merging into a 4-bit base
#
# Merging folds the update into the weight: W ← W + ΔW, ΔW = (α/r)·B·A. With a 4-bit base
# that means **dequantize, add, requantize** — and requantizing rounds Ŵ + ΔW to the NF4 grid
# again, so the merged model computes slightly differently from the unmerged one. PEFT warns
# about it, and so does minipeft (once per merged layer). Each merged weight is within the
# lesson-9 bound of Ŵ + ΔW: half the largest code gap times its block's absmax, plus the
# double-quantization error of that absmax. We merge a copy of the trained QLoRA model.

# %%
unmerged = logits(qlora)
with qlora.disable_adapter():
    lora_effect = max_diff(unmerged, logits(qlora))
expected = {}  # Ŵ + ΔW per adapted layer, before the merge requantizes it
for name, module in qlora.get_base_model().named_modules():
    if isinstance(module, LoraLayer):
        expected[name] = module.base_layer.get_base_weight() + module.get_delta_weight("default")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    merged_4bit = copy.deepcopy(qlora).merge_and_unload()
messages = [str(w.message) for w in caught]
print(f"{len(messages)} warnings: {messages[0]!r}")
assert messages.count(MERGE_WARNING) == len(expected) == 4 * L

max_gap = float(np.diff(nf4_code().astype(np.float64)).max())
for name, target in expected.items():
    merged_layer = merged_4bit.get_submodule(name)
    assert isinstance(merged_layer, Linear4bit)  # still 4 bits
    a = np.abs(target.reshape(-1, 64)).max(axis=1)
    bound = 0.5 * max_gap * a + np.abs(dequantize_absmax(merged_layer.quant_state) - a)
    err = np.abs(merged_layer.get_base_weight() - target).reshape(-1, 64)
    assert np.all(err <= bound[:, None] * (1 + 1e-5) + 1e-7)
merge_error = max_diff(logits(merged_4bit), unmerged)
loss_unmerged, loss_merged = test_loss(qlora), test_loss(merged_4bit)
print(f"max |Δ logits|: merged vs unmerged {merge_error:.4f} (the LoRA update itself moves "
      f"them by {lora_effect:.3f})")  # fmt: skip
print(f"test loss: unmerged {loss_unmerged:.5f}, merged into 4 bits {loss_merged:.5f}")
assert 0 < merge_error < 0.1 * lora_effect
merged_layers = [m for m in merged_4bit.modules() if isinstance(m, Linear4bit)]
assert sum(quantized_nbytes(m.weight.data, m.quant_state) for m in merged_layers) == stored_4bit
assert abs(loss_merged - loss_unmerged) < 0.01

# %% [markdown]
# The rounding is real — the logits move by a few percent of what the adapter changed them
# by — but small in the loss. To merge without it, go to full precision first:
# `merge_and_unload(dequantize=True)` turns each `Linear4bit` back into a float `Linear`
# holding Ŵ (`dequantize_model`, transformers' `model.dequantize()`), then adds ΔW in float32
# — the unmerged QLoRA model's computation, up to float rounding, in a model with float32
# weights again (7.75× the 4-bit bytes).

# %%
merged_fp32 = copy.deepcopy(qlora).merge_and_unload(dequantize=True)
exact_error = max_diff(logits(merged_fp32), unmerged)
print(
    f"dequantize, then merge: {type(merged_fp32.transformer.h[0].attn.c_attn).__name__} "
    f"layers, max |Δ logits| = {exact_error:.1e}, test loss {test_loss(merged_fp32):.5f}"
)
assert not any(isinstance(m, (Linear4bit, LoraLayer)) for m in merged_fp32.modules())
assert exact_error < 1e-4 and exact_error < merge_error / 100
float_bytes = sum(merged_fp32.get_submodule(n).weight.numpy().nbytes for n in expected)
print(f"its linear weights: {float_bytes:,} B ({float_bytes / stored_4bit:.2f}× the 4-bit bytes)")
assert float_bytes == 4 * n_linear
by_steps = copy.deepcopy(qlora)  # the same, in two steps
dequantize_model(by_steps.get_base_model())
assert np.array_equal(logits(by_steps.merge_and_unload()), logits(merged_fp32))

# %% [markdown]
# So a QLoRA fine-tune ends in one of three forms: the 4-bit base plus the small adapter file
# (exact, the usual choice), a merged 4-bit model (one file, rounded again), or a merged
# float model (exact, but full size).

# %%
shutil.rmtree(work)
print(f"lesson 10 ran in {time.perf_counter() - LESSON_START:.1f} s")
