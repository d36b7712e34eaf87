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
# # Lesson 4 — The Transformer
#
# A GPT is a stack of identical blocks. Each block lets every token *look at the tokens before
# it* (attention) and then *think on its own* (an MLP), with a residual connection around each:
#
#     a  = x + attn(ln_1(x))
#     x' = a + mlp(ln_2(a))
#
# This lesson takes attention apart with plain Tensor operations and checks every step against
# minipeft's own GPT-2, then looks at positions (learned vs rotary), pretrains a tiny GPT-2 on
# the Python documentation, generates text with a KV cache, and saves a checkpoint that
# Hugging Face `transformers` can load.
#
# Shapes throughout: **B** batch, **T** tokens, **C** model width (`n_embd`), **H** heads,
# **D = C / H** head width, **V** vocabulary size.

# %%
import math
import os
import shutil
import tempfile
import time

import numpy as np

import minipeft as mp
import minipeft.functional as F
from minipeft.data import (
    default_corpus,
    iterate_batches,
    lm_blocks,
    tokenize_documents,
    train_val_split,
)
from minipeft.models import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    RotaryEmbedding,
    apply_rotary_pos_emb,
)
from minipeft.tokenizer import train_bpe_tokenizer
from minipeft.train import TrainConfig, Trainer, evaluate

mp.manual_seed(0)
LESSON_START = time.perf_counter()

# %% [markdown]
# ## 1. Attention, one step at a time
#
# We build a one-block GPT-2 with C = 16 and H = 4 heads (so D = 4), and feed its first block
# a random input x of shape (B, T, C) = (2, 6, 16). Dropout is off (`*_pdrop=0`).

# %%
config = GPT2Config(
    vocab_size=50, n_positions=32, n_embd=16, n_layer=1, n_head=4,
    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
)  # fmt: skip
tiny = GPT2LMHeadModel(config, seed=0).eval()
block = tiny.transformer.h[0]
B, T, C, H = 2, 6, config.n_embd, config.n_head
D = C // H
x = mp.randn(B, T, C)
h = block.ln_1(x)  # attention reads the layer-normed input (pre-LN)
print(f"B={B} T={T} C={C} H={H} D={D};  x {x.shape}")

# %% [markdown]
# **q, k, v from one projection.** GPT-2 computes queries, keys and values with a single
# linear layer `c_attn` of shape C → 3C and splits its output in three. Each token t gets a
# query q_t ("what am I looking for?"), a key k_t ("what do I contain?") and a value v_t
# ("what do I pass on?").

# %%
qkv = block.attn.c_attn(h)  # (B, T, 3C)
q, k, v = qkv.split(C, dim=-1)  # each (B, T, C)
print("c_attn.weight", block.attn.c_attn.weight.shape, "→ qkv", qkv.shape, "→ q", q.shape)

# %% [markdown]
# **Split heads.** The C features are H independent groups of D; each head attends on its own.
# (B, T, C) → (B, T, H, D) → (B, H, T, D), so that the last two axes are a T × D matrix per
# (batch, head).


# %%
def split_heads(t):
    return t.reshape(B, T, H, D).transpose(1, 2)  # (B, T, C) → (B, H, T, D)


q, k, v = split_heads(q), split_heads(k), split_heads(v)
print("per-head q, k, v:", q.shape)

# %% [markdown]
# **Scores.** `S = q kᵀ / √D`, shape (B, H, T, T): row i holds how much query i matches each
# key j. Why divide by √D? If the entries of q and k are independent with variance 1, then
# q·k is a sum of D such products and has variance D; large scores saturate the softmax (one
# weight ≈ 1, the rest ≈ 0, gradients ≈ 0). Dividing by √D brings the variance back to 1:

# %%
qs, ks = mp.randn(20000, 64), mp.randn(20000, 64)  # 20000 random pairs with D = 64
dots = (qs * ks).sum(dim=-1).numpy()
print(f"var(q·k) = {dots.var():.1f} (≈ D = 64);  var(q·k/√D) = {(dots / 8).var():.2f} (≈ 1)")
assert 0.9 < dots.var() / 64 < 1.1 and 0.9 < (dots / 8).var() < 1.1

scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, T)
print("scores", scores.shape)

# %% [markdown]
# **The causal mask.** A language model predicts token t + 1 from tokens ≤ t, so query i may
# only look at keys j ≤ i: the lower triangle. Blocked scores become -∞, and since e^-∞ = 0
# the softmax gives them exactly zero weight. Each row of weights then sums to 1.

# %%
allowed = mp.tensor(np.tril(np.ones((T, T), dtype=bool)))  # (T, T), True = may attend
print(allowed.numpy().astype(int))
scores = scores.masked_fill(~allowed, float("-inf"))  # broadcasts over (B, H)
weights = F.softmax(scores, dim=-1)  # (B, H, T, T)
w = weights.numpy()
assert np.all(w[..., ~np.tril(np.ones((T, T), dtype=bool))] == 0.0), "the future gets weight 0"
assert np.allclose(w.sum(-1), 1.0, atol=1e-6), "each row is a probability distribution"
print("head 0 weights of batch row 0 (untrained, so q and k are tiny and rows near uniform):")
print(np.round(w[0, 0], 2))

# %% [markdown]
# **Weighted sum and merge.** Each query's output is the weighted average of the values,
# (B, H, T, T) @ (B, H, T, D) → (B, H, T, D). Undo the head split, (B, H, T, D) →
# (B, T, H, D) → (B, T, C), and mix the heads with the output projection `c_proj` (C → C).

# %%
y = weights @ v  # (B, H, T, D)
y = y.transpose(1, 2).reshape(B, T, C)  # merge heads: (B, T, C)
by_hand = block.attn.c_proj(y)  # (B, T, C)
print("attention output", by_hand.shape)

# %% [markdown]
# **Check 1:** `F.scaled_dot_product_attention` does the scores, mask, softmax and weighted
# sum in one fused operation (with a hand-derived backward). **Check 2:** the GPT-2 block's
# attention module (`block.attn(x, mask, past)` returns the output and the (k, v) it cached).
# **Check 3:** the whole block, as the model runs it: `output_hidden_states=True` returns the
# input of every block and the final output; with one block, `hidden_states[1]` is
# `ln_f(block(hidden_states[0]))`.

# %%
fused = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
err_fused = np.abs(fused.numpy() - (weights @ v).numpy()).max()

module_out, (k_cache, v_cache) = block.attn(h, None, None)
err_module = np.abs(module_out.numpy() - by_hand.numpy()).max()

ids = mp.randint(0, config.vocab_size, (B, T))
out = tiny(input_ids=ids, output_hidden_states=True)
x0 = out.hidden_states[0]  # wte[ids] + wpe[positions], (B, T, C)
ln1 = block.ln_1(x0)
h_q, h_k, h_v = (split_heads(t) for t in block.attn.c_attn(ln1).split(C, dim=-1))
a = x0 + block.attn.c_proj(
    F.scaled_dot_product_attention(h_q, h_k, h_v, is_causal=True).transpose(1, 2).reshape(B, T, C)
)
block_by_hand = a + block.mlp(block.ln_2(a))  # (B, T, C)
final = tiny.transformer.ln_f(block_by_hand)
err_block = np.abs(final.numpy() - out.hidden_states[1].numpy()).max()
print(f"max |by hand − fused SDPA| = {err_fused:.1e}")
print(f"max |by hand − block.attn| = {err_module:.1e}   cached k: {k_cache.shape}")
print(f"max |block by hand − model's hidden state| = {err_block:.1e}")
assert err_fused < 1e-6 and err_module < 1e-6 and err_block < 1e-5

# %% [markdown]
# ## 2. The causal mask, seen from outside
#
# Because no query looks ahead, changing token t can change the logits at positions ≥ t only.
# We change the tokens from position 4 on and compare the whole model's logits (B, T, V).

