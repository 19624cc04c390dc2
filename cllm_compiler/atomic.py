"""Atomic file and folder writes: temp file, fsync, rename; clean up on any failure."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import OutputError


def os_error(e: OSError, path: Path) -> OutputError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return OutputError(f"no space left while writing {path} ({os.strerror(e.errno)})",
                           hint="free disk space or choose another output folder with -o")
    return OutputError(f"cannot write {path}: {e.strerror or e}", hint="check the folder exists and is writable")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Like atomic_file, for writers that open files by name (gguf-py, safetensors)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            _publish_mode(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        _unlink(tmp)
        raise os_error(e, path) from e
    except BaseException:
        _unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Yield a file to write; it appears at `path` only if the block finishes."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f


def clean_orphans(path: Path) -> None:
    """Remove temp/spill files a killed writer left beside `path` (they never look complete)."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    for p in path.parent.glob(f".{path.name}.*"):
        if p.suffix in (".tmp", ".spill") and p.is_file():
            with contextlib.suppress(OSError):
                p.unlink()


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be fsynced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def _publish_mode(fd: int) -> None:
    # mkstemp creates 0600; a published artifact gets the usual 0666 & ~umask.
    mask = os.umask(0)
    os.umask(mask)
    os.fchmod(fd, 0o666 & ~mask)


def _unlink(p: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(p)


MARKER = ".cllm-output"  # in every folder atomic_dir writes: what --force may replace
LEGACY = {"manifest.json": ("cllm-artifact", "cllm-multi-target")}  # folders written before the marker


def written_by_cllm(path: Path) -> bool:
    """Whether `path` is an output folder cllm wrote (its marker, or an older artifact's manifest)."""
    if (path / MARKER).is_file():
        return True
    for name, formats in LEGACY.items():
        try:
            with open(path / name, "rb") as f:
                doc = json.loads(f.read(1 << 20))
            if isinstance(doc, dict) and doc.get("format") in formats:
                return True
        except (OSError, ValueError):
            continue
    return False


def check_replaceable(path: Path, force: bool) -> None:
    """OutputError unless `path` may be written: absent, an empty folder, or (with --force) a folder
    cllm wrote. Never a link, a file, or a folder of someone else's files: --force replaces only
    cllm's own output."""
    if path.is_symlink():
        raise OutputError(f"{path} is a symbolic link", hint="give -o a real folder: cllm does not replace links")
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    if not force:
        raise OutputError(f"{path} already exists", hint="use --force to replace it, or -o to pick another folder")
    if not path.is_dir() or not written_by_cllm(path):
        what = "a file" if not path.is_dir() else "a folder cllm did not write"
        raise OutputError(f"{path} is {what}; --force replaces only cllm's own output folders",
                          hint="choose another -o folder, or move that one away yourself")


PARTIAL = ".cllm-partial"  # in a folder being written: the writer's pid, so a dead writer's can go


def clean_partials(path: Path) -> None:
    """Remove `.NAME.*.partial` folders beside `path` whose writer was killed (their marker names a
    pid that is gone). Only folders carrying cllm's marker: never anything else."""
    for p in path.parent.glob(f".{path.name}.*.partial"):
        try:
            if p.is_symlink() or not p.is_dir():
                continue
            pid = int((p / PARTIAL).read_text().split()[0])
            if pid != os.getpid():
                os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except (OSError, ValueError, IndexError):
            continue


@contextlib.contextmanager
def atomic_dir(path: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside `path`; it is renamed to `path` only on success.

    A failed compile leaves nothing at `path`, so no half-written artifact can look complete.
    Errors of the caller's own work pass through as they are (a read error is not "cannot write").
    """
    path = Path(path)
    check_replaceable(path, force)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_partials(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
        (tmp / PARTIAL).write_text(f"{os.getpid()}\n")
    except OSError as e:
        raise os_error(e, path) from e
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        (tmp / PARTIAL).unlink()
        (tmp / MARKER).write_bytes(b"written by cllm: cllm --force may replace this folder\n")
        old = None
        if path.exists():  # moved into a fresh folder of our own, never onto a name someone else may use
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise os_error(e, path) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
