"""Old module paths that still work: each forwards its names to their new home with a FutureWarning."""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable


def forward_names(old_module: str, homes: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``old_module``: ``homes`` maps each moved name to the module that holds it now."""

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        warnings.warn(f"{old_module}.{name} moved to {homes[name]}.{name}; import it from there (or from "
                      "llmembed_hf). The old path will be removed in a future release.", FutureWarning, stacklevel=2)
        return getattr(importlib.import_module(homes[name]), name)

    return __getattr__
