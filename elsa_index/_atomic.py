"""Atomic writes of directories and files, shared by checkpoints, index directories, segments and the CLI.

* :func:`atomic_directory` writes a directory under a temporary sibling name
  and moves it into place only when everything inside was written, so an
  error or an interrupt never leaves a half-written directory at the target.
  Writers of one target take a lock; ``overwrite`` replaces only an
  elsa-index artefact of the same kind, never a user's own files or an input.
* :func:`atomic_file` does the same for one file (e.g. ``recommend --output``).

Replacing a directory (``overwrite``)
-------------------------------------
On Linux the new directory and the old one are swapped with one
``renameat2(RENAME_EXCHANGE)`` call, so a reader opening the target sees the
old complete version or the new complete one, never nothing. Elsewhere (or on
a file system without exchange) the old directory is renamed to
``.NAME.old-<id>`` and the new one renamed into place; if that second rename
fails the old one is renamed back, and if the process is killed between the
two renames, the next writer of the same target (or the next
:func:`read_manifest` of it) renames ``.NAME.old-<id>`` back. Leftovers of
killed writers (``.NAME.tmp-<id>``, ``.NAME.old-<id>``) are removed by the next
writer of the same target, while it holds the lock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shutil
import stat
import sys
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

from .errors import ElsaIndexError

try:  # advisory locks (POSIX)
    import fcntl
except ImportError:  # pragma: no cover - e.g. Windows: no writer lock, only the existence checks
    fcntl = None

logger = logging.getLogger(__name__)

__all__ = ["atomic_directory", "atomic_file", "check_output_path", "artefact_format", "recover",
           "interrupted_versions", "ARTEFACT_KINDS"]

#: The manifest file of each kind of elsa-index directory, by ``format`` (top-level file, read in this order).
_MANIFESTS = ("index.json", "backend.json", "manifest.json")
#: ``format`` of each elsa-index directory -> how messages name it.
ARTEFACT_KINDS = {
    "elsa-index-checkpoint": "checkpoint",
    "elsa-index-index": "index directory",
    "elsa-index-backend": "backend index",
    "elsa-index-segments": "segments directory",
}
#: The parts of an index directory that only its writer replaces.
_INDEX_PARTS = {"elsa-index-index": ("checkpoint", "backend")}


def _describe(fmt: str | None) -> str:
    return ARTEFACT_KINDS.get(fmt, f"elsa-index artefact of format {fmt!r}") if fmt else "unknown contents"


def artefact_format(path: str | os.PathLike) -> str | None:
    """The ``format`` of the elsa-index directory ``path`` (from its manifest), or None if it is not one."""
    path = Path(path)
    for name in _MANIFESTS:
        f = path / name
        if not f.is_file():
            continue
        try:
            with open(f, encoding="utf-8") as fh:
                obj = json.load(fh)
        except (OSError, ValueError, RecursionError):
            continue
        fmt = obj.get("format") if isinstance(obj, dict) else None
        if isinstance(fmt, str) and fmt.startswith("elsa-index-"):
            return fmt
    return None


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_output_path(path: str | os.PathLike, *, overwrite: bool = False, kind: str | None = None,
                      inputs: Iterable[str | os.PathLike | None] = (), inside_inputs: bool = False,
                      error: Callable[[str], Exception] = ElsaIndexError) -> None:
    """Refuse an output directory that would lose data; called by :func:`atomic_directory` (and the CLI early).

    Parameters
    ----------
    path : the directory to write.
    overwrite : whether an existing ``path`` may be replaced. Even then only an
        elsa-index directory of the same kind (``kind``, a manifest ``format``
        such as ``"elsa-index-checkpoint"``) or an empty directory is replaced:
        never a file, a symbolic link, a folder of other files, or a part of an
        index directory (its ``checkpoint``/``backend``).
    inputs : paths the command reads (those that do not exist are ignored):
        ``path`` may not be one of them nor contain one, and (unless
        ``inside_inputs``) may not lie inside one.
    error : exception factory for the messages.

    Raises
    ------
    error
        What is wrong, naming the path and what was found there.
    """
    path = Path(path)
    target = path.resolve()
    for inp in inputs:
        if inp is None or not os.path.lexists(inp):
            continue
        src = Path(inp).resolve()
        if src == target:
            raise error(f"the output {path} is the input {inp} of the same command; choose another output path")
        if _is_within(src, target):
            raise error(f"the output {path} contains the input {inp}; choose an output path outside it")
        if _is_within(target, src) and not inside_inputs:
            raise error(f"the output {path} lies inside the input {inp}; choose an output path outside it")
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise error(f"{path} already exists; pass --overwrite (overwrite=True) to replace it or choose another "
                    f"output path")
    if path.is_symlink():
        raise error(f"{path} is a symbolic link; refusing to replace it (give the real directory)")
    if not path.is_dir():
        raise error(f"{path} is a file, not an elsa-index directory; refusing to overwrite it "
                    f"(choose another output path or remove it yourself)")
    found = artefact_format(path)
    if found is None:
        if not any(path.iterdir()):
            return  # an empty directory: nothing to lose
        raise error(f"{path} is not an elsa-index directory (no {', '.join(_MANIFESTS)} with an elsa-index "
                    f"format); refusing to overwrite a folder of other files (choose another output path or "
                    f"remove it yourself)")
    if kind is not None and found != kind:
        raise error(f"{path} holds a {_describe(found)}, not a {_describe(kind)}; --overwrite replaces only the "
                    f"same kind of artefact (choose another output path)")
    whole = artefact_format(target.parent)
    if path.name in _INDEX_PARTS.get(whole, ()):
        raise error(f"{path} is part of the {_describe(whole)} {target.parent}; refusing to replace it "
                    f"(rebuild the index instead)")


# ------------------------------------------------------------------ renames

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_renameat2 = None
if sys.platform.startswith("linux"):
    try:
        import ctypes

        _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
        _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        _renameat2.restype = ctypes.c_int
    except (ImportError, OSError, AttributeError):  # pragma: no cover - old C library: plain renames
        _renameat2 = None


def _rename2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; False where it is not supported (then the caller falls back)."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically; False where the platform or file system cannot."""
    return _rename2(a, b, _RENAME_EXCHANGE)


