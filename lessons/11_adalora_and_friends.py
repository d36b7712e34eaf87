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
# # Lesson 11 — AdaLoRA and friends
#
# LoRA (lesson 6) gives every target the same rank r and puts the update ΔW = s·B·A beside W.
# Its family asks *where* the low-rank update should live:
#
# - **AdaLoRA** (Zhang et al., 2023): not every module needs rank r. Write the update in SVD
#   form, ΔW = B·diag(E)·A, score each triplet (A_i, E_i, B_i) by how much the loss depends on
#   it, and prune the least important ones during training until a total budget is left.
# - **DoRA** (Liu et al., 2024): split each weight row into a magnitude and a direction,
#   W' = m · (W + s·B·A) / ‖W + s·B·A‖, and learn the magnitude m apart.
# - **Combining adapters**: trained adapters are task vectors; `add_weighted_adapter` adds,
#   concatenates or SVD-compresses them into a new one, and a mixed batch runs several at once.
#
# Each claim below is checked by an assertion on a small GPT-2 trained here.

# %%
import os
import tempfile
import time

import numpy as np

import minipeft as mp
from minipeft.data import default_corpus, iterate_batches, lm_blocks, tokenize_documents
from minipeft.models import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel
from minipeft.peft import AdaLoraConfig, AdaLoraLayer, LoraConfig, LoraLayer, get_peft_model
from minipeft.peft.tuners.adalora import (
    budget_schedule,
    format_rank_table,
    plot_rank_report,
    rank_rows,
)
from minipeft.tasks import get_task
from minipeft.tokenizer import train_bpe_tokenizer
from minipeft.train import Callback, TrainConfig, Trainer, UpdateAndAllocate, evaluate

mp.manual_seed(0)
LESSON_START = time.perf_counter()
work = tempfile.mkdtemp(prefix="minipeft-lesson11-")

# %% [markdown]
# ## 0. A pretrained base and a task
#
# Lesson 10's base: a BPE tokenizer (V = 512) and a 2-layer GPT-2 with C = 64, pretrained for
# 60 steps on the Python reference manual; the task is language modelling on docstrings.

# %%
corpus = default_corpus()
tokenizer = train_bpe_tokenizer(corpus, vocab_size=512)
config = GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=64, n_embd=64, n_layer=2,
                    n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip


def batches(blocks):
    return lambda seed, epoch: iterate_batches(blocks, 16, seed=seed, epoch=epoch, drop_last=True)


base = GPT2LMHeadModel(config, seed=0)
pretrain = TrainConfig(max_steps=60, lr=3e-3, warmup_steps=10, weight_decay=0.1,
                       betas=(0.9, 0.95), progress=False)  # fmt: skip
corpus_blocks = lm_blocks(tokenize_documents(tokenizer, corpus), 64)
Trainer(base, pretrain, batches(corpus_blocks)).train()
base_dir = os.path.join(work, "base")
base.save_pretrained(base_dir)

task = get_task("docstrings")
train_blocks = lm_blocks(tokenize_documents(tokenizer, task.train_texts), 64)
test_blocks = lm_blocks(tokenize_documents(tokenizer, task.test_texts), 64)[:64]
probe = test_blocks[:4]


def fresh_base():
    return AutoModelForCausalLM.from_pretrained(base_dir)


def test_loss(model):
    return evaluate(model, iterate_batches(test_blocks, 32, shuffle=False))["loss"]


def logits(model):
    with mp.no_grad():
        return model(input_ids=probe).logits.numpy()


