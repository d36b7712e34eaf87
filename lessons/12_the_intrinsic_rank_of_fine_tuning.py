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
# # Lesson 12 — The intrinsic rank of fine-tuning
#
# LoRA (lesson 6) replaces a full update of W (d_out, d_in) by a rank-r product B·A. That only
# works if the update fine-tuning *wants* to make is close to low-rank. Hu et al. (2021) build
# LoRA on that observation — pretrained models have a low "intrinsic dimension" for a new task
# (Aghajanyan et al., 2020) — and check it in their section 7. This lesson measures it:
#
# 1. the singular values of a matrix, and how much of its energy the top r directions hold
#    (Eckart–Young: the best rank-r approximation leaves exactly the tail);
# 2. the update ΔW = W_ft − W_base of a *full* fine-tune, against a random matrix;
# 3. a LoRA update, whose rank is at most r by construction;
# 4. LoRA's own subspace similarity φ between two adapters trained with different r and seeds.
#
# `minipeft rank-analysis` runs the same measurements on the default base (a table, JSON,
# plots). Each claim below is checked by an assertion on a small GPT-2 trained here.

# %%
import os
import tempfile
import time

import numpy as np

import minipeft as mp
from minipeft.data import default_corpus, iterate_batches, lm_blocks, tokenize_documents
from minipeft.jobs.rank_math import (
    energy_fraction,
    low_rank_approximation,
    random_energy_fraction,
    random_subspace_similarity,
    singular_values,
    subspace_similarity,
    subspace_similarity_grid,
)
from minipeft.models import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel
from minipeft.peft import LoraConfig, LoraLayer, get_peft_model
from minipeft.tasks import get_task
from minipeft.tokenizer import train_bpe_tokenizer
from minipeft.train import TrainConfig, Trainer, evaluate

mp.manual_seed(0)
LESSON_START = time.perf_counter()
work = tempfile.mkdtemp(prefix="minipeft-lesson12-")

# %% [markdown]
# ## 1. Singular values and energy
#
# Any matrix M (m, n) is U·diag(σ)·Vᵀ with σ_1 ≥ σ_2 ≥ ... ≥ 0 and orthonormal columns in U
# and V. Its squared Frobenius norm — its *energy* — is Σ σ_i², and the top r directions hold
#
#     E(r) = Σ_{i ≤ r} σ_i² / Σ_i σ_i².
#
# **Eckart–Young**: among all matrices of rank ≤ r, the SVD truncated to r terms,
# M_r = U[:, :r]·diag(σ[:r])·Vᵀ[:r], is the closest to M, and what it misses is the tail:
# ‖M − M_r‖_F² = Σ_{i > r} σ_i² (and ‖M − M_r‖_2 = σ_{r+1}). So E(r) = 1 − ‖M − M_r‖_F²/‖M‖_F²:
# it says how well the best rank-r matrix can stand in for M.

# %%
rng = np.random.default_rng(0)
m_demo = rng.standard_normal((48, 32))
sigma = singular_values(m_demo)
for r in (1, 4, 16):
    m_r = low_rank_approximation(m_demo, r)
    assert np.linalg.matrix_rank(m_r) == r
    tail = float((sigma[r:] ** 2).sum())
    assert np.isclose(np.linalg.norm(m_demo - m_r) ** 2, tail)  # Frobenius: the tail energy
    assert np.isclose(np.linalg.norm(m_demo - m_r, 2), sigma[r])  # spectral: σ_{r+1}
    assert np.isclose(energy_fraction(m_demo, [r])[r], 1 - tail / (sigma**2).sum())
    # Any other rank-r matrix does worse, e.g. M projected on r random directions.
    q, _ = np.linalg.qr(rng.standard_normal((48, r)))
    assert np.linalg.norm(m_demo - q @ (q.T @ m_demo)) > np.linalg.norm(m_demo - m_r)
gauss_energy = energy_fraction(m_demo, [1, 4, 8, 16])
print("Gaussian 48×32, E(r):", {r: round(e, 3) for r, e in gauss_energy.items()})

# %% [markdown]
# A Gaussian matrix has no preferred directions: its energy spreads over all 32 of them. The
# top r hold more than the even share r/32 — the singular values of a random matrix spread out
# (the Marchenko–Pastur law says how far), the more so the squarer the matrix — but nowhere
# near all of it. A matrix of rank k holds everything in its top k directions.

# %%
low = rng.standard_normal((48, 3)) @ rng.standard_normal((3, 32))  # rank 3
e_low = energy_fraction(low, [1, 2, 3, 4])
assert e_low[2] < 1 - 1e-9 and np.isclose(e_low[3], 1.0) and np.isclose(e_low[4], 1.0)
assert 8 / 32 < gauss_energy[8] < 0.6  # no structure: well short of 1 at r = 8 of 32
print("rank-3 matrix, E(r):", {r: round(e, 3) for r, e in e_low.items()})

