"""Chat with a model: its chat template rendered, the reply streamed, the turn ended.

    text = apply_chat_template(tokenizer, messages)      # the tokenizer's own template
    chat_end_token(template, tokenizer.eos_token)          # "<|im_end|>" for ChatML
    reply = chat(model, tokenizer, "Hi", write=print)     # one turn, streamed

Templates are rendered by :mod:`minipeft.models.chat_template` (a safe interpreter of the Jinja
subset these templates use; no jinja2).
"""

from __future__ import annotations

from typing import Any

from .chat_template import ChatTemplateError, render_chat_template

__all__ = [
    "ChatTemplateError",
    "TextStreamer",
    "apply_chat_template",
    "chat",
    "chat_end_token",
    "render_chat_template",
]


def apply_chat_template(
    tokenizer: Any, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
    chat_template: str | None = None,
) -> str:  # fmt: skip
    """``tokenizer``'s template (or ``chat_template``) rendered for ``messages``, with its
    bos/eos tokens in the context (transformers' ``apply_chat_template(..., tokenize=False)``)."""
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise ChatTemplateError(
            "the model has no chat template (no chat_template in its tokenizer_config.json or "
            "GGUF metadata); use --prompt for plain continuation"
        )
    return render_chat_template(
        template, messages, add_generation_prompt,
        bos_token=getattr(tokenizer, "bos_token", None) or "",
        eos_token=getattr(tokenizer, "eos_token", None) or "",
    )  # fmt: skip


def chat_end_token(template: str, eos_token: str | None = None) -> str | None:
    """The token that ends an assistant turn: ChatML's ``<|im_end|>`` (or ``<|eot_id|>``,
    ``<end_of_turn>``) when the template writes it, else ``eos_token``."""
    for token in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"):
        if token in template:
            return token
    return eos_token


class TextStreamer:
    """``generate(..., streamer=TextStreamer(tokenizer, write))``: writes the text of each new
    token as it comes. Token pieces are not always whole characters (byte-level BPE splits a
    multi-byte character), so it decodes everything so far and writes the new suffix, holding
    back a trailing U+FFFD until the character completes; special tokens are not written."""

    def __init__(self, tokenizer: Any, write: Any) -> None:
        self.tokenizer, self.write = tokenizer, write
        self.ids: list[int] = []
        self.shown = ""

    def __call__(self, token_id: int) -> None:
        self.ids.append(int(token_id))
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        if text.startswith(self.shown) and len(text) > len(self.shown):
            self.write(text[len(self.shown) :])
        self.shown = text


def chat(
    model: Any, tokenizer: Any, message: str, system: str | None = None,
    write: Any = None, **generate_kwargs: Any,
) -> str:  # fmt: skip
    """One chat turn: render the tokenizer's template for [system,] user ``message`` with the
    generation prompt, generate (streaming the reply's text to ``write`` when given), stop at
    the template's end token (ChatML ``<|im_end|>``) or eos; returns the reply's text."""
    from ..creation import tensor  # noqa: PLC0415

    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": message}
    ]
    prompt = apply_chat_template(tokenizer, messages, add_generation_prompt=True)
    ids = tokenizer.encode(prompt)
    end = chat_end_token(tokenizer.chat_template, tokenizer.eos_token)
    stops = [i for i in (tokenizer.token_to_id(end) if end else None, tokenizer.eos_token_id)
             if i is not None]  # fmt: skip
    streamer = TextStreamer(tokenizer, write) if write is not None else None
    out = model.generate(tensor([ids]), eos_token_id=stops or None,
                         streamer=streamer, **generate_kwargs)  # fmt: skip
    new = [int(t) for t in out.numpy()[0, len(ids) :]]
    for k, t in enumerate(new):  # cut at the first stop token
        if t in stops:
            new = new[:k]
            break
    return tokenizer.decode(new, skip_special_tokens=True)
