"""Array, CSR, JSON and manifest files of elsa-index directories, and their digests.

* :func:`load_array` reads ``.npy`` files with ``allow_pickle=False`` and turns
  numpy's terse errors into ones that name the file; :func:`load_csr` range-checks
  every index so no file can make compiled code read or write outside its arrays.
* :func:`read_manifest` checks a directory's ``format`` and ``format_version``
  (restoring a version left aside by an interrupted replace first).
* :func:`record_files` / :func:`verify_files` record and check the size and
  sha256 of every file a directory holds.

Writing whole directories atomically is :mod:`elsa_index._atomic`'s job.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ._atomic import interrupted_versions, recover

__all__ = ["load_array", "npy_header", "save_array", "save_csr", "load_csr", "check_csr", "write_json", "read_json",
           "read_manifest", "array_digest", "json_default", "file_digest", "record_files", "verify_files"]


def save_array(path: Path, array: np.ndarray) -> None:
    """Save without pickling (object arrays are refused)."""
    np.save(path, np.ascontiguousarray(array), allow_pickle=False)


def load_array(path: Path, error: Callable[[str], Exception], *, mmap: bool = False) -> np.ndarray:
    """Load a ``.npy`` file with ``allow_pickle=False``; errors name the file and say what is wrong with it."""
    if not path.is_file():
        raise error(f"missing file {path.name} in {path.parent}")
    header = npy_header(path, error)
    if header is not None and header[1].hasobject:
        raise error(f"{path} holds pickled Python objects; only plain numeric/string arrays are accepted")
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except ValueError as exc:
        raise error(f"{path} is not a valid .npy array: {exc}") from None
    except (OSError, EOFError) as exc:
        raise error(f"could not read {path}: {exc}") from None


def npy_header(path: Path, error: Callable[[str], Exception]) -> tuple[tuple[int, ...], np.dtype] | None:
    """``(shape, dtype)`` a ``.npy`` file declares, checked against its size before any data is read.

    Raises ``error`` for a file that is not a ``.npy`` file, a malformed header,
    or a declared size other than the file's; returns None for a header version
    this numpy cannot read without loading (``np.load`` then decides).
    """
    from numpy.lib import format as npformat

    try:
        with open(path, "rb") as f:
            try:
                version = npformat.read_magic(f)
            except ValueError:
                raise error(f"{path} is not a .npy file (no NumPy header); expected an array saved with "
                            "numpy.save") from None
            readers = {(1, 0): npformat.read_array_header_1_0, (2, 0): npformat.read_array_header_2_0}
            if version not in readers:
                return None
            try:
                shape, _, dtype = readers[version](f)
            except (ValueError, SyntaxError, TypeError) as exc:
                raise error(f"{path} has a malformed .npy header: {exc}") from None
            offset = f.tell()
    except OSError as exc:
        raise error(f"could not read {path}: {exc.strerror or exc}") from None
    if dtype.hasobject:
        return tuple(shape), dtype
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    actual = path.stat().st_size - offset
    if declared != actual:
        raise error(f"{path} declares an array of shape {tuple(shape)} ({declared:,} bytes of {dtype}) but "
                    f"holds {actual:,} bytes of data; the file is truncated or corrupt")
    return tuple(shape), dtype


def save_csr(directory: Path, prefix: str, matrix) -> None:
    """Save a CSR matrix as ``{prefix}data.npy`` (float32), ``{prefix}indices.npy`` (int32), ``{prefix}indptr.npy`` (int64)."""
    save_array(directory / f"{prefix}data.npy", np.asarray(matrix.data, dtype=np.float32))
    save_array(directory / f"{prefix}indices.npy", np.asarray(matrix.indices, dtype=np.int32))
    save_array(directory / f"{prefix}indptr.npy", np.asarray(matrix.indptr, dtype=np.int64))


def load_csr(directory: Path, prefix: str, shape: tuple[int, int], error: Callable[[str], Exception], *,
             mmap: bool = False):
    """Load what :func:`save_csr` wrote and check it is a valid ``shape`` CSR matrix.

    Every index is range-checked and ``indptr`` must be monotone, so no file can
    make compiled code read or write outside its arrays. With ``mmap`` the
    arrays are memory-mapped read-only (pages are read on first use).
    """
    import scipy.sparse as sp

    data = load_array(directory / f"{prefix}data.npy", error, mmap=mmap)
    indices = load_array(directory / f"{prefix}indices.npy", error, mmap=mmap)
    indptr = load_array(directory / f"{prefix}indptr.npy", error, mmap=mmap)
    check_csr(f"{directory}: {prefix or 'csr '}arrays", data, indices, indptr, shape, error)
    # copy=False keeps memory-mapped data/indices mapped (scipy may narrow the small indptr to int32).
    return sp.csr_matrix((data, indices, indptr), shape=shape, copy=False)


def check_csr(what: str, data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, shape: tuple[int, int],
              error: Callable[[str], Exception], *, real: bool = True) -> None:
    """Check that CSR arrays describe a valid ``shape`` matrix, so that compiled code indexing with them stays inside.

    1-D arrays, integer ``indices``/``indptr``, consistent lengths, a monotone
    ``indptr`` from 0 to the number of values, column indices in
    ``[0, n_cols)``; with ``real`` (the default) float values, all finite.
    ``what`` names the arrays in the message of ``error``.
    """
    n_rows, n_cols = shape
    if data.ndim != 1 or indices.ndim != 1 or indptr.ndim != 1:
        raise error(f"{what} must be 1-D")
    if (real and data.dtype.kind != "f") or indices.dtype.kind not in "iu" or indptr.dtype.kind not in "iu":
        raise error(f"{what} have dtypes {data.dtype}/{indices.dtype}/{indptr.dtype}; "
                    f"expected {'float' if real else 'number'}/int/int")
    if len(indptr) != n_rows + 1 or len(data) != len(indices) or indptr[0] != 0 or indptr[-1] != len(data):
        raise error(f"{what} are inconsistent with shape {shape} ({len(indptr)} pointers, {len(data)} values)")
    if len(indptr) > 1 and (np.diff(indptr) < 0).any():
        raise error(f"{what}: indptr is not monotone")
    if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= n_cols):
        raise error(f"{what}: column indices outside [0, {n_cols})")
    if real and data.size and not np.isfinite(data).all():
        raise error(f"{what}: values contain NaN or inf")


def write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")


def read_json(path: Path, error: Callable[[str], Exception]) -> dict:
    if not path.is_file():
        raise error(f"{path.parent} has no {path.name}; it is not a complete elsa-index directory")
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise error(f"{path} must hold a JSON object, found {type(obj).__name__}")
    return obj


def read_manifest(path: Path, name: str, fmt: str, max_version: int, what: str,
                  error: Callable[[str], Exception]) -> dict:
    """Read ``path/name`` and check its ``format`` and ``format_version``.

    ``what`` names the kind of directory in messages (e.g. "checkpoint").
    """
    if not path.is_dir():
        if os.path.lexists(path) or not recover(path):
            olds = interrupted_versions(path)
            hint = f" (an interrupted replace left its previous version at {olds[0]})" if olds else ""
            raise error(f"{what} directory not found: {path}{hint}")
    m = read_json(path / name, error)
    if m.get("format") != fmt:
        raise error(f"{path} is not an elsa-index {what} (format {m.get('format')!r}, expected {fmt!r})")
    v = m.get("format_version")
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise error(f"{path}: invalid format_version {v!r}")
    if v > max_version:
        raise error(f"{path} has {what} format version {v}, newer than this elsa-index supports "
                    f"({max_version}); upgrade elsa-index")
    return m


def array_digest(*arrays: np.ndarray) -> str:
    """A sha256 (32 hex digits) of the arrays' dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        if a.dtype.kind == "U":
            h.update("\x1f".join(a.tolist()).encode())
        else:
            h.update(a.tobytes())
    return h.hexdigest()[:32]


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


