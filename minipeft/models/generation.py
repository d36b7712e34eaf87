"""Autoregressive decoding: ``model.generate(...)``, greedy or sampled, with a KV cache.

Each step feeds only the newest token and the cache of keys/values of everything before it,
so a step costs O(T) attention instead of re-running the whole sequence (``use_cache=False``
re-runs it; both give the same tokens, which the tests check).

Sampling follows transformers' logits processors, in its order::

    logits / temperature  →  top-k: keep logits ≥ the k-th largest
                          →  top-p: keep the smallest set of most likely tokens whose
                             probabilities sum to ≥ p (at least one token)
    →  softmax  →  one draw per row (inverse CDF of a uniform sample)

Token choice is a discrete, no-gradient step, so it works on raw arrays (``xp_of``), on either
device. Shapes: B batch, T prompt length, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..autograd import no_grad
from ..backend import get_rng, xp_of
from ..ops.api import cat
from ..tensor import Tensor, int64

__all__ = ["GenerationMixin", "top_k_filter", "top_p_filter"]


def _neg_inf(xp: Any, dtype: Any) -> Any:
    return xp.asarray(-xp.inf, dtype=dtype)


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Set every logit below the k-th largest of its row (B, V) to -inf (ties are kept)."""
    if not isinstance(k, int) or k <= 0:
        raise ValueError(f"top_k: expected a positive int, found {k!r}")
    x = logits.data
    xp = xp_of(x)
    k = min(k, x.shape[-1])
    kth = xp.sort(x, axis=-1)[..., -k][..., None]  # (B, 1): the k-th largest
    return Tensor(xp.where(x < kth, _neg_inf(xp, x.dtype), x))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filtering (Holtzman et al. 2020) exactly as transformers' TopPLogitsWarper.

    Sort ascending, take cumulative softmax probabilities, drop the tokens whose cumulative
    probability is ≤ 1 - p (the unlikely tail), always keep the most likely token.
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p: expected a probability in (0, 1], found {p!r}")
    x = logits.data
    xp = xp_of(x)
    order = xp.argsort(x, axis=-1)  # ascending
    s = xp.take_along_axis(x, order, axis=-1)
    e = xp.exp(s - s[..., -1:])  # softmax of the sorted row, stably
    cum = xp.cumsum(e / e.sum(-1, keepdims=True), axis=-1)
    drop_sorted = cum <= 1.0 - p
    drop_sorted[..., -1] = False  # min_tokens_to_keep = 1
    drop = xp.take_along_axis(drop_sorted, xp.argsort(order, axis=-1), axis=-1)  # unsort
    return Tensor(xp.where(drop, _neg_inf(xp, x.dtype), x))


def _sample(logits: Any, rng: Any) -> Any:
    """One token per row from softmax(logits) (B, V), by the inverse CDF of u ~ U[0, 1)."""
    xp = xp_of(logits)
    e = xp.exp(logits - logits.max(-1, keepdims=True))
    cdf = xp.cumsum(e / e.sum(-1, keepdims=True), axis=-1)
    u = rng.random((logits.shape[0], 1)).astype(cdf.dtype)
    idx = (cdf <= u).sum(-1)  # the first index whose CDF exceeds u
    # If rounding leaves the CDF's end below u, fall back to the last token still allowed.
    allowed = e > 0
    last = allowed.shape[-1] - 1 - xp.argmax(allowed[..., ::-1], axis=-1)
    return xp.minimum(idx, last)


