"""Files in folders a workload can write to, read and written without following links.

A job writes into its own folder (the executed notebook, its log, progress and outcome), and so
can anything its notebook runs. If the platform opened those files by path, a notebook that
replaced ``output.ipynb`` with a link to another user's file would have the control plane read
that file back to it (or, for a file the platform writes, overwrite it). So every file the
platform touches in such a folder goes through this module: the folder is opened without
following a link, every step below it with ``O_NOFOLLOW``, and only a regular file with a single
name (no hard link to a file elsewhere) is used. Anything else is refused with ``UnsafeFile``.
Writes go to a fresh file in the same folder that then replaces the old name, so a planted file
is never written through.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
from pathlib import Path, PurePosixPath

from .errors import Conflict

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeFile(Conflict):
    """A file in a workload's folder is a link, a hard link, or not a regular file."""


def _parts(relative: str | os.PathLike) -> list[str]:
    parts = PurePosixPath(relative).parts
    if not parts or any(p in ("", ".", "..", "/") for p in parts):
        raise ValueError(f"{relative!r} is not a plain relative path")
    return list(parts)


def _refuse(folder: Path, relative, why: str) -> UnsafeFile:
    return UnsafeFile(f"{PurePosixPath(folder.name, relative)} {why}; the platform does not follow "
                      "links or read special files a workload leaves in its folder.")


def _open_folder(folder: Path, parts: list[str], *, create: bool = False) -> int:
    """A descriptor of the folder holding ``parts[-1]``, reached without following any link."""
    try:
        fd = os.open(folder, _DIRECTORY)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _refuse(folder.parent, folder.name, "is a link, not a folder") from None
        raise
    try:
        for part in parts[:-1]:
            if create:
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                child = os.open(part, _DIRECTORY, dir_fd=fd)
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _refuse(folder, part, "is a link, not a folder") from None
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_regular(fd: int, folder: Path, relative) -> os.stat_result:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise _refuse(folder, relative, "is not a regular file")
    if info.st_nlink != 1:
        raise _refuse(folder, relative, "is a hard link to another file")
    return info


def _open_file(folder: Path, relative, flags: int, mode: int, *, create: bool, how: str):
    """``folder/relative`` opened with ``flags`` (never following a link), checked to be a
    regular file with a single name, as a file object opened ``how``."""
    parts = _parts(relative)
    dir_fd = _open_folder(Path(folder), parts, create=create)
    try:
        try:
            fd = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode,
                         dir_fd=dir_fd)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise _refuse(Path(folder), relative, "is a link") from None
            raise
    finally:
        os.close(dir_fd)
    try:
        _check_regular(fd, Path(folder), relative)
    except BaseException:
        os.close(fd)
        raise
    os.set_blocking(fd, True)  # NONBLOCK was only for opening: a FIFO can't hang us
    return os.fdopen(fd, how)


def open_for_reading(folder: Path, relative: str | os.PathLike):
    """A binary file object of ``folder/relative``; FileNotFoundError when it is not there."""
    return _open_file(folder, relative, os.O_RDONLY, 0, create=False, how="rb")


def read_bytes(folder: Path, relative: str | os.PathLike, *, offset: int = 0,
               limit: int | None = None) -> bytes:
    with open_for_reading(folder, relative) as f:
        if offset:
            f.seek(offset)
        return f.read() if limit is None else f.read(limit)


def size(folder: Path, relative: str | os.PathLike) -> int:
    with open_for_reading(folder, relative) as f:
        return os.fstat(f.fileno()).st_size


def exists(folder: Path, relative: str | os.PathLike) -> bool:
    """A regular file is there (a planted link or special file counts as absent)."""
    try:
        with open_for_reading(folder, relative):
            return True
    except (OSError, UnsafeFile):
        return False


def read_json(folder: Path, relative: str | os.PathLike) -> dict | None:
    """The JSON object in the file, or None when it is missing, unreadable, unsafe or not JSON
    (a workload writes these files; a bad one means "no report", never an error here)."""
    try:
        data = json.loads(read_bytes(folder, relative))
    except (OSError, ValueError, UnsafeFile):
        return None
    return data if isinstance(data, dict) else None


def write_bytes(folder: Path, relative: str | os.PathLike, data: bytes, mode: int = 0o600) -> None:
    """Replace ``folder/relative`` with ``data``: written to a new file beside it, then renamed
    over the old name (a link or hard link planted there is replaced, never written through)."""
    parts = _parts(relative)
    dir_fd = _open_folder(Path(folder), parts, create=True)
    try:
        temporary = f".{parts[-1]}.{secrets.token_hex(4)}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(temporary, parts[-1], src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            try:
                os.unlink(temporary, dir_fd=dir_fd)
            except OSError:
                pass
            raise
    finally:
        os.close(dir_fd)


def write_json(folder: Path, relative: str | os.PathLike, data: dict) -> None:
    write_bytes(folder, relative, json.dumps(data).encode())


def open_for_appending(folder: Path, relative: str | os.PathLike, mode: int = 0o600):
    """A binary file object appending to ``folder/relative`` (created if missing); refused when
    what is there is a link, a hard link or not a regular file."""
    return _open_file(folder, relative, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode,
                      create=True, how="ab")