# %%
ids = mp.randint(0, config.vocab_size, (1, 8))
changed = ids.numpy().copy()
changed[0, 4:] = (changed[0, 4:] + 1) % config.vocab_size
logits_a = tiny(input_ids=ids).logits.numpy()
logits_b = tiny(input_ids=changed).logits.numpy()
diff = np.abs(logits_a - logits_b).max(axis=-1)[0]  # per position
print("max |Δ logits| per position:", np.round(diff, 4))
assert np.all(diff[:4] < 1e-6), "positions before the change are untouched"
assert np.all(diff[4:] > 1e-3), "positions at and after the change do change"

# %% [markdown]
# ## 3. Positions: learned (GPT-2) vs rotary (LLaMA)
#
# Attention by itself is blind to order: permute the keys and values and the weighted sum is
# the same. GPT-2 **adds a learned vector** `wpe[t]` to the token embedding at position t, so
# the model sees *absolute* positions. LLaMA uses **RoPE** (Su et al., 2021): it rotates each
# pair of q and k features by the angle t·θ_i, with θ_i = 10000^(-2i/D). A rotation R(m) of q
# at position m and R(n) of k at position n give
#
#     (R(m) q) · (R(n) k) = q · R(n − m) k
#
# so the score depends on the **relative** position n − m only. We check this numerically:
# put the same q at every position m and the same k at every position n; the T × T score
# matrix must then be constant along each diagonal (a Toeplitz matrix).

# %%
Dr, Tr = 8, 12
rope = RotaryEmbedding(Dr)
positions = mp.arange(Tr).reshape(1, Tr)  # position_ids (1, T)
cos, sin = rope(mp.zeros(1, Tr, Dr), positions)  # each (1, T, D)
q_vec, k_vec = mp.randn(Dr), mp.randn(Dr)
q_all = mp.ones(1, 1, Tr, 1) * q_vec  # the same q at every position, (1, 1, T, D)
k_all = mp.ones(1, 1, Tr, 1) * k_vec
q_rot, k_rot = apply_rotary_pos_emb(q_all, k_all, cos, sin)
S = (q_rot @ k_rot.transpose(-2, -1)).numpy()[0, 0]  # S[m, n] = R(m)q · R(n)k, (T, T)
shift_err = np.abs(S[1:, 1:] - S[:-1, :-1]).max()  # S[m+1, n+1] vs S[m, n]
norm_err = np.abs(np.linalg.norm(q_rot.numpy(), axis=-1) - np.linalg.norm(q_vec.numpy())).max()
print(f"RoPE: max |S[m+1,n+1] − S[m,n]| = {shift_err:.1e}; rotation keeps |q|: {norm_err:.1e}")
assert shift_err < 1e-5 and norm_err < 1e-5

# With learned absolute positions the same q and k meet at (m, n) as q + p_m and k + p_n:
p = mp.randn(Tr, Dr) * 0.5  # stand-in for learned wpe rows
S_abs = ((q_vec + p) @ (k_vec + p).transpose(0, 1)).numpy()
abs_shift = np.abs(S_abs[1:, 1:] - S_abs[:-1, :-1]).max()
print(f"learned: max |S[m+1,n+1] − S[m,n]| = {abs_shift:.2f}  (depends on m and n themselves)")
assert abs_shift > 0.1

# %% [markdown]
# A consequence for a whole model: in LLaMA positions enter *only* through RoPE, so shifting
# every position by the same offset leaves the logits unchanged. In GPT-2 it does not.

# %%
llama = LlamaForCausalLM(
    LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=64),
    seed=0,
).eval()  # fmt: skip
ids = mp.randint(0, 50, (1, 10))
pos = np.arange(10)[None]
llama_shift = np.abs(
    llama(input_ids=ids, position_ids=pos).logits.numpy()
    - llama(input_ids=ids, position_ids=pos + 20).logits.numpy()
).max()
gpt2_shift = np.abs(
    tiny(input_ids=ids, position_ids=pos).logits.numpy()
    - tiny(input_ids=ids, position_ids=pos + 20).logits.numpy()
).max()
print(f"shift all positions by 20: LLaMA logits move {llama_shift:.1e}, GPT-2's {gpt2_shift:.1e}")
assert llama_shift < 1e-4 and gpt2_shift > 1e-3

