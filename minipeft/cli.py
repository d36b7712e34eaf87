"""The ``minipeft`` command.

    minipeft --version
    minipeft info                                   # version, backends, devices
    minipeft quickstart                             # pretrain (cached) → LoRA → merge → table
    minipeft pretrain [--out DIR]                   # a small GPT-2 on offline text
    minipeft generate --model DIR [--adapter DIR] --prompt TEXT
    minipeft finetune --method lora --model DIR --task docstrings [--r 8 --alpha 16 ...]
    minipeft merge --model DIR --adapter DIR --out DIR

Each subcommand lives in its own function and imports what it needs lazily, so ``--version``
and ``info`` start instantly.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import __version__

__all__ = ["main", "build_parser"]


def _cmd_info(args: argparse.Namespace) -> int:
    from .backend import backend_info  # noqa: PLC0415

    info = backend_info()
    print(f"minipeft {__version__}")
    print(f"python   {sys.version.split()[0]}")
    print(f"numpy    {info['numpy']}")
    print(f"cupy     {info['cupy'] or 'not available'}")
    print(f"devices  {', '.join(info['devices'])}")
    cuda = info["cuda"]
    print(f"cuda     {cuda if info['cupy'] else 'unavailable (' + cuda + ')'}")
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from .jobs.pretrain import pretrain  # noqa: PLC0415

    pretrain(out=args.out, corpus=args.corpus, preset=args.preset, steps=args.steps,
             batch_size=args.batch_size, lr=args.lr, device=args.device, seed=args.seed,
             progress=not args.quiet)  # fmt: skip
    return 0


def _sampling(args: argparse.Namespace) -> tuple[bool, float]:
    """(do_sample, temperature): sample when --temperature > 0 or --top-k/--top-p is given."""
    temperature = args.temperature
    if temperature is not None and not temperature >= 0:
        raise ValueError(f"--temperature: expected a number >= 0 (0 = greedy), found {temperature}")
    filters = args.top_k is not None or args.top_p is not None
    if temperature == 0 and filters:
        raise ValueError(
            "--temperature 0 means greedy decoding, which ignores --top-k/--top-p; expected "
            "a temperature > 0 (or none, which samples at 1.0) to sample with them"
        )
    if temperature is None:
        return filters, 1.0
    return temperature > 0, temperature if temperature > 0 else 1.0


def _check_causal_lm_adapter(adapter: str) -> None:
    """Fail early, and say why, when an adapter was trained for another head than an LM's."""
    from .peft import PeftConfig, TaskType  # noqa: PLC0415

    task = PeftConfig.from_pretrained(adapter).task_type
    task = getattr(task, "value", task)
    if task not in (None, TaskType.CAUSAL_LM.value):
        kind = " (classification)" if task == TaskType.SEQ_CLS.value else ""
        raise ValueError(
            f"{adapter}: the adapter is a {task}{kind} adapter; generate needs a "
            f"{TaskType.CAUSAL_LM.value} one (fine-tuned on a causal_lm task such as docstrings)"
        )


def _cmd_generate(args: argparse.Namespace) -> int:
    from .creation import tensor  # noqa: PLC0415
    from .jobs.pretrain import default_base_dir  # noqa: PLC0415
    from .models import AutoModelForCausalLM  # noqa: PLC0415
    from .tokenizer import Tokenizer  # noqa: PLC0415

    do_sample, temperature = _sampling(args)
    if args.adapter:
        _check_causal_lm_adapter(args.adapter)
    path = args.model or default_base_dir()
    tokenizer = Tokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, device=args.device)
    if args.adapter:
        from .peft import PeftModel  # noqa: PLC0415

        model = PeftModel.from_pretrained(model, args.adapter)
    ids = tokenizer.encode(args.prompt)
    if not ids:
        raise ValueError(f"the prompt {args.prompt!r} encodes to no tokens")
    out = model.generate(
        tensor([ids], device=args.device), max_new_tokens=args.max_new_tokens,
        do_sample=do_sample, temperature=temperature, top_k=args.top_k, top_p=args.top_p,
        eos_token_id=tokenizer.eos_token_id, seed=args.seed,
    )  # fmt: skip
    print(tokenizer.decode(out.numpy()[0].tolist()))
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from .jobs.finetune import finetune  # noqa: PLC0415
    from .jobs.pretrain import default_base_dir  # noqa: PLC0415

    model = args.model or default_base_dir()
    r = finetune(model, task=args.task, out=args.out, method=args.method, r=args.r,
                 alpha=args.alpha, dropout=args.dropout, targets=args.targets, steps=args.steps,
                 lr=args.lr, batch_size=args.batch_size, device=args.device, seed=args.seed,
                 progress=not args.quiet)  # fmt: skip
    m = r.metric
    print(f"{args.task}: {m} {r.before[m]:.4f} -> {r.after[m]:.4f}; adapter saved to "
          f"{r.adapter_path} ({r.adapter_bytes:,} bytes) in {r.seconds:.0f} s")  # fmt: skip
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from .jobs.finetune import merge  # noqa: PLC0415
    from .jobs.pretrain import default_base_dir  # noqa: PLC0415

    merge(args.model or default_base_dir(), args.adapter, args.out, device=args.device)
    print(f"merged model saved to {args.out}")
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from .jobs.quickstart import quickstart  # noqa: PLC0415

    quickstart(out=args.out, steps=args.steps, device=args.device, progress=not args.quiet)
    return 0