#: ``default=`` for ``json.dump`` outside this module: numpy scalars and arrays, paths.
json_default = _json_default


# ------------------------------------------------------------------ file digests
#
# Every file of a checkpoint or an index is recorded in its manifest as
# ``{"relative/path": {"bytes": size, "sha256": hex}}`` when it is written and
# checked when it is opened. sha256 over the file bytes streams at about
# 1.7 GB/s on CPUs with SHA extensions (x86 SHA-NI, ARMv8), so checking a
# 1M-item sparse index (about 360 MB) costs a fraction of a second; the bytes
# are read once through the page cache, in fixed 1 MiB blocks (no RSS growth).

DIGEST = "sha256"
_BLOCK = 1 << 20


def file_digest(path: Path) -> str:
    """The sha256 (64 hex digits) of a file's bytes, streamed in 1 MiB blocks."""
    h = hashlib.sha256()
    buf = bytearray(_BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def record_files(directory: Path, names=None, *, skip=()) -> dict[str, dict]:
    """``{relative path: {"bytes": size, "sha256": digest}}`` of files in ``directory``.

    ``names`` lists the files (relative paths); None takes every file below
    ``directory`` (recursively, sorted) except the relative paths in ``skip``.
    """
    directory = Path(directory)
    if names is None:
        names = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
        names = [n for n in names if n not in skip]
    out = {}
    for name in names:
        p = directory / name
        out[name] = {"bytes": p.stat().st_size, DIGEST: file_digest(p)}
    return out


def verify_files(directory: Path, recorded: Any, error: Callable[[str], Exception], *, manifest: str,
                 expected=(), exhaustive: bool = False, skip=()) -> None:
    """Check the files of ``directory`` against what :func:`record_files` recorded in ``manifest``.

    Parameters
    ----------
    recorded : the manifest's ``files`` value (validated here).
    expected : relative paths that must be among the recorded files.
    exhaustive : also refuse files below ``directory`` that are not recorded
        (except ``skip``), e.g. a stray Lucene commit file that would change
        what is opened.

    Raises ``error`` naming the file, what was found and what was expected.
    Sizes are compared first (no read), then every file is hashed once.
    """
    directory = Path(directory)
    where = f"{directory / manifest}"
    if not isinstance(recorded, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) and isinstance(v.get("bytes"), int)
            and not isinstance(v.get("bytes"), bool) and isinstance(v.get(DIGEST), str) and len(v[DIGEST]) == 64
            for k, v in recorded.items()):
        raise error(f"{where}: 'files' must map each file name to its 'bytes' (integer) and '{DIGEST}' "
                    "(64 hex digits); the manifest is corrupted")
    for name in recorded:
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise error(f"{where}: file name {name!r} is not a path inside the directory")
    missing = [n for n in expected if n not in recorded]
    if missing:
        raise error(f"{where} records no digest for {', '.join(missing)}; the manifest is incomplete")
    if exhaustive:
        on_disk = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
        extra = sorted(on_disk - set(recorded) - set(skip))
        if extra:
            raise error(f"{directory} holds file(s) not recorded in {manifest}: {', '.join(extra[:5])}; "
                        "expected only the files written with it (remove them or rebuild)")
    for name, rec in recorded.items():
        p = directory / name
        if not p.is_file():
            raise error(f"missing file {name} in {directory} (recorded in {manifest})")
        size = p.stat().st_size
        if size != rec["bytes"]:
            raise error(f"{p} has {size} bytes, {manifest} records {rec['bytes']}; the file is truncated, "
                        "corrupted or was replaced")
        try:
            got = file_digest(p)
        except OSError as exc:
            raise error(f"could not read {p}: {exc}") from None
        if got != rec[DIGEST].lower():
            raise error(f"{p} does not match the {DIGEST} recorded in {manifest} (found {got[:16]}..., expected "
                        f"{rec[DIGEST][:16]}...): the file is corrupted or was edited")
