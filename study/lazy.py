"""Light package `__init__`s: a package re-exports its leaf modules' public names, each imported on first use.

A package `__init__` that imports its leaf modules eagerly makes importing any one leaf (`study.search.fidelity`)
import all of them (`study.search.tune` pulls Ray), so a function-level import "for start-up time" defers nothing.
With PEP 562's module `__getattr__` the package imports nothing until a name is asked for: `from study.search
import run_search` still works, and `import study.search.fidelity` costs only fidelity's own imports.

Standard library only: every package `__init__` imports it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(package: str, table: Mapping[str, Sequence[str]]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """`(__getattr__, __dir__, __all__)` for the package named `package`, whose leaf module `table` keys (names
    relative to the package: `"tune"`) export the names they map to. A name is imported from its leaf on first
    access and cached in the package's namespace; an unknown name raises AttributeError (so `from package import
    leaf` still finds a submodule). A name listed under two leaves raises ValueError at import time."""
    where: dict[str, str] = {}
    for leaf, names in table.items():
        for name in names:
            if name in where:
                raise ValueError(f"{package}: {name!r} is exported by both {where[name]!r} and {leaf!r}")
            where[name] = leaf
    exported = sorted(where)

    def __getattr__(name: str) -> Any:  # noqa: N807 - the PEP 562 hook's name
        leaf = where.get(name)
        if leaf is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(f"{package}.{leaf}")
        value = getattr(module, name)
        vars(importlib.import_module(package))[name] = value  # later lookups skip the hook
        return value

    def __dir__() -> list[str]:  # noqa: N807
        return sorted(set(vars(importlib.import_module(package))) | set(exported))

    return __getattr__, __dir__, exported
