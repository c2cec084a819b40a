"""Lazy public names for package `__init__` files (PEP 562): `--help` and light imports stay fast.

A package lists which submodule holds each public name; the submodule (and torch, transformers, TRL
or ONNX Runtime behind it) is imported on first access, not when the package is.
"""

import importlib
from typing import Callable


def lazy_names(package: str, names: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list]]:
    """`__getattr__` and `__dir__` for `package`, resolving `names[attr]` (a relative module) on access.

    Use: `__getattr__, __dir__ = lazy_names(__name__, {"LlavaConfig": ".configuration_llava"})`.
    """

    def __getattr__(attr: str):
        if attr not in names:
            raise AttributeError(f"module {package!r} has no attribute {attr!r}")
        value = getattr(importlib.import_module(names[attr], package), attr)
        setattr(importlib.import_module(package), attr, value)  # cache: later lookups skip __getattr__
        return value

    def __dir__() -> list:
        return sorted(set(names) | set(vars(importlib.import_module(package))))

    return __getattr__, __dir__


__all__ = ["lazy_names"]
