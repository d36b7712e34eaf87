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
# # Lesson 8 — Prompt and prefix tuning
#
# LoRA (lesson 6) changes weights and bottleneck adapters (lesson 7) add modules. The
# prompt-side methods change neither: they learn **inputs**. T_v "virtual tokens" that no
# tokenizer produces are put in front of the text, and only they train:
#
#     prompt tuning (Lester et al., 2021)   P (T_v, C) prepended to the token embeddings
#     P-tuning (Liu et al., 2021)           the same, with P the output of a small MLP
#     prefix tuning (Li & Liang, 2021)      every layer gets T_v extra keys and values
#
# This lesson checks each against the base model fed those inputs by hand (with the shapes and
# the positions), counts their parameters, trains a prefix with and without the MLP
# "reparameterisation" that Li & Liang recommend, shows that saving folds the MLP away, and
# measures what the virtual tokens cost at inference: context and time.

# %%
import os
import shutil
import statistics
import tempfile
import time

import numpy as np

import minipeft as mp
from minipeft.fileio import load_safetensors
from minipeft.models import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from minipeft.optim import AdamW
from minipeft.peft import (
    PeftModel,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    get_peft_model,
)

mp.manual_seed(0)
LESSON_START = time.perf_counter()
work = tempfile.mkdtemp(prefix="minipeft-lesson08-")
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
LM = {"task_type": "CAUSAL_LM"}  # a PeftModelForCausalLM, with generate
tiny = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, **NO_DROPOUT)
T_v = 4  # virtual tokens
ids = mp.randint(0, tiny.vocab_size, (2, 6))  # (B, T) = (2, 6)
B, T = ids.shape


