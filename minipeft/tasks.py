"""Downstream fine-tuning tasks built offline from text that every CPython ships with.

Every PEFT method is compared on the same tasks, so they must be real, deterministic and need
no download. Both come from the docstrings of standard-library modules — API documentation,
a different domain from the reference-manual prose of the default corpus (``pydoc_data``):

``"docstrings"`` (kind ``"causal_lm"``)
    Domain adaptation: one document per module (its docstring, then those of its public
    classes, methods and functions), split by module into train/test (10% of modules held out).
``"docstring-topic"`` (kind ``"seq_cls"``)
    Which family does the module of this docstring belong to? Four classes, e.g. "Return the
    arc tangent of y/x" -> ``numbers``. Each docstring of at least ``MIN_CHARS`` characters
    is one example (cut to ``MAX_CHARS``); a module gives at most ``MAX_PER_MODULE`` examples
    so no single module dominates its class; classes are balanced to the smallest one; 20% of
    each class is held out. A bag-of-words nearest-centroid baseline scores ~0.7 on the test
    split (chance 0.25), so the task is learnable but not trivial.

The texts depend on the CPython version (docstrings change between releases) but are the same
on every run of a given interpreter. Under ``python -OO`` docstrings are stripped and building
a task raises a clear error.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
import warnings
import zlib
from dataclasses import dataclass

import numpy as np

from minipeft.data import train_val_split

__all__ = [
    "DOCSTRING_MODULES",
    "TASKS",
    "TOPIC_FAMILIES",
    "Task",
    "docstrings_corpus",
    "get_task",
    "module_docstrings",
]

MIN_CHARS = 40  # shorter docstrings ("Return self.") carry almost no signal
MAX_CHARS = 1000  # a few module docstrings are many KB long; a classifier needs far less
MAX_PER_MODULE = 60
TEST_FRACTION = 0.2

# Pure-Python (or always-built-in) modules present on CPython 3.10-3.13 on every platform.
# Submodules are listed where a package re-exports classes defined elsewhere (asyncio, ...).
# fmt: off
TOPIC_FAMILIES: dict[str, tuple[str, ...]] = {
    "text": (
        "base64", "codecs", "configparser", "csv", "difflib", "email.header", "gettext",
        "html", "html.parser", "json", "json.decoder", "json.encoder", "locale", "pprint",
        "quopri", "re", "shlex", "string", "textwrap", "tokenize", "unicodedata",
        "xml.dom.minidom", "xml.etree.ElementTree", "xml.sax.saxutils",
    ),
    "numbers": (
        "_pydecimal", "array", "cmath", "colorsys", "fractions", "heapq", "math", "numbers",
        "operator", "random", "secrets", "statistics",
    ),
    "files": (
        "_pyio", "bz2", "filecmp", "fileinput", "fnmatch", "glob", "gzip", "linecache", "lzma",
        "os", "pathlib", "posixpath", "shutil", "subprocess", "tarfile", "tempfile", "zipfile",
    ),
    "concurrency-net": (
        "asyncio.base_events", "asyncio.events", "asyncio.locks", "asyncio.queues",
        "asyncio.streams", "asyncio.tasks", "concurrent.futures._base",
        "concurrent.futures.process", "ftplib", "http.client", "http.cookiejar",
        "http.server", "imaplib", "ipaddress", "multiprocessing.managers", "queue", "sched",
        "selectors", "smtplib", "socket", "socketserver", "ssl", "threading",
        "urllib.parse", "urllib.request",
    ),
}
# fmt: on
DOCSTRING_MODULES: tuple[str, ...] = tuple(sorted(m for ms in TOPIC_FAMILIES.values() for m in ms))


@dataclass(frozen=True)
class Task:
    """A fine-tuning task: texts (and, for ``seq_cls``, integer labels) split into train/test.

    For ``causal_lm`` the texts are documents (tokenize with ``data.tokenize_documents`` and
    cut with ``data.lm_blocks``) and the label fields are empty.
    """

    name: str
    kind: str  # "causal_lm" | "seq_cls"
    description: str
    train_texts: tuple[str, ...]
    test_texts: tuple[str, ...]
    train_labels: tuple[int, ...] = ()
    test_labels: tuple[int, ...] = ()
    label_names: tuple[str, ...] = ()

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def __repr__(self) -> str:
        return (
            f"Task(name={self.name!r}, kind={self.kind!r}, train={len(self.train_texts)}, "
            f"test={len(self.test_texts)}, label_names={self.label_names})"
        )


# --------------------------------------------------------------------------------- docstrings
def _check_docstrings_present() -> None:
    if sys.flags.optimize >= 2:
        raise RuntimeError(
            "docstrings are stripped when Python runs with -OO; the docstring tasks need them "
            "(run without -OO / PYTHONOPTIMIZE=2)"
        )


def _own_doc(obj) -> str | None:
    """The object's own docstring, cleaned; ``None`` if it has none (no inheritance)."""
    doc = getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) and doc.strip() else None