def max_diff(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


base_logits, base_loss = logits(base), test_loss(base)
print(f"base: {base.num_parameters():,} parameters; docstrings test loss {base_loss:.4f}")

# %% [markdown]
# ## 1. AdaLoRA: LoRA in SVD form
#
# Each target gets P = A (r, d_in), the singular values E (r, 1) and Q = B (d_out, r):
#
#     ΔW = B · (E ⊙ A) · α / r          (PEFT: α divided by the rank it started with)
#
# E starts at 0, so the model starts as the base, while A and B start random (N(0, 0.02²)) and
# both get gradients. Setting E_i = 0 removes triplet i — that is how a rank is pruned, with no
# change of shape. To keep P and Q close to orthogonal, as singular vectors are, the loss gets
# a penalty  R = orth_reg_weight · mean over modules of ‖AAᵀ − I‖_F and ‖BᵀB − I‖_F.

# %%
TARGETS = ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"]  # 4 per block, 8 modules
STEPS, TINIT, TFINAL = 100, 15, 15
ada_config = AdaLoraConfig(init_r=6, target_r=2, tinit=TINIT, tfinal=TFINAL, deltaT=5,
                           total_step=STEPS, lora_alpha=16, target_modules=TARGETS,
                           task_type="CAUSAL_LM")  # fmt: skip
ada = get_peft_model(fresh_base(), ada_config)
ada.print_trainable_parameters()
layers = {n: m for n, m in ada.named_modules() if isinstance(m, AdaLoraLayer)}
first = next(iter(layers.values()))
n_modules = len(layers)
per_module = [m.r["default"] * (m.in_features + 1 + m.out_features) for m in layers.values()]
assert ada.get_nb_trainable_parameters()[0] == sum(per_module)  # r·(d_in + 1 + d_out) each
assert max_diff(logits(ada), base_logits) == 0.0  # E = 0: exactly the base
penalty = float(ada.base_model.regularization_loss().item())
print(f"{n_modules} modules at r = 6; orthogonality penalty at init {penalty:.4f}")

# An orthonormal A (rows) and B (columns) make the penalty vanish.
with mp.no_grad():
    for m in layers.values():
        a = m.lora_A["default"].data
        q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=a.shape[::-1]))
        m.lora_A["default"].data[...] = q.T  # (r, d_in), orthonormal rows
        b = m.lora_B["default"].data
        q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=b.shape))
        m.lora_B["default"].data[...] = q  # (d_out, r), orthonormal columns
assert float(ada.base_model.regularization_loss().item()) < 1e-5
ada = get_peft_model(fresh_base(), ada_config)  # back to PEFT's random start

# %% [markdown]
# ## 2. The budget schedule
#
# The budget b(t) is the total number of triplets kept, over all modules. It starts at
# b₀ = init_r · n, stays there for `tinit` warm-up steps, falls along a cubic to
# b_T = target_r · n at step T − `tfinal`, and stays there for the last `tfinal` steps:
#
#     b(t) = b₀                                                   t ≤ tinit
#     b(t) = ⌊(b₀ − b_T) · (1 − (t − tinit) / (T − tfinal − tinit))³ + b_T⌋   then
#     b(t) = b_T                                                  t > T − tfinal
#
# The cubic prunes fast at first, while most triplets are still cheap to lose, and slowly near
# the end. Pruning happens every `deltaT` steps inside the schedule and at every step after it.

# %%
b0, b_final = 6 * n_modules, 2 * n_modules
schedule = [budget_schedule(t, b0, b_final, TINIT, TFINAL, STEPS, 5) for t in range(1, STEPS + 1)]
for t in range(1, STEPS + 1):
    if t <= TINIT:
        closed = b0
    elif t > STEPS - TFINAL:
        closed = b_final
    else:
        closed = int((b0 - b_final) * (1 - (t - TINIT) / (STEPS - TFINAL - TINIT)) ** 3 + b_final)
    assert schedule[t - 1][0] == closed
budgets = [b for b, _ in schedule]
assert budgets == sorted(budgets, reverse=True) and budgets[0] == b0 and budgets[-1] == b_final
print("budget b(t) every 10 steps:", budgets[::10])

# %% [markdown]
# ## 3. Importance, and training with allocation
#
# After each optimizer step (gradients still present), every entry θ of A, E and B gets a
# sensitivity I = |θ · ∂L/∂θ| — the first-order change of the loss if θ were zeroed — smoothed
# over steps (Ī ← β₁Ī + (1 − β₁)I) together with its uncertainty (Ū ← β₂Ū + (1 − β₂)|I − Ī|);
# an entry scores s = Ī · Ū, and triplet i of a module scores
#
#     S_i = s(E_i) + mean_j s(A_ij) + mean_k s(B_ki).
#
# On a pruning step the b₀ − b(t) lowest scores over *all* modules lose their E_i, so one
# module can keep all 6 ranks while another keeps none. The `UpdateAndAllocate` callback makes
# PEFT's `update_and_allocate(step)` call after every step.


# %%
class Watch(Callback):
    """Records the triplets alive after each step, and the scores just before the final cut."""

    def __init__(self):
        self.alive, self.scores = [], None

    def on_optimizer_step(self, trainer, step):
        self.alive.append(sum(int((m.lora_E["default"].data != 0).sum()) for m in layers.values()))
        if step == STEPS - TFINAL - 1:
            alloc = trainer.model.base_model.rankallocator
            self.scores = {k: v.copy() for k, v in alloc.triplet_scores(alloc_model).items()}


