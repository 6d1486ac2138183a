"""Methods for modality imbalance, the shared model parts they build on, and their registry.

Importing this package registers every method module listed in `_METHOD_MODULES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from methods.parts.base import BatchSource, Method, RunContext, StepInfo
from methods.parts.encoders import create_encoder, list_encoders
from methods.parts.fusion import create_fusion, list_fusions
from methods.parts.registry import METHODS, MethodConfigError, register_method

_METHOD_MODULES = (
    "joint",
    "ogm_ge",
    "pmr",
    "agm",
    "mie",
    "unimodal",
    "umt",
    "mmpareto",
    "mmcosine",
    "inforeg",
    "greedy",
    "relearn",
    "g_blending",
    "reconboost",
    "mla",
)

for _module in _METHOD_MODULES:
    importlib.import_module(f"methods.{_module}")


def list_methods(pattern: str = "*") -> list[str]:
    return METHODS.names(pattern)


def get_method_class(name: str) -> type[Method]:
    return METHODS.get(name)


def create_method(
    name: str,
    encoders: Mapping[str, Any],
    num_classes: int,
    hp: Mapping[str, Any],
    ctx: RunContext,
) -> Method:
    """Build the registered method `name`; unknown names and keys raise MethodConfigError."""
    return METHODS.get(name)(encoders, num_classes, hp, ctx)


__all__ = [
    "BatchSource",
    "Method",
    "MethodConfigError",
    "RunContext",
    "StepInfo",
    "create_encoder",
    "create_fusion",
    "create_method",
    "get_method_class",
    "list_encoders",
    "list_fusions",
    "list_methods",
    "register_method",
]