def _rename_new(src: Path, dst: Path, error: Callable[[str], Exception]) -> None:
    """Rename ``src`` to ``dst``, which must not exist (atomically checked where the platform can)."""
    try:
        if _rename2(src, dst, _RENAME_NOREPLACE):
            return
    except FileExistsError:
        raise error(f"{dst} appeared while it was being written (another program wrote it); "
                    f"it was left as is") from None
    if os.path.lexists(dst):
        raise error(f"{dst} appeared while it was being written (another program wrote it); it was left as is")
    os.rename(src, dst)


def _leftover_re(name: str) -> re.Pattern:
    # ``<pid>-<16 hex>`` from this module; 8 characters of tempfile.mkdtemp from earlier versions.
    return re.compile(rf"^\.{re.escape(name)}\.(tmp|old)-(\d+-[0-9a-f]{{16}}|[a-z0-9_]{{8}})$")


def _leftovers(path: Path) -> tuple[list[Path], list[Path]]:
    """``(tmp, old)`` siblings of ``path`` left by writers that were killed (or failed to clean up)."""
    pat = _leftover_re(path.name)
    tmps, olds = [], []
    try:
        entries = list(os.scandir(path.parent if str(path.parent) else "."))
    except OSError:
        return [], []
    for e in entries:
        m = pat.match(e.name)
        if m:
            (tmps if m.group(1) == "tmp" else olds).append(path.parent / e.name)
    return tmps, olds


def _unique(path: Path, what: str) -> Path:
    return path.parent / f".{path.name}.{what}-{os.getpid()}-{secrets.token_hex(8)}"


def _remove_tree(p: Path) -> bool:
    """Remove a leftover directory (or file); False (logged) if it could not be removed."""
    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            os.unlink(p)
        return True
    except FileNotFoundError:
        return True
    except OSError as exc:
        logger.warning("could not remove %s (it will be removed by the next write): %s", p, exc)
        return False