def _defined_in(obj, modname: str) -> bool:
    """True if ``obj`` comes from ``modname`` or a private submodule (pathlib._local in 3.13)."""
    home = getattr(obj, "__module__", None) or ""
    return home == modname or home.startswith(modname + "._")


def module_docstrings(modname: str) -> list[str]:
    """Docstrings of a module, its public classes and functions, and those classes' public
    methods, in a fixed order (module first, then members by name). Missing module -> ``[]``.

    Only objects defined in the module itself are taken, so re-exports are not counted twice.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. deprecation notices on import
            module = importlib.import_module(modname)
    except ImportError:
        return []
    docs = [_own_doc(module)]
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if not _defined_in(obj, module.__name__):  # _pydecimal calls itself "decimal"
            continue
        docs.append(_own_doc(obj))
        if inspect.isclass(obj):
            for meth_name, attr in sorted(vars(obj).items()):
                attr = getattr(attr, "__func__", attr)  # unwrap staticmethod / classmethod
                if not meth_name.startswith("_") and inspect.isroutine(attr):
                    docs.append(_own_doc(attr))
    seen, out = set(), []
    for doc in docs:
        if doc and doc not in seen:
            seen.add(doc)
            out.append(doc)
    return out


def docstrings_corpus() -> list[str]:
    """One document per module of ``DOCSTRING_MODULES`` (sorted): its docstrings joined by
    blank lines. About 480 KB of API documentation on CPython 3.11.
    """
    _check_docstrings_present()
    docs = ["\n\n".join(module_docstrings(m)) for m in DOCSTRING_MODULES]
    return [d for d in docs if d]


# --------------------------------------------------------------------------------- task builders
def _clip(text: str, limit: int = MAX_CHARS) -> str:
    """Cut ``text`` to at most ``limit`` characters, at a whitespace boundary."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    return cut[: cut.rfind(" ")] if " " in cut else cut


def _docstrings_task() -> Task:
    train, test = train_val_split(docstrings_corpus(), val_fraction=0.1, seed=0)
    return Task(
        name="docstrings",
        kind="causal_lm",
        description=(
            "Causal-LM domain adaptation to Python standard-library API docstrings "
            f"({len(train)} train / {len(test)} held-out modules)."
        ),
        train_texts=tuple(train),
        test_texts=tuple(test),
    )


def _topic_examples() -> dict[str, list[str]]:
    """Per family: unique docstring examples, at most MAX_PER_MODULE from each module."""
    examples: dict[str, list[str]] = {}
    for family, modules in TOPIC_FAMILIES.items():
        texts: list[str] = []
        for modname in modules:
            docs = [_clip(d) for d in module_docstrings(modname) if len(d) >= MIN_CHARS]
            if len(docs) > MAX_PER_MODULE:  # a fixed, module-seeded subset, in original order
                rng = np.random.default_rng(zlib.crc32(modname.encode()))
                docs = [docs[i] for i in sorted(rng.permutation(len(docs))[:MAX_PER_MODULE])]
            texts += docs
        examples[family] = list(dict.fromkeys(texts))  # dedupe, keep order
    # A text found in two families has no single right answer: drop it everywhere.
    counts: dict[str, int] = {}
    for texts in examples.values():
        for t in texts:
            counts[t] = counts.get(t, 0) + 1
    return {f: [t for t in texts if counts[t] == 1] for f, texts in examples.items()}


def _topic_task(seed: int = 0) -> Task:
    _check_docstrings_present()
    examples = _topic_examples()
    label_names = tuple(examples)
    per_class = min(len(v) for v in examples.values())
    n_test = max(1, round(TEST_FRACTION * per_class))
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label, family in enumerate(label_names):
        pick = rng.permutation(len(examples[family]))[:per_class]  # balance to the smallest
        chosen = [(examples[family][i], label) for i in pick]
        test += chosen[:n_test]
        train += chosen[n_test:]
    # Interleave the classes so an unshuffled pass still sees every label early.
    train = [train[i] for i in rng.permutation(len(train))]
    test = [test[i] for i in rng.permutation(len(test))]
    return Task(
        name="docstring-topic",
        kind="seq_cls",
        description=(
            "Classify a standard-library docstring by the family of its module: "
            + ", ".join(label_names)
            + f" ({per_class} examples per class, {n_test} of them held out)."
        ),
        train_texts=tuple(t for t, _ in train),
        test_texts=tuple(t for t, _ in test),
        train_labels=tuple(y for _, y in train),
        test_labels=tuple(y for _, y in test),
        label_names=label_names,
    )


TASKS = {
    "docstrings": _docstrings_task,
    "docstring-topic": _topic_task,
}


@functools.cache
def get_task(name: str) -> Task:
    """Build (once per process) and return the task called ``name``; see ``TASKS``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks are {sorted(TASKS)}")
    return TASKS[name]()