def _check_generation_args(
    max_new_tokens: Any, do_sample: bool, temperature: Any, top_k: Any, top_p: Any
) -> None:
    """Raise a ValueError naming the first invalid argument and its value."""
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an int >= 0, found {max_new_tokens!r}")
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k: expected None or an int >= 1, found {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p: expected None or a probability in (0, 1], found {top_p!r}")
    if do_sample and not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature: expected a number > 0 when sampling, found {temperature!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class GenerationMixin:
    """``generate`` for any causal LM whose ``forward`` takes the minipeft keyword arguments."""

    def generate(
        self,
        input_ids: Any = None,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | list[int] | None = None,
        seed: int | None = None,
        attention_mask: Any = None,
        pad_token_id: int | None = None,
        use_cache: bool = True,
        past_key_values: Any = None,
        inputs_embeds: Tensor | None = None,
        positions_from_mask: bool = True,
        streamer: Callable[[int], Any] | None = None,
    ) -> Tensor:
        """Continue each row of ``input_ids`` (B, T) by up to ``max_new_tokens`` tokens.

        Greedy (argmax) unless ``do_sample``. A row that emits one of ``eos_token_id`` stops and
        is filled with ``pad_token_id`` (default: config.pad_token_id, else the first eos id,
        else 0); decoding ends when every row stopped. ``eos_token_id=None`` never stops early.
        ``attention_mask`` (B, T) marks left padding of the prompt; positions then count real
        tokens only (HF's ``cumsum(mask) - 1``). ``seed`` fixes the sampling generator (else the
        device's global one). Runs under ``no_grad``; returns ids (B, T + new) int64.

        ``past_key_values`` (L pairs (B, H_kv, T_past, D)) is a context every step attends to
        (prefix tuning's learned prefix): it counts in the positions, so the prompt starts at
        position T_past. ``inputs_embeds`` (B, T_e, C) replaces the prompt's embeddings on the
        first step (prompt tuning's virtual tokens + the prompt); ``attention_mask`` then covers
        T_e, and the returned ids are still ``input_ids`` (possibly (B, 0)) + the new tokens.
        ``positions_from_mask=False`` numbers every position 0, 1, 2, ... whatever the padding
        (what PEFT's prompt tuning gets from transformers, which ignores position ids there).

        ``streamer`` (batch of 1 only, like transformers' streamers) is called with each new
        token id (an int) as soon as it is chosen, the stopping eos included.

        Checked before decoding (a ValueError names the argument): max_new_tokens >= 0,
        top_k >= 1, 0 < top_p <= 1, temperature > 0 when sampling, and the whole context plus
        max_new_tokens at most the model's position limit (``n_positions`` /
        ``max_position_embeddings``).
        """
        _check_generation_args(max_new_tokens, do_sample, temperature, top_k, top_p)
        device = self.get_input_embeddings().weight.device
        embeds = None if inputs_embeds is None else inputs_embeds.to(device)
        if input_ids is None:
            if embeds is None:
                raise ValueError("generate: expected input_ids or inputs_embeds, found neither")
            input_ids = Tensor(xp_of(embeds.data).zeros((embeds.shape[0], 0), dtype="int64"))
        ids = input_ids if isinstance(input_ids, Tensor) else Tensor(input_ids, device=device)
        ids = ids.to(device).to(int64)
        if ids.ndim != 2:
            raise ValueError(f"input_ids: expected shape (batch, seq_len), found {ids.shape}")
        xp = xp_of(ids.data)
        B = ids.shape[0]
        if streamer is not None and B != 1:
            raise ValueError(f"streamer: expected a batch of 1 row, found {B}")
        if embeds is not None and (embeds.ndim != 3 or embeds.shape[0] != B):
            raise ValueError(
                f"inputs_embeds: expected shape ({B}, T_e, hidden), found {embeds.shape}"
            )
        t_past = 0 if past_key_values is None else int(past_key_values[0][0].shape[2])
        t_first = ids.shape[1] if embeds is None else embeds.shape[1]
        self._check_length(t_past + t_first, max_new_tokens)
        if attention_mask is None:
            first_mask = xp.ones((B, t_first), dtype=ids.dtype)
        else:
            first_mask = Tensor(attention_mask, device=device).data.astype(ids.dtype)
            if first_mask.shape != (B, t_first):
                raise ValueError(
                    f"attention_mask: expected shape {(B, t_first)}, found {first_mask.shape}"
                )
        # One mask over every key: the given past (always attended), the first feed, new tokens.
        mask = xp.concatenate([xp.ones((B, t_past), dtype=ids.dtype), first_mask], axis=1)
        eos = [] if eos_token_id is None else (
            [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        )  # fmt: skip
        if pad_token_id is None:
            pad_token_id = getattr(self.config, "pad_token_id", None)
        if pad_token_id is None:
            pad_token_id = eos[0] if eos else 0
        rng = get_rng(device, seed) if seed is not None else get_rng(device)
        seq = ids.data
        n_prompt = seq.shape[1]
        alive = xp.ones(B, dtype=bool)
        past = past_key_values
        with no_grad():
            for step in range(max_new_tokens):
                if positions_from_mask:
                    positions = xp.cumsum(mask, axis=-1) - 1
                    positions = xp.where(mask == 0, 1, positions)  # HF: any valid id at padding
                else:
                    positions = xp.broadcast_to(xp.arange(mask.shape[1]), mask.shape)
                feed: dict[str, Any] = {}
                if use_cache and step > 0:
                    feed["input_ids"], pos = Tensor(seq[:, -1:]), positions[:, -1:]
                else:  # the whole context after the given past (again, without a cache)
                    past = past_key_values
                    pos = positions[:, t_past:]
                    if embeds is None:
                        feed["input_ids"] = Tensor(seq)
                    else:
                        new = self.get_input_embeddings()(Tensor(seq[:, n_prompt:]))
                        feed["inputs_embeds"] = embeds if step == 0 else cat([embeds, new], 1)
                out = self(**feed, attention_mask=Tensor(mask), past_key_values=past,
                           use_cache=use_cache, position_ids=Tensor(pos))  # fmt: skip
                past = out.past_key_values if use_cache else None
                logits = out.logits[:, -1, :]  # (B, V): the next-token distribution
                nxt = self._choose(logits, do_sample, temperature, top_k, top_p, rng)
                nxt = xp.where(alive, nxt, pad_token_id).astype(seq.dtype)
                seq = xp.concatenate([seq, nxt[:, None]], axis=1)
                if streamer is not None:
                    streamer(int(nxt[0]))
                mask = xp.concatenate([mask, xp.ones((B, 1), dtype=mask.dtype)], axis=1)
                for e in eos:
                    alive &= nxt != e
                if eos and not bool(alive.any()):
                    break
        return Tensor(seq)

    def _check_length(self, prompt_len: int, max_new_tokens: int) -> None:
        """Fail before decoding if the output (T + max_new_tokens) exceeds the position limit."""
        cfg = self.config
        name = "n_positions" if hasattr(cfg, "n_positions") else "max_position_embeddings"
        limit = getattr(cfg, name, None)
        if limit is not None and prompt_len + max_new_tokens > limit:
            raise ValueError(
                f"the prompt has {prompt_len} tokens and max_new_tokens is {max_new_tokens}: "
                f"{prompt_len + max_new_tokens} tokens in all, more than the model's "
                f"{name} = {limit}; expected a shorter prompt or at most "
                f"{max(limit - prompt_len, 0)} new tokens"
            )

    @staticmethod
    def _choose(
        logits: Tensor, do_sample: bool, temperature: float, top_k: Any, top_p: Any, rng: Any
    ) -> Any:
        """The next token of each row: argmax, or a draw from the filtered distribution."""
        if not do_sample:
            return xp_of(logits.data).argmax(logits.data, axis=-1)
        if temperature != 1.0:
            logits = logits / temperature
        if top_k is not None:
            logits = top_k_filter(logits, top_k)
        if top_p is not None and top_p < 1.0:
            logits = top_p_filter(logits, top_p)
        return _sample(logits.data, rng)
