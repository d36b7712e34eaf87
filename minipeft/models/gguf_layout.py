"""How a LLaMA checkpoint is laid out in llama.cpp's GGUF files, against Hugging Face's.

Two differences, both undone on reading and redone on writing:

1. **Names.** llama.cpp names tensors ``token_embd``, ``blk.{i}.attn_q``, ``blk.{i}.ffn_down``,
   ``output_norm``, ``output`` …; Hugging Face ``model.embed_tokens``,
   ``model.layers.{i}.self_attn.q_proj``, … The map is the ``gguf`` package's own
   (``gguf.get_tensor_name_map``, llama.cpp's converter table), so it cannot drift from it.
2. **The q/k rows.** HF's RoPE rotates the two *halves* of each head (``rotate_half``); llama.cpp
   rotates *adjacent pairs*. llama.cpp's converter (``LlamaModel.permute``) reorders the rows of
   ``q_proj`` (H heads) and ``k_proj`` (H_kv heads) so that pairs become halves:

       W (H·D, C) → reshape (H, 2, D/2, C) → swap axes 1, 2 → reshape (H·D, C)      (permute)
       W (H·D, C) → reshape (H, D/2, 2, C) → swap axes 1, 2 → reshape (H·D, C)      (unpermute)

   transformers undoes it on loading (``_reverse_permute_weights``); :func:`unpermute_qk` is
   that, :func:`permute_qk` its inverse, and the two round-trip bit for bit.

Metadata keys (``llama.embedding_length`` …) ↔ ``LlamaConfig`` fields are :data:`CONFIG_KEYS`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CONFIG_KEYS",
    "SUPPORTED_ARCHITECTURES",
    "gguf_to_hf_name",
    "hf_to_gguf_name",
    "permute_qk",
    "unpermute_qk",
]

SUPPORTED_ARCHITECTURES = ("llama",)  # general.architecture values minipeft reads and writes

# GGUF metadata key (after "llama.") -> LlamaConfig field.
CONFIG_KEYS: dict[str, str] = {
    "context_length": "max_position_embeddings",
    "embedding_length": "hidden_size",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "rope.freq_base": "rope_theta",
    "vocab_size": "vocab_size",
}


def permute_qk(weight: Any, n_head: int) -> Any:
    """HF rows → llama.cpp rows for q_proj / k_proj (``n_head`` = H for q, H_kv for k).
    ``weight`` (H·D, ...) with D even; a bias (H·D,) works too."""
    rows = weight.shape[0]
    _check(rows, n_head)
    return (weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))  # fmt: skip


def unpermute_qk(weight: Any, n_head: int) -> Any:
    """llama.cpp rows → HF rows (transformers' ``_reverse_permute_weights``)."""
    rows = weight.shape[0]
    _check(rows, n_head)
    return (weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))  # fmt: skip


def _check(rows: int, n_head: int) -> None:
    if n_head <= 0 or rows % (2 * n_head):
        raise ValueError(f"q/k permutation: {rows} rows do not split into {n_head} heads of an "
                         "even size")  # fmt: skip


def _name_map(n_layers: int) -> Any:
    import gguf  # noqa: PLC0415 (the optional `gguf` extra)

    return gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)


def hf_to_gguf_name(name: str, n_layers: int) -> str:
    """``model.layers.0.self_attn.q_proj.weight`` → ``blk.0.attn_q.weight``; a name llama.cpp
    has no place for is a ValueError."""
    base, _, suffix = name.rpartition(".")
    mapped = _name_map(n_layers).get_name(base)
    if mapped is None:
        raise ValueError(f"no GGUF name for tensor {name!r}")
    return f"{mapped}.{suffix}"


def gguf_to_hf_name(name: str, n_layers: int) -> str:
    """``blk.0.attn_q.weight`` → ``model.layers.0.self_attn.q_proj.weight`` (the inverse of
    :func:`hf_to_gguf_name` on a LLaMA model)."""
    base, _, suffix = name.rpartition(".")
    table = _hf_names(n_layers)
    if base not in table:
        raise ValueError(f"GGUF tensor {name!r} has no Hugging Face LLaMA name")
    return f"{table[base]}.{suffix}"


def _hf_names(n_layers: int) -> dict[str, str]:
    """GGUF base name → HF module name for every tensor of an n-layer LLaMA."""
    names = ["model.embed_tokens", "model.norm", "lm_head"]
    per_layer = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm",
                 "post_attention_layernorm"]  # fmt: skip
    names += [f"model.layers.{i}.{p}" for i in range(n_layers) for p in per_layer]
    mapping = _name_map(n_layers)
    return {mapping.get_name(n): n for n in names}