def max_diff(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


# %% [markdown]
# ## 1. Virtual tokens in front of the embeddings: prompt tuning
#
# The base model's first step looks up the token embeddings, E[ids] (B, T, C). Prompt tuning
# learns a matrix P (T_v, C) — one row per virtual token, broadcast over the batch — and the
# model reads the concatenation
#
#     inputs_embeds = [P ; E[ids]]   (B, T_v + T, C)   →   logits (B, T_v + T, V)
#
# so a PeftModel forward is the base model called with `inputs_embeds`. The virtual tokens
# take positions 0 .. T_v − 1 and the text T_v .. T_v + T − 1 (the default positions of a
# T_v + T long input). Only the last T rows of the logits belong to the text; the labels get
# T_v entries of −100 in front so the loss ignores the virtual rows. P starts random here
# (N(0, 1), PEFT's RANDOM init); SAMPLE_VOCAB instead copies the rows of E of random tokens
# (and TEXT those of the tokens of a given text).

# %%
prompt_pm = get_peft_model(GPT2LMHeadModel(tiny, seed=0).eval(),
                           PromptTuningConfig(num_virtual_tokens=T_v, **LM))  # fmt: skip
base = prompt_pm.get_base_model()
with mp.no_grad():
    P = prompt_pm.base_model.prompt(B)  # (B, T_v, C): the same P for every row
    E = base.get_input_embeddings()(ids)  # (B, T, C)
    embeds = mp.cat([P, E], dim=1)  # (B, T_v + T, C)
    peft_logits = prompt_pm(input_ids=ids).logits.numpy()
    by_hand = base(inputs_embeds=embeds).logits.numpy()
    numbered = base(inputs_embeds=embeds, position_ids=mp.arange(T_v + T)[None]).logits.numpy()
    peft_loss = float(prompt_pm(input_ids=ids, labels=ids).loss.item())
    padded = mp.cat([mp.full((B, T_v), -100, dtype=mp.int64), ids], dim=1)  # (B, T_v + T)
    hand_loss = float(base(inputs_embeds=embeds, labels=padded).loss.item())
print(f"P {P.shape}, E[ids] {E.shape}, [P; E[ids]] {embeds.shape} → logits {peft_logits.shape}")
print("PeftModel == base(inputs_embeds=[P; E[ids]]), bit for bit:",
      np.array_equal(peft_logits, by_hand))  # fmt: skip
assert P.shape == (B, T_v, tiny.n_embd) and peft_logits.shape == (B, T_v + T, tiny.vocab_size)
assert np.array_equal(P.numpy()[0], P.numpy()[1])
assert np.array_equal(peft_logits, by_hand) and np.array_equal(peft_logits, numbered)
print(f"loss with labels: PeftModel {peft_loss:.6f}, base with −100 × T_v in front {hand_loss:.6f}")
assert peft_loss == hand_loss
vocab_config = PromptTuningConfig(num_virtual_tokens=T_v, prompt_tuning_init="SAMPLE_VOCAB")
vocab_init = get_peft_model(GPT2LMHeadModel(tiny, seed=0), vocab_config)
sampled = vocab_init.base_model.prompt(1).numpy()[0]  # (T_v, C)
vocab_rows = base.get_input_embeddings().weight.numpy()  # (V, C)
print(f"RANDOM init: std of P = {P.numpy().std():.2f}; SAMPLE_VOCAB: every row of P is a row "
      f"of E:", all((vocab_rows == row).all(axis=1).any() for row in sampled))  # fmt: skip
assert 0.8 < P.numpy().std() < 1.2
assert all((vocab_rows == row).all(axis=1).any() for row in sampled)

# %% [markdown]
# ## 2. Keys and values in every layer: prefix tuning
#
# Prefix tuning reaches deeper. Each layer l gets its own learned keys K_l and values V_l for
# the T_v virtual positions, and attention in that layer sees them before the text's own:
#
#     keys of layer l = [K_l ; k(text)],  K_l (B, H_kv, T_v, D)      (values alike)
#
# That is exactly a KV cache of T_v tokens (lesson 4), so a prefix is handed to the model as
# `past_key_values`: a list of L (key, value) pairs. The logits are the text's only, (B, T, V),
# and — because a cache of length T_v is "in front" — the text is numbered from T_v, as PEFT
# on transformers does. Numbered from 0 instead, GPT-2's learned positions give other logits.

# %%
prefix_pm = get_peft_model(GPT2LMHeadModel(tiny, seed=0).eval(),
                           PrefixTuningConfig(num_virtual_tokens=T_v, **LM))  # fmt: skip
base = prefix_pm.get_base_model()
with mp.no_grad():
    prefix = prefix_pm.base_model.prompt(B)  # L pairs (K_l, V_l)
    peft_logits = prefix_pm(input_ids=ids).logits.numpy()
    by_hand = base(input_ids=ids, past_key_values=prefix).logits.numpy()
    from_t_v = base(input_ids=ids, past_key_values=prefix,
                    position_ids=mp.arange(T_v, T_v + T)[None]).logits.numpy()  # fmt: skip
    from_0 = base(input_ids=ids, past_key_values=prefix,
                  position_ids=mp.arange(T)[None]).logits.numpy()  # fmt: skip
K0, V0 = prefix[0]
D = tiny.n_embd // tiny.n_head
print(f"GPT-2: {len(prefix)} layers × (key {K0.shape}, value {V0.shape}) → logits "
      f"{peft_logits.shape}")  # fmt: skip
print("PeftModel == base(past_key_values=prefix), bit for bit:",
      np.array_equal(peft_logits, by_hand))  # fmt: skip
print(f"text at positions {T_v}..{T_v + T - 1}: equal; at 0..{T - 1}: max |Δ logits| = "
      f"{max_diff(from_0, peft_logits):.2f}")  # fmt: skip
assert len(prefix) == tiny.n_layer
assert all(k.shape == v.shape == (B, tiny.n_head, T_v, D) for k, v in prefix)
assert peft_logits.shape == (B, T, tiny.vocab_size)
assert np.array_equal(peft_logits, by_hand) and np.array_equal(peft_logits, from_t_v)
assert max_diff(from_0, peft_logits) > 1e-2

# %% [markdown]
# With grouped-query attention (LLaMA with `num_key_value_heads` H_kv < H), the H query heads
# share H_kv key/value heads, and a cache holds H_kv heads of D = C / H. A prefix is a cache,
# so it has H_kv heads too: its width per layer is d_kv = H_kv·D, not C (PEFT #1901). The
# config records that when it is sized from the model, and a prefix with H heads is refused.

# %%
llama_cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2,
                        max_position_embeddings=32)  # fmt: skip