# %% [markdown]
# ## 2. A base, and the update of a full fine-tune
#
# Lesson 11's base: a BPE tokenizer (V = 512) and a 2-layer GPT-2 with C = 64, pretrained for
# 60 steps on the Python reference manual. We then fine-tune *every* weight on the docstrings
# task and look at ΔW = W_ft − W_base for each of the four matrices of each block: c_attn
# (3C, C), attn.c_proj (C, C), c_fc (4C, C) and mlp.c_proj (C, 4C).

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
Trainer(base, pretrain, batches(lm_blocks(tokenize_documents(tokenizer, corpus), 64))).train()
base_dir = os.path.join(work, "base")
base.save_pretrained(base_dir)

task = get_task("docstrings")
train_blocks = lm_blocks(tokenize_documents(tokenizer, task.train_texts), 64)
test_blocks = lm_blocks(tokenize_documents(tokenizer, task.test_texts), 64)[:64]


def fresh_base():
    return AutoModelForCausalLM.from_pretrained(base_dir)


def test_loss(model):
    return evaluate(model, iterate_batches(test_blocks, 32, shuffle=False))["loss"]


def block_weights(model):
    """{name: W (d_out, d_in)} for the 2-D weights of the Transformer blocks, in float64."""
    return {n: p.numpy().astype(np.float64) for n, p in model.named_parameters()
            if ".h." in n and p.ndim == 2}  # fmt: skip


w_base = block_weights(base)
full = fresh_base()
FT_STEPS = 80
Trainer(full, TrainConfig(max_steps=FT_STEPS, lr=1e-3, warmup_steps=8, progress=False),
        batches(train_blocks)).train()  # fmt: skip
w_full = block_weights(full)
print(f"full fine-tune: docstrings test loss {test_loss(base):.4f} → {test_loss(full):.4f}")

# %% [markdown]
# For every ΔW, E(r) at a few ranks, beside a Gaussian matrix of the same shape:

# %%
RANKS = (1, 2, 4, 8, 16)
print(f"{'module':<34} {'shape':>7} " + " ".join(f"{'r=' + str(r):>6}" for r in RANKS))
margins = []
for name, w in w_base.items():
    delta = w_full[name] - w
    e_ft = energy_fraction(delta, RANKS)
    e_rand = random_energy_fraction(delta.shape, RANKS, seed=0)
    margins.append(e_ft[8] - e_rand[8])
    shape = f"{delta.shape[0]}×{delta.shape[1]}"
    print(f"{name:<34} {shape:>7} " + " ".join(f"{e_ft[r]:6.3f}" for r in RANKS))
    print(f"{'  Gaussian':<34} {'':>7} " + " ".join(f"{e_rand[r]:6.3f}" for r in RANKS))
print(
    f"top-8 energy: ΔW minus Gaussian, smallest margin {min(margins):.3f}, "
    f"mean {np.mean(margins):.3f}"
)

# %% [markdown]
# Nothing forced the full fine-tune to be low-rank: it could move each weight its own way.
# Yet in every matrix the top 8 of its 64 directions hold far more of ΔW's energy than they
# hold of a random matrix's: the update lives mostly in a small subspace. This is the
# observation LoRA stakes everything on — if the top r directions carry most of ΔW, a rank-r
# B·A can learn almost the same update with a fraction of the parameters.

# %%
assert min(margins) > 0.2, margins

# %% [markdown]
# ## 3. A LoRA update has rank at most r — exactly
#
# LoRA's update is ΔW = (α/r)·B·A with B (d_out, r) and A (r, d_in): a product through r
# dimensions, so rank(ΔW) ≤ r whatever the training does. After merging, W_merged − W_base is
# that product: its singular values beyond the r-th are zero (to rounding).

# %%
R = 4
mp.manual_seed(1)
lora = get_peft_model(fresh_base(), LoraConfig(r=R, lora_alpha=2 * R, target_modules=["c_attn"],
                                               task_type="CAUSAL_LM"))  # fmt: skip


def a_matrices(model):
    """{module: LoRA A (r, d_in)} in float64 (copies)."""
    return {n: m.lora_A["default"].weight.numpy().astype(np.float64).copy()
            for n, m in model.named_modules() if isinstance(m, LoraLayer)}  # fmt: skip


