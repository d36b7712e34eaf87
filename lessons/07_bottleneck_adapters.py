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
# # Lesson 7 — Bottleneck adapters
#
# LoRA (lesson 6) changes the *weights* of existing layers. A **bottleneck adapter** (Houlsby
# et al., 2019) adds a new small *module* instead: a two-layer MLP that squeezes the residual
# stream's C channels down to m ≪ C and back up,
#
#     A(z) = s · (W_up · act(W_down · z + b_down) + b_up)
#
#     z (B, T, C) → W_down (m, C) → (B, T, m) → act → W_up (C, m) → (B, T, C)
#
# with m = C // reduction_factor and a fixed scaling s. The base model stays frozen; only the
# adapters train. This lesson puts adapters where AdapterHub (`adapters`) puts them, checks the
# three standard placements against a hand computation, counts their parameters, shows the
# "mam_adapter" start that leaves the model unchanged, swaps two task adapters on one model,
# and measures what adapters cost at inference — the price of a module that cannot be merged.

# %%
import statistics
import time

import numpy as np

import minipeft as mp
from minipeft.models import GPT2Config, GPT2LMHeadModel
from minipeft.peft import (
    AdapterConfig,
    BottleneckLayer,
    LoraConfig,
    ParBnConfig,
    SeqBnConfig,
    get_peft_model,
)

mp.manual_seed(0)
LESSON_START = time.perf_counter()
tiny = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
ids = mp.randint(0, tiny.vocab_size, (2, 12))


def logits(model):
    with mp.no_grad():
        return model(input_ids=ids).logits.numpy()


def pretend_training(peft_model, seed=0, std=0.2):
    """Random non-zero values in every adapter parameter, as after some training."""
    rng = np.random.default_rng(seed)
    for name, p in peft_model.named_parameters():
        if ".adapters." in name:
            p.data[...] = rng.normal(0.0, std, p.shape).astype(p.dtype)


# %% [markdown]
# ## 1. Where adapters go: the residual sites of a pre-norm block
#
# A GPT-2 (or LLaMA) block is **pre-norm**: each sub-block reads a normalised copy of the
# residual stream x (B, T, C) and its output h (B, T, C) is *added* back to the stream:
#
#     x ← x + attn(ln_1(x))        the add is the block's `attn_residual` module
#     x ← x + mlp(ln_2(x))         the add is the block's `mlp_residual` module
#
# In minipeft these two adds are tiny modules, `nn.Residual`, with `forward(h, x) = x + h`.
# They have no parameters; they exist so that a tuner can *wrap* the place where a sub-block
# joins the stream — exactly where AdapterHub inserts its `attention_adapters` and
# `output_adapters` — without editing the block. We rebuild block 0 by calling its sub-blocks.

# %%
base = GPT2LMHeadModel(tiny, seed=0).eval()
block = base.transformer.h[0]
print("block 0 children:", [name for name, _ in block.named_children()])
x = mp.randn(2, 12, tiny.n_embd)  # (B, T, C): the stream entering block 0

with mp.no_grad():
    a, _ = block.attn(block.ln_1(x), None, None)  # (B, T, C); mask None = plain causal
    x1 = x + a  # attn_residual
    h = block.mlp(block.ln_2(x1))  # (B, T, C)
    by_hand = x1 + h  # mlp_residual
    out, _ = block(x, None, None)
print(f"x {x.shape}, attention output {a.shape}, MLP output {h.shape}")
err = np.abs(out.numpy() - by_hand.numpy()).max()
print(f"max |block(x) − (x + a + mlp(ln_2(x + a)))| = {err:.1e}")
assert err == 0.0
assert np.array_equal(block.attn_residual(a, x).numpy(), x1.numpy())

