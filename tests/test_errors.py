"""One error hierarchy: every public error is an ActStoreError and the builtin a caller would catch."""

from __future__ import annotations

import pytest

import actstore
from actstore import _errors


@pytest.mark.parametrize(
    "cls, builtin",
    [
        (actstore.UnknownKeyError, KeyError),
        (actstore.InvalidNameError, ValueError),
        (actstore.SchemaMismatchError, ValueError),
        (actstore.StoreIndexError, IndexError),
        (actstore.NotAStoreError, FileNotFoundError),
        (actstore.StoreExistsError, FileExistsError),
        (actstore.FormatVersionError, ValueError),
        (actstore.CorruptStoreError, OSError),
        (actstore.StoreLockedError, OSError),
        (actstore.WriterClosedError, RuntimeError),
        (actstore.WriterFailedError, RuntimeError),
        (actstore.StoreClosedError, ValueError),
        (actstore.StoreAccessError, PermissionError),
        (actstore.ConfigError, ValueError),
    ],
)
def test_each_error_is_also_a_builtin(cls: type, builtin: type) -> None:
    assert issubclass(cls, actstore.ActStoreError) and issubclass(cls, builtin)


def test_all_errors_exported() -> None:
    for name in _errors.__all__:
        assert getattr(actstore, name) is getattr(_errors, name)


def test_key_error_message_is_not_quoted() -> None:
    assert str(actstore.UnknownKeyError("no layer 15; layers are [6]")) == "no layer 15; layers are [6]"
