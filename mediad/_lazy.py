"""Lazy public names for subpackages (PEP 562): ``import mediad.data`` stays cheap, and
``mediad.data.load_volume`` imports its module on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, homes: dict[str, str]
                 ) -> tuple[list[str], Callable[[str], Any]]:
    """``(__all__, __getattr__)`` for a package whose names live in its modules.

    Args:
        package: the package's ``__name__``.
        homes: public name -> module (relative to the package) that defines it.
    """

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{homes[name]}"), name)

    return sorted(homes), __getattr__