H, H_kv = llama_cfg.num_attention_heads, llama_cfg.num_key_value_heads
D = llama_cfg.hidden_size // H
gqa_pm = get_peft_model(LlamaForCausalLM(llama_cfg, seed=0).eval(),
                        PrefixTuningConfig(num_virtual_tokens=T_v, **LM))  # fmt: skip
gqa_config = gqa_pm.peft_config["default"]
llama = gqa_pm.get_base_model()
with mp.no_grad():
    prefix = gqa_pm.base_model.prompt(B)
    peft_logits = gqa_pm(input_ids=ids).logits.numpy()
    by_hand = llama(input_ids=ids, past_key_values=prefix).logits.numpy()
    try:
        wrong = [(mp.randn(B, H, T_v, D), mp.randn(B, H, T_v, D)) for _ in prefix]
        llama(input_ids=ids, past_key_values=wrong)
        refused = None
    except ValueError as err:
        refused = str(err)
print(f"LLaMA H = {H}, H_kv = {H_kv}, D = {D}: config num_attention_heads = "
      f"{gqa_config.num_attention_heads}, token_dim = {gqa_config.token_dim}; "
      f"key {prefix[0][0].shape}")  # fmt: skip
print("PeftModel == base(past_key_values=prefix), bit for bit:",
      np.array_equal(peft_logits, by_hand))  # fmt: skip
print("a prefix with H heads:", refused)
assert gqa_config.num_attention_heads == H_kv and gqa_config.token_dim == H_kv * D
assert all(k.shape == v.shape == (B, H_kv, T_v, D) for k, v in prefix)
assert np.array_equal(peft_logits, by_hand)
assert refused is not None and f"({B}, {H_kv}, {T_v}, {D})" in refused

# %% [markdown]
# ## 3. How many parameters?
#
# With C the hidden size, L layers, d_kv = H_kv·D the width of one layer's keys (and of its
# values; = C without grouped-query attention) and h the hidden size of an MLP:
#
# | method | trainable parameters |
# |---|---|
# | prompt tuning | T_v·C |
# | prefix tuning | T_v·2·L·H_kv·D |
# | prefix tuning, `prefix_projection` | T_v·d_kv + d_kv·h + h + h·2·L·d_kv + 2·L·d_kv |
# | P-tuning (MLP) | T_v·C + (C·h + h) + (h·h + h) + (h·C + C) |
#
# With projection, an Embedding (T_v, d_kv) feeds Linear(d_kv, h) → tanh → Linear(h, 2·L·d_kv);
# P-tuning's encoder is Embedding (T_v, C) → Linear(C, h) → ReLU → Linear(h, h) → ReLU →
# Linear(h, C). We count on a GPT-2 (H_kv = H) and a GQA LLaMA, both C = 64, L = 2, T_v = 8,
# h = 32, and check each formula against `get_nb_trainable_parameters()`.

# %%
T_c, h = 8, 32  # virtual tokens and MLP width for the counts
count_models = {
    "GPT-2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=64, n_embd=64,
                                                n_layer=2, n_head=4, **NO_DROPOUT), seed=0),
    "LLaMA": lambda: LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64,
                                                  intermediate_size=96, num_hidden_layers=2,
                                                  num_attention_heads=8, num_key_value_heads=2,
                                                  max_position_embeddings=64), seed=0),
}  # fmt: skip
methods = {  # a config is sized from its model when used, so each model gets fresh ones
    "prompt": lambda: PromptTuningConfig(num_virtual_tokens=T_c),
    "prefix": lambda: PrefixTuningConfig(num_virtual_tokens=T_c),
    "prefix + projection": lambda: PrefixTuningConfig(num_virtual_tokens=T_c,
                                                      prefix_projection=True,
                                                      encoder_hidden_size=h),
    "P-tuning": lambda: PromptEncoderConfig(num_virtual_tokens=T_c, encoder_hidden_size=h),
}  # fmt: skip
print(f"{'model':>6s} {'method':>20s} {'C':>3s} {'H_kv·D':>6s} {'formula':>8s} {'trainable':>10s}"
      f" {'% of all':>9s}")  # fmt: skip
