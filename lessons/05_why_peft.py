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
# # Lesson 5 — Why parameter-efficient fine-tuning?
#
# Fine-tuning adapts a pretrained model to a new task by training it further. **Full
# fine-tuning** updates every weight. This lesson measures what that costs, on a small GPT-2
# adapted from the Python reference manual (its pretraining text) to standard-library
# docstrings (the "docstrings" task), and compares it with LoRA, which freezes the model and
# trains a small low-rank update (lesson 6 builds it from scratch). Four costs:
#
# 1. **parameters trained** — each needs a gradient and optimizer state;
# 2. **optimizer memory** — AdamW keeps two running averages, m and v, per trained parameter;
# 3. **storage per task** — a full fine-tune is a full copy of the model for every task;
# 4. **forgetting** — how much worse the model gets at what it knew before.
#
# Sizes: P parameters of the model, P_train of them trained, 4 bytes per float32 number.

# %%
import os
import shutil
import tempfile
import time

import minipeft as mp
from minipeft.data import (
    default_corpus,
    iterate_batches,
    lm_blocks,
    tokenize_documents,
    train_val_split,
)
from minipeft.models import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel
from minipeft.peft import LoraConfig, get_peft_model
from minipeft.tasks import get_task
from minipeft.tokenizer import train_bpe_tokenizer
from minipeft.train import TrainConfig, Trainer, evaluate

mp.manual_seed(0)
LESSON_START = time.perf_counter()
work = tempfile.mkdtemp(prefix="minipeft-lesson05-")

# %% [markdown]
# ## 1. A pretrained base model
#
# Lesson 4's recipe, compactly: a BPE tokenizer with V = 512 on the Python reference manual,
# blocks of T = 64 tokens, a 2-layer GPT-2 with C = 64, 100 AdamW steps. We save it as a
# Hugging Face folder; every fine-tune below starts from a fresh load of it.

# %%
pydoc_train, pydoc_val = train_val_split(default_corpus(), val_fraction=0.1, seed=0)
tokenizer = train_bpe_tokenizer(pydoc_train, vocab_size=512)
pydoc_blocks = lm_blocks(tokenize_documents(tokenizer, pydoc_train), 64)  # (N, 64)
pydoc_val_blocks = lm_blocks(tokenize_documents(tokenizer, pydoc_val), 64)[:128]


def batches(blocks):
    """``train_data(seed, epoch)`` for the Trainer: one shuffled epoch of (16, 64) batches."""
    return lambda seed, epoch: iterate_batches(blocks, 16, seed=seed, epoch=epoch, drop_last=True)


def loss_on(model, blocks):
    return evaluate(model, iterate_batches(blocks, 32, shuffle=False))["loss"]


config = GPT2Config(
    vocab_size=tokenizer.vocab_size, n_positions=64, n_embd=64, n_layer=2, n_head=4,
    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
)  # fmt: skip
base = GPT2LMHeadModel(config, seed=0)
pretrain = TrainConfig(max_steps=100, lr=1e-2, warmup_steps=10, weight_decay=0.1,
                       betas=(0.9, 0.95), progress=False)  # fmt: skip
t0 = time.perf_counter()
Trainer(base, pretrain, batches(pydoc_blocks)).train()
base_dir = os.path.join(work, "base")
base.save_pretrained(base_dir)
P = base.num_parameters()
print(f"pretrained {P:,} parameters in {time.perf_counter() - t0:.1f} s → {base_dir}")

# %% [markdown]
# ## 2. The new task: standard-library docstrings
#
# API documentation reads differently from the reference manual (parameters, return values,
# `self`, code names). The task splits modules into train and held-out test documents; we
# tokenize them with the *same* tokenizer and cut the same 64-token blocks.

# %%
task = get_task("docstrings")
print(task.description)
print("example:", repr(task.train_texts[0][:160]))
doc_blocks = lm_blocks(tokenize_documents(tokenizer, task.train_texts), 64)
doc_test_blocks = lm_blocks(tokenize_documents(tokenizer, task.test_texts), 64)[:128]
print(f"docstring blocks: train {doc_blocks.shape}, test {doc_test_blocks.shape}")

before = {"docstrings": loss_on(base, doc_test_blocks), "pydoc": loss_on(base, pydoc_val_blocks)}
print(f"base model: docstrings test loss {before['docstrings']:.3f}, "
      f"pydoc val loss {before['pydoc']:.3f}")  # fmt: skip

