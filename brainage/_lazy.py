"""Lazy exports for package ``__init__`` modules (PEP 562), so importing a package is cheap."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[list[str], Callable[[str], Any]]:
    """``__all__`` and a module ``__getattr__`` resolving ``name`` from ``package.<exports[name]>``.

    Usage in a package: ``__all__, __getattr__ = lazy_exports(__name__, {"train": "trainer"})``.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return sorted(exports), __getattr__
