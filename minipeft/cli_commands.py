"""What each ``minipeft`` subcommand does (the parser and ``main`` are in :mod:`minipeft.cli`).

Each command imports what it needs lazily, so ``--version`` and ``info`` start instantly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from . import __version__

__all__ = [
    "cmd_combine",
    "cmd_convert",
    "cmd_eval",
    "cmd_export_gguf",
    "cmd_finetune",
    "cmd_generate",
    "cmd_info",
    "cmd_merge",
    "cmd_predict",
    "cmd_pretrain",
    "cmd_quickstart",
    "cmd_rank_analysis",
]


# ------------------------------------------------------------------------------ model folders
def _default_base() -> Path:
    from .jobs.pretrain import default_base_dir  # noqa: PLC0415

    return default_base_dir()


def _model_dir(path: str | None, adapter: str | None = None) -> str:
    """The base model folder: ``--model``, else the adapter's recorded local base, else the
    cache; a missing folder is an error that says what to do. ``--model`` may also be a
    ``.gguf`` file or a known checkpoint name (``smollm2-135m``: its installed file)."""
    if path is None and adapter is not None:
        from .peft.adapter_io import read_adapter_config  # noqa: PLC0415

        recorded = getattr(read_adapter_config(adapter), "base_model_name_or_path", None)
        if recorded and (Path(recorded) / "config.json").is_file():
            return recorded
    if path is None:
        base = _default_base()
        if not (base / "config.json").is_file():
            raise ValueError(
                f"no base model yet at {base} (the cache, $MINIPEFT_CACHE): build it with "
                "`minipeft pretrain` (a few minutes on a CPU) or `minipeft quickstart`, or pass "
                "--model DIR"
            )
        return os.fspath(base)
    from .models.checkpoints import known_names_hint, resolve_model  # noqa: PLC0415

    path = os.fspath(resolve_model(path))
    if path.lower().endswith(".gguf") and Path(path).is_file():
        return path
    if not (Path(path) / "config.json").is_file():
        what = "is not a folder" if not Path(path).is_dir() else "has no config.json"
        raise ValueError(
            f"--model {path!r} {what}: expected a local Hugging Face model folder (config.json, "
            "model.safetensors, tokenizer.json), such as `minipeft pretrain` or transformers' "
            f"save_pretrained writes, a .gguf file, or a name ({known_names_hint()}). minipeft "
            "never downloads: hub ids such as 'gpt2' are not fetched"
        )
    return path


# ------------------------------------------------------------------------------ commands
def cmd_info(args: argparse.Namespace) -> int:
    from .backend import backend_info  # noqa: PLC0415
    from .threads import get_num_threads  # noqa: PLC0415

    info = backend_info()
    print(f"minipeft {__version__}")
    print(f"python   {sys.version.split()[0]}")
    print(f"numpy    {info['numpy']}")
    print(f"cupy     {info['cupy'] or 'not available'}")
    print(f"devices  {', '.join(info['devices'])}")
    cuda = info["cuda"]
    print(f"cuda     {cuda if info['cupy'] else 'unavailable (' + cuda + ')'}")
    print(f"threads  {get_num_threads()} BLAS thread(s) (--threads / MINIPEFT_NUM_THREADS)")
    return 0


def _train_flags(args: argparse.Namespace) -> dict:
    return {"steps": args.steps, "lr": args.lr, "batch_size": args.batch_size,
            "warmup": args.warmup, "grad_accum": args.grad_accum, "eval_every": args.eval_every,
            "save_every": args.save_every, "seed": args.seed,
            "precision": args.precision}  # fmt: skip


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .jobs.pretrain import pretrain  # noqa: PLC0415

    args._out = args.out or os.fspath(_default_base())
    pretrain(out=args.out, corpus=args.corpus, preset=args.preset, device=args.device,
             resume=args.resume, overwrite=args.overwrite, progress=not args.quiet,
             **_train_flags(args))  # fmt: skip
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
    from .peft import TaskType  # noqa: PLC0415
    from .peft.adapter_io import read_adapter_config  # noqa: PLC0415

    task = read_adapter_config(adapter).task_type
    task = getattr(task, "value", task)
    if task not in (None, TaskType.CAUSAL_LM.value):
        kind = " (classification: use minipeft predict)" if task == TaskType.SEQ_CLS.value else ""
        raise ValueError(
            f"{adapter}: the adapter is a {task}{kind} adapter; generate needs a "
            f"{TaskType.CAUSAL_LM.value} one (fine-tuned on a causal_lm task such as docstrings)"
        )


def cmd_generate(args: argparse.Namespace) -> int:
    from .creation import tensor  # noqa: PLC0415
    from .jobs.inference import load_for_inference  # noqa: PLC0415
    from .tokenizer import Tokenizer  # noqa: PLC0415

    do_sample, temperature = _sampling(args)
    if args.adapter:
        _check_causal_lm_adapter(args.adapter)
    path = _model_dir(args.model, args.adapter)
    tokenizer = Tokenizer.from_pretrained(path)
    model, kind = load_for_inference(path, args.adapter, args.device, args.strict)
    if kind != "causal_lm":
        raise ValueError(f"--model {path!r} is a classifier; use minipeft predict with it")
    if args.chat is not None:
        from .models.chat import chat  # noqa: PLC0415

        chat(model, tokenizer, args.chat, system=args.system,
             write=lambda t: print(t, end="", flush=True), max_new_tokens=args.max_new_tokens,
             do_sample=do_sample, temperature=temperature, top_k=args.top_k, top_p=args.top_p,
             seed=args.seed)  # fmt: skip
        print()
        return 0
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


def cmd_finetune(args: argparse.Namespace) -> int:
    from .jobs.finetune import finetune  # noqa: PLC0415

    model = None if args.resume and args.model is None else _model_dir(args.model)
    if args.out is None:
        args.out = os.fspath(Path("runs") / f"{args.method or 'lora'}-{args.task or 'docstrings'}")
    r = finetune(model, task=args.task, out=args.out, method=args.method, r=args.r,
                 alpha=args.alpha, dropout=args.dropout, targets=args.targets,
                 reduction_factor=args.reduction_factor, non_linearity=args.non_linearity,
                 overrides=_field_overrides(args.set), device=args.device, resume=args.resume,
                 overwrite=args.overwrite, progress=not args.quiet,
                 **_train_flags(args))  # fmt: skip
    m = r.metric
    what = "model" if r.method == "full" else "adapter"
    print(f"{r.task}: {m} {r.before[m]:.4f} -> {r.after[m]:.4f}; {what} saved to "
          f"{r.adapter_path} ({r.adapter_bytes:,} bytes) in {r.seconds:.0f} s")  # fmt: skip
    return 0


def _field_overrides(items: list[str] | None) -> dict[str, Any] | None:
    """``--set r=16 target_modules=q_proj,v_proj scaling=learned`` -> a dict of config fields.
    A value is read as JSON when it parses (16, 1.5, true, null, ["a"]), else a comma makes a
    list of strings, else it is a string."""
    if not items:
        return None
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set: expected FIELD=VALUE, found {item!r}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = [v for v in raw.split(",") if v] if "," in raw else raw
        out[key] = value
    return out


def _texts(args: argparse.Namespace) -> list[str]:
    if args.file is None:
        return list(args.text)
    if args.file == "-":
        lines = sys.stdin.read().splitlines()
    else:
        lines = Path(args.file).read_text(encoding="utf-8").splitlines()
    return list(args.text or []) + [ln for ln in lines if ln.strip()]


def cmd_predict(args: argparse.Namespace) -> int:
    from .jobs.predict import predict  # noqa: PLC0415

    if not args.text and args.file is None:
        raise ValueError("predict: expected --text TEXT (repeatable) or --file F (one per line)")
    texts = _texts(args)
    preds = predict(_model_dir(args.model, args.adapter), texts, adapter=args.adapter,
                    device=args.device, strict=args.strict)  # fmt: skip
    for p in preds:
        if args.json:
            print(json.dumps({"text": p.text, "label": p.label, "probabilities": p.probabilities}))
        else:
            short = p.text if len(p.text) <= 60 else p.text[:57] + "..."
            print(f"{p.label}\t{p.probabilities[p.label]:.3f}\t{short}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .jobs.predict import evaluate_task  # noqa: PLC0415

    metrics = evaluate_task(_model_dir(args.model, args.adapter), args.task,
                            adapter=args.adapter, device=args.device,
                            strict=args.strict)  # fmt: skip
    print(f"{args.task} (held-out split): " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from .jobs.inference import merge  # noqa: PLC0415

    merge(_model_dir(args.model, args.adapter), args.adapter, args.out, device=args.device,
          strict=args.strict, overwrite=args.overwrite)  # fmt: skip
    print(f"merged model saved to {args.out}")
    return 0


def cmd_combine(args: argparse.Namespace) -> int:
    from .jobs.combine import combine  # noqa: PLC0415

    combine(_model_dir(args.model, args.adapters[0]), args.adapters, args.weights, args.out,
            combination_type=args.combination_type, svd_rank=args.svd_rank,
            density=args.density, majority_sign_method=args.majority_sign_method,
            seed=args.seed, device=args.device, overwrite=args.overwrite)  # fmt: skip
    print(f"combined adapter ({args.combination_type}) saved to {args.out}")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from .jobs.quantize import quantize  # noqa: PLC0415

    out = quantize(_model_dir(args.model), args.out, quant_type=args.quant_type,
                   blocksize=args.blocksize, double_quant=not args.no_double_quant,
                   overwrite=args.overwrite)  # fmt: skip
    print(f"4-bit model saved to {out}")
    return 0


def cmd_export_gguf(args: argparse.Namespace) -> int:
    from .jobs.export import export  # noqa: PLC0415

    out = export(_model_dir(args.model, args.adapter), args.out, adapter=args.adapter,
                 dtype=args.gguf_type, overwrite=args.overwrite, device=args.device,
                 strict=args.strict)  # fmt: skip
    print(f"GGUF ({args.gguf_type}) saved to {out}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .jobs.convert import convert  # noqa: PLC0415

    out = convert(args.model, args.out, overwrite=args.overwrite)
    print(f"Hugging Face folder saved to {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .jobs.compare import compare  # noqa: PLC0415

    compare(out=args.out, methods=args.methods, task=args.task, model=args.model,
            steps=args.steps, quick=args.quick, seed=args.seed, device=args.device,
            precision=args.precision, resume=args.resume, overwrite=args.overwrite,
            progress=not args.quiet)  # fmt: skip
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from .jobs.quickstart import quickstart  # noqa: PLC0415

    quickstart(out=args.out, steps=args.steps, device=args.device, seed=args.seed,
               progress=not args.quiet)  # fmt: skip
    return 0


def cmd_rank_analysis(args: argparse.Namespace) -> int:
    from .jobs.rank_analysis import rank_analysis  # noqa: PLC0415

    model = None if args.model is None else _model_dir(args.model)
    try:
        rank_analysis(model, task=args.task, steps=args.steps, ranks=tuple(args.ranks),
                      lora_r=tuple(args.lora_r), device=args.device, seed=args.seed,
                      out=args.out, overwrite=args.overwrite, progress=not args.quiet)  # fmt: skip
    except KeyboardInterrupt:  # its fine-tunes are parts of one job: no --resume to offer
        print(f"\nminipeft rank-analysis: interrupted; run it again with --overwrite to start "
              f"over in {args.out}", file=sys.stderr)  # fmt: skip
        return 130  # 128 + SIGINT
    return 0