# %% [markdown]
# ## 2. Three placements, checked by hand
#
# AdapterHub's three standard configurations differ in *which* sites get an adapter and in
# *what* the adapter reads. With x the stream entering the sub-block and h its output:
#
# | `adapter_type` | paper | sites | output of a site | m | act | s |
# |---|---|---|---|---|---|---|
# | `seq_bn` | Pfeiffer et al. 2020 | `mlp_residual` | x + h + A(x + h) | C/16 | relu | 1 |
# | `double_seq_bn` | Houlsby et al. 2019 | both | x + h + A(h) | C/16 | swish | 1 |
# | `par_bn` | He et al. 2021 | `mlp_residual` | x + h + A(x) | C/2 | relu | 4 |
#
# *Sequential* adapters read the sub-block's result (seq_bn the updated stream x + h,
# double_seq_bn the sub-block output h alone); the *parallel* one reads the same x the MLP
# reads and runs beside it. `get_peft_model` replaces each `nn.Residual` it targets with a
# `BottleneckLayer` wrapping it. We give the adapters random weights, then recompute block 0
# from its (unchanged, frozen) sub-blocks and the adapters' weights in NumPy — once with each
# of the three formulas — and compare with the block's own output. Only the right formula
# matches (to float32 rounding); the other two are off by thousands of times more, so the check
# really tells the placements apart. (seq_bn's A(x + h) and par_bn's A(x) are the closest pair:
# a freshly initialised GPT-2's h is small next to x.)


# %%
def act_np(name, v):
    return np.maximum(v, 0.0) if name == "relu" else v / (1.0 + np.exp(-v))  # relu | swish


def adapter_np(adapter, act, z):
    """A(z) = s·(W_up act(W_down z + b_down) + b_up): (B, T, C) → (B, T, m) → (B, T, C)."""
    down, up = adapter.down, adapter.adapter_up  # Linear(C, m), Linear(m, C)
    mid = act_np(act, z @ down.weight.numpy().T + down.bias.numpy())  # (B, T, m)
    return adapter.scaling * (mid @ up.weight.numpy().T + up.bias.numpy())  # (B, T, C)


SITE_FORMULAS = {
    "seq_bn": lambda x, h, A: x + h + A(x + h),
    "double_seq_bn": lambda x, h, A: x + h + A(h),
    "par_bn": lambda x, h, A: x + h + A(x),
}


def block_by_hand(blk, act, formula, x):
    """Block 0 from its sub-blocks, applying `formula` at every site that holds an adapter."""

    def site(residual, x_, h_):
        if not isinstance(residual, BottleneckLayer):
            return x_ + h_  # a plain nn.Residual
        adapter = residual.adapters["default"]
        return SITE_FORMULAS[formula](x_, h_, lambda z: adapter_np(adapter, act, z))

    with mp.no_grad():
        a_ = blk.attn(blk.ln_1(x), None, None)[0].numpy()
        x1_ = site(blk.attn_residual, x.numpy(), a_)
        h_ = blk.mlp(blk.ln_2(mp.tensor(x1_))).numpy()
    return site(blk.mlp_residual, x1_, h_)


print("max |block 0 − hand computation| with the formula of:")
print(f"{'model':>14s} " + "".join(f"{f:>14s}" for f in SITE_FORMULAS) + "   adapters")
for kind in SITE_FORMULAS:
    pm = get_peft_model(GPT2LMHeadModel(tiny, seed=0).eval(), AdapterConfig(adapter_type=kind))
    pretend_training(pm)
    config = pm.peft_config["default"]
    blk = pm.get_base_model().transformer.h[0]
    sites = [n for n, m in blk.named_children() if isinstance(m, BottleneckLayer)]
    with mp.no_grad():
        out = blk(x, None, None)[0].numpy()
    errs = {f: np.abs(out - block_by_hand(blk, config.non_linearity, f, x)).max()
            for f in SITE_FORMULAS}  # fmt: skip
    m = blk.mlp_residual.adapters["default"].down.out_features
    where = "+".join(sites)
    print(f"{kind:>14s} " + "".join(f"{e:14.1e}" for e in errs.values())
          + f"   {where}, m = {m}, {config.non_linearity}, s = {config.scaling}")  # fmt: skip
    assert errs[kind] < 1e-5
    assert all(e > 1000 * errs[kind] for f, e in errs.items() if f != kind)
    assert m == tiny.n_embd // config.reduction_factor
    assert sites == (["attn_residual", "mlp_residual"] if kind == "double_seq_bn"
                     else ["mlp_residual"])  # fmt: skip

