"""The measurements ``minipeft compare`` makes of one fine-tuned model, each a small function.

- **forgetting** = L_after − L_before: the rise of the held-out loss on the *pretraining*
  corpus (the base's old domain) once the method's adapter is active; > 0 means the model got
  worse at what it knew. A classifier's old domain is read through the base's LM head on top of
  its adapted backbone (:func:`language_model_view`).
- **stored bytes**: the files one task costs on disk beyond the shared base: the adapter folder
  (or, for full fine-tuning, the whole model), less the run's own bookkeeping (``run.json``,
  ``metrics.jsonl``, a checkpoint) and the tokenizer files every copy of the base shares.
- **peak step bytes** = resident + transient: the bytes the model holds (parameters and
  buffers, in the storage they live in: 4 bits for QLoRA's base) plus the most bytes allocated
  at once during one forward + backward + AdamW step (activations saved for backward,
  gradients, AdamW's two moments, temporaries). On the CPU the transient part is traced with
  ``tracemalloc`` (NumPy reports its buffers to it), so the figure is exact and repeatable; on
  a GPU with CuPy's memory pool hook.
- **latency per token**: a causal LM's greedy KV-cache generation, batch 1 (ms per new token,
  its prefill spread over them); a classifier's forward of one (1, T) input (ms per token).
  Median of repeats after warm-up, taken in turn with the untuned base, so the ratio to the
  base is fair on a noisy machine; timings are the only figures that change between runs.
"""

from __future__ import annotations

import gc
import os
import time
import tracemalloc
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..autograd import no_grad
from ..backend import to_numpy
from ..creation import tensor
from ..evaluation import to_device_batch
from ..nn import Module
from ..optim import AdamW, flatten_state_dict
from ..train import Callback
from .inference import TOKENIZER_FILES

__all__ = [
    "StepTimer",
    "forgetting",
    "is_mergeable",
    "language_model_view",
    "latency_ms_per_token",
    "merged_latency",
    "peak_step_bytes",
    "resident_bytes",
    "stored_bytes",
]

RUN_FILES = ("run.json", "metrics.jsonl")


def forgetting(before: float, after: float) -> float:
    """L_after − L_before on the pretraining corpus: > 0 is forgetting, < 0 a gain."""
    if not (np.isfinite(before) and np.isfinite(after)):
        raise ValueError(f"forgetting: expected finite losses, found {before!r} and {after!r}")
    return float(after) - float(before)


def stored_bytes(folder: str | os.PathLike[str]) -> int:
    """Bytes of the result in ``folder`` that one task needs stored: every file, in subfolders
    too (a combination's parts), less :data:`RUN_FILES`, the tokenizer files and a
    ``checkpoint/`` folder."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"stored_bytes: {os.fspath(folder)!r} is not a folder")
    skip = set(RUN_FILES) | set(TOKENIZER_FILES)
    total = 0
    for f in root.rglob("*"):
        rel = f.relative_to(root).parts
        if f.is_file() and f.name not in skip and rel[0] != "checkpoint":
            total += f.stat().st_size
    return total


def _arrays(model: Module) -> Iterator[Any]:
    """Each distinct array the model holds (a tied weight once)."""
    seen: set[int] = set()
    for t in [*model.parameters(), *model.buffers()]:
        if id(t.data) not in seen:
            seen.add(id(t.data))
            yield t.data
    for p in model.parameters():  # a 4-bit weight's absmax values live in its quant_state
        stack = [getattr(p, "quant_state", None)]
        while stack:
            state = stack.pop()
            if state is None:
                continue
            for value in vars(state).values():
                if hasattr(value, "nbytes") and hasattr(value, "dtype") and id(value) not in seen:
                    seen.add(id(value))
                    yield value
                elif hasattr(value, "__dataclass_fields__"):  # the nested (double-quant) state
                    stack.append(value)


def resident_bytes(model: Module) -> int:
    """Bytes of the model's parameters, buffers and packed weights (each array once)."""
    return int(sum(a.nbytes for a in _arrays(model)))


@contextmanager
def _traced_peak(device: str) -> Iterator[list[int]]:
    """Yields a one-element list that holds, on exit, the most bytes newly allocated at once
    inside the block (what existed before does not count)."""
    box = [0]
    if device.startswith("cuda"):  # pragma: no cover - needs a GPU
        import cupy  # noqa: PLC0415

        class Peak(cupy.cuda.MemoryHook):
            name = "minipeft-peak"

            def __init__(self) -> None:
                self.now = self.peak = 0

            def malloc_postprocess(self, device_id, size, mem_size, mem_ptr, pmem_id):  # noqa: ANN001
                self.now += mem_size
                self.peak = max(self.peak, self.now)

            def free_postprocess(self, device_id, mem_size, mem_ptr, pmem_id):  # noqa: ANN001
                self.now -= mem_size

        hook = Peak()
        with hook:
            yield box
        box[0] = hook.peak
        return
    # The garbage collector frees reference cycles whenever its counters say so, which
    # depends on everything the process did before: collect now and hold it off while tracing.
    gc.collect()
    gc_was = gc.isenabled()
    gc.disable()
    was = tracemalloc.is_tracing()
    if not was:
        tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    try:
        yield box
        _, peak = tracemalloc.get_traced_memory()
        box[0] = max(0, peak - base)
    finally:
        if not was:
            tracemalloc.stop()
        if gc_was:
            gc.enable()


