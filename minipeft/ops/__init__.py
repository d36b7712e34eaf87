"""Primitive differentiable ops (Function classes), grouped by kind, and their Tensor API."""
