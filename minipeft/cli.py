"""The ``minipeft`` command.

    minipeft --version
    minipeft info                                   # version, backends, devices, threads
    minipeft compare [--quick] [--methods ...] [--task T] [--model M] [--out DIR] [--resume]
                                                    # every method, one budget, one table
    minipeft quickstart                             # pretrain (cached) → LoRA → merge → table
    minipeft pretrain [--out DIR] [--overwrite]     # a small GPT-2 on offline text
    minipeft generate [--model DIR] [--adapter DIR] --prompt TEXT | --chat TEXT
    minipeft finetune --method lora|dora|adalora|pissa|ia3|seq_bn|prefix|...|full --task docstrings|
                      docstring-topic [--out DIR] [--set FIELD=VALUE ...]
    minipeft predict [--model DIR] [--adapter DIR] --text TEXT | --file F
    minipeft eval [--model DIR] [--adapter DIR] --task NAME
    minipeft merge [--model DIR] --adapter DIR --out DIR
    minipeft combine --adapters A B --weights 0.5 0.5 [--type svd|cat|linear|ties|...] --out DIR
    minipeft quantize [--model DIR] --out DIR [--quant-type nf4|fp4] [--blocksize 64]
    minipeft convert --model x.gguf|NAME --out DIR     # a GGUF file → an HF folder
    minipeft export-gguf [--model DIR] [--adapter DIR] --out y.gguf [--type f32|f16|q8_0]
    minipeft rank-analysis [--model DIR] [--steps N] [--lora-r 8 64] [--out DIR]   # ΔW's rank

This file holds the parser and ``main``; each subcommand is a function in
:mod:`minipeft.cli_commands` that imports what it needs lazily, so ``--version`` and ``info``
start instantly. Bad input gets one line on stderr and exit status 2; Ctrl-C during
training saves a checkpoint, prints how to continue, and exits 130 (no traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from . import cli_commands as commands
from .peft.registry import COMBINATIONS, QUANTIZED, preset_names
from .precision import PRECISIONS

__all__ = ["main", "build_parser"]

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


# ------------------------------------------------------------------------------ parser
def _threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, help="BLAS threads (default 1, or "
                   "$MINIPEFT_NUM_THREADS; 0 = the BLAS library's own default)")  # fmt: skip


def _precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="fp32 (default), "
                   "tf32 (GPU matmuls on TF32 cores), fp16 (with fp32 master weights and "
                   "dynamic loss scaling) or bf16")  # fmt: skip


def _training(p: argparse.ArgumentParser, steps: str, lr: str) -> None:
    """Flags that go to the Trainer; None means "the job's default" (or, with --resume, the
    value the run was started with)."""
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    _precision(p)
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--steps", type=int, default=None, help=f"optimizer steps (default {steps})")
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default {lr})")
    p.add_argument("--batch-size", type=int, default=None, help="examples per step (default 16)")
    p.add_argument("--warmup", type=int, default=None, help="linear warmup steps (default: a "
                   "tenth of --steps for finetune, a twentieth for pretrain)")  # fmt: skip
    p.add_argument("--grad-accum", type=int, default=None,
                   help="micro-batches per optimizer step (default 1)")  # fmt: skip
    p.add_argument(
        "--eval-every",
        type=int,
        default=None,
        help="evaluate every N steps (default: finetune only at the end)",
    )
    p.add_argument(
        "--save-every",
        type=int,
        default=None,
        help="checkpoint every N steps "
        "(default 50 for finetune, 100 for pretrain; always at the end and on Ctrl-C)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the unfinished run in --out "
        "from its last checkpoint, with the settings it was started with",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace what --out holds (a result or an unfinished run)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _threads(p)


def _inference(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="HF folder (default: the adapter's base if it "
                   "recorded a local one, else the cached base model)")  # fmt: skip
    p.add_argument("--adapter", default=None, help="an adapter folder to apply")
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse an adapter recorded for another base model (default: warn)",
    )
    p.add_argument("--device", default="cpu")
    _threads(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minipeft",
        description="A from-scratch autograd engine and the PEFT methods built on it.",
    )
    parser.add_argument("--version", action="version", version=f"minipeft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("info", help="print the version, the backends, the devices and threads")
    _threads(p)
    p.set_defaults(func=commands.cmd_info)

    p = sub.add_parser("compare", help="the main job: fine-tune every method on one task with "
                       "one budget and measure them side by side")  # fmt: skip
    p.add_argument("--methods", nargs="+", default=None, help="methods to compare (default: "
                   "full lora rslora dora pissa adalora qlora seq_bn double_seq_bn par_bn ia3 "
                   "prompt prefix ptuning mam)")  # fmt: skip
    p.add_argument("--task", default=None, help="docstrings (default) or docstring-topic")
    p.add_argument("--model", default=None, help="base model: a folder, a .gguf file or a "
                   "checkpoint name (default: the cached base, made on first use)")  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    _precision(p)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per method "
                   "(default 100; 30 with --quick)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="30 smaller steps and capped "
                   "evaluations: under 3 minutes on 2 CPU cores")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of every fine-tune (default 0)")
    p.add_argument("--out", default="runs/compare", help="output folder (default runs/compare)")
    p.add_argument("--resume", action="store_true", help="continue the comparison in --out, "
                   "keeping its finished rows")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="discard what --out holds")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _threads(p)
    p.set_defaults(func=commands.cmd_compare)

    p = sub.add_parser("quickstart", help="pretrain (if not cached), LoRA fine-tune, merge, "
                       "print a before/after table")  # fmt: skip
    p.add_argument("--out", default="runs/quickstart", help="where the adapter and merged model "
                   "go (replaced on every run)")  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fine-tune (default 0)")
    p.add_argument("--steps", type=int, default=150, help="fine-tuning steps (default 150)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _threads(p)
    p.set_defaults(func=commands.cmd_quickstart)

    p = sub.add_parser("pretrain", help="train a small GPT-2 and its tokenizer on offline text")
    p.add_argument("--out", default=None, help="output folder (default: the cache, "
                   "$MINIPEFT_CACHE or ~/.cache/minipeft/base-gpt2)")  # fmt: skip
    p.add_argument("--corpus", default=None, help="a .txt file or a folder of them "
                   "(default: the Python documentation topics)")  # fmt: skip
    p.add_argument("--preset", default=None, help="model size: default, cpu-tiny or nano")
    _training(p, steps="400", lr="3e-3")
    p.set_defaults(func=commands.cmd_pretrain)

    p = sub.add_parser("generate", help="continue a prompt with a model (and an adapter)")
    _inference(p)
    text = p.add_mutually_exclusive_group(required=True)
    text.add_argument("--prompt", help="text to continue as is")
    text.add_argument("--chat", help="a user message: the model's chat template is applied, "
                      "the reply streamed until the template's end token")  # fmt: skip
    p.add_argument("--system", default=None, help="with --chat: a system message")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature; 0 "
                   "= greedy (the default, unless --top-k/--top-p is given: then 1.0)")  # fmt: skip
    p.add_argument("--top-k", type=int, default=None, help="sample from the k likeliest tokens")
    p.add_argument("--top-p", type=float, default=None,
                   help="sample from the smallest set of tokens with probability >= p")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=commands.cmd_generate)

    p = sub.add_parser("finetune", help="fine-tune (a PEFT method or every weight) and save it")
    p.add_argument(
        "--method",
        default=None,
        choices=["full", *preset_names(), *COMBINATIONS, *QUANTIZED],
        help="a PEFT method (saves an adapter; default lora) or full (saves a model)",
    )
    p.add_argument("--model", default=None, help="HF folder (default: the cached base model)")
    p.add_argument("--task", default=None, help="docstrings (the default) or docstring-topic")
    p.add_argument("--out", default=None, help="run folder (default runs/<method>-<task>)")
    p.add_argument("--r", type=int, default=None, help="LoRA rank (default 8)")
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha > 0 (scaling alpha/r; "
                   "default 16)")  # fmt: skip
    p.add_argument("--dropout", type=float, default=None, help="LoRA dropout (default 0)")
    p.add_argument("--targets", nargs="+", default=None, help="target module names "
                   "(default: the architecture's, plus the token embedding for LoRA on "
                   "docstring-topic; 'all-linear' for every linear)")  # fmt: skip
    p.add_argument("--reduction-factor", type=float, default=None,
                   help="C / m for a bottleneck adapter (seq_bn: 16; par_bn: 2)")  # fmt: skip
    p.add_argument("--non-linearity", default=None, help="activation inside a bottleneck adapter")
    p.add_argument("--set", nargs="+", action="extend", default=None, metavar="FIELD=VALUE",
                   help="any field of the method's config, e.g. --set r=16 "
                   "target_modules=q_proj,v_proj (JSON values; a,b is a list)")  # fmt: skip
    _training(p, steps="150; 300 for docstring-topic", lr="1e-2 for LoRA on docstrings, else 1e-3")
    p.set_defaults(func=commands.cmd_finetune)

    p = sub.add_parser("predict", help="classify texts with a fine-tuned classifier")
    _inference(p)
    p.add_argument("--text", action="append", default=[], help="a text (repeatable)")
    p.add_argument("--file", default=None, help="a file of texts, one per line ('-': stdin)")
    p.add_argument("--json", action="store_true", help="one JSON object per text")
    p.set_defaults(func=commands.cmd_predict)

    p = sub.add_parser("eval", help="a model's (and adapter's) metric on a task's held-out split")
    _inference(p)
    p.add_argument("--task", required=True, help="docstrings or docstring-topic")
    p.set_defaults(func=commands.cmd_eval)

    p = sub.add_parser("merge", help="merge an adapter into its base and save an HF folder")
    _inference(p)
    p.set_defaults(adapter=None)
    p.add_argument("--out", required=True, help="a new folder (not the base's or the adapter's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=commands.cmd_merge)

    p = sub.add_parser("combine", help="combine trained LoRA adapters into a new one (PEFT's "
                       "add_weighted_adapter)")  # fmt: skip
    p.add_argument("--model", default=None, help="HF folder (default: the first adapter's base "
                   "if it is a local folder, else the cached base model)")  # fmt: skip
    p.add_argument("--adapters", nargs="+", required=True, help="adapter folders to combine")
    p.add_argument("--weights", nargs="+", type=float, required=True,
                   help="one weight per adapter (negative subtracts)")  # fmt: skip
    p.add_argument("--type", default="svd", dest="combination_type",
                   help="linear, cat, svd, ties, dare_linear, dare_ties, magnitude_prune, "
                   "or their _svd forms (default svd)")  # fmt: skip
    p.add_argument("--svd-rank", type=int, default=None, help="rank of an svd combination "
                   "(default: the largest input rank)")  # fmt: skip
    p.add_argument("--density", type=float, default=None, help="fraction kept by ties / dare / "
                   "magnitude_prune, in [0, 1]")  # fmt: skip
    p.add_argument("--majority-sign-method", default="total", choices=["total", "frequency"])
    p.add_argument("--seed", type=int, default=0, help="seed of DARE's random drops")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="a new folder (not the base's or an input's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=commands.cmd_combine)

    p = sub.add_parser("quantize", help="store a model's linear weights in 4 bits (NF4/FP4)")
    p.add_argument("--model", default=None, help="HF folder (default: the cached base model)")
    p.add_argument("--out", required=True, help="a new folder for the 4-bit model")
    p.add_argument("--quant-type", default="nf4", choices=["nf4", "fp4"])
    p.add_argument("--blocksize", type=int, default=64, help="weights per absmax (32 ... 4096)")
    p.add_argument("--no-double-quant", action="store_true",
                   help="float32 absmax (4.5 bits/param instead of 4.127)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=commands.cmd_quantize)

    p = sub.add_parser("convert", help="write a GGUF file (or a known checkpoint, "
                       "smollm2-135m) as a Hugging Face folder")  # fmt: skip
    p.add_argument("--model", required=True, help="a .gguf file or a known checkpoint name")
    p.add_argument("--out", required=True, help="a new folder (not the input)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=commands.cmd_convert)

    p = sub.add_parser("export-gguf", help="write a LLaMA model (an adapter merged in) as a GGUF "
                       "file for llama.cpp / ollama")  # fmt: skip
    _inference(p)
    p.add_argument("--out", required=True, help="the .gguf file to write (not an input)")
    p.add_argument("--type", default="f32", dest="gguf_type",
                   help="2-D tensors' type: f32, f16 or q8_0 (norms stay f32; "
                   "default f32)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=commands.cmd_export_gguf)

    p = sub.add_parser("rank-analysis", help="full fine-tune, then how much of each ΔW's "
                       "energy its top r singular directions hold; LoRA's subspace "
                       "similarity")  # fmt: skip
    p.add_argument("--model", default=None, help="HF folder or known name (default: the cached "
                   "base model, pretrained when absent)")  # fmt: skip
    p.add_argument("--task", default="docstrings", help="docstrings (the default)")
    p.add_argument("--steps", type=int, default=100, help="steps of each fine-tune (default 100)")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32],
                   help="the r at which the energy is reported "
                   "(default 1 2 4 8 16 32)")  # fmt: skip
    p.add_argument("--lora-r", type=int, nargs=2, default=[8, 64], metavar=("R1", "R2"),
                   help="the two LoRA ranks whose A subspaces are compared (default 8 64; "
                   "equal ranks compare two seeds)")  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed (the second LoRA run: seed + 1)")
    p.add_argument("--out", default="runs/rank-analysis", help="output folder (default "
                   "runs/rank-analysis)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _threads(p)
    p.set_defaults(func=commands.cmd_rank_analysis)
    return parser


def _interrupted(args: argparse.Namespace, exc: BaseException) -> int:
    """One line after Ctrl-C: what was kept and the command that continues."""
    from .jobs.runs import resume_hint  # noqa: PLC0415

    checkpoint = getattr(exc, "checkpoint", None)
    out = getattr(args, "_out", None) or getattr(args, "out", None)
    if checkpoint:
        line = f"{exc}; {resume_hint(args.command, out)}"
    elif out and (Path(out) / "checkpoint" / "trainer_state.json").is_file():
        line = f"interrupted; the last checkpoint is in {out}; {resume_hint(args.command, out)}"
    else:
        line = "interrupted; nothing was written"
    if args.command == "compare" and not checkpoint:
        line = (f"interrupted; the finished rows are in {Path(out) / 'results.json'}; "
                f"{resume_hint(args.command, out)}")  # fmt: skip
    if args.command == "quickstart":
        line = (
            f"{exc if checkpoint else 'interrupted'}; run `minipeft quickstart` again to continue"
        )
    print(f"\nminipeft {args.command}: {line}", file=sys.stderr)
    return EXIT_INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if args.command == "merge" and not args.adapter:
        parser.error("merge: the following arguments are required: --adapter")
    try:
        from .threads import set_num_threads, threads_from_env  # noqa: PLC0415

        set_num_threads(threads_from_env(getattr(args, "threads", None)))
        if getattr(args, "device", None) is not None:
            from .backend import check_device  # noqa: PLC0415

            check_device(args.device)  # fail now, not after minutes of tokenizer training
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:  # includes TrainingInterrupted (checkpoint saved)
        return _interrupted(args, exc)
    except (ValueError, OSError, TypeError, RuntimeError) as exc:
        # Bad input (a wrong path, config or device) gets one clear line, not a traceback.
        if os.environ.get("MINIPEFT_DEBUG"):
            raise
        print(f"minipeft {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
