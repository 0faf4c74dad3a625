"""The writer lock: flock on a lock file that is removed on release, with the inode check that makes removal safe."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import pytest

import actstore
from actstore.storage._lock import FileLock, lock_error


def test_exclusive_lock_is_removed_on_release(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    a = FileLock(path, "store")
    with pytest.raises(actstore.StoreLockedError, match="store is already open for writing"):
        FileLock(path, "store")
    a.release()
    a.release()  # idempotent
    assert not path.exists()
    FileLock(path, "store").release()


def test_a_locker_holding_the_removed_file_does_not_win(tmp_path: Path) -> None:
    """A process that opened the lock file just before its holder removed it locks the orphaned inode: that must
    not count. FileLock checks the path still names the file it locked, so only one of two lockers wins."""
    path = tmp_path / "x.lock"
    a = FileLock(path, "store")
    stale = os.open(path, os.O_RDWR)  # opened before the release, as a racing locker would
    a.release()
    fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the orphan is lockable...
    b = FileLock(path, "store")  # ...but the path is what counts: one holder,
    with pytest.raises(actstore.StoreLockedError):
        FileLock(path, "store")  # and a third locker is refused
    os.close(stale)
    b.release()


def test_shared_holders_keep_the_file_until_the_last_leaves(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    s1, s2 = FileLock(path, "root", shared=True), FileLock(path, "root", shared=True)
    with pytest.raises(actstore.StoreLockedError):
        FileLock(path, "root")
    s1.release()
    assert path.exists()  # s2 still holds it: removing it now would let an exclusive locker in
    with pytest.raises(actstore.StoreLockedError):
        FileLock(path, "root")
    s2.release()
    assert not path.exists()
    FileLock(path, "root").release()


def test_lock_file_errors_are_typed(tmp_path: Path) -> None:
    link = tmp_path / "x.lock"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(actstore.CorruptStoreError, match="symbolic link"):
        FileLock(link, "store")
    assert not (tmp_path / "elsewhere").exists()
    with pytest.raises(actstore.NotAStoreError, match="no/such/dir"):
        FileLock(tmp_path / "no" / "such" / "dir" / "x.lock", "store")


def test_create_never_deletes_a_directory_whose_lock_is_held(tmp_path: Path) -> None:
    """What a create() leaves before its first zarr.json (a directory holding only the lock file) is another
    writer's store while that lock is held: create, resume and overwrite are refused and delete nothing."""
    path = tmp_path / "s.zarr"
    path.mkdir()
    held = FileLock(path / ".actstore.lock", str(path))
    for kw in ({}, {"resume": True}, {"overwrite": True}):
        with pytest.raises(actstore.StoreLockedError):
            actstore.create(path, **kw)
        assert (path / ".actstore.lock").exists()
    held.release()
    with actstore.create(path, resume=True) as w:  # once released it is an interrupted create: started afresh
        assert w.path == str(path)


def test_overwrite_refused_while_the_store_is_open(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    w = actstore.create(path)
    w.commit()
    with pytest.raises(actstore.StoreLockedError):
        actstore.create(path, overwrite=True)
    assert (path / "zarr.json").exists()
    w.close()
    actstore.create(path, overwrite=True).close()
    assert sorted(p.name for p in path.iterdir()) == ["zarr.json"]


def test_create_refuses_what_is_not_a_store_before_touching_it(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "data.txt").write_text("mine")
    (tmp_path / "file.zarr").write_text("x")
    for target in (plain, tmp_path / "file.zarr"):
        for kw in ({}, {"overwrite": True}):
            with pytest.raises(actstore.StoreExistsError, match="refusing"):
                actstore.create(target, **kw)
        with pytest.raises(actstore.NotAStoreError, match="not"):
            actstore.create(target, resume=True)
    assert sorted(p.name for p in plain.iterdir()) == ["data.txt"]


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM, errno.EROFS])
def test_permission_and_read_only_errors_are_typed(code: int) -> None:
    """(Tests run as root here, so chmod cannot provoke these: the mapping is checked on the errno itself.)"""
    err = lock_error(OSError(code, os.strerror(code)), "/x/run.zarr", "create")
    assert isinstance(err, actstore.StoreAccessError) and isinstance(err, PermissionError)
    assert "/x/run.zarr" in str(err) and "permissions" in str(err)
    from actstore.storage._files import read_error

    assert isinstance(read_error(OSError(code, os.strerror(code)), "/x/run.zarr/zarr.json"),
                      actstore.StoreAccessError if code != errno.EROFS else actstore.ActStoreError)
