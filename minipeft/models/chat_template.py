"""The chat-template renderer: the ChatML-style Jinja templates that HF folders and GGUF files
carry, rendered by a small safe interpreter (:mod:`minipeft.models.chat` uses it).

    text = render_chat_template(template, [{"role": "user", "content": "Hi"}],
                                add_generation_prompt=True, bos_token="<s>", eos_token="</s>")

Why a renderer of our own: a template is code, and jinja2 is not a minipeft dependency. So this
file implements the small subset of Jinja those templates use, as an interpreter over a parsed
tree — no ``eval``, no Python attribute access, no calls — and anything outside the subset is a
:class:`ChatTemplateError` naming it, never a silent wrong prompt:

* text, ``{{ expr }}``, ``{# comments #}``, ``{%- ... -%}`` whitespace control;
* ``{% for x in expr %} … {% endfor %}`` with ``loop.first / last / index / index0 / length``;
* ``{% if %} … {% elif %} … {% else %} … {% endif %}``;
* expressions: 'strings' (with ``\\n`` escapes), integers, ``true``/``false``/``none``, names
  (``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token``, extra context),
  ``x['key']``, ``x[0]``, ``x.key`` (a dict's key: Jinja's getattr falls back to getitem),
  ``+`` and ``~`` concatenation, ``==`` ``!=`` ``<`` ``>`` ``<=`` ``>=`` ``in`` ``not in``,
  ``and`` ``or`` ``not``,
  ``is [not] defined / none / string``, parentheses, filters ``| trim`` and ``| length``.

Rendering follows transformers' environment (``trim_blocks=True, lstrip_blocks=True``: the
newline after a ``{% %}`` tag is dropped, and blanks before one on its line), and Jinja's
defaults: an undefined name renders as '' and is false, the template's single trailing newline is
dropped. SmolLM2's and Qwen's ChatML templates render exactly as ``apply_chat_template`` does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

__all__ = ["ChatTemplateError", "render_chat_template"]


class ChatTemplateError(ValueError):
    """A template outside the supported subset, or one that fails while rendering."""


class _Undefined:
    def __bool__(self) -> bool:
        return False

    def __str__(self) -> str:
        return ""

    def __iter__(self) -> Iterator[Any]:
        return iter(())


UNDEFINED = _Undefined()

# ------------------------------------------------------------------------------ lexing
_TAG = re.compile(r"({%-?|{{-?|{#-?)(.*?)(-?%}|-?}}|-?#})", re.S)
_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")|(?P<num>\d+)"
    r"|(?P<name>[A-Za-z_]\w*)|(?P<op>==|!=|<=|>=|[<>\[\]().,|~+]))"
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"'}


def _unquote(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), s[1:-1])


def _tokens(src: str) -> list[tuple[str, Any]]:
    out, pos, src = [], 0, src.rstrip()
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if not m or m.end() == pos:
            raise ChatTemplateError(f"unsupported chat template syntax near {src[pos:]!r}")
        kind = m.lastgroup
        value = m.group(kind)
        out.append(("str", _unquote(value)) if kind == "str" else (kind, value))
        pos = m.end()
    return out


def _pieces(template: str) -> list[tuple[str, str]]:
    """[("text", s) | ("out", expr) | ("block", stmt)] with whitespace control applied."""
    raw: list[list[Any]] = []  # [kind, content, strip_before, strip_after]
    pos = 0
    for m in _TAG.finditer(template):
        raw.append(["text", template[pos : m.start()], False, False])
        kind = {"{%": "block", "{{": "out", "{#": "comment"}[m.group(1)[:2]]
        raw.append([kind, m.group(2).strip(), m.group(1).endswith("-"), m.group(3)[0] == "-"])
        pos = m.end()
    raw.append(["text", template[pos:], False, False])
    if raw[-1][1].endswith("\n"):  # keep_trailing_newline=False
        raw[-1][1] = raw[-1][1][:-1]
    for i, piece in enumerate(raw):
        if piece[0] != "text":
            continue
        prev = raw[i - 1] if i > 0 else None
        nxt = raw[i + 1] if i + 1 < len(raw) else None
        text = piece[1]
        if prev is not None and prev[3]:
            text = text.lstrip()
        elif prev is not None and prev[0] in ("block", "comment") and text.startswith("\n"):
            text = text[1:]  # trim_blocks
        if nxt is not None and nxt[2]:
            text = text.rstrip()
        elif nxt is not None and nxt[0] in ("block", "comment"):  # lstrip_blocks
            _, newline, tail = piece[1].rpartition("\n")  # judged on the source line
            if tail.strip(" \t") == "" and (newline or prev is None):  # blanks from line start
                text = text[: max(len(text) - len(tail), 0)]
        piece[1] = text
    return [(k, c) for k, c, _, _ in raw if k != "comment" and (k != "text" or c)]


# ------------------------------------------------------------------------------ parsing
class _Expr:
    """Recursive descent over one tag's tokens; nodes are tuples, evaluated by _eval."""

    def __init__(self, tokens: list[tuple[str, Any]], src: str) -> None:
        self.t, self.i, self.src = tokens, 0, src

    def peek(self, value: str | None = None) -> bool:
        return self.i < len(self.t) and (value is None or self.t[self.i][1] == value)

    def take(self, value: str | None = None) -> tuple[str, Any]:
        if not self.peek(value):
            want = value or "an expression"
            raise ChatTemplateError(f"unsupported chat template expression {self.src!r}: "
                                    f"expected {want!r}")  # fmt: skip
        self.i += 1
        return self.t[self.i - 1]

    def parse(self) -> Any:
        node = self.or_()
        if self.peek():
            raise ChatTemplateError(f"unsupported chat template expression {self.src!r} "
                                    f"(at {self.t[self.i][1]!r})")  # fmt: skip
        return node

    def or_(self) -> Any:
        node = self.and_()
        while self.peek("or"):
            self.take()
            node = ("or", node, self.and_())
        return node

    def and_(self) -> Any:
        node = self.not_()
        while self.peek("and"):
            self.take()
            node = ("and", node, self.not_())
        return node

    def not_(self) -> Any:
        if self.peek("not"):
            self.take()
            return ("not", self.not_())
        return self.compare()

    def compare(self) -> Any:
        node = self.concat()
        if any(self.peek(op) for op in ("==", "!=", "<", ">", "<=", ">=", "in")):
            op = self.take()[1]
            return (op, node, self.concat())
        if self.peek("not"):
            self.take()
            self.take("in")
            return ("not", ("in", node, self.concat()))
        if self.peek("is"):
            self.take()
            negate = self.peek("not") and bool(self.take())
            test = self.take()[1]
            if test not in ("defined", "none", "string"):
                raise ChatTemplateError(f"unsupported test 'is {test}' in {self.src!r}")
            node = ("is", node, test)
            return ("not", node) if negate else node
        return node

    def concat(self) -> Any:
        node = self.postfix()
        while self.peek("+") or self.peek("~"):
            op = self.take()[1]
            node = (op, node, self.postfix())
        return node

    def postfix(self) -> Any:
        node = self.primary()
        while True:
            if self.peek("["):
                self.take()
                node = ("item", node, self.or_())
                self.take("]")
            elif self.peek("."):
                self.take()
                node = ("item", node, ("lit", self.take()[1]))
            elif self.peek("|"):
                self.take()
                name = self.take()[1]
                if name not in ("trim", "length"):
                    raise ChatTemplateError(f"unsupported filter '| {name}' in {self.src!r}")
                node = ("filter", node, name)
            elif self.peek("("):
                raise ChatTemplateError(f"unsupported call in chat template {self.src!r}")
            else:
                return node

    def primary(self) -> Any:
        kind, value = self.take()
        if kind == "str":
            return ("lit", value)
        if kind == "num":
            return ("lit", int(value))
        if value == "(":
            node = self.or_()
            self.take(")")
            return node
        if kind == "name":
            consts = {"true": True, "True": True, "false": False, "False": False,
                      "none": None, "None": None}  # fmt: skip
            return ("lit", consts[value]) if value in consts else ("name", value)
        raise ChatTemplateError(f"unsupported chat template expression {self.src!r}")


