"""actstore: capture neural-network activations into chunked, compressed stores and train SAEs on them.

``import actstore`` is cheap: the error classes are imported at once, every other public name (and with it torch,
h5py, zarr or matplotlib) only when first used, so ``actstore --help`` / ``--version`` / ``info`` start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from ._errors import (
    ActStoreError,
    CorruptStoreError,
    FormatVersionError,
    InvalidNameError,
    NotAStoreError,
    SchemaMismatchError,
    StoreAccessError,
    StoreClosedError,
    StoreExistsError,
    StoreIndexError,
    StoreLockedError,
    UnknownKeyError,
    WriterClosedError,
    WriterFailedError,
)

if TYPE_CHECKING:
    from ._backend import store_exists
    from ._config import CODECS, ConfigError, StoreConfig
    from ._create import create
    from ._export import convert, export
    from ._features import FeatureSet, TopExamples
    from ._features_pass import FeaturePassConfig, feature_pass, load_sae
    from ._format import FORMAT_VERSION, NO_STEP
    from ._info import render_summary, summarize
    from ._loader import ActDataset, ActLoader
    from ._loader_config import LoaderConfig
    from ._parts import parse_part, part_path
    from ._reader import ActStore
    from ._reader import open_store as open  # noqa: A004
    from ._verify import VerifyReport, verify
    from ._view import ActView
    from ._writer import StoreWriter
    from .dashboard import DashboardConfig, write_dashboard

_LAZY: dict[str, tuple[str, str]] = {
    "CODECS": ("._config", "CODECS"),
    "ConfigError": ("._config", "ConfigError"),
    "StoreConfig": ("._config", "StoreConfig"),
    "FORMAT_VERSION": ("._format", "FORMAT_VERSION"),
    "NO_STEP": ("._format", "NO_STEP"),
    "ActDataset": ("._loader", "ActDataset"),
    "ActLoader": ("._loader", "ActLoader"),
    "LoaderConfig": ("._loader_config", "LoaderConfig"),
    "ActStore": ("._reader", "ActStore"),
    "open": ("._reader", "open_store"),
    "ActView": ("._view", "ActView"),
    "StoreWriter": ("._writer", "StoreWriter"),
    "create": ("._create", "create"),
    "verify": ("._verify", "verify"),
    "VerifyReport": ("._verify", "VerifyReport"),
    "export": ("._export", "export"),
    "convert": ("._export", "convert"),
    "summarize": ("._info", "summarize"),
    "render_summary": ("._info", "render_summary"),
    "store_exists": ("._backend", "store_exists"),
    "parse_part": ("._parts", "parse_part"),
    "part_path": ("._parts", "part_path"),
    "FeatureSet": ("._features", "FeatureSet"),
    "TopExamples": ("._features", "TopExamples"),
    "FeaturePassConfig": ("._features_pass", "FeaturePassConfig"),
    "feature_pass": ("._features_pass", "feature_pass"),
    "load_sae": ("._features_pass", "load_sae"),
    "DashboardConfig": (".dashboard", "DashboardConfig"),
    "write_dashboard": (".dashboard", "write_dashboard"),
}
"""Public name -> (private module, attribute), imported on first access (PEP 562)."""


def __getattr__(name: str) -> Any:
    spec = _LAZY.get(name)
    if spec is None:
        raise AttributeError(f"module 'actstore' has no attribute {name!r}")
    value = getattr(importlib.import_module(spec[0], __name__), spec[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CODECS",
    "FORMAT_VERSION",
    "NO_STEP",
    "ActDataset",
    "ActLoader",
    "ActStore",
    "ActStoreError",
    "ActView",
    "ConfigError",
    "DashboardConfig",
    "FeaturePassConfig",
    "FeatureSet",
    "CorruptStoreError",
    "FormatVersionError",
    "InvalidNameError",
    "LoaderConfig",
    "NotAStoreError",
    "SchemaMismatchError",
    "StoreAccessError",
    "StoreClosedError",
    "StoreConfig",
    "StoreExistsError",
    "StoreIndexError",
    "StoreLockedError",
    "StoreWriter",
    "TopExamples",
    "UnknownKeyError",
    "VerifyReport",
    "WriterClosedError",
    "WriterFailedError",
    "__version__",
    "convert",
    "create",
    "export",
    "feature_pass",
    "load_sae",
    "open",
    "parse_part",
    "part_path",
    "render_summary",
    "store_exists",
    "summarize",
    "verify",
    "write_dashboard",
]