def _discard(aside: Path, path: Path) -> None:
    """Remove ``.NAME.old-<id>`` after a replace: renamed to ``.NAME.tmp-<id>`` first, a name never restored."""
    trash = aside.with_name(aside.name.replace(f".{path.name}.old-", f".{path.name}.tmp-", 1))
    try:
        os.rename(aside, trash)
    except OSError:
        trash = aside
    _remove_tree(trash)


def _restore_source(old: Path) -> Path:
    legacy = old / "old"  # earlier versions moved the old directory to ``.NAME.old-XXXXXXXX/old``
    return legacy if old.is_dir() and legacy.is_dir() and artefact_format(old) is None else old


def _recover_locked(path: Path, error: Callable[[str], Exception]) -> None:
    """With the writer lock held: bring back a target lost by a killed replace, then remove leftovers."""
    tmps, olds = _leftovers(path)
    if not os.path.lexists(path) and olds:
        newest = max(olds, key=lambda p: p.lstat().st_ctime_ns)
        src = _restore_source(newest)
        try:
            os.rename(src, path)
        except OSError as exc:
            raise error(f"{path} is missing and its previous version is at {src} (an earlier replace was "
                        f"interrupted); could not restore it: {exc}") from None
        logger.warning("restored %s from %s (an earlier replace of it was interrupted)", path, src)
        if src != newest:
            _remove_tree(newest)
        olds.remove(newest)
    for p in tmps + olds:
        _remove_tree(p)


@contextlib.contextmanager
def _writer_lock(path: Path, error: Callable[[str], Exception]) -> Iterator[None]:
    """Hold the lock ``.NAME.lock`` next to ``path`` (non-blocking: a second writer gets ``error``).

    The lock file is removed by its holder before the lock is released; a
    process that opened the file before that sees another inode at the path
    and tries again, so two processes never both hold the lock of one target.
    """
    if fcntl is None:  # pragma: no cover - no advisory locks here: writers rely on the existence checks alone
        yield
        return
    lock = path.parent / f".{path.name}.lock"
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise error(f"cannot write {path}: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise error(f"another writer is writing {path} right now (it holds {lock}); wait for it to "
                            f"finish or choose another output path") from None
            raise error(f"cannot lock {lock}: {exc}") from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file after we opened it: lock the new one
    try:
        yield
    finally:
        try:
            os.unlink(lock)
        except OSError:
            pass
        os.close(fd)


def recover(path: str | os.PathLike) -> bool:
    """Restore ``path`` if an interrupted replace left it missing; True if it exists afterwards.

    Does nothing while another writer holds the lock of ``path`` (it is
    replacing it right now) or when the parent cannot be written.
    """
    path = Path(path)
    if os.path.lexists(path):
        return True
    if not _leftovers(path)[1]:
        return False
    try:
        with _writer_lock(path, ElsaIndexError):
            _recover_locked(path, ElsaIndexError)
    except ElsaIndexError as exc:
        logger.warning("%s", exc)
    return os.path.lexists(path)


