"""Checking what goes into a model, and the masks and positions both architectures share.

Every check raises a ``ValueError`` naming the argument, the expected value and the found one,
so a wrong shape never turns into a silent broadcast.

Shapes: B batch, T new tokens, T_past cached (or prefix) tokens, T_k = T_past + T keys,
H_kv key/value heads, D head size.
"""

from __future__ import annotations

from typing import Any

from ..creation import arange
from ..tensor import Tensor, int64

__all__ = [
    "as_tensor",
    "check_model_inputs",
    "check_past_key_values",
    "position_ids_for",
    "build_attention_mask",
]


def as_tensor(x: Any, device: str, dtype: Any = None) -> Tensor:
    """A Tensor on ``device`` from a Tensor, array or list (ids default to int64)."""
    if not isinstance(x, Tensor):
        x = Tensor(x, device=device)
    if x.device != device:
        x = x.to(device)
    if dtype is not None and x.dtype != dtype:
        x = x.to(dtype)
    return x


def check_model_inputs(
    name: str,
    input_ids: Any,
    inputs_embeds: Any,
    vocab_size: int,
    hidden_size: int,
    device: str,
) -> tuple[Tensor | None, Tensor | None]:
    """Exactly one of input_ids (B, T) int in [0, V) / inputs_embeds (B, T, C); return both."""
    if (input_ids is None) == (inputs_embeds is None):
        found = "both" if input_ids is not None else "neither"
        raise ValueError(
            f"{name}: expected exactly one of input_ids or inputs_embeds, found {found}"
        )
    if input_ids is not None:
        input_ids = as_tensor(input_ids, device)
        if input_ids.dtype.kind not in "iu":
            raise ValueError(f"{name}: input_ids must be integers, found dtype {input_ids.dtype}")
        if input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise ValueError(
                f"{name}: expected input_ids of shape (batch, seq_len) with seq_len >= 1, "
                f"found {input_ids.shape}"
            )
        lo, hi = int(input_ids.data.min()), int(input_ids.data.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{name}: expected token ids in [0, vocab_size = {vocab_size}), found {bad}"
            )
        return input_ids, None
    if not isinstance(inputs_embeds, Tensor):
        inputs_embeds = as_tensor(inputs_embeds, device)
    if inputs_embeds.device != device:
        raise ValueError(
            f"{name}: expected inputs_embeds on the model's device {device!r}, "
            f"found {inputs_embeds.device!r}"
        )
    if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != hidden_size:
        raise ValueError(
            f"{name}: expected inputs_embeds of shape (batch, seq_len, {hidden_size}), "
            f"found {inputs_embeds.shape}"
        )
    return None, inputs_embeds


def check_past_key_values(
    name: str, past: Any, n_layers: int, batch: int, n_kv_heads: int, head_dim: int
) -> int:
    """Validate a cache (a list of L (key, value) pairs (B, H_kv, T_past, D)); return T_past."""
    if past is None:
        return 0
    if not isinstance(past, (list, tuple)) or len(past) != n_layers:
        found = f"{type(past).__name__} of length {len(past)}" if hasattr(past, "__len__") else past
        raise ValueError(
            f"{name}: expected past_key_values as a list of {n_layers} (key, value) pairs, "
            f"found {found}"
        )
    t_past = None
    for i, pair in enumerate(past):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"{name}: past_key_values[{i}] must be a (key, value) pair")
        for kind, t in zip(("key", "value"), pair):
            if not isinstance(t, Tensor) or t.ndim != 4:
                found = t.shape if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(
                    f"{name}: past_key_values[{i}] {kind}: expected a Tensor of shape "
                    f"({batch}, {n_kv_heads}, T_past, {head_dim}), found {found}"
                )
            t_past = t.shape[2] if t_past is None else t_past
            if t.shape != (batch, n_kv_heads, t_past, head_dim):
                raise ValueError(
                    f"{name}: past_key_values[{i}] {kind}: expected shape "
                    f"({batch}, {n_kv_heads}, {t_past}, {head_dim}), found {t.shape}"
                )
    return int(t_past or 0)


def position_ids_for(
    name: str, position_ids: Any, batch: int, seq_len: int, past_len: int, max_positions: int,
    max_name: str, device: str,
) -> Tensor:  # fmt: skip
    """position_ids (B or 1, T) int; default T_past + arange(T) (HF's cache_position)."""
    if past_len + seq_len > max_positions:
        raise ValueError(
            f"{name}: sequence of {past_len + seq_len} tokens (past {past_len} + new {seq_len}) "
            f"is longer than {max_name} = {max_positions}"
        )
    if position_ids is None:
        return arange(past_len, past_len + seq_len, device=device).reshape(1, seq_len)
    position_ids = as_tensor(position_ids, device, int64)
    if position_ids.ndim == 1:
        position_ids = position_ids.reshape(1, -1)
    if (
        position_ids.ndim != 2
        or position_ids.shape[1] != seq_len
        or (position_ids.shape[0] not in (1, batch))
    ):
        raise ValueError(
            f"{name}: expected position_ids of shape ({batch}, {seq_len}) or (1, {seq_len}), "
            f"found {position_ids.shape}"
        )
    lo, hi = int(position_ids.data.min()), int(position_ids.data.max())
    if lo < 0 or hi >= max_positions:
        raise ValueError(
            f"{name}: expected position ids in [0, {max_name} = {max_positions}), "
            f"found {lo if lo < 0 else hi}"
        )
    return position_ids


def build_attention_mask(
    name: str, attention_mask: Any, batch: int, seq_len: int, past_len: int, device: str
) -> Tensor | None:
    """The key-padding mask (B, 1, 1, T_k) for attention (True = attend), or None.

    ``attention_mask`` (B, T_past + T) holds 1 for real and 0 for padding *key* positions.
    Attention combines it with its causal mask (``is_causal=True``, aligned to the last T
    keys), so query i (absolute position T_past + i) sees the real keys among 0 .. T_past + i.
    A padding query that sees no key at all gets a zero output from
    ``F.scaled_dot_product_attention`` (not NaN), and its output is never used.
    Returns None when nothing is masked, so attention takes the plain causal path.
    """
    if attention_mask is None:
        return None
    attention_mask = as_tensor(attention_mask, device)
    n_keys = past_len + seq_len
    if attention_mask.shape != (batch, n_keys):
        raise ValueError(
            f"{name}: expected attention_mask of shape (batch, past + seq_len) = "
            f"({batch}, {n_keys}), found {attention_mask.shape}"
        )
    real = attention_mask != 0  # (B, T_k) bool
    if bool(real.data.all()):
        return None
    return real.reshape(batch, 1, 1, n_keys)  # broadcast over heads and queries
