"""Small models shared by the layer tests: a two-layer toy with an optional GPT-2 ``Conv1D``."""

from __future__ import annotations

import numpy as np

import minipeft as mp
from minipeft import nn

__all__ = ["Conv1D", "Toy", "inputs", "out", "weights"]


class Conv1D(nn.Module):
    """Hugging Face GPT-2's Conv1D: ``y = x W + b`` with W stored (d_in, d_out)."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.shape
        self.weight = nn.Parameter(mp.tensor(weight))
        self.bias = nn.Parameter(mp.tensor(bias))

    def forward(self, x: mp.Tensor) -> mp.Tensor:
        return x @ self.weight + self.bias


class Toy(nn.Module):
    """x (N, d_in) → fc1 → tanh → fc2 (Linear or Conv1D) → head (never targeted) → (N, 2)."""

    def __init__(
        self, d_in: int, d_hid: int, d_out: int, dtype: str, conv: bool = False, seed: int = 0
    ) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)

        def linear(n_in: int, n_out: int) -> nn.Linear:
            layer = nn.Linear(n_in, n_out, dtype=dtype)
            layer.weight.data[...] = rng.normal(size=(n_out, n_in))
            layer.bias.data[...] = rng.normal(size=n_out)
            return layer

        self.fc1 = linear(d_in, d_hid)
        if conv:
            w, b = rng.normal(size=(d_hid, d_out)), rng.normal(size=d_out)
            self.fc2 = Conv1D(w.astype(dtype), b.astype(dtype))
        else:
            self.fc2 = linear(d_hid, d_out)
        self.head = linear(d_out, 2)

    def forward(self, x: mp.Tensor) -> mp.Tensor:
        return self.head(self.fc2(self.fc1(x).tanh()))


def inputs(setup: dict, device: str = "cpu") -> mp.Tensor:
    """A random input (*batch, d_in) for a toy setup (dims, dtype, seed[, batch])."""
    rng = np.random.default_rng(setup["seed"] + 1)
    shape = (*setup.get("batch", (3,)), setup["dims"][0])
    return mp.tensor(rng.normal(size=shape), dtype=setup["dtype"], device=device)


def out(model: nn.Module, x: mp.Tensor) -> np.ndarray:
    with mp.no_grad():
        return model(x).numpy()


def weights(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}