def _expr(src: str) -> Any:
    return _Expr(_tokens(src), src).parse()


def _parse(pieces: list[tuple[str, str]], i: int, until: tuple[str, ...]) -> tuple[list, int]:
    """Nodes up to a block whose keyword is in ``until``; returns (nodes, index of that tag)."""
    body: list[Any] = []
    while i < len(pieces):
        kind, content = pieces[i]
        if kind == "text":
            body.append(("text", content))
        elif kind == "out":
            body.append(("out", _expr(content)))
        else:
            word = content.split(None, 1)[0] if content else ""
            if word in until:
                return body, i
            if word == "for":
                m = re.fullmatch(r"for\s+([A-Za-z_]\w*)\s+in\s+(.+)", content, re.S)
                if not m:
                    raise ChatTemplateError(f"unsupported for-loop {{% {content} %}}")
                inner, i = _parse(pieces, i + 1, ("endfor",))
                body.append(("for", m.group(1), _expr(m.group(2)), inner))
            elif word == "if":
                branches = []
                cond, j = content[2:], i
                while True:
                    inner, j = _parse(pieces, j + 1, ("elif", "else", "endif"))
                    branches.append((_expr(cond), inner))
                    tag = pieces[j][1]
                    if tag.startswith("elif"):
                        cond = tag[4:]
                        continue
                    if tag.startswith("else"):
                        inner, j = _parse(pieces, j + 1, ("endif",))
                        branches.append((("lit", True), inner))
                    break
                body.append(("if", branches))
                i = j
            else:
                raise ChatTemplateError(
                    f"unsupported chat template statement {{% {content} %}} (supported: for, "
                    "if/elif/else)"
                )
        i += 1
    if until:
        raise ChatTemplateError(f"chat template: missing {{% {until[-1]} %}}")
    return body, i