# %% [markdown]
# ## 3. Full fine-tuning
#
# Every parameter trains. Training memory in float32 is then, per parameter:
#
#     weights 4 B  +  gradient 4 B  +  AdamW m 4 B  +  AdamW v 4 B   =  16 bytes
#
# (activations come on top and grow with B·T). We measure the gradient buffers after one
# backward pass and AdamW's state after training, straight from the arrays.

# %%
STEPS = 60
full = AutoModelForCausalLM.from_pretrained(base_dir).train()  # loaded in eval mode
full_trainable = [p for p in full.parameters() if p.requires_grad]
P_full = sum(p.numel() for p in full_trainable)

probe = {"input_ids": doc_blocks[:16], "labels": doc_blocks[:16]}
full(**probe).loss.backward()
full_grad_bytes = sum(p.grad.nbytes for p in full_trainable if p.grad is not None)
full.zero_grad()  # drop the probe's gradients (set to None)

full_trainer = Trainer(full, TrainConfig(max_steps=STEPS, lr=1e-3, warmup_steps=6,
                                         progress=False), batches(doc_blocks))  # fmt: skip
full_result = full_trainer.train()
full_adam_bytes = sum(
    s["exp_avg"].nbytes + s["exp_avg_sq"].nbytes for s in full_trainer.optimizer.state.values()
)
print(f"trained parameters: {P_full:,} of {P:,}")
print(f"gradients: {full_grad_bytes:,} B = 4 × {P_full:,}")
print(f"AdamW m, v: {full_adam_bytes:,} B = 2 × 4 × {P_full:,}")
assert P_full == P
assert full_grad_bytes == 4 * P_full
assert full_adam_bytes == 2 * 4 * P_full

# %% [markdown]
# A fine-tuned model is a new set of weights: storing it per task means a full checkpoint.

# %%
full_dir = os.path.join(work, "full-docstrings")
full.save_pretrained(full_dir)
full_bytes = os.path.getsize(os.path.join(full_dir, "model.safetensors"))
after_full = {
    "docstrings": loss_on(full, doc_test_blocks),
    "pydoc": loss_on(full, pydoc_val_blocks),
}
print(f"checkpoint: model.safetensors = {full_bytes:,} bytes")
print(f"{STEPS} steps in {full_result.seconds:.1f} s")

# %% [markdown]
# ## 4. LoRA on the same base, for the same number of steps
#
# `get_peft_model` freezes every base weight and wraps the chosen linear layers (here all of
# them: `c_attn`, both `c_proj` and `c_fc`) with a rank-r update B·A; with r = 4 each layer
# W (d_out, d_in) gains only r·(d_in + d_out) trainable numbers. LoRA is usually trained with
# a larger learning rate than full fine-tuning, since B starts at zero.

# %%
lora = get_peft_model(
    AutoModelForCausalLM.from_pretrained(base_dir).train(),
    LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"]),
)
lora.print_trainable_parameters()
P_lora, P_all = lora.get_nb_trainable_parameters()
lora_trainable = [p for p in lora.parameters() if p.requires_grad]

lora(**probe).loss.backward()
frozen_grads = [p for p in lora.parameters() if not p.requires_grad and p.grad is not None]
lora_grad_bytes = sum(p.grad.nbytes for p in lora_trainable if p.grad is not None)
lora.zero_grad()
print(
    f"gradients: {lora_grad_bytes:,} B; frozen parameters holding a gradient: {len(frozen_grads)}"
)
assert lora_grad_bytes == 4 * P_lora and not frozen_grads, "frozen means free"

lora_trainer = Trainer(lora, TrainConfig(max_steps=STEPS, lr=5e-2, warmup_steps=6,
                                         progress=False), batches(doc_blocks))  # fmt: skip
lora_result = lora_trainer.train()
lora_adam_bytes = sum(
    s["exp_avg"].nbytes + s["exp_avg_sq"].nbytes for s in lora_trainer.optimizer.state.values()
)
print(f"AdamW m, v: {lora_adam_bytes:,} B = 2 × 4 × {P_lora:,}")
assert lora_adam_bytes == 2 * 4 * P_lora

lora_dir = os.path.join(work, "lora-docstrings")
lora.save_pretrained(lora_dir)
print("adapter folder:", sorted(os.listdir(lora_dir)))
lora_bytes = os.path.getsize(os.path.join(lora_dir, "adapter_model.safetensors"))
after_lora = {
    "docstrings": loss_on(lora, doc_test_blocks),
    "pydoc": loss_on(lora, pydoc_val_blocks),
}
print(f"{STEPS} steps in {lora_result.seconds:.1f} s; adapter_model.safetensors = {lora_bytes:,} B")