# %% [markdown]
# ## 4. Pretraining a tiny GPT-2
#
# The default corpus is the Python reference manual's topics (`pydoc_data`, shipped with
# every CPython). We split it by document, train a byte-level BPE tokenizer with V = 512 on
# the training split, join the documents into one token stream and cut it into blocks of
# T = 64 tokens. A block is both input and label: the model predicts token t + 1 from
# positions ≤ t, so each block gives 63 next-token targets.

# %%
train_docs, val_docs = train_val_split(default_corpus(), val_fraction=0.1, seed=0)
tokenizer = train_bpe_tokenizer(train_docs, vocab_size=512)
V = tokenizer.vocab_size
train_ids = tokenize_documents(tokenizer, train_docs)
val_ids = tokenize_documents(tokenizer, val_docs)
train_blocks = lm_blocks(train_ids, 64)  # (N, 64)
val_blocks = lm_blocks(val_ids, 64)[:128]  # a fixed validation subset keeps evaluation quick
print(f"{len(train_docs)} train / {len(val_docs)} val documents; V = {V}")
print(
    f"{len(train_ids):,} train tokens → blocks {train_blocks.shape}; val blocks {val_blocks.shape}"
)

# %% [markdown]
# Two reference points for the loss (cross-entropy in nats per token):
#
# * an untrained model predicts roughly uniformly over V tokens: loss ≈ ln V;
# * the best model that **ignores context** predicts the unigram frequencies p(w) of the
#   training tokens; its validation loss is the cross-entropy −mean log p(w_val) (add-one
#   smoothed). A model below it is using the previous tokens.

# %%
counts = np.bincount(train_ids, minlength=V) + 1.0
unigram = float(-np.log(counts / counts.sum())[val_blocks[:, 1:]].mean())

gpt = GPT2LMHeadModel(
    GPT2Config(vocab_size=V, n_positions=64, n_embd=64, n_layer=2, n_head=4,
               resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
               bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id),
    seed=0,
)  # fmt: skip


def val_loss(model):
    return evaluate(model, iterate_batches(val_blocks, 32, shuffle=False))["loss"]


start_loss = val_loss(gpt)
print(f"{gpt.num_parameters():,} parameters")
print(f"start: val loss {start_loss:.3f}  (ln V = {math.log(V):.3f}); unigram {unigram:.3f}")
assert abs(start_loss - math.log(V)) < 0.05

# %% [markdown]
# The `Trainer` runs AdamW with linear warmup then cosine decay, clips the gradient norm to 1
# and logs every `log_every` steps. `train_data(seed, epoch)` returns one shuffled epoch.

# %%
cfg = TrainConfig(max_steps=100, lr=1e-2, warmup_steps=10, weight_decay=0.1, betas=(0.9, 0.95),
                  log_every=20, progress=False)  # fmt: skip
t0 = time.perf_counter()
result = Trainer(
    gpt, cfg, lambda seed, epoch: iterate_batches(train_blocks, 16, seed=seed, epoch=epoch)
).train()
for row in result.history:
    print(f"step {row['step']:3d}  train loss {row['loss']:.3f}  {row['tokens_per_s']:.0f} tok/s")
end_loss = val_loss(gpt)
print(f"trained {cfg.max_steps} steps in {time.perf_counter() - t0:.1f} s")
print(f"val loss {start_loss:.3f} → {end_loss:.3f}; unigram {unigram:.3f}")
assert end_loss < start_loss - 1.0, "the loss falls well below ln V"
assert end_loss < unigram - 0.1, "the model beats the context-free (unigram) predictor"