layers = {n: m for n, m in ada.named_modules() if isinstance(m, AdaLoraLayer)}
alloc_model = ada.base_model.model
watch = Watch()
ada_train = TrainConfig(max_steps=STEPS, lr=2e-2, warmup_steps=5, progress=False)
Trainer(ada, ada_train, batches(train_blocks), callbacks=[UpdateAndAllocate(), watch]).train()
ada_loss = test_loss(ada)
for t in range(1, STEPS + 1):
    if schedule[t - 1][1]:  # a pruning step keeps exactly the budget
        assert watch.alive[t - 1] == budgets[t - 1], (t, watch.alive[t - 1], budgets[t - 1])
assert watch.alive[-1] == b_final  # exactly the target budget at the end
name, scores = next(iter(watch.scores.items()))
print(f"triplet scores of {name} before the final cut: {np.round(scores, 8)}")
rows = rank_rows(ada.base_model)
print(format_rank_table(rows))
assert sum(r.final_r for r in rows) == b_final
assert len({r.final_r for r in rows}) > 1  # an uneven allocation, learned from the scores
print(f"test loss: base {base_loss:.4f} → AdaLoRA {ada_loss:.4f}")
assert ada_loss < base_loss
png = plot_rank_report(rows, os.path.join(work, "adalora_ranks.png"))
print("rank plot:", png or "skipped (matplotlib is not installed)")

# %% [markdown]
# AdaLoRA spent its budget unevenly: some modules kept every rank, others none. Which ones win
# depends on the task and the model; the point is that the allocation is learned, not fixed.
#
# ## 4. DoRA: magnitude and direction
#
# Each row w of a weight (one output feature) is a length ‖w‖ and a direction w/‖w‖. DoRA
# (Liu et al., 2024) trains them apart: LoRA moves the direction, a vector m (d_out,) sets the
# lengths,
#
#     W' = m ⊙ (W + s·B·A) / ‖W + s·B·A‖          (‖·‖ per row; m starts at ‖W‖)
#
# so at the start W' = W. The norm is *detached* in backward (paper §4.3, PEFT): it is treated
# as a constant, which saves memory and barely changes the gradient. Merging writes W' into the
# base weight, so a merged DoRA model costs nothing extra, like LoRA.

# %%
dora_config = LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=["c_attn"],
                         task_type="CAUSAL_LM")  # fmt: skip
dora = get_peft_model(fresh_base(), dora_config)
dora_layer = dora.get_base_model().transformer.h[0].attn.c_attn
assert isinstance(dora_layer, LoraLayer)
w0 = dora_layer.base_layer.weight.numpy().copy()  # (d_out, d_in): minipeft's Linear layout
m0 = dora_layer.lora_magnitude_vector["default"].weight.numpy().copy()
assert np.allclose(m0, np.linalg.norm(w0, axis=1))  # m = ‖W‖ per output row
assert max_diff(logits(dora), base_logits) == 0.0
dora.print_trainable_parameters()  # LoRA's r·(d_in + d_out) + d_out per module

lora = get_peft_model(fresh_base(), LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"],
                                               task_type="CAUSAL_LM"))  # fmt: skip
short = TrainConfig(max_steps=100, lr=2e-2, warmup_steps=5, progress=False)
for model in (lora, dora):
    Trainer(model, short, batches(train_blocks)).train()
lora_loss, dora_loss = test_loss(lora), test_loss(dora)


def split(merged_weight):
    """Mean change of row lengths ΔM and of row directions ΔD (1 − cosine) against W."""
    lengths = np.linalg.norm(merged_weight, axis=1)
    cos = (merged_weight * w0).sum(1) / (lengths * np.linalg.norm(w0, axis=1))
    return float(np.abs(lengths - np.linalg.norm(w0, axis=1)).mean()), float((1 - cos).mean())


merged_weights = {}
for label, model in (("LoRA", lora), ("DoRA", dora)):
    before = logits(model)
    merged = model.merge_and_unload()
    assert max_diff(logits(merged), before) < 1e-4  # merged ≡ unmerged
    merged_weights[label] = merged.transformer.h[0].attn.c_attn.weight.numpy()
m = dora_layer.lora_magnitude_vector["default"].weight.numpy()
# ‖W'‖ = |m|: the lengths are m's (a magnitude that trained past 0 flips its row)
assert np.allclose(np.linalg.norm(merged_weights["DoRA"], axis=1), np.abs(m), rtol=1e-4)
for label, weight in merged_weights.items():
    d_m, d_d = split(weight)
    print(f"{label}: mean |Δ row length| ΔM = {d_m:.5f}, mean (1 − cos) ΔD = {d_d:.2e}")
print(f"test loss after 100 steps: LoRA {lora_loss:.4f}, DoRA {dora_loss:.4f}")
assert lora_loss < base_loss and dora_loss < base_loss

