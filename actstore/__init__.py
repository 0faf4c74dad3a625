"""actstore: capture neural-network activations into chunked, compressed stores and train SAEs on them."""

from __future__ import annotations

__version__ = "0.1.0"

from ._config import CODECS, StoreConfig
from ._errors import (
    ActStoreError,
    CorruptStoreError,
    FormatVersionError,
    InvalidNameError,
    NotAStoreError,
    SchemaMismatchError,
    StoreExistsError,
    StoreIndexError,
    StoreLockedError,
    UnknownKeyError,
    WriterClosedError,
    WriterFailedError,
)
from ._format import FORMAT_VERSION, NO_STEP
from ._loader import ActDataset, ActLoader, LoaderConfig
from ._reader import ActStore
from ._view import ActView
from ._writer import StoreWriter, create

__all__ = [
    "CODECS",
    "FORMAT_VERSION",
    "NO_STEP",
    "ActDataset",
    "ActLoader",
    "ActStore",
    "ActStoreError",
    "ActView",
    "CorruptStoreError",
    "FormatVersionError",
    "InvalidNameError",
    "LoaderConfig",
    "NotAStoreError",
    "SchemaMismatchError",
    "StoreConfig",
    "StoreExistsError",
    "StoreIndexError",
    "StoreLockedError",
    "StoreWriter",
    "UnknownKeyError",
    "WriterClosedError",
    "WriterFailedError",
    "__version__",
    "create",
]
