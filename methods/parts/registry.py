"""Name -> factory registries for methods and encoders (timm-style: register, list, create)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any


class MethodConfigError(ValueError):
    """A user-facing configuration error inside `methods` (unknown name or key, bad value)."""


class Registry:
    """A registry of named factories; `kind` appears in error messages ("method", "encoder")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        def decorator(obj: Any) -> Any:
            if name in self._entries:
                raise RuntimeError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            if isinstance(obj, type):
                obj.name = name
            return obj

        return decorator

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def get(self, name: str) -> Any:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self.names())
            raise MethodConfigError(
                f"unknown {self.kind} {name!r}; known {self.kind}s: {known}"
            ) from None


METHODS = Registry("method")
ENCODERS = Registry("encoder")
FUSIONS = Registry("fusion head")

register_method = METHODS.register
register_encoder = ENCODERS.register
register_fusion = FUSIONS.register