# %% [markdown]
# ## 3. How many parameters?
#
# Each inserted adapter holds W_down (m, C), b_down (m,), W_up (C, m) and b_up (C,):
#
#     2·C·m + C + m   parameters per adapter,   m = C // reduction_factor
#
# seq_bn and par_bn insert one adapter per block, double_seq_bn two. On a GPT-2 with C = 64 and
# L = 2 layers, `get_nb_trainable_parameters()` counts exactly that (and LoRA r = 8 on `c_attn`
# for comparison: L·r·(C + 3C)).

# %%
small = GPT2Config(vocab_size=512, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
C, L = small.n_embd, small.n_layer
print(f"{'method':>14s} {'m':>3s} {'sites':>5s} {'2Cm+C+m':>8s} {'formula':>8s} {'trainable':>10s}"
      f" {'% of all':>9s}")  # fmt: skip
for kind, factor in (("seq_bn", 16), ("double_seq_bn", 16), ("par_bn", 2), ("seq_bn", 4)):
    pm = get_peft_model(GPT2LMHeadModel(small, seed=0),
                        AdapterConfig(adapter_type=kind, reduction_factor=factor))  # fmt: skip
    m = C // factor
    sites = L * (2 if kind == "double_seq_bn" else 1)
    per_adapter = 2 * C * m + C + m
    trainable, total = pm.get_nb_trainable_parameters()
    print(f"{kind:>14s} {m:3d} {sites:5d} {per_adapter:8,d} {sites * per_adapter:8,d} "
          f"{trainable:10,d} {100 * trainable / total:8.2f}%")  # fmt: skip
    assert trainable == sites * per_adapter
    assert trainable == sum(p.numel() for p in pm.parameters() if p.requires_grad)
lora = get_peft_model(GPT2LMHeadModel(small, seed=0), LoraConfig(r=8))
lora_trainable, lora_total = lora.get_nb_trainable_parameters()
print(f"{'LoRA r=8':>14s} {'':>3s} {L:5d} {'':>8s} {L * 8 * (C + 3 * C):8,d} "
      f"{lora_trainable:10,d} {100 * lora_trainable / lora_total:8.2f}%")  # fmt: skip
assert lora_trainable == L * 8 * (C + 3 * C)

# %% [markdown]
# ## 4. Starting from the base model: the "mam_adapter" init
#
# As with LoRA's zero B, an adapter should start as the identity so that fine-tuning begins
# from the pretrained function. par_bn's default init ("mam_adapter", He et al.) draws W_down
# Kaiming-uniform and sets **W_up = 0, b_up = 0**, so A(x) = 0 at every site and the model is
# the base model *bit for bit*. seq_bn's default ("bert") draws both matrices from N(0, 0.02²):
# A is small but not zero, so the start is close to the base, not equal to it.

# %%
base_logits = logits(GPT2LMHeadModel(tiny, seed=0).eval())
par = get_peft_model(GPT2LMHeadModel(tiny, seed=0).eval(), ParBnConfig())
ups = [m.adapters["default"].adapter_up for m in par.modules() if isinstance(m, BottleneckLayer)]
print(f"par_bn init {par.peft_config['default'].init_weights!r}: W_up all zero:",
      all(not u.weight.numpy().any() and not u.bias.numpy().any() for u in ups))  # fmt: skip
assert all(not u.weight.numpy().any() and not u.bias.numpy().any() for u in ups)
assert np.array_equal(logits(par), base_logits)
seq = get_peft_model(GPT2LMHeadModel(tiny, seed=0).eval(), SeqBnConfig())
bert_gap = np.abs(logits(seq) - base_logits).max()
print(f"par_bn at init == base, exactly: True;  seq_bn ('bert' init): max |Δ logits| = "
      f"{bert_gap:.1e}")  # fmt: skip
assert 0.0 < bert_gap < 0.05

# %% [markdown]
# ## 5. Modularity: one frozen model, many task adapters
#
# Adapters are named. One base model can hold an adapter per task and switch between them with
# `set_adapter(name)`: switching changes *which* modules run at the residual sites, never a
# weight, so switching back gives the first task's outputs bit for bit, and
# `disable_adapter()` gives the base model's. Each task's state dict (what its file holds)
# has only its own adapter, under AdapterHub's key names.

# %%
pm = get_peft_model(GPT2LMHeadModel(tiny, seed=0).eval(), SeqBnConfig(), "sentiment")
pm.add_adapter("topic", ParBnConfig())
pretend_training(pm, seed=1)
base_weight = pm.get_base_model().transformer.h[0].mlp.c_fc.weight.numpy().copy()
sentiment = logits(pm)
pm.set_adapter("topic")
topic = logits(pm)
pm.set_adapter("sentiment")
again = logits(pm)
with pm.disable_adapter():
    disabled = logits(pm)
print(f"active: {pm.active_adapter};  max |sentiment − topic| = "
      f"{np.abs(sentiment - topic).max():.2f}")  # fmt: skip
print("sentiment → topic → sentiment, bit for bit:", np.array_equal(again, sentiment))
print("disable_adapter() == base model, bit for bit:", np.array_equal(disabled, base_logits))
assert np.abs(sentiment - topic).max() > 1e-2 and np.abs(sentiment - base_logits).max() > 1e-2
assert np.array_equal(again, sentiment) and np.array_equal(disabled, base_logits)
assert np.array_equal(pm.get_base_model().transformer.h[0].mlp.c_fc.weight.numpy(), base_weight)
topic_keys = pm.adapter_state_dict("topic")
print(f"adapter 'topic': {len(topic_keys)} tensors, e.g. {next(iter(topic_keys))}")
assert topic_keys and all(".adapters.topic." in k for k in topic_keys)

# %% [markdown]
# ## 6. The price: latency
#
# LoRA's update is linear, so `merge_adapter()` folds it into W and inference runs the base
# model's matmuls. A bottleneck adapter has a nonlinearity between W_down and W_up: it cannot
# be folded into any base weight, so its modules stay on the forward path of every token.

# %%
try:
    seq.merge_adapter()
    merged_bottleneck = True
except TypeError as err:
    merged_bottleneck = False
    print("seq_bn merge_adapter():", err)
assert not merged_bottleneck

# %% [markdown]
# We time a forward pass of a GPT-2 with C = 128 and 4 layers on (B, T) = (4, 64): the base
# model, seq_bn, double_seq_bn and merged LoRA (r = 8 on `c_attn`), taking turns so that machine
# noise hits all alike, median of 15. Timings depend on the machine; nothing is asserted about
# them. `benchmarks/latency.py` measures every method on a larger model, per token, for
# KV-cache generation and for full forwards.

# %%
timing_config = GPT2Config(vocab_size=512, n_positions=64, n_embd=128, n_layer=4, n_head=4,
                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
timing_ids = mp.randint(0, 512, (4, 64))
timed = {"base": GPT2LMHeadModel(timing_config, seed=0).eval()}
for name, config in (("seq_bn", SeqBnConfig()), ("double_seq_bn", AdapterConfig(
        adapter_type="double_seq_bn")), ("LoRA merged", LoraConfig(r=8))):  # fmt: skip
    timed[name] = get_peft_model(GPT2LMHeadModel(timing_config, seed=0).eval(), config)
    pretend_training(timed[name], std=0.02)
timed["LoRA merged"].merge_adapter()
times = {name: [] for name in timed}
with mp.no_grad():
    for model in timed.values():
        model(input_ids=timing_ids)  # warm-up
    for _ in range(15):
        for name, model in timed.items():
            t0 = time.perf_counter()
            model(input_ids=timing_ids)
            times[name].append(time.perf_counter() - t0)
t_base = statistics.median(times["base"])
for name, ts in times.items():
    t = statistics.median(ts)
    print(f"{name:>14s}: {t * 1e3:6.1f} ms per forward, ratio to base {t / t_base:.2f}")

# %% [markdown]
# Read the ratios as: merged LoRA ≈ 1.00 (it *is* the base model's computation); each
# bottleneck adapter adds two small matmuls, an activation and adds per site, more for
# double_seq_bn (two sites per block). The cost is relatively larger when generating one
# token at a time, where the small per-module work is not hidden behind big matmuls — see the
# benchmark's "generate" column. In exchange adapters are modular: tasks swap, stack
# (`set_adapter(Stack("a", "b"))`) and ship as small files in AdapterHub's format.

# %%
print(f"lesson 7 ran in {time.perf_counter() - LESSON_START:.1f} s")