def _replace_dir(tmp: Path, path: Path) -> None:
    """Put the complete directory ``tmp`` in place of the existing ``path`` (see the module docstring)."""
    if _exchange(tmp, path):
        _remove_tree(tmp)  # ``tmp`` now holds the previous version
        return
    aside = _unique(path, "old")
    os.rename(path, aside)
    try:
        os.rename(tmp, path)
    except BaseException:
        try:
            os.rename(aside, path)
        except OSError as exc:  # left for the next writer or reader of ``path`` to restore
            logger.error("could not restore %s from %s: %s", path, aside, exc)
        raise
    _discard(aside, path)


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike, *, overwrite: bool = False, error: Callable[[str], Exception] = ElsaIndexError,
    kind: str | None = None, inputs: Iterable[str | os.PathLike | None] = (),
) -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes ``path`` on success.

    Parameters
    ----------
    path : the final directory.
    overwrite : replace an existing ``path``; otherwise its existence is an
        error. Only an elsa-index directory of the same kind as the one written
        (or an empty directory) is replaced: see :func:`check_output_path`.
    error : exception factory for user-facing errors (e.g. a library error class).
    kind : the ``format`` written (e.g. ``"elsa-index-checkpoint"``), to refuse
        a mismatching ``path`` before the body runs; without it the check is made
        against the manifest the body wrote.
    inputs : paths the caller reads, which the output must not replace.

    The temporary directory is a sibling (same file system, so the final
    rename is atomic) and is removed if the body raises. Writers of one
    ``path`` exclude each other with a lock (the second gets ``error`` at once);
    under it, leftovers of killed writers are cleaned up and the target is
    checked again. An ``OSError`` of the body (a full disk, a read-only
    directory) becomes ``error``, and ``path`` is left as it was.
    """
    path = Path(path)
    inputs = tuple(inputs)
    check_output_path(path, overwrite=overwrite, kind=kind, inputs=inputs, error=error)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(f"cannot create the parent directory of {path}: {exc}") from None
    with _writer_lock(path, error):
        _recover_locked(path, error)
        check_output_path(path, overwrite=overwrite, kind=kind, inputs=inputs, error=error)
        tmp = _unique(path, "tmp")
        try:
            os.mkdir(tmp, 0o777)  # not mkdtemp: the result gets the usual permissions (umask), not 0700
        except OSError as exc:
            raise error(f"cannot write {path}: {exc}") from None
        try:
            try:
                yield tmp
            except OSError as exc:
                raise error(f"writing {path} failed: {exc}; {path} was left as it was") from None
            new = artefact_format(tmp)
            try:
                if os.path.lexists(path) and not overwrite:
                    raise error(f"{path} appeared while it was being written (another program wrote it); "
                                f"it was left as is")
                if os.path.lexists(path):
                    check_output_path(path, overwrite=overwrite, kind=new or kind, error=error)
                    if new is None and any(path.iterdir()):
                        raise error(f"{path} exists and what was written is not an elsa-index directory; "
                                    f"refusing to replace it")
                    _replace_dir(tmp, path)
                else:
                    _rename_new(tmp, path, error)
            except OSError as exc:
                raise error(f"could not move the new {path} into place: {exc}; {path} was left as it "
                            f"was") from None
        except BaseException:
            _remove_tree(tmp)
            raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, error: Callable[[str], Exception] = ElsaIndexError,
                encoding: str = "utf-8") -> Iterator[IO[str]]:
    """Yield a text file that replaces ``path`` (atomically) only when the body ends without an error.

    The file is a temporary sibling ``.NAME.tmp-<id>``, flushed to disk and
    renamed over ``path`` at the end; on any error it is removed and an
    existing ``path`` is left untouched. A new file gets the usual permissions
    (umask); a replaced one keeps its mode. A symbolic link at ``path`` is
    replaced by the file (nothing is written through it).

    Raises
    ------
    error
        ``path`` is a directory, its directory does not exist, or it cannot be
        written (``OSError`` of the body included).
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise error(f"{path} is a directory; expected a file path such as {path / 'out.jsonl'}")
    if not parent.is_dir():
        raise error(f"cannot write {path}: the directory {parent} does not exist")
    tmp = _unique(path, "tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise error(f"cannot write {path}: {exc}") from None
    try:
        with os.fdopen(fd, "w", encoding=encoding, newline="\n") as f:
            try:
                yield f
            except OSError as exc:
                raise error(f"writing {path} failed: {exc}; {path} was left as it was") from None
            f.flush()
            os.fsync(f.fileno())
        try:
            if path.is_file() and not path.is_symlink():
                os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
            os.replace(tmp, path)
        except OSError as exc:
            raise error(f"could not move the new {path} into place: {exc}; {path} was left as it was") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise



def interrupted_versions(path: str | os.PathLike) -> list[Path]:
    """Previous versions of ``path`` that an interrupted replace left aside (``.NAME.old-<id>``)."""
    return _leftovers(Path(path))[1]
