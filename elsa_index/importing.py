"""Import of item embeddings made by other tools: a scipy ``.npz`` sparse matrix or a dense ``.npy``.

Every declared shape and index array is checked before scipy or numpy
allocates anything, so a crafted file gets a clear :class:`CheckpointError`
rather than a crash or a huge allocation.
"""

from __future__ import annotations

import os
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from ._io import load_array, npy_header
from ._memory import check_fits
from .checkpoint import Checkpoint
from .data import IdMap
from .errors import CheckpointError

__all__ = ["import_embeddings"]


def import_embeddings(
    path: str | os.PathLike,
    item_ids: Sequence[str] | str | os.PathLike | None = None,
    *,
    popularity: np.ndarray | str | os.PathLike | None = None,
    normalize: bool = True,
) -> Checkpoint:
    """Checkpoint from item embeddings produced elsewhere.

    Parameters
    ----------
    path : a scipy ``.npz`` sparse matrix (``scipy.sparse.save_npz``; CSR, CSC
        or COO) or a dense ``.npy`` array, shape (n_items, dims).
    item_ids : a sequence of ids, or a text file with one id per line, or
        None for ``"0" .. "n_items-1"``.
    popularity : per-item counts (e.g. training users per item), an int array
        or a ``.npy`` file of n_items non-negative integers; it ranks the
        items for users with no known history. Zeros if not given (then that
        fallback has nothing to rank by and warns when used).
    normalize : scale every row to unit L2 norm (default). ELSA scores and the
        FAISS backends assume unit rows; the checkpoint's ``data`` records
        ``normalized`` and the range of the original row norms. With False
        the rows are kept as given, with a warning when they are not unit.

    Raises
    ------
    CheckpointError
        Unreadable or pickled file, wrong shape, non-finite values, id count
        not matching the rows, duplicate ids.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"embedding file not found: {path}")
    if path.suffix == ".npz":
        emb = _load_npz_matrix(path)
    elif path.suffix == ".npy":
        _check_npy_header(path)
        emb = load_array(path, CheckpointError)
        if emb.ndim != 2:
            raise CheckpointError(f"{path} holds an array of shape {emb.shape}; expected (n_items, dims)")
    else:
        raise CheckpointError(f"unsupported embedding file {path.name}; expected a scipy .npz sparse matrix or a .npy array")
    n = emb.shape[0]
    if item_ids is None:
        ids = IdMap(np.arange(n).astype(str))
    else:
        if isinstance(item_ids, (str, os.PathLike)):
            p = Path(item_ids)
            if not p.is_file():
                raise CheckpointError(f"item-id file not found: {p}")
            item_ids = _read_item_ids(p)
        if len(item_ids) != n:
            raise CheckpointError(f"{len(item_ids)} item ids for {n} embedding rows in {path.name}; expected one id per row")
        try:
            ids = IdMap(item_ids)
        except ValueError as exc:
            raise CheckpointError(f"item ids: {exc}") from None
    pop = np.zeros(n, np.int64) if popularity is None else _read_popularity(popularity)
    emb, info = _unit_rows(emb, normalize, path)
    try:
        return Checkpoint(emb, ids, pop, kind="imported", data={"source": str(path), **info})
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def _read_popularity(popularity):
    """Per-item counts as given, or loaded from a ``.npy`` file (the Checkpoint checks them)."""
    if not isinstance(popularity, (str, os.PathLike)):
        return popularity
    p = Path(popularity)
    if not p.is_file():
        raise CheckpointError(f"popularity file not found: {p}")
    return load_array(p, CheckpointError)


def _unit_rows(emb, normalize: bool, path: Path):
    """Rows scaled to unit L2 norm (``normalize``), or kept with a warning when they are not unit."""
    norms = np.sqrt(np.asarray(emb.multiply(emb).sum(axis=1)).ravel() if sp.issparse(emb)
                    else np.einsum("ij,ij->i", emb, emb, dtype=np.float64))
    nonzero = norms > 0
    info = {"normalized": bool(normalize), "zero_rows": int((~nonzero).sum())}
    if nonzero.any():
        info["row_norms"] = {"min": float(norms[nonzero].min()), "max": float(norms[nonzero].max())}
    unit = bool(np.all(np.abs(norms[nonzero] - 1.0) <= 1e-3))
    if not normalize:
        if not unit:
            warnings.warn(f"{path.name}: rows are not unit length (L2 norms {info['row_norms']['min']:.4g}-"
                          f"{info['row_norms']['max']:.4g}); ELSA scores and the FAISS backends assume unit rows "
                          "(import with normalize=True to scale them)", UserWarning, stacklevel=3)
        return emb, info
    if unit:
        return emb, info
    scale = np.where(nonzero, 1.0 / np.where(nonzero, norms, 1.0), 1.0)
    if sp.issparse(emb):
        emb = sp.csr_matrix(sp.diags(scale.astype(np.float32)) @ emb, dtype=np.float32)
    else:
        emb = (np.asarray(emb, np.float64) * scale[:, None]).astype(np.float32)
    return emb, info


def _check_npy_header(path: Path) -> None:
    """Refuse, before reading the data, a file that is not a .npy array or whose declared shape cannot be real."""
    header = npy_header(path, CheckpointError)
    if header is not None and not header[1].hasobject:
        shape = header[0]
        check_fits(float(np.prod(shape, dtype=object)) * 4 * 2, f"the array of shape {shape} in {path.name}",
                   error=CheckpointError)


def _read_item_ids(p: Path) -> list[str]:
    """One id per line (UTF-8, surrounding spaces stripped); blank lines only at the end."""
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read the item-id file {p}: {exc.strerror or exc}") from None
    lines = raw.split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    ids = []
    for n, line in enumerate(lines, 1):
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise CheckpointError(f"item-id file {p} line {n} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                                  "expected one UTF-8 id per line") from None
        if not text:
            raise CheckpointError(f"item-id file {p} line {n} is empty; expected one id per line (an empty line "
                                  "would shift every later id to the wrong row)")
        ids.append(text)
    return ids


def _load_npz_matrix(path: Path) -> sp.csr_matrix:
    """A scipy ``save_npz`` file as CSR, every array checked before scipy (or compiled code) sees it.

    The declared shape must be two non-negative integers whose arrays fit in
    memory (a file may declare 10^12 rows in a few bytes); index pointers
    must start at 0, never decrease and end at the number of stored values;
    indices must lie inside the shape. Any violation is a CheckpointError.
    """
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a .npz file (not a zip archive); expected the output of "
                              "scipy.sparse.save_npz, or a .npy file for a dense array")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            fmt = _npz_format(path, z["format"]) if "format" in keys else None
            if fmt in ("csr", "csc") and {"data", "indices", "indptr", "shape"} <= keys:
                parts = {k: z[k] for k in ("data", "indices", "indptr")}
            elif fmt == "coo" and {"data", "row", "col", "shape"} <= keys:
                parts = {k: z[k] for k in ("data", "row", "col")}
            else:
                raise CheckpointError(
                    f"{path} is not a scipy sparse matrix file (keys {sorted(keys)}); "
                    "expected the output of scipy.sparse.save_npz in csr, csc or coo format"
                )
            shape = _npz_shape(path, z["shape"])
    except CheckpointError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise CheckpointError(f"{path} holds pickled Python objects; only plain arrays are accepted") from None
        raise CheckpointError(f"{path} is not a valid sparse matrix: {exc}") from None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise CheckpointError(f"could not read {path}: {exc}") from None
    return _npz_to_csr(path, fmt, shape, parts)


def _npz_format(path: Path, value: np.ndarray) -> str:
    fmt = value.item() if value.ndim == 0 and value.dtype.kind in "SU" else None
    if isinstance(fmt, bytes):
        fmt = fmt.decode("ascii", "replace")
    if fmt not in ("csr", "csc", "coo"):
        raise CheckpointError(f"{path} declares sparse format {value!r}; expected 'csr', 'csc' or 'coo' "
                              "(the output of scipy.sparse.save_npz)")
    return fmt


def _npz_shape(path: Path, value: np.ndarray) -> tuple[int, int]:
    if value.dtype.kind not in "iu" or value.shape != (2,) or (value < 0).any():
        raise CheckpointError(f"{path} declares shape {value.tolist()!r}; expected two non-negative integers "
                              "(n_items, dims)")
    rows, dims = (int(v) for v in value)
    # The CSR conversion needs rows+1 pointers, and every backend a pointer per dimension.
    check_fits(8.0 * (rows + 1) + 8.0 * (dims + 1),
               f"the shape ({rows}, {dims}) declared by {path.name}", error=CheckpointError,
               hint="the file declares more rows or dimensions than can be held; is it the right file?")
    return rows, dims


def _npz_to_csr(path: Path, fmt: str, shape: tuple[int, int], parts: dict) -> sp.csr_matrix:
    def bad(msg: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a valid {fmt} matrix of shape {shape}: {msg}")

    for name, a in parts.items():
        if a.ndim != 1:
            raise bad(f"'{name}' has shape {a.shape}; expected a 1-D array")
        if name != "data" and a.dtype.kind not in "iu":
            raise bad(f"'{name}' has dtype {a.dtype}; expected integers")
    data = parts["data"]
    if data.dtype.kind not in "fiu":
        raise bad(f"'data' has dtype {data.dtype}; expected numbers")
    if fmt == "coo":
        row, col = parts["row"].astype(np.int64), parts["col"].astype(np.int64)
        if not len(row) == len(col) == len(data):
            raise bad(f"'row', 'col' and 'data' have {len(row)}, {len(col)} and {len(data)} entries; expected equal")
        for name, a, limit in (("row", row, shape[0]), ("col", col, shape[1])):
            if len(a) and (a.min() < 0 or a.max() >= limit):
                raise bad(f"'{name}' holds indices outside [0, {limit})")
        return sp.coo_matrix((data, (row, col)), shape=shape).tocsr()
    major, minor = shape if fmt == "csr" else shape[::-1]
    indptr, indices = parts["indptr"].astype(np.int64), parts["indices"].astype(np.int64)
    if len(indptr) != major + 1:
        raise bad(f"'indptr' has {len(indptr)} entries; expected {major + 1}")
    if indptr[0] != 0 or (np.diff(indptr) < 0).any() or indptr[-1] != len(indices) or len(indices) != len(data):
        raise bad(f"'indptr' must start at 0, never decrease and end at the number of stored values; got "
                  f"{indptr[0]}..{indptr[-1]} for {len(indices)} indices and {len(data)} values")
    if len(indices) and (indices.min() < 0 or indices.max() >= minor):
        raise bad(f"'indices' hold values outside [0, {minor})")
    cls = sp.csr_matrix if fmt == "csr" else sp.csc_matrix
    return cls((data, indices, indptr), shape=shape).tocsr()