counts = {}
for model_name, make in count_models.items():
    cfg = make().config
    C = getattr(cfg, "n_embd", None) or cfg.hidden_size
    L = getattr(cfg, "n_layer", None) or cfg.num_hidden_layers
    heads = getattr(cfg, "n_head", None) or cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", heads)
    d_kv = kv_heads * (C // heads)
    formulas = {
        "prompt": T_c * C,
        "prefix": T_c * 2 * L * kv_heads * (C // heads),
        "prefix + projection": T_c * d_kv + d_kv * h + h + h * 2 * L * d_kv + 2 * L * d_kv,
        "P-tuning": T_c * C + (C * h + h) + (h * h + h) + (h * C + C),
    }
    for method, config in methods.items():
        trainable, total = get_peft_model(make(), config()).get_nb_trainable_parameters()
        print(f"{model_name:>6s} {method:>20s} {C:3d} {d_kv:6d} {formulas[method]:8,d} "
              f"{trainable:10,d} {100 * trainable / total:8.2f}%")  # fmt: skip
        assert trainable == formulas[method]
        counts[model_name, method] = trainable

# %% [markdown]
# Prompt tuning is the smallest here: one row of C per virtual token. Prefix tuning has a key
# and a value row per layer, 2·L·H_kv/H times as many numbers: 4× on the GPT-2, but 1× on this
# LLaMA, whose keys and values are a quarter as wide as its hidden state. The projection and
# P-tuning's MLP are several times bigger than the prompt they produce — but, as section 5
# shows, they exist only while training.

# %%
for model_name in count_models:
    ratio = counts[model_name, "prefix"] / counts[model_name, "prompt"]
    print(
        f"{model_name}: prefix / prompt = {ratio:.0f}; prefix + projection / prefix = "
        f"{counts[model_name, 'prefix + projection'] / counts[model_name, 'prefix']:.1f}; "
        f"P-tuning / prompt = {counts[model_name, 'P-tuning'] / counts[model_name, 'prompt']:.1f}"
    )
    assert ratio == {"GPT-2": 4, "LLaMA": 1}[model_name]
    assert counts[model_name, "prefix + projection"] > 5 * counts[model_name, "prefix"]
    assert counts[model_name, "P-tuning"] > 5 * counts[model_name, "prompt"]

# %% [markdown]
# ## 4. Why reparameterise? Training a prefix with and without the MLP
#
# Li & Liang found that optimising the prefix rows directly was unstable and slow, and trained
# them *through* an MLP instead (`prefix_projection=True`). We try both on a small task where a
# prefix has something to do. First we pretrain a tiny GPT-2 on counting sequences that start
# with an **instruction token** saying the step: "step 3: 5, 8, 11, 14, …" (mod 24). Then the
# task: count by 3 *without* the instruction token. The base model has never seen a sequence
# without one, so its loss is high; a prefix can learn to play the instruction's part.

# %%
N_NUM, STEPS_BY_TASK = 24, (1, 2, 3, 5)  # numbers 0..23; instruction tokens 24..27
counting_cfg = GPT2Config(vocab_size=N_NUM + len(STEPS_BY_TASK), n_positions=32, n_embd=32,
                          n_layer=2, n_head=4, **NO_DROPOUT)  # fmt: skip


def counting(rng, n, length, task=None):
    """(n, 1 + length): an instruction token, then `length` numbers counting by its step."""
    tasks = rng.integers(0, len(STEPS_BY_TASK), n) if task is None else np.full(n, task)
    steps = np.array(STEPS_BY_TASK)[tasks][:, None]
    numbers = (rng.integers(0, N_NUM, n)[:, None] + steps * np.arange(length)[None]) % N_NUM
    return np.concatenate([(N_NUM + tasks)[:, None], numbers], axis=1)


rng = np.random.default_rng(0)
counter = GPT2LMHeadModel(counting_cfg, seed=0)
opt = AdamW(counter.parameters(), lr=1e-2, weight_decay=0.0)
t0 = time.perf_counter()
for _ in range(150):
    batch = counting(rng, 32, 12)
    out = counter(input_ids=batch, labels=batch)
    out.loss.backward()
    opt.step()
    opt.zero_grad()
counter.eval()
counter_state = {k: v.numpy().copy() for k, v in counter.state_dict().items()}

task_rows = counting(np.random.default_rng(1), 16, 12, task=STEPS_BY_TASK.index(3))
task_data = task_rows[:, 1:]  # count by 3, instruction token removed: (16, 12)
with mp.no_grad():
    with_token = float(counter(input_ids=task_rows, labels=task_rows).loss.item())
    without = float(counter(input_ids=task_data, labels=task_data).loss.item())
print(f"pretrained in {time.perf_counter() - t0:.1f} s; counting by 3: loss {with_token:.2f} "
      f"with the instruction token, {without:.2f} without it")  # fmt: skip
assert with_token < 1.0 < without


# %% [markdown]
# Now the two prefixes, T_v = 4, trained on the 16 task sequences with the same AdamW and the
# same learning rate (1e-2) for 40 steps. The plain prefix trains its T_v·2·L·C = 512 numbers
# directly; with projection (h = C, PEFT's default) 5,408 numbers train, and the prefix is the
# MLP's output. The two also *start* differently: the plain rows are N(0, 1), the MLP's output
# is smaller. To separate the start from the parameterisation, a third run trains a plain
# prefix that starts exactly at the projected one's initial output, and a fourth that one
# again with a 10× larger learning rate.


# %%
def counting_model():
    model = GPT2LMHeadModel(counting_cfg, seed=0)
    model.load_state_dict(counter_state)
    return model.eval()


def prefix_model(projection):
    mp.manual_seed(0)
    config = PrefixTuningConfig(num_virtual_tokens=T_v, prefix_projection=projection,
                                **LM)  # fmt: skip
    return get_peft_model(counting_model(), config)


def train(pm, steps=40, lr=1e-2):
    """AdamW on the task; the loss before each step and after the last, steps + 1 values."""
    opt = AdamW([p for p in pm.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        out = pm(input_ids=task_data, labels=task_data)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(out.loss.item()))
    with mp.no_grad():
        losses.append(float(pm(input_ids=task_data, labels=task_data).loss.item()))
    return losses


def same_start_as_projected(pm):
    rows = prefix_model(True).prompt_encoder["default"].embedding_to_save()  # its MLP output
    pm.prompt_encoder["default"].embedding.weight.data[...] = rows
    return pm


t0 = time.perf_counter()
plain, projected = prefix_model(False), prefix_model(True)
curves = {
    "prefix": train(plain),
    "prefix + projection": train(projected),
    "prefix, same start": train(same_start_as_projected(prefix_model(False))),
    "same start, lr 1e-1": train(same_start_as_projected(prefix_model(False)), lr=1e-1),
}
print(f"trained four prefixes in {time.perf_counter() - t0:.1f} s; loss after step:")
print(f"{'step':>20s}" + "".join(f"{s:6d}" for s in range(0, 41, 5)) + "   first < 1.0, < 0.5")


def first_below(losses, level):
    return next((i for i, loss in enumerate(losses) if loss < level), None)


for name, losses in curves.items():
    print(f"{name:>20s}" + "".join(f"{loss:6.2f}" for loss in losses[::5])
          + f"   {first_below(losses, 1.0):8d} {first_below(losses, 0.5):5d}")  # fmt: skip
print(f"trainable: prefix {plain.get_nb_trainable_parameters()[0]:,}, "
      f"with projection {projected.get_nb_trainable_parameters()[0]:,}")  # fmt: skip
L, C = counting_cfg.n_layer, counting_cfg.n_embd
assert plain.get_nb_trainable_parameters()[0] == T_v * 2 * L * C
assert projected.peft_config["default"].encoder_hidden_size == C  # h = C
assert all(losses[-1] < losses[0] / 2 for losses in curves.values())  # all of them learn
assert curves["prefix + projection"][0] < curves["prefix"][0]  # the MLP starts smaller
# the same start up to float32 rounding (the MLP runs batched in the forward, unbatched here)
assert abs(curves["prefix, same start"][0] - curves["prefix + projection"][0]) < 1e-5
speed = {name: first_below(losses, 0.5) for name, losses in curves.items()}
assert speed["prefix + projection"] < speed["prefix, same start"]
assert curves["prefix + projection"][-1] < curves["prefix"][-1]
assert speed["same start, lr 1e-1"] <= speed["prefix + projection"] + 2

# %% [markdown]
# On this setup the projected prefix is clearly faster: below a loss of 0.5 after 2 steps,
# where the plain prefix needs 15, and it ends lower (0.06 against 0.15). Its better start
# (1.42 against 1.96 at step 0) is not the reason: started from the very same prefix, the
# plain one still needs 15 steps. What the MLP changes is the *step*. AdamW moves each
# parameter by about lr per step, whatever its gradient's size; a plain prefix entry is one
# parameter, while an MLP output sums the moves of many weights (h = 32 hidden units) and so
# travels further per step, in directions shared by all rows. Much of the gain is that
# effectively larger step: the plain prefix at 10× the learning rate does as well as the
# projected one at 1e-2.
# (How stable each is at larger rates and on real models is another matter, and the reason
# Li & Liang gave; this tiny task does not test it.)
#
# Both learned the task, to different degrees: given a bare number, a trained prefix makes the
# model count by 3 where the base model cannot. The projected prefix does so from every start
# 0..23, including those that none of the 16 training rows began with; the plain one, less
# far along after 40 steps, misses some.

# %%
starts = np.arange(N_NUM)[:, None]  # every number as a one-token text, (24, 1)
expected = (starts + 3 * np.arange(6)[None]) % N_NUM
correct = {}
for name, pm in (("base", counting_model()), ("prefix", plain), ("prefix + projection",
                                                                  projected)):  # fmt: skip
    out = pm.generate(starts, max_new_tokens=5).numpy()
    correct[name] = int((out == expected).all(axis=1).sum())
    print(f"{name:>20s}: counts by 3 from {correct[name]:2d} of {N_NUM} starts, e.g. "
          f"{' '.join(map(str, out[11]))}")  # fmt: skip
unseen = sorted(set(range(N_NUM)) - set(task_data[:, 0].tolist()))
print(f"{len(unseen)} starts no training row began with: {unseen}")
assert unseen
assert correct["prefix + projection"] == N_NUM
assert correct["base"] < correct["prefix"] < N_NUM

# %% [markdown]
# ## 5. Saving folds the MLP away
#
# The MLP only shapes training. What the model uses is its output, the prefix, so PEFT saves
# one tensor, `prompt_embeddings` (T_v, 2·L·d_kv): the encoder's output for each virtual
# token. A reloaded adapter is a plain Embedding holding those rows — no MLP, no `transform`
# — and gives the same logits, to float32 rounding (the saved rows are the MLP applied to the
# (T_v, d_kv) embedding at once; in a forward it runs on a (B, T_v, d_kv) batch, which rounds
# a few units of the last place differently). Here d_kv = C: GPT-2 has no grouped heads.

# %%
adapter_dir = os.path.join(work, "prefix-projection")
projected.save_pretrained(adapter_dir)
saved = load_safetensors(os.path.join(adapter_dir, "adapter_model.safetensors"))
encoder = projected.prompt_encoder["default"]
with mp.no_grad():
    mlp_output = encoder.transform(encoder.embedding.weight).numpy()  # (T_v, 2·L·d_kv)
print({k: v.shape for k, v in saved.items()}, "— max |saved − MLP(embedding)| =",
      f"{max_diff(saved['prompt_embeddings'], mlp_output):.1e}")  # fmt: skip
assert list(saved) == ["prompt_embeddings"]
assert saved["prompt_embeddings"].shape == (T_v, 2 * L * C)
assert max_diff(saved["prompt_embeddings"], mlp_output) < 1e-6

reloaded = PeftModel.from_pretrained(counting_model(), adapter_dir)
reloaded_encoder = reloaded.prompt_encoder["default"]
modules = [name for name, _ in reloaded_encoder.named_modules() if name]
with mp.no_grad():
    trained_logits = projected(input_ids=task_data).logits.numpy()
    gap = max_diff(reloaded(input_ids=task_data).logits.numpy(), trained_logits)
scale = float(np.abs(trained_logits).max())
n_saved = sum(p.numel() for p in reloaded_encoder.parameters())
print(f"reloaded encoder modules {modules}, {n_saved:,} numbers (training had "
      f"{projected.get_nb_trainable_parameters()[0]:,}); max |Δ logits| = {gap:.1e} "
      f"(logits up to {scale:.1f})")  # fmt: skip
assert modules == ["embedding"] and not hasattr(reloaded_encoder, "transform")
assert n_saved == saved["prompt_embeddings"].size and gap < 1e-5 * scale

# %% [markdown]
# ## 6. The price at inference: context and time
#
# Nothing here can be merged into a weight (the model must *see* the virtual tokens), and
# they are not free (`merge_adapter()` refuses, as it does for bottleneck adapters):
#
# - **Context.** A prefix is a cache of T_v positions and the text starts at T_v, so of
#   GPT-2's n_positions learned positions T_v are gone: T_v + T > n_positions is refused.
#   Virtual tokens of prompt tuning take positions 0 .. T_v − 1 and use up context alike.
# - **Attention.** Either way the cache holds T_v more keys and values per layer, so every
#   text token and every generated token attends to T_v more keys.
# - **Prompt tuning** also runs the T_v virtual tokens through every layer at each full
#   forward (training, scoring, generation's first step): each is T_v tokens longer. Prefix
#   tuning hands the layers finished keys and values instead.

# %%
try:
    projected.merge_adapter()
    merged_prefix = True
except TypeError as err:
    merged_prefix = False
    print("prefix merge_adapter():", err)
assert not merged_prefix
n_pos = counting_cfg.n_positions
with mp.no_grad():
    base_fits = counting_model()(input_ids=np.zeros((1, n_pos), dtype=np.int64)).logits.shape
    fits = projected(input_ids=np.zeros((1, n_pos - T_v), dtype=np.int64)).logits.shape
    try:
        projected(input_ids=np.zeros((1, n_pos - T_v + 1), dtype=np.int64))
        too_long = None
    except ValueError as err:
        too_long = str(err)
print(f"n_positions = {n_pos}: the base takes T = {base_fits[1]}, with a {T_v}-token prefix "
      f"T = {fits[1]}; T = {n_pos - T_v + 1}:\n  {too_long}")  # fmt: skip
assert base_fits[1] == n_pos and fits[1] == n_pos - T_v
assert too_long is not None and f"n_positions = {n_pos}" in too_long

with mp.no_grad():
    prefix = projected.base_model.prompt(1)
    prefix_cache = counting_model()(input_ids=task_data[:1], past_key_values=prefix,
                                    use_cache=True).past_key_values  # fmt: skip
    prompt_cache = prompt_pm.get_base_model()(inputs_embeds=embeds,
                                              use_cache=True).past_key_values  # fmt: skip
    plain_cache = counting_model()(input_ids=task_data[:1], use_cache=True).past_key_values
T_text = task_data.shape[1]
print(f"cache keys after a {T_text}-token text: base {plain_cache[0][0].shape}, with the "
      f"{T_v}-token prefix {prefix_cache[0][0].shape}")  # fmt: skip
print(f"prompt tuning, {T_v} virtual + {T} tokens: {prompt_cache[0][0].shape}")
assert plain_cache[0][0].shape[2] == T_text and prefix_cache[0][0].shape[2] == T_v + T_text
assert prompt_cache[0][0].shape[2] == T_v + T

# %% [markdown]
# We time a GPT-2 with C = 128 and 4 layers: the base model, prompt tuning and prefix tuning,
# both with T_v = 32 virtual tokens, four times the text's length. **generate**: greedy,
# batch 1, an 8-token text and 24 new tokens, in ms per new token (the first step included);
# **forward**: one (4, 32) block, as when scoring or training. The variants take turns so that
# machine noise hits all alike; median of 7. Timings depend on the machine and nothing is
# asserted about them; `benchmarks/latency.py` measures the weight- and module-side methods
# (LoRA, bottleneck adapters, IA3) the same way on a larger model.

# %%
timing_cfg = GPT2Config(vocab_size=512, n_positions=128, n_embd=128, n_layer=4, n_head=4,
                        **NO_DROPOUT)  # fmt: skip
T_long, new_tokens = 32, 24
text, block = mp.randint(0, 512, (1, 8)), mp.randint(0, 512, (4, 32))
timed = {"base": GPT2LMHeadModel(timing_cfg, seed=0).eval()}
for name, config in (("prompt", PromptTuningConfig), ("prefix", PrefixTuningConfig)):
    timed[name] = get_peft_model(GPT2LMHeadModel(timing_cfg, seed=0).eval(),
                                 config(num_virtual_tokens=T_long, **LM))  # fmt: skip


def run_generate(model):
    model.generate(text, max_new_tokens=new_tokens)


def run_forward(model):
    with mp.no_grad():
        model(input_ids=block)


times = {(name, kind): [] for name in timed for kind in ("generate", "forward")}
for model in timed.values():  # warm-up
    run_generate(model)
    run_forward(model)
for _ in range(7):
    for name, model in timed.items():
        for kind, run in (("generate", run_generate), ("forward", run_forward)):
            t0 = time.perf_counter()
            run(model)
            times[name, kind].append(time.perf_counter() - t0)
median = {key: statistics.median(ts) for key, ts in times.items()}
print(f"{'':>7s} {'generate ms/token':>18s} {'ratio':>6s} {'forward ms':>11s} {'ratio':>6s}")
for name in timed:
    g, f = median[name, "generate"], median[name, "forward"]
    print(f"{name:>7s} {g / new_tokens * 1e3:18.2f} {g / median['base', 'generate']:6.2f} "
          f"{f * 1e3:11.2f} {f / median['base', 'forward']:6.2f}")  # fmt: skip

# %% [markdown]
# Read the ratios as: in generation each step attends over T_v more keys, and prompt
# tuning's first step runs 8 + T_v tokens instead of 8; on a model this small the fixed work
# of a one-token step dominates, so (on the machine this was written on) both cost little per
# generated token. A full forward shows prompt tuning's longer input: 32 + T_v = 64 tokens
# through every layer instead of 32, while the prefix only adds keys to attend to. The cost
# grows with T_v and with the share of attention in the model's work. In exchange a task is
# one small tensor of inputs (section 5's `prompt_embeddings`: 512 numbers), and the base
# model's weights are never touched — after 40 steps of training, they are the pretrained
# ones bit for bit.

# %%
after = projected.get_base_model().state_dict()
print("base weights after prefix training == pretrained, bit for bit:",
      all(np.array_equal(after[k].numpy(), v) for k, v in counter_state.items()))  # fmt: skip
assert all(np.array_equal(after[k].numpy(), v) for k, v in counter_state.items())
assert n_saved == 512
shutil.rmtree(work)
print(f"lesson 8 ran in {time.perf_counter() - LESSON_START:.1f} s")