def _common(p: argparse.ArgumentParser, steps: int, lr: float | None = None) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=steps, help=f"optimizer steps (default {steps})")
    if lr is not None:
        p.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr})")
        p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minipeft",
        description="A from-scratch autograd engine and the PEFT methods built on it.",
    )
    parser.add_argument("--version", action="version", version=f"minipeft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("info", help="print the version, the backends available and the devices")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("quickstart", help="pretrain (if not cached), LoRA fine-tune, merge, "
                       "print a before/after table")  # fmt: skip
    p.add_argument("--out", default="runs/quickstart", help="where the adapter and merged model go")
    _common(p, steps=150)
    p.set_defaults(func=_cmd_quickstart)

    p = sub.add_parser("pretrain", help="train a small GPT-2 and its tokenizer on offline text")
    p.add_argument("--out", default=None, help="output folder (default: the cache, "
                   "$MINIPEFT_CACHE or ~/.cache/minipeft/base-gpt2)")  # fmt: skip
    p.add_argument("--corpus", default=None, help="a .txt file or a folder of them "
                   "(default: the Python documentation topics)")  # fmt: skip
    p.add_argument("--preset", default="default", help="model size: default, cpu-tiny or nano")
    _common(p, steps=400, lr=3e-3)
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("generate", help="continue a prompt with a model (and an adapter)")
    p.add_argument("--model", default=None, help="HF folder (default: the cached base model)")
    p.add_argument("--adapter", default=None, help="a LoRA adapter folder to apply")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature; 0 "
                   "= greedy (the default, unless --top-k/--top-p is given: then 1.0)")  # fmt: skip
    p.add_argument("--top-k", type=int, default=None, help="sample from the k likeliest tokens")
    p.add_argument("--top-p", type=float, default=None,
                   help="sample from the smallest set of tokens with probability >= p")  # fmt: skip
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("finetune", help="fine-tune with a PEFT method and save the adapter")
    p.add_argument("--method", default="lora", choices=["lora"])
    p.add_argument("--model", default=None, help="HF folder (default: the cached base model)")
    p.add_argument("--task", default="docstrings", help="docstrings or docstring-topic")
    p.add_argument("--out", default=None, help="adapter folder (default runs/lora-<task>)")
    p.add_argument("--r", type=int, default=8, help="LoRA rank")
    p.add_argument("--alpha", type=float, default=16, help="LoRA alpha (scaling alpha/r)")
    p.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout")
    p.add_argument("--targets", nargs="+", default=None, help="target module names "
                   "(default: the architecture's; 'all-linear' for every linear)")  # fmt: skip
    _common(p, steps=150, lr=1e-2)
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("merge", help="merge an adapter into its base and save an HF folder")
    p.add_argument("--model", default=None, help="HF folder (default: the cached base model)")
    p.add_argument("--adapter", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_merge)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        if getattr(args, "device", None) is not None:
            from .backend import check_device  # noqa: PLC0415

            check_device(args.device)  # fail now, not after minutes of tokenizer training
        return int(args.func(args) or 0)
    except (ValueError, OSError, TypeError, RuntimeError) as exc:
        # Bad input (a wrong path, config or device) gets one clear line, not a traceback.
        if os.environ.get("MINIPEFT_DEBUG"):
            raise
        print(f"minipeft {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
