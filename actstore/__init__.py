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
    ConfigError,
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
    from .format._codec import CODECS
    from .format._format import FORMAT_VERSION, NO_STEP
    from .read._reader import ActStore
    from .read._reader import open_store as open  # noqa: A004
    from .read._view import ActView
    from .storage._backend import store_exists
    from .storage._parts import parse_part, part_path
    from .tools._export import convert, export
    from .tools._features import FeatureSet, TopExamples
    from .tools._features_pass import FeaturePassConfig, feature_pass, load_sae
    from .tools._info import render_summary, summarize
    from .tools._verify import VerifyReport, verify
    from .tools.dashboard import DashboardConfig, write_dashboard
    from .train._loader import ActDataset, ActLoader
    from .train._loader_config import LoaderConfig
    from .write._config import StoreConfig
    from .write._create import create
    from .write._writer import StoreWriter

_LAZY: dict[str, tuple[str, str]] = {
    "CODECS": (".format._codec", "CODECS"),
    "StoreConfig": (".write._config", "StoreConfig"),
    "FORMAT_VERSION": (".format._format", "FORMAT_VERSION"),
    "NO_STEP": (".format._format", "NO_STEP"),
    "ActDataset": (".train._loader", "ActDataset"),
    "ActLoader": (".train._loader", "ActLoader"),
    "LoaderConfig": (".train._loader_config", "LoaderConfig"),
    "ActStore": (".read._reader", "ActStore"),
    "open": (".read._reader", "open_store"),
    "ActView": (".read._view", "ActView"),
    "StoreWriter": (".write._writer", "StoreWriter"),
    "create": (".write._create", "create"),
    "verify": (".tools._verify", "verify"),
    "VerifyReport": (".tools._verify", "VerifyReport"),
    "export": (".tools._export", "export"),
    "convert": (".tools._export", "convert"),
    "summarize": (".tools._info", "summarize"),
    "render_summary": (".tools._info", "render_summary"),
    "store_exists": (".storage._backend", "store_exists"),
    "parse_part": (".storage._parts", "parse_part"),
    "part_path": (".storage._parts", "part_path"),
    "FeatureSet": (".tools._features", "FeatureSet"),
    "TopExamples": (".tools._features", "TopExamples"),
    "FeaturePassConfig": (".tools._features_pass", "FeaturePassConfig"),
    "feature_pass": (".tools._features_pass", "feature_pass"),
    "load_sae": (".tools._features_pass", "load_sae"),
    "DashboardConfig": (".tools.dashboard", "DashboardConfig"),
    "write_dashboard": (".tools.dashboard", "write_dashboard"),
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
