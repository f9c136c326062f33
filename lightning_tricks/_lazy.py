"""Lazy re-exports for the subpackages (PEP 562), so importing one class does not import its siblings."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[list[str], Callable[[str], Any], Callable[[], list]]:
    """Return ``__all__``, ``__getattr__`` and ``__dir__`` for ``package`` exporting ``{name: submodule}``."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return list(exports), __getattr__, __dir__
