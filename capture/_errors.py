"""Errors raised by the capture package.

Each error derives from the store's root error (``actstore.ActStoreError``) and from the builtin a caller would
catch, so ``except ValueError`` and ``except ActStoreError`` both work.
"""

from __future__ import annotations

from actstore import ActStoreError, ConfigError

__all__ = ["ActStoreError", "CaptureConfigError", "CaptureError", "ModelSpecError", "SiteError",
           "SiteOutputError", "UntrainedHeadError"]


class CaptureError(ActStoreError, RuntimeError):
    """Capture failed while the model ran (a hook saw something it could not store)."""


class SiteError(ActStoreError, ValueError):
    """A capture site names a module, layer or role the model does not have."""


class SiteOutputError(CaptureError, ValueError):
    """A hooked module's output is not the (B, T, D) tensor a site can store (wrong type, rank, batch or tokens),
    or its layout is ambiguous (a sequence-first module, a tuple with several candidates) and the site does not say
    how to read it."""


class ModelSpecError(ActStoreError, ValueError):
    """A model name, factory spec or adapter option is not valid."""


class CaptureConfigError(ActStoreError, ValueError):
    """A capture configuration value outside its valid range."""


class UntrainedHeadError(ConfigError):
    """A lens was asked to decode through a head that holds no trained weights (a refused option: an
    ``actstore.ConfigError``, hence a ``ValueError``; the ``actstore lens`` CLI exits 2)."""