a4_init = a_matrices(lora)  # the random start, for section 4
short = TrainConfig(max_steps=FT_STEPS, lr=1e-2, warmup_steps=8, progress=False, seed=1)
Trainer(lora, short, batches(train_blocks)).train()
print(f"LoRA r={R}: docstrings test loss {test_loss(lora):.4f}")
lora_a = a_matrices(lora)
w_merged = block_weights(lora.merge_and_unload())
for name in w_base:
    delta = w_merged[name] - w_base[name]
    if "c_attn" not in name:
        assert np.abs(delta).max() == 0.0  # not a target: untouched
        continue
    s = singular_values(delta)
    assert s[R] < 1e-5 * s[0], s[: R + 2]  # σ_{r+1} ≈ 0: rank ≤ r
    assert np.isclose(energy_fraction(delta, [R])[R], 1.0)
    print(f"{name}: σ_1..σ_{R + 2} of ΔW = {np.array2string(s[: R + 2], precision=5)}")

# %% [markdown]
# ## 4. Subspace similarity between two LoRA runs (LoRA paper, §7)
#
# Do two LoRA runs find the *same* directions? Hu et al. compare the A matrices of two
# adapters, A_1 (r_1, d) and A_2 (r_2, d). Let U_1 (d, r_1) and U_2 (d, r_2) be their
# right-singular vectors (ordered by singular value) and U^{(i)} the first i of them:
#
#     φ(A_1, A_2, i, j) = ‖U_1^{(i)ᵀ} U_2^{(j)}‖_F² / min(i, j)     ∈ [0, 1].
#
# φ = 1 when the smaller subspace lies inside the larger one, 0 when they are orthogonal. For
# random subspaces of R^d its expected value is max(i, j)/d: an i-dimensional subspace catches
# i/d of the energy of each random unit vector, j of them. We train a second adapter with
# r = 16 and another seed (another random A at the start, another order of the data) and
# compare it with the r = 4 one — and also compare the two adapters' *initial* A matrices,
# which are random: training, not the shapes, must be what makes them agree.

# %%
R2 = 16
mp.manual_seed(2)
lora16 = get_peft_model(fresh_base(), LoraConfig(r=R2, lora_alpha=2 * R2,
                                                 target_modules=["c_attn"],
                                                 task_type="CAUSAL_LM"))  # fmt: skip
a16_init = a_matrices(lora16)
Trainer(lora16, TrainConfig(max_steps=FT_STEPS, lr=1e-2, warmup_steps=8, progress=False,
                            seed=2), batches(train_blocks)).train()  # fmt: skip
a16_trained = a_matrices(lora16)

d = config.n_embd
J = [j for j in (1, 2, 4, 8, 16) if j <= R2]
grids, inits = [], []
for name in lora_a:
    grid = subspace_similarity_grid(lora_a[name], a16_trained[name])  # (r_1, r_2) = (4, 16)
    init = subspace_similarity_grid(a4_init[name], a16_init[name])
    assert grid.shape == (R, R2) and np.all((grid >= 0) & (grid <= 1))
    assert np.isclose(grid[0, 0], subspace_similarity(lora_a[name], a16_trained[name], 1, 1))
    grids.append(grid)
    inits.append(init)
    print(f"\n{name}: φ(A_r=4, A_r=16, i, j), trained (at init; random E φ = max(i, j)/{d})")
    print("i \\ j " + "".join(f"{j:>22}" for j in J))
    for i in range(1, R + 1):
        print(
            f"{i:>6} "
            + "".join(
                f"{grid[i - 1, j - 1]:8.3f} ({init[i - 1, j - 1]:.3f}; "
                f"{random_subspace_similarity(i, j, d):.3f})"
                for j in J
            )
        )
grid, init = np.mean(grids, axis=0), np.mean(inits, axis=0)
print(
    f"\nmean over modules: φ(1, 1) = {grid[0, 0]:.3f} trained, {init[0, 0]:.3f} at init, "
    f"{random_subspace_similarity(1, 1, d):.3f} random"
)

# %% [markdown]
# At the start the two A matrices are independent random draws, and φ is what random
# subspaces give. After training, the top direction of the r = 4 adapter is largely found
# again by the r = 16 one, though the two started apart and saw the data in another order —
# many times what chance gives. That is the LoRA paper's figure 3: the directions that matter
# are few and both runs find them, while the rest of a large r's directions hold mostly
# noise. Hence even r = 1 or 2 often does nearly as well as r = 64 (their table 6).

# %%
top1_random = random_subspace_similarity(1, 1, d)
assert grid[0, 0] > 10 * top1_random, grid[0, 0]  # top-1 directions: ≫ chance (1/d)
assert grid[0, 0] > init[0, 0] + 0.2  # and training, not the shapes, made them agree
assert init[0, 0] < 5 * top1_random  # the random starts: near chance
for i in range(1, R + 1):  # the top-i subspaces of both, for every i: above chance
    assert grid[i - 1, i - 1] > 2 * random_subspace_similarity(i, i, d), (i, grid[i - 1, i - 1])
print(f"lesson 12 ran in {time.perf_counter() - LESSON_START:.1f} s")
