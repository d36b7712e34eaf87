"""Load AdapterHub bottleneck adapters from disk and compare float64 logits.

Runs in the same venv as make_fixtures.py (adapters 1.3.0, see its docstring)::

    .venv-adapters/bin/python scripts/adapterhub/check_load.py \
        --base tests/fixtures/adapterhub/gpt2/base \
        --adapter tests/fixtures/adapterhub/gpt2/seq_bn \
        --input tests/fixtures/adapterhub/gpt2/reference.safetensors \
        --expected tests/fixtures/adapterhub/gpt2/reference.safetensors \
        --key logits.seq_bn

The base is loaded with transformers (AutoModelForCausalLM), ``adapters.init``
is applied and each ``--adapter`` folder is loaded with
``load_adapter(dir, use_safetensors=True)`` under the name saved in the folder.
One adapter is activated alone; with ``--stack`` all given adapters are
activated as ``Stack(a, b, ...)`` in the given order; with no ``--adapter`` the
base model is run. The model is cast to float64 and run on ``input_ids`` from
--input (no attention mask). Prints ``max |diff| = ...`` and exits 0 when the
max absolute difference to EXPECTED[KEY] is <= --tol, 1 otherwise.
"""

import argparse
import sys

import adapters
import torch
from adapters.composition import Stack
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", action="append", default=[])
    ap.add_argument("--stack", action="store_true")
    ap.add_argument("--input", required=True)
    ap.add_argument("--expected", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--tol", type=float, default=1e-5)
    args = ap.parse_args(argv)

    if len(args.adapter) > 1 and not args.stack:
        ap.error("several --adapter given: pass --stack to activate them as a Stack")

    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    adapters.init(model)
    names = []
    for folder in args.adapter:
        name = model.load_adapter(folder, use_safetensors=True)
        names.append(name)
    if not names:
        setup = None
    elif args.stack:
        setup = Stack(*names)
    else:
        setup = names[0]
    model.set_active_adapters(setup)
    model.double()
    model.eval()

    input_ids = load_file(args.input)["input_ids"].to(torch.int64)
    expected = load_file(args.expected)[args.key].to(torch.float64)
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
    if logits.shape != expected.shape:
        print(f"shape mismatch: got {tuple(logits.shape)}, expected {tuple(expected.shape)}")
        return 1
    diff = (logits.to(torch.float64) - expected).abs().max().item()
    print(f"max |diff| = {diff:.3e}")
    return 0 if diff <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