# %% [markdown]
# ## 5. Combining adapters
#
# A trained adapter is a *task vector* ΔW_i = s_i·B_i·A_i. `add_weighted_adapter` builds a new
# adapter (scale 1) from several, PEFT's way:
#
# - `cat`: A' = [w₁s₁A₁; w₂s₂A₂], B' = [B₁ B₂], so ΔW' = w₁ΔW₁ + w₂ΔW₂ exactly, rank r₁ + r₂;
# - `svd`: the best rank-k approximation of w₁ΔW₁ + w₂ΔW₂ (its top k singular directions);
# - `linear`, `ties`, `dare_*`, `magnitude_prune`: merge A's and B's separately (with √(w·s)
#   on each side) — exact for one adapter, an approximation for several.
#
# One adapter with weight 1.0 must give back that adapter. PEFT's does not for rsLoRA or DoRA
# (its issue #3761): the new adapter inherits rsLoRA's scale √r, or DoRA's magnitude is reset
# to ‖W‖. Here the scale is always 1 and magnitudes combine like the directions,
# m' = ‖W‖ + Σ w_i (m_i − ‖W‖).

# %%
manual_blocks, manual_test = corpus_blocks[:-64], corpus_blocks[-64:]  # a second "task"
two = get_peft_model(fresh_base(), LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"],
                                              task_type="CAUSAL_LM"), "docs")  # fmt: skip
two.add_adapter("manual", LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"],
                                     task_type="CAUSAL_LM"))  # fmt: skip
for name, blocks in (("docs", train_blocks), ("manual", manual_blocks)):
    two.set_adapter(name)
    Trainer(two, short, batches(blocks)).train()
two.eval()
layer = two.get_base_model().transformer.h[0].attn.c_attn


def delta(name):
    return layer.get_delta_weight(name)  # (d_out, d_in)


two.add_weighted_adapter(["docs"], [1.0], "docs_again", combination_type="linear")
two.add_weighted_adapter(["docs", "manual"], [0.5, 0.5], "both_cat", combination_type="cat")
two.add_weighted_adapter(["docs", "manual"], [0.5, 0.5], "both_svd2", combination_type="svd",
                         svd_rank=2)  # fmt: skip
assert np.allclose(delta("docs_again"), delta("docs"), atol=1e-6)
target = 0.5 * delta("docs") + 0.5 * delta("manual")
assert layer.r["both_cat"] == 8 and np.allclose(delta("both_cat"), target, atol=1e-6)
sing = np.linalg.svd(target, compute_uv=False)
err = np.linalg.norm(delta("both_svd2") - target)
assert abs(err - np.sqrt((sing[2:] ** 2).sum())) < 1e-4  # Eckart–Young: the tail it drops
print(f"rank-2 SVD of the sum keeps {1 - err**2 / (sing**2).sum():.1%} of its energy")


def losses(name):
    two.set_adapter(name)
    manual = evaluate(two, iterate_batches(manual_test, 32, shuffle=False))["loss"]
    return test_loss(two), manual


print(f"{'adapter':<10} docstrings  manual")
table = {name: losses(name) for name in ("docs", "manual", "both_cat", "both_svd2")}
for name, (a, b) in table.items():
    print(f"{name:<10} {a:10.4f}  {b:6.4f}")
# The half-and-half combination is never worse than the weaker specialist on either test set
# (it lands between the two, or, as it can on the manual set, a little below both).
for i in (0, 1):
    high = max(table["docs"][i], table["manual"][i])
    assert table["both_cat"][i] <= high

# %% [markdown]
# ## 6. Several adapters in one batch
#
# Serving many fine-tunes of one base: `model(input_ids, adapter_names=[...])` runs row i
# through its own adapter (or `"__base__"`). Each layer computes the base output once for the
# whole batch and adds each adapter's update on its own rows, so every row equals running it
# alone — checked here, and in `generate`.

# %%
rows = ["docs", "__base__", "manual", "both_cat"]
batch = probe
with mp.no_grad():
    mixed = two(input_ids=batch, adapter_names=rows).logits.numpy()
    for i, name in enumerate(rows):
        if name == "__base__":
            with two.disable_adapter():
                alone = two(input_ids=batch[i : i + 1]).logits.numpy()
        else:
            two.set_adapter(name)
            alone = two(input_ids=batch[i : i + 1]).logits.numpy()
        assert max_diff(mixed[i], alone[0]) < 1e-5
    generated = two.generate(batch[:, :8], max_new_tokens=6, adapter_names=rows)
print("one batch, four adapters:", generated.shape)
print(f"lesson 11 ran in {time.perf_counter() - LESSON_START:.1f} s")