# ------------------------------------------------------------------------------ rendering
def _str(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def _eval(node: Any, ctx: dict[str, Any]) -> Any:
    op = node[0]
    if op == "lit":
        return node[1]
    if op == "name":
        return ctx.get(node[1], UNDEFINED)
    if op == "item":
        obj, key = _eval(node[1], ctx), _eval(node[2], ctx)
        if isinstance(obj, dict):
            return obj.get(key, UNDEFINED)
        if isinstance(obj, (list, tuple, str)) and isinstance(key, int):
            return obj[key] if -len(obj) <= key < len(obj) else UNDEFINED
        return UNDEFINED
    if op == "filter":
        value = _eval(node[1], ctx)
        return _str(value).strip() if node[2] == "trim" else len(value)
    if op == "not":
        return not _eval(node[1], ctx)
    if op == "and":
        return _eval(node[1], ctx) and _eval(node[2], ctx)
    if op == "or":
        return _eval(node[1], ctx) or _eval(node[2], ctx)
    if op == "is":
        value = _eval(node[1], ctx)
        return {"defined": value is not UNDEFINED, "none": value is None,
                "string": isinstance(value, str)}[node[2]]  # fmt: skip
    a, b = _eval(node[1], ctx), _eval(node[2], ctx)
    if op == "~":
        return _str(a) + _str(b)
    if op == "+":
        if isinstance(a, str) != isinstance(b, str):
            raise ChatTemplateError(f"chat template: cannot add {type(a).__name__} and "
                                    f"{type(b).__name__} (use ~ to join as text)")  # fmt: skip
        return a + b
    if op == "==":
        return a == b
    if op == "!=":
        return a != b
    if op in ("<", ">", "<=", ">="):
        return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]
    return a in b  # "in"


class _Loop(dict):
    pass


def _render(nodes: list, ctx: dict[str, Any], out: list[str]) -> None:
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "out":
            out.append(_str(_eval(node[1], ctx)))
        elif node[0] == "if":
            for cond, body in node[1]:
                if _eval(cond, ctx):
                    _render(body, ctx, out)
                    break
        else:  # for
            _, var, seq, body = node
            items = list(_eval(seq, ctx))
            for k, item in enumerate(items):
                loop = _Loop(index=k + 1, index0=k, first=k == 0, last=k == len(items) - 1,
                             length=len(items))  # fmt: skip
                _render(body, {**ctx, var: item, "loop": loop}, out)


def render_chat_template(
    template: str, messages: list[dict[str, Any]], add_generation_prompt: bool = False, **context
) -> str:
    """The prompt text ``template`` gives for ``messages`` ([{"role", "content"}, ...]).
    ``context`` adds names (``bos_token``, ``eos_token``, ...). Raises ChatTemplateError for
    syntax outside the subset in the module docstring."""
    if not isinstance(template, str):
        raise ChatTemplateError(f"chat template: expected a str, found {type(template).__name__}")
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not {"role", "content"} <= m.keys():
            raise ChatTemplateError(f"messages[{k}]: expected a dict with 'role' and 'content', "
                                    f"found {m!r}")  # fmt: skip
    nodes, _ = _parse(_pieces(template), 0, ())
    ctx = {**context, "messages": messages, "add_generation_prompt": add_generation_prompt}
    out: list[str] = []
    _render(nodes, ctx, out)
    return "".join(out)