# %% [markdown]
# ## 5. Generation with a KV cache
#
# To generate, we feed the prompt, take the most likely next token (greedy decoding), append
# it and repeat. Re-running all T tokens every step wastes work: the keys and values of past
# tokens never change (they only attend backwards). The **KV cache** keeps them, one (k, v)
# pair of shape (B, H, T, D) per layer, and each step feeds only the newest token.

# %%
prompt = mp.tensor([tokenizer.encode("The for statement")])  # (1, T)
out = gpt(input_ids=prompt, use_cache=True)
k0, v0 = out.past_key_values[0]
print(f"{len(out.past_key_values)} layers cached; layer 0 k {k0.shape} = (B, H, T, D)")
next_id = mp.tensor([[int(out.logits.numpy()[0, -1].argmax())]])  # (1, 1)
step = gpt(input_ids=next_id, past_key_values=out.past_key_values, use_cache=True)
full = gpt(input_ids=mp.cat([prompt, next_id], dim=1))
step_err = np.abs(step.logits.numpy()[0, -1] - full.logits.numpy()[0, -1]).max()
print(f"one cached step vs re-running everything: max |Δ logits| = {step_err:.1e}")
assert step_err < 1e-4

t0 = time.perf_counter()
cached = gpt.generate(prompt, max_new_tokens=40)  # greedy: argmax at every step
t_cached = time.perf_counter() - t0
t0 = time.perf_counter()
uncached = gpt.generate(prompt, max_new_tokens=40, use_cache=False)
t_uncached = time.perf_counter() - t0
print(f"40 greedy tokens: cached {t_cached * 1000:.0f} ms, uncached {t_uncached * 1000:.0f} ms")
print("greedy: ", repr(tokenizer.decode(cached.numpy()[0])))
assert np.array_equal(cached.numpy(), uncached.numpy()), "the cache changes speed, not tokens"

# %% [markdown]
# Greedy decoding of a model this small soon repeats itself (often blank lines, the most
# frequent token after a newline). Sampling from softmax(logits / temperature), restricted to
# the 20 most likely tokens, varies more; `seed` makes the draw reproducible. After 100 steps
# (about 100k tokens) expect word fragments, spacing and punctuation, not grammar yet.

# %%
sampled = gpt.generate(prompt, max_new_tokens=40, do_sample=True, top_k=20, seed=0)
print("sampled:", repr(tokenizer.decode(sampled.numpy()[0])))

# %% [markdown]
# ## 6. Saving a Hugging Face checkpoint folder
#
# `save_pretrained` writes `config.json` (the architecture) and `model.safetensors` (the
# weights, by name, as raw little-endian arrays); the tokenizer adds its own files. Loading
# the folder back gives the identical model.

# %%
folder = tempfile.mkdtemp(prefix="minipeft-lesson04-")
gpt.save_pretrained(folder)
tokenizer.save_pretrained(folder)
for name in sorted(os.listdir(folder)):
    print(f"  {name:26s} {os.path.getsize(os.path.join(folder, name)):>9,d} bytes")
assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(folder))

reloaded = AutoModelForCausalLM.from_pretrained(folder)
ids = val_blocks[:2, :32]
ours = gpt.eval()(input_ids=ids).logits.numpy()
reload_err = np.abs(reloaded(input_ids=ids).logits.numpy() - ours).max()
print(f"reloaded {type(reloaded).__name__}: max |Δ logits| = {reload_err}")
assert reload_err == 0.0

# %% [markdown]
# The same folder loads in PyTorch's `transformers` (skipped if it is not installed): the
# module names and the safetensors keys are GPT-2's, so the logits agree.

# %%
try:
    import torch
    import transformers
except ImportError:
    print("transformers is not installed; skipping the cross-check")
else:
    transformers.utils.logging.disable_progress_bar()
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        theirs = hf(torch.from_numpy(ids)).logits.numpy()
    hf_err = np.abs(theirs - ours).max()
    print(f"transformers {type(hf).__name__}: max |Δ logits| = {hf_err:.1e}")
    assert hf_err < 1e-4

shutil.rmtree(folder)
print(f"lesson 4 ran in {time.perf_counter() - LESSON_START:.1f} s")