def peak_step_bytes(model: Module, batch: dict[str, Any], device: str = "cpu") -> dict[str, int]:
    """``{"resident", "transient", "peak"}`` bytes of a training step of ``model`` on
    ``batch`` with AdamW over its trainable parameters. ``resident``: the model's arrays and
    AdamW's two moments; ``transient``: the most bytes allocated at once by one forward +
    backward + update after a warm-up step (activations, gradients, temporaries). The warm-up
    makes the trace repeatable: first-call caches are filled before it starts. The steps change
    the trainable weights: measure this last."""
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    opt = AdamW(params, lr=1e-12)  # the steps are needed for their allocations, not updates

    def step() -> None:
        out = model(**to_device_batch(batch, device))
        out.loss.backward()
        opt.step()
        opt.zero_grad()

    step()  # allocates AdamW's moments (counted as resident below) and warms every cache
    moments, _ = flatten_state_dict(opt.state_dict())
    resident = resident_bytes(model) + int(sum(a.nbytes for a in moments.values()))
    del moments
    with _traced_peak(device) as box:
        step()
    model.eval()
    return {"resident": resident, "transient": box[0], "peak": resident + box[0]}


def language_model_view(model: Module, lm_base: Callable[[], Module]) -> Module:
    """A causal LM computing what ``model`` (a fine-tuned classifier, PEFT-wrapped or not)
    computes in its backbone: the base's LM head (``lm_base()``, a fresh base) over the
    classifier's adapted backbone. Prompt-side adapters of a classifier act only on its
    inputs, so their view is the unchanged base. A causal LM is returned as it is."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(inner, "task", "causal_lm") == "causal_lm" and not hasattr(inner, "score"):
        return model
    lm = lm_base()
    prefix = lm.base_model_prefix
    lm.set_submodule(prefix, getattr(inner, prefix))
    lm.tie_weights()  # a tied head reads the (possibly trained) input embedding
    return lm


def is_mergeable(model: Module) -> bool:
    """Whether the model's active adapters fold into its weights (LoRA's family, IA3); a model
    without adapters (full fine-tuning) has nothing to merge."""
    check = getattr(model, "_check_mergeable", None)
    if check is None:
        return False
    try:
        check()
    except (ValueError, NotImplementedError, TypeError):
        return False
    return True


def _probe_ids(model: Module, n: int, device: str) -> Any:
    vocab = model.config.vocab_size
    return tensor((np.arange(n, dtype=np.int64)[None, :] * 7 + 3) % vocab, device=device)


def _runner(model: Module, kind: str, device: str, prompt_len: int, new_tokens: int,
            limit: int) -> tuple[Callable[[], Any], int]:  # fmt: skip
    """(one inference call, the tokens it counts): generation for a causal LM, a forward of
    one (1, T) input for a classifier."""
    if kind == "causal_lm":
        new = max(1, min(new_tokens, limit - prompt_len))
        ids = _probe_ids(model, min(prompt_len, limit - 1), device)
        return lambda: model.generate(ids, max_new_tokens=new, do_sample=False), new
    ids = _probe_ids(model, min(limit, 64), device)
    return lambda: model(input_ids=ids), ids.shape[1]


def latency_ms_per_token(model: Module, kind: str, device: str = "cpu", prompt_len: int = 8,
                         new_tokens: int = 32, limit: int = 128, repeats: int = 5,
                         reference: Module | None = None,
                         ) -> tuple[float, float | None]:  # fmt: skip
    """(median ms per token of ``model``, of ``reference`` or None); see the module docstring.
    ``limit`` is the positions free for real tokens (the context less virtual tokens). With a
    ``reference`` the two run in turn, after two warm-up calls each, so the machine's noise
    hits both alike and their ratio is fair."""
    models = [model] if reference is None else [model, reference]
    runs = []
    for m in models:
        m.eval()
        runs.append(_runner(m, kind, device, prompt_len, new_tokens, limit))
    times: list[list[float]] = [[] for _ in runs]
    with no_grad():
        for run, _ in runs * 2:  # warm-up: caches, first allocations
            run()
        for _ in range(repeats):
            for (run, _), spent in zip(runs, times, strict=True):
                t = time.perf_counter()
                run()
                spent.append(time.perf_counter() - t)
    ms = [1000.0 * float(np.median(t)) / n for t, (_, n) in zip(times, runs, strict=True)]
    return ms[0], (ms[1] if reference is not None else None)


def merged_latency(model: Module, kind: str, device: str = "cpu",
                   **kw: Any) -> tuple[float, float | None, float]:  # fmt: skip
    """(ms per token with the adapters merged into the weights, the reference's ms per token
    measured in turn, the largest |logit| change merging made on a probe); the model is
    unmerged again afterwards."""
    ids = _probe_ids(model, min(16, kw.get("limit", 128)), device)
    model.eval()
    with no_grad():
        before = to_numpy(model(input_ids=ids).logits.data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a 4-bit base's merge warns that it requantizes
        model.merge_adapter()
        try:
            with no_grad():
                drift = float(np.abs(to_numpy(model(input_ids=ids).logits.data) - before).max())
            ms, ref = latency_ms_per_token(model, kind, device, **kw)
        finally:
            model.unmerge_adapter()
    return ms, ref, drift


class StepTimer(Callback):
    """Wall time between consecutive optimizer steps; ``median_ms`` leaves the first step out
    (it allocates AdamW's state). A checkpoint save falls into one interval: the median
    ignores it."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last: float | None = None

    def on_train_begin(self, trainer: Any) -> None:
        self._last = time.perf_counter()

    def on_optimizer_step(self, trainer: Any, step: int) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.times.append(now - self._last)
        self._last = now

    @property
    def median_ms(self) -> float | None:
        steady = self.times[1:] or self.times
        return 1000.0 * float(np.median(steady)) if steady else None