# %% [markdown]
# ## 5. The bill
#
# Same base, same data, same number of steps. "Forgetting" is the rise of the loss on the
# held-out pretraining text (pydoc) caused by fine-tuning on docstrings.

# %%
rows = [
    ("", "full FT", "LoRA r=4", "full / LoRA"),
    ("trained parameters", f"{P_full:,}", f"{P_lora:,}", f"{P_full / P_lora:.1f}×"),
    ("AdamW state (bytes)", f"{full_adam_bytes:,}", f"{lora_adam_bytes:,}",
     f"{full_adam_bytes / lora_adam_bytes:.1f}×"),
    ("stored per task (bytes)", f"{full_bytes:,}", f"{lora_bytes:,}",
     f"{full_bytes / lora_bytes:.1f}×"),
    ("seconds for the steps", f"{full_result.seconds:.1f}", f"{lora_result.seconds:.1f}", ""),
]  # fmt: skip
for r in rows:
    print(f"{r[0]:24s} {r[1]:>12s} {r[2]:>12s} {r[3]:>12s}")

gain_full = before["docstrings"] - after_full["docstrings"]
gain_lora = before["docstrings"] - after_lora["docstrings"]
forget_full = after_full["pydoc"] - before["pydoc"]
forget_lora = after_lora["pydoc"] - before["pydoc"]
print(f"\n{'loss (nats/token)':24s} {'base':>8s} {'full FT':>8s} {'LoRA':>8s}")
for name, label in (("docstrings", "docstrings test ↓"), ("pydoc", "pydoc val (forgetting)")):
    print(f"{label:24s} {before[name]:8.3f} {after_full[name]:8.3f} {after_lora[name]:8.3f}")
print(f"docstrings gain: full {gain_full:+.3f}, LoRA {gain_lora:+.3f}")
print(f"forgetting:      full {forget_full:+.3f}, LoRA {forget_lora:+.3f}")

assert P_full > 10 * P_lora and full_bytes > 10 * lora_bytes
assert gain_full > 0.05 and gain_lora > 0.02, "both adapt to the new domain"
assert forget_full > forget_lora

# %% [markdown]
# What the numbers say (they vary a little with the seed; the assertions above hold with a
# margin across seeds):
#
# * Full fine-tuning trains, and must keep gradients and AdamW state for, **every** parameter;
#   LoRA only for its small matrices. Each task costs a full checkpoint versus a small file.
# * Full fine-tuning lowers the docstrings loss **more** — it can also move the embeddings and
#   layer norms — but pays with **more forgetting** of the pretraining text. LoRA changes the
#   model less in both directions: "LoRA learns less and forgets less" (Biderman et al.,
#   2024). For a fair quality comparison one would tune both learning rates and train longer.
# * Time per step does **not** drop with the parameter count: the backward pass still carries
#   gradients through every frozen layer to reach the adapters below it (only the frozen
#   layers' weight gradients and optimizer updates are skipped), and LoRA adds small matrix
#   products of its own. On a model this small a LoRA step is about as slow as a full one.
#
# This model is tiny (C = 64, and r = 4 is not ≪ C), so the ratios are modest. They grow with
# the model: LoRA on a layer W (d_out, d_in) trains r·(d_in + d_out) of its d_in·d_out
# numbers. First we check that formula against the count above, then apply it to real sizes.


# %%
def lora_params(C, L, r, inner):
    """LoRA on c_attn (C→3C), attn.c_proj (C→C), c_fc (C→inner), mlp.c_proj (inner→C)."""
    return L * r * ((C + 3 * C) + (C + C) + (C + inner) + (inner + C))


assert lora_params(64, 2, 4, 256) == P_lora
for name, C, L, P_model in (("GPT-2 small", 768, 12, 124_439_808),
                            ("GPT-2 XL", 1600, 48, 1_557_611_200)):  # fmt: skip
    n = lora_params(C, L, 8, 4 * C)
    print(f"{name:12s} {P_model / 1e6:7.0f} M params: full FT needs {16 * P_model / 2**30:5.1f} "
          f"GiB for weights+grads+AdamW; LoRA r=8 trains {n / 1e6:.1f} M "
          f"({100 * n / P_model:.2f}%): {4 * P_model / 2**30:.1f} GiB frozen + "
          f"{16 * n / 2**20:.0f} MiB adapter")  # fmt: skip

shutil.rmtree(work)  # the checkpoints were only needed for their sizes
print(f"\nlesson 5 ran in {time.perf_counter() - LESSON_START:.1f} s")
