"""A private directory that nobody else can write, read or redirect: where the processes of
one server keep their metrics snapshots.

The directory is opened once (``O_DIRECTORY | O_NOFOLLOW``) and checked: it must be a
real directory owned by this user, and neither group- nor world-writable. It is created
with mode 0700 when it does not exist, and refused (:class:`Refused`) otherwise. Every
file operation after that is relative to the open directory, so renaming it, or a
symlink put in place of it or of a file in it, changes nothing: files are created with
``O_EXCL | O_NOFOLLOW`` (mode 0600) and replaced atomically, files are read with
``O_NOFOLLOW | O_NONBLOCK`` and only if they are regular files of this user, of a
bounded size. A file that fails any check is never read (:class:`Skipped`).

The store can also be locked across processes (``flock``, with a timeout), and gives
an address for a Unix socket inside it (``/proc/self/fd/N/name``: short enough for
``AF_UNIX`` wherever the directory is, and as private as the directory).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import random
import stat
import time
from collections.abc import Iterator
from pathlib import Path

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Refused(Exception):
    """The directory cannot be trusted; ``reason`` is a metric label."""

    def __init__(self, path: Path, reason: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.reason = reason


class Skipped(Exception):
    """A file in the store that is not read; ``reason`` is a metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _check(fd: int, path: Path) -> None:
    info = os.fstat(fd)
    if not stat.S_ISDIR(info.st_mode):
        raise Refused(path, "not_a_directory", "not a directory")
    if info.st_uid != os.geteuid():
        raise Refused(
            path,
            "directory_owner",
            f"owned by uid {info.st_uid}, not by this user ({os.geteuid()})",
        )
    if info.st_mode & 0o022:
        raise Refused(
            path,
            "directory_mode",
            f"writable by others (mode {stat.S_IMODE(info.st_mode):04o}); it must be 0700",
        )


def _open_directory(name: str, parent_fd: int | None, path: Path) -> int:
    """Open (creating it 0700 if missing) and check the directory ``name``."""
    for _ in range(3):
        try:
            fd = os.open(name, _DIRECTORY, dir_fd=parent_fd)
        except FileNotFoundError:
            try:
                os.mkdir(name, 0o700, dir_fd=parent_fd)
            except FileExistsError:
                pass  # made at the same moment by another process: open it
            continue
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise Refused(path, "not_a_directory", "a symbolic link or a file") from None
            raise Refused(path, "unusable", exc.strerror or str(exc)) from None
        try:
            _check(fd, path)
        except BaseException:
            os.close(fd)
            raise
        return fd
    raise Refused(path, "unusable", "cannot be created")


class Store:
    """One checked, private directory, used through its file descriptor."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path  # for messages only: never used to reach the files

    @classmethod
    def open(cls, parent: Path, name: str) -> Store:
        """``parent/name``: ``parent`` must exist (it may be shared, as /tmp is); ``name``
        is created 0700 or must pass the checks."""
        try:
            parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise Refused(parent, "unusable", exc.strerror or str(exc)) from None
        try:
            return cls(_open_directory(name, parent_fd, parent / name), parent / name)
        finally:
            os.close(parent_fd)

    def child(self, name: str) -> Store:
        """A private directory inside this one, made or checked the same way."""
        return Store(_open_directory(name, self.fd, self.path / name), self.path / name)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    # -- files

    def names(self) -> list[str]:
        return os.listdir(self.fd)

    def read(self, name: str, max_bytes: int) -> bytes:
        """The whole file, if it is a regular file of this user of at most ``max_bytes``."""
        try:
            fd = os.open(name, _READ, dir_fd=self.fd)
        except FileNotFoundError:
            raise
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise Skipped("not_a_file", f"{name} is not a regular file") from None
            raise Skipped("unreadable", f"{name}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise Skipped("not_a_file", f"{name} is not a regular file")
            if info.st_uid != os.geteuid():
                raise Skipped("not_owned", f"{name} belongs to uid {info.st_uid}")
            if info.st_size > max_bytes:
                raise Skipped(
                    "too_large", f"{name} has {info.st_size} bytes, more than {max_bytes}"
                )
            chunks = []
            left = max_bytes + 1  # one more than allowed tells a file that grew
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            data = b"".join(chunks)
            if len(data) > max_bytes:
                raise Skipped("too_large", f"{name} has more than {max_bytes} bytes")
            return data
        finally:
            os.close(fd)

    def write(self, name: str, data: bytes, durable: bool = False) -> None:
        """Replace ``name`` with ``data`` atomically: written to a new private file (never
        through a link), then renamed over it. ``durable`` also survives a power cut."""
        # Never guessed into: the directory is this user's alone, and O_EXCL|O_NOFOLLOW.
        # (random, not os.urandom: no system call, each of which releases the GIL.)
        temporary = f".{name}.{random.getrandbits(32):08x}.tmp"
        fd = os.open(temporary, _CREATE, 0o600, dir_fd=self.fd)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=self.fd)
            raise
        if durable:
            os.fsync(self.fd)  # the rename itself

    def unlink(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    def rename(self, name: str, new_name: str) -> None:
        os.replace(name, new_name, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def modified(self, name: str) -> float | None:
        """When ``name`` was last written (seconds since the epoch), None if it is gone."""
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False).st_mtime
        except FileNotFoundError:
            return None

    def remove_child(self, name: str) -> None:
        """Remove the subdirectory ``name`` and the files in it, through descriptors only."""
        try:
            fd = os.open(name, _DIRECTORY, dir_fd=self.fd)
        except OSError:
            return
        try:
            if os.fstat(fd).st_uid != os.geteuid():
                return
            for entry in os.listdir(fd):
                with contextlib.suppress(OSError):
                    os.unlink(entry, dir_fd=fd)
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.rmdir(name, dir_fd=self.fd)

    @contextlib.contextmanager
    def lock(self, name: str = ".lock", timeout: float = 2.0) -> Iterator[bool]:
        """Hold an exclusive lock on the store, shared with every process using it.

        Yields False (without the lock) if it could not be had within ``timeout``: a
        process stopped while holding it must not stall the others for ever.
        """
        fd = os.open(
            name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=self.fd
        )
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(0.005)
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def socket_address(self, name: str) -> str | None:
        """An ``AF_UNIX`` address for ``name`` in the store, or None where there is no
        ``/proc`` to reach the directory through its descriptor."""
        if not os.path.isdir(f"/proc/self/fd/{self.fd}"):
            return None
        return f"/proc/self/fd/{self.fd}/{name}"
