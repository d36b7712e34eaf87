"""``Parameter`` and ``Module``: the tree of layers that holds a model's weights.

A :class:`Module` is PyTorch's ``nn.Module`` made small. Assigning an attribute registers it:

    self.weight = Parameter(...)         # -> self._parameters["weight"]
    self.attn = Attention(...)           # -> self._modules["attn"]
    self.register_buffer("mask", t)      # -> self._buffers["mask"] (saved, never trained)

Everything else follows from walking that tree: ``named_parameters()`` gives dotted names
(``"h.0.attn.c_attn.weight"``), ``state_dict()`` maps those names to tensors, ``to(...)`` moves
every tensor in place, and ``get_submodule`` / ``set_submodule`` are the seams PEFT uses to find
a layer by name and replace it with a wrapper around it.

Identity matters: a tied weight (one Parameter reachable from two modules) is *one* trainable
tensor, so ``parameters()`` yields it once, while ``state_dict()`` lists it under every name
(as PyTorch does, so checkpoints load either way). ``to(...)`` and ``load_state_dict`` change
tensors' arrays in place and never replace the Parameter objects an optimizer holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from ..tensor import Tensor
from .module_repr import module_repr
from .move import move_tensors_, parse_to_args
from .parameter import Parameter
from .state_dict import IncompatibleKeys, load_state_dict_into

__all__ = ["Parameter", "Module", "IncompatibleKeys"]


class Module:
    """Base class of every layer and model (PyTorch's ``nn.Module`` semantics).

    Subclasses call ``super().__init__()`` (no arguments) first, assign their Parameters and
    sub-Modules as attributes, and define ``forward``; calling the module calls ``forward``.
    """

    training: bool

    def __init__(self) -> None:
        # object.__setattr__ bypasses our registering __setattr__ for the bookkeeping itself.
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_non_persistent_buffers", set())
        object.__setattr__(self, "_modules", {})

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------------ registration
    def _check_init(self, what: str) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(
                f"cannot assign {what} before Module.__init__() call: call super().__init__() "
                f"first in {type(self).__name__}.__init__"
            )

    def _unregister(self, name: str, keep: str = "") -> None:
        """Drop ``name`` from every registry except ``keep`` (replacing keeps the position)."""
        for store in ("_parameters", "_buffers", "_modules"):
            if store != keep:
                self.__dict__[store].pop(name, None)
        if keep != "_buffers":
            self.__dict__["_non_persistent_buffers"].discard(name)

    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__
        if isinstance(value, Parameter):
            self._check_init("parameters")
            self._unregister(name, keep="_parameters")
            d.pop(name, None)
            d["_parameters"][name] = value
        elif isinstance(value, Module):
            self._check_init("modules")
            self._unregister(name, keep="_modules")
            d.pop(name, None)
            d["_modules"][name] = value
        elif "_parameters" in d and name in d["_parameters"] and isinstance(value, Tensor):
            raise TypeError(
                f"cannot assign a plain Tensor as parameter {name!r} of {type(self).__name__}: "
                "expected a Parameter (wrap it: Parameter(t)) or None"
            )
        elif "_buffers" in d and name in d["_buffers"] and isinstance(value, Tensor):
            d["_buffers"][name] = value  # replacing a buffer keeps it a buffer
        else:
            if "_parameters" in d:
                self._unregister(name)  # None or a plain value ends any registration
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails; .get() keeps half-built objects (deepcopy) safe.
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            found = d.get(store)
            if found is not None and name in found:
                return found[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name: str) -> None:
        d = self.__dict__
        if any(name in d.get(s, ()) for s in ("_parameters", "_buffers", "_modules")):
            self._unregister(name)
        else:
            object.__delattr__(self, name)

    def __dir__(self) -> list[str]:
        names = set(super().__dir__())
        for store in ("_parameters", "_buffers", "_modules"):
            names.update(self.__dict__.get(store, {}))
        return sorted(names)

    def _check_name(self, name: Any, kind: str) -> None:
        """A new registration needs a dotless name not already used by another attribute."""
        if not isinstance(name, str):
            raise TypeError(f"{kind} name must be a str, found {type(name).__name__}")
        if name == "" or "." in name:
            raise KeyError(f"{kind} name must be non-empty and contain no '.', found {name!r}")
        if getattr(self, name, None) is not None:
            raise KeyError(f"attribute {name!r} already exists on {type(self).__name__}")

    def register_buffer(self, name: str, tensor: Tensor | None, persistent: bool = True) -> None:
        """Register a non-trainable tensor (a mask, running statistics, quantized weights).

        Persistent buffers appear in ``state_dict``; ``to(...)`` moves all of them. ``None``
        removes the buffer.
        """
        self._check_init("buffers")
        if name not in self._buffers:
            self._check_name(name, "buffer")
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"buffer {name!r} must be a Tensor or None, found {type(tensor)}")
        self._unregister(name, keep="_buffers" if tensor is not None else "")
        self.__dict__.pop(name, None)
        if tensor is None:
            return
        self._buffers[name] = tensor
        self._non_persistent_buffers.discard(name)
        if not persistent:
            self._non_persistent_buffers.add(name)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Register ``param`` under ``name`` (``None`` removes it)."""
        self._check_init("parameters")
        if name not in self._parameters:
            self._check_name(name, "parameter")
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"parameter {name!r} must be a Parameter or None, found {type(param)}")
        setattr(self, name, param)

    def add_module(self, name: str, module: Module | None) -> None:
        """Register a child module under ``name`` (any string without a dot, e.g. ``"0"``)."""
        self._check_init("modules")
        if name not in self._modules:
            self._check_name(name, "module")
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{name!r} must be a Module or None, found {type(module).__name__}")
        setattr(self, name, module)

    register_module = add_module

    # ------------------------------------------------------------------ walking the tree
    def named_modules(
        self, memo: set[int] | None = None, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Module]]:
        """``(dotted_path, module)`` for this module (path ``""``) and all descendants."""
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            sub = f"{prefix}.{name}" if prefix else name
            yield from child.named_modules(memo, sub, remove_duplicate)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator[tuple[str, Module]]:
        seen: set[int] = set()
        for name, child in self._modules.items():
            if id(child) not in seen:
                seen.add(id(child))
                yield name, child

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def _named_members(
        self, store: str, prefix: str, recurse: bool, remove_duplicate: bool
    ) -> Iterator[tuple[str, Tensor]]:
        mods = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate)
        seen: set[int] = set()
        for mod_prefix, mod in mods if recurse else [(prefix, self)]:
            for name, t in getattr(mod, store).items():
                if remove_duplicate:
                    if id(t) in seen:
                        continue  # a tied tensor appears once, under its first name
                    seen.add(id(t))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), t

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Parameter]]:
        """``(dotted_name, parameter)`` pairs, each Parameter once (tied ones under one name)."""
        yield from self._named_members("_parameters", prefix, recurse, remove_duplicate)  # type: ignore[misc]

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Tensor]]:
        yield from self._named_members("_buffers", prefix, recurse, remove_duplicate)

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def num_parameters(self, only_trainable: bool = False) -> int:
        """Number of scalar parameters (each tied Parameter counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)

    # ------------------------------------------------------------------ surgery (PEFT's seam)
    def get_submodule(self, target: str) -> Module:
        """The module at a dotted path (``"h.0.attn.c_attn"``); ``""`` is this module."""
        if target == "":
            return self
        mod: Module = self
        walked = type(self).__name__
        for part in target.split("."):
            child = mod._modules.get(part)
            if child is None:
                found = "an attribute that is not a Module" if hasattr(mod, part) else "nothing"
                raise AttributeError(
                    f"get_submodule({target!r}): {walked} ({type(mod).__name__}) has no "
                    f"submodule {part!r} (found {found}); children: {list(mod._modules)}"
                )
            mod = child
            walked = f"{walked}.{part}" if walked else part
        return mod

    def set_submodule(self, target: str, module: Module, strict: bool = False) -> None:
        """Replace (or, unless ``strict``, add) the module at a dotted path, e.g. to wrap a
        ``Linear`` in a LoRA layer: ``model.set_submodule(name, LoraLinear(old))``."""
        if not isinstance(module, Module):
            raise TypeError(f"set_submodule expects a Module, found {type(module).__name__}")
        if target == "":
            raise ValueError("set_submodule needs a non-empty path (cannot replace the root)")
        parent_path, _, name = target.rpartition(".")
        parent = self.get_submodule(parent_path)
        if name not in parent._modules:
            if strict or hasattr(parent, name):
                what = "is not a Module" if hasattr(parent, name) else "does not exist"
                raise AttributeError(
                    f"set_submodule({target!r}): {name!r} on {type(parent).__name__} {what}"
                )
        parent.add_module(name, module)

    def get_parameter(self, target: str) -> Parameter:
        """The Parameter at a dotted path (``"h.0.attn.c_attn.weight"``)."""
        mod_path, _, name = target.rpartition(".")
        mod = self.get_submodule(mod_path)
        if name not in mod._parameters:
            raise AttributeError(
                f"get_parameter({target!r}): {type(mod).__name__} has no parameter {name!r}; "
                f"parameters: {list(mod._parameters)}"
            )
        return mod._parameters[name]

    def get_buffer(self, target: str) -> Tensor:
        mod_path, _, name = target.rpartition(".")
        mod = self.get_submodule(mod_path)
        if name not in mod._buffers:
            raise AttributeError(f"get_buffer({target!r}): {type(mod).__name__} has no {name!r}")
        return mod._buffers[name]

    # ------------------------------------------------------------------ state dict
    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        """This module's own tensors (no children); override to customise the saved form."""
        for name, p in self._parameters.items():
            destination[prefix + name] = p if keep_vars else p.detach()
        for name, b in self._buffers.items():
            if name not in self._non_persistent_buffers:
                destination[prefix + name] = b if keep_vars else b.detach()

    def state_dict(
        self, destination: dict | None = None, prefix: str = "", keep_vars: bool = False
    ) -> dict[str, Tensor]:
        """Name -> tensor for every parameter and persistent buffer (detached, sharing memory).

        Unlike ``named_parameters`` a tied tensor appears under *every* name that reaches it.
        """
        if destination is None:
            destination = {}
        self._save_to_state_dict(destination, prefix, keep_vars)
        for name, child in self._modules.items():
            child.state_dict(destination, prefix + name + ".", keep_vars)
        return destination

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> IncompatibleKeys:
        """Copy values into this model's tensors, in place (Parameter objects are kept).

        Values may be Tensors or NumPy/CuPy arrays; each is cast to the target's dtype and moved
        to its device. Shape mismatches always raise; with ``strict`` so do missing and
        unexpected keys. All problems are checked first and reported in one ``RuntimeError``;
        when it raises, nothing has been changed. ``assign=True`` makes each tensor adopt the
        given array (no copy when dtype and device already match) instead of copying into it.
        Returns ``(missing_keys, unexpected_keys)``.
        """
        return load_state_dict_into(self, state_dict, strict=strict, assign=assign)

    # ------------------------------------------------------------------ modes and moves
    def train(self, mode: bool = True) -> Module:
        """Set training mode (dropout active) on this module and every descendant."""
        if not isinstance(mode, bool):
            raise TypeError(f"train(mode) expects a bool, found {type(mode).__name__}")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        """Freeze (``False``) or unfreeze every parameter."""
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parameters():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad[...] = 0

    def _tensors(self) -> Iterator[Tensor]:
        seen: set[int] = set()
        for m in self.modules():
            for t in (*m._parameters.values(), *m._buffers.values()):
                if id(t) not in seen:
                    seen.add(id(t))
                    yield t

    def to(self, *args: Any, device: Any = None, dtype: Any = None) -> Module:
        """Move and/or cast every parameter and buffer **in place**: ``to("cuda")``,
        ``to(mp.float64)``, ``to("cuda", mp.float16)``. The Parameter objects stay the same
        (an optimizer made before keeps working); only float tensors change dtype."""
        device, dtype = parse_to_args(args, device, dtype)
        move_tensors_(self._tensors(), device, dtype)  # see move.py
        return self

    def cpu(self) -> Module:
        return self.to("cpu")

    def cuda(self) -> Module:
        return self.to("cuda")

    def float(self) -> Module:
        return self.to(np.float32)

    def double(self) -> Module:
        return self.to(np.float64)

    def half(self) -> Module:
        return self.to(np.float16)

    def apply(self, fn: Callable[[Module], Any]) -> Module:
        """Call ``fn`` on every descendant (children first) and then on this module."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # ------------------------------------------------------------------ repr
    def extra_repr(self) -> str:
        """One line of settings shown inside this module's repr (override in layers)."""
        return ""

    def __repr__(self) -> str:
        return module_repr(self)  # the nested PyTorch layout; see module_repr.py
