"""Interaction logs: reading, filtering, id maps, user-item matrices.

The flow is ``read_log`` (a file) or ``Log.from_arrays`` (memory) ->
``filter_log`` (positives, duplicates, min support) -> ``Interactions`` (a
binary CSR user x item matrix with its id maps) -> a ``Split`` for evaluation
(:mod:`elsa_index.data.split`).
External ids are always strings; internal indices are contiguous int64 and
sorted by external id, so the same set of ids always maps the same way.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import scipy.sparse as sp

from .._checks import check_float, check_int
from ..errors import DataError

logger = logging.getLogger(__name__)

# pyarrow (~0.3 s to import) is imported inside the readers: importing the package
# (every CLI command, `elsa-index --help`) must not pay for it.

__all__ = [
    "Log",
    "IdMap",
    "Interactions",
    "read_log",
    "filter_log",
]


# --------------------------------------------------------------------------- log


@dataclass(frozen=True)
class Log:
    """A raw interaction log, one row per event.

    Attributes
    ----------
    user, item : ndarray of str, shape (n,)
    rating : ndarray of float32, shape (n,), or None
    timestamp : ndarray of int64, shape (n,), or None
    split : ndarray of str, shape (n,), or None
        A given train/test assignment, for datasets that ship one.
    """

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray | None = None
    timestamp: np.ndarray | None = None
    split: np.ndarray | None = None

    @classmethod
    def from_arrays(
        cls,
        user: Iterable,
        item: Iterable,
        rating: Iterable | None = None,
        timestamp: Iterable | None = None,
        split: Iterable | None = None,
    ) -> "Log":
        """Build a log from array-likes, validating lengths and types."""
        user = _as_str_array(user, "user")
        item = _as_str_array(item, "item")
        n = len(user)
        if len(item) != n:
            raise DataError(f"user and item columns differ in length: {n} vs {len(item)}")
        if rating is not None:
            rating = _as_float_array(rating, "rating")
        if timestamp is not None:
            timestamp = _as_int_array(timestamp, "timestamp")
        if split is not None:
            split = _as_str_array(split, "split")
        for name, col in (("rating", rating), ("timestamp", timestamp), ("split", split)):
            if col is not None and len(col) != n:
                raise DataError(f"{name} column has {len(col)} rows, expected {n} (as user/item)")
        return cls(user, item, rating, timestamp, split)

    def __len__(self) -> int:
        return len(self.user)

    def take(self, rows: np.ndarray) -> "Log":
        """Rows selected by a boolean mask or an index array."""
        pick = lambda a: None if a is None else a[rows]  # noqa: E731
        return Log(self.user[rows], self.item[rows], pick(self.rating), pick(self.timestamp), pick(self.split))


def _as_str_array(values, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise DataError(f"{name} column must be 1-D, got shape {arr.shape}")
    if arr.dtype == object:
        if any(v is None for v in arr):
            raise DataError(f"{name} column contains missing (null) values; every row needs an id")
    return arr.astype(str)


def _as_float_array(values, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind not in "biuf":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            bad = next((v for v in arr if not _is_number(v)), None)
            raise DataError(
                f"{name} column must be numeric, found non-numeric value {bad!r}"
            ) from None
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{name} column contains NaN or infinite values; expected finite numbers")
    return arr


def _as_int_array(values, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind == "M":
        return arr.astype("datetime64[s]").astype(np.int64)
    if arr.dtype.kind not in "biuf":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise DataError(f"{name} column must be numeric (seconds), got {arr.dtype}") from None
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise DataError(f"{name} column contains missing (null/NaN) or infinite values; expected numbers (seconds)")
    return arr.astype(np.int64)


def _is_number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def read_log(
    path: str | Path,
    *,
    user_col: str = "user_id",
    item_col: str = "item_id",
    rating_col: str | None = None,
    timestamp_col: str | None = None,
    split_col: str | None = None,
    file_format: str | None = None,
    delimiter: str = ",",
) -> Log:
    """Read an interaction log from a Parquet or CSV file.

    Parameters
    ----------
    path : path to a ``.parquet`` or ``.csv``/``.tsv`` file (``file_format``
        overrides the suffix: ``"parquet"`` or ``"csv"``).
    user_col, item_col : names of the id columns (read as strings).
    rating_col, timestamp_col, split_col : optional column names.
    delimiter : CSV field delimiter (``.tsv`` files default to tab).

    Raises
    ------
    DataError
        The file is missing or unreadable, a named column is absent, or a
        rating is non-numeric.
    """
    import pyarrow as pa

    path = Path(path)
    if not path.is_file():
        raise DataError(f"interaction file not found: {path}")
    fmt = (file_format or path.suffix.lstrip(".")).lower()
    if fmt in ("pq",):
        fmt = "parquet"
    if fmt == "tsv":
        fmt, delimiter = "csv", "\t"
    roles = {"user": user_col, "item": item_col, "rating": rating_col, "timestamp": timestamp_col, "split": split_col}
    seen: dict[str, str] = {}
    for role, name in roles.items():
        if name is None:
            continue
        if not isinstance(name, str) or not name:
            raise DataError(f"the {role} column name must be a non-empty string, got {name!r}")
        if name in seen:
            raise DataError(f"column {name!r} is named both as the {seen[name]} column and as the {role} column; "
                            f"each role needs its own column (--user-col, --item-col, --rating-col, "
                            f"--timestamp-col, --split-col)")
        seen[name] = role
    wanted = [c for c in (user_col, item_col, rating_col, timestamp_col, split_col) if c]
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            available = pq.read_schema(path).names
            _check_columns(path, available, wanted)
            table = pq.read_table(path, columns=wanted)
        elif fmt in ("csv", "txt"):
            import pyarrow.csv as pcsv

            # ids stay strings even when they look like numbers ("007" != "7").
            types = {c: pa.string() for c in (user_col, item_col, split_col) if c}
            table = pcsv.read_csv(
                path,
                parse_options=pcsv.ParseOptions(delimiter=delimiter),
                convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=True),
            )
            _check_columns(path, table.column_names, wanted)
            table = table.select(wanted)
        else:
            raise DataError(f"unsupported file format {fmt!r} for {path}; expected parquet or csv")
    except DataError:
        raise
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"could not read {path} as {fmt}: {exc}") from None

    def col(name):
        if name is None:
            return None
        c = table.column(name)
        if c.null_count and name in (user_col, item_col):
            raise DataError(f"column {name!r} in {path} has {c.null_count} missing values; every row needs an id")
        return c.to_numpy(zero_copy_only=False)

    if rating_col is not None:
        rtype = table.schema.field(rating_col).type
        if not (pa.types.is_integer(rtype) or pa.types.is_floating(rtype)):
            values = table.column(rating_col).to_pylist()
            bad = next((v for v in values if not _is_number(v)), None)
            if bad is not None or None in values:
                raise DataError(
                    f"rating column {rating_col!r} in {path} must be numeric, "
                    f"found {bad!r} (type {rtype})"
                )
    if timestamp_col is not None and pa.types.is_timestamp(table.schema.field(timestamp_col).type):
        # safe=False truncates sub-second precision instead of raising ArrowInvalid.
        ts = table.column(timestamp_col).cast(pa.timestamp("s"), safe=False).cast(pa.int64()).to_numpy(zero_copy_only=False)
    else:
        ts = col(timestamp_col)
    return Log.from_arrays(col(user_col), col(item_col), col(rating_col), ts, col(split_col))


def _check_columns(path: Path, available: Sequence[str], wanted: Sequence[str]) -> None:
    missing = [c for c in wanted if c not in available]
    if missing:
        raise DataError(
            f"{path} has no column(s) {missing}; available columns: {list(available)}. "
            "Name the right ones with --user-col/--item-col/--rating-col."
        )


def filter_log(
    log: Log,
    *,
    min_rating: float | None = None,
    min_user_support: int = 5,
    min_item_support: int = 1,
    deduplicate: bool = True,
) -> Log:
    """Keep positives, drop duplicate (user, item) pairs, prune iteratively.

    Parameters
    ----------
    min_rating : keep rows with ``rating >= min_rating``; ``None`` treats
        every row as a positive.
    min_user_support, min_item_support : users (items) with fewer positives
        are removed, repeatedly, until both conditions hold together.

    Raises
    ------
    DataError
        Nothing is left, or ``min_rating`` is given for a log without ratings.
    """
    min_rating = check_float(min_rating, "min_rating", allow_none=True, error=DataError)
    check_int(min_user_support, "min_user_support", 0, error=DataError)
    check_int(min_item_support, "min_item_support", 0, error=DataError)
    n0 = len(log)
    if min_rating is not None:
        if log.rating is None:
            raise DataError("min_rating was given but the log has no rating column; pass rating_col")
        log = log.take(log.rating >= min_rating)
        if len(log) == 0:
            raise DataError(f"no interactions with rating >= {min_rating} (of {n0} rows)")
    if deduplicate and len(log):
        # Keep the first occurrence of each (user, item) in file order.
        key = np.char.add(np.char.add(log.user, "\x1f"), log.item)
        _, first = np.unique(key, return_index=True)
        log = log.take(np.sort(first))
    while len(log):
        users, uinv, ucount = np.unique(log.user, return_inverse=True, return_counts=True)
        items, iinv, icount = np.unique(log.item, return_inverse=True, return_counts=True)
        keep = (ucount[uinv] >= min_user_support) & (icount[iinv] >= min_item_support)
        if keep.all():
            break
        log = log.take(keep)
    if len(log) == 0:
        raise DataError(
            f"the log is empty after filtering ({n0} rows in; min_rating={min_rating}, "
            f"min_user_support={min_user_support}, min_item_support={min_item_support}); "
            "lower the thresholds"
        )
    logger.info("filtered log: %d -> %d rows", n0, len(log))
    return log


# ------------------------------------------------------------------------ id maps


class IdMap:
    """Bijection between external string ids and contiguous indices.

    Parameters
    ----------
    ids : sequence of str, unique, in index order.

    Notes
    -----
    Ids that are already strictly increasing (those of :meth:`from_values`,
    hence of trained checkpoints) are looked up by binary search
    (``np.searchsorted``): construction is one vectorised comparison, about
    30 ms at a million ids, where building a dict took about 0.6 s, most of
    the time it took to open a 1M-item index. Ids in any other order get a
    dict (sorting strings is no faster than hashing them), which also finds
    duplicates. The map is immutable, so it is safe to share between threads.
    """

    def __init__(self, ids: Iterable):
        if not isinstance(ids, np.ndarray):
            ids = [str(x) for x in ids]
            # numpy's string arrays drop trailing NUL characters ("a\x00" would become "a"): refuse them all.
            bad = next((x for x in ids if "\x00" in x), None)
            if bad is not None:
                raise DataError(f"ids must not contain NUL characters, got {bad!r}")
        arr = np.asarray(ids).astype(str)
        if arr.ndim != 1:
            raise DataError(f"ids must be 1-D, got shape {arr.shape}")
        if arr.size and arr.dtype.itemsize:  # an interior NUL: a zero code point followed by a non-zero one
            codes = arr.view(np.uint32).reshape(len(arr), -1)
            inner = ((codes[:, :-1] == 0) & (codes[:, 1:] != 0)).any(axis=1)
            if inner.any():
                raise DataError(f"ids must not contain NUL characters, got {str(arr[np.argmax(inner)])!r}")
        self.ids = arr
        # None when the ids are strictly increasing (binary search), else id -> index.
        self._dict: dict[str, int] | None = None
        if not bool((arr[1:] > arr[:-1]).all()):
            self._dict = {v: i for i, v in enumerate(arr.tolist())}
            if len(self._dict) != len(arr):
                values, counts = np.unique(arr, return_counts=True)
                raise DataError(f"ids must be unique; {len(arr) - len(self._dict)} duplicates found, "
                                f"e.g. {str(values[counts > 1][0])!r}")

    @classmethod
    def from_values(cls, values: Iterable) -> "IdMap":
        """Sorted unique ids of ``values``: the same set always maps the same way."""
        return cls(np.unique(np.asarray(values).astype(str)))

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, key) -> bool:
        return bool(self._lookup(np.asarray([str(key)]))[0] >= 0)

    def __eq__(self, other) -> bool:
        return isinstance(other, IdMap) and np.array_equal(self.ids, other.ids)

    def __repr__(self) -> str:
        return f"IdMap(n={len(self)})"

    def index(self, ids: Iterable, *, missing: str = "raise") -> np.ndarray:
        """Indices of external ids (int64); unknown ids raise or become -1.

        Parameters
        ----------
        missing : ``"raise"`` or ``"ignore"`` (unknown ids map to -1).
        """
        if missing not in ("raise", "ignore"):
            raise DataError(f"missing must be 'raise' or 'ignore', got {missing!r}")
        ids = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids))
        if ids.ndim != 1:
            raise DataError(f"ids to look up must be a 1-D sequence, got shape {ids.shape}")
        out = self._lookup(ids.astype(str))
        if missing == "raise" and (out < 0).any():
            unknown = ids[out < 0][:5].astype(str).tolist()
            raise DataError(f"unknown id(s) {unknown}; expected ids present in the id table")
        return out

    def _lookup(self, keys: np.ndarray) -> np.ndarray:
        """Index of each key (1-D str array), -1 where unknown; int64."""
        if self._dict is not None:
            get = self._dict.get
            return np.fromiter((get(k, -1) for k in keys.tolist()), dtype=np.int64, count=len(keys))
        if len(self.ids) == 0:
            return np.full(len(keys), -1, np.int64)
        pos = np.minimum(np.searchsorted(self.ids, keys), len(self.ids) - 1)
        return np.where(self.ids[pos] == keys, pos, -1).astype(np.int64, copy=False)

    def external(self, indices: np.ndarray) -> np.ndarray:
        """External ids for indices; -1 maps to the empty string."""
        idx = np.asarray(indices)
        out = self.ids[np.clip(idx, 0, max(len(self.ids) - 1, 0))] if len(self.ids) else np.full(idx.shape, "")
        return np.where(idx >= 0, out, "")


# -------------------------------------------------------------------- matrices


@dataclass
class Interactions:
    """Binary user x item matrix with its id maps.

    Attributes
    ----------
    matrix : scipy.sparse.csr_matrix, float32, shape (n_users, n_items), values 1.
    user_ids, item_ids : IdMap
    """

    matrix: sp.csr_matrix
    user_ids: IdMap
    item_ids: IdMap

    @classmethod
    def from_log(cls, log: Log, *, item_ids: IdMap | None = None, user_ids: IdMap | None = None) -> "Interactions":
        """Build the matrix; rows whose item (user) is outside a given id map are dropped."""
        if len(log) == 0:
            raise DataError("cannot build an interaction matrix from an empty log")
        # `is None`, not `or`: an empty IdMap is falsy but is still a given map.
        user_ids = user_ids if user_ids is not None else IdMap.from_values(log.user)
        item_ids = item_ids if item_ids is not None else IdMap.from_values(log.item)
        u = user_ids.index(log.user, missing="ignore")
        i = item_ids.index(log.item, missing="ignore")
        ok = (u >= 0) & (i >= 0)
        m = sp.csr_matrix(
            (np.ones(int(ok.sum()), np.float32), (u[ok], i[ok])), shape=(len(user_ids), len(item_ids))
        )
        m.sum_duplicates()
        m.data[:] = 1.0
        m.sort_indices()
        return cls(m, user_ids, item_ids)

    @property
    def n_users(self) -> int:
        return self.matrix.shape[0]

    @property
    def n_items(self) -> int:
        return self.matrix.shape[1]

    @property
    def nnz(self) -> int:
        return self.matrix.nnz

    def item_popularity(self) -> np.ndarray:
        """Number of users per item, int64, shape (n_items,)."""
        return np.bincount(self.matrix.indices, minlength=self.n_items).astype(np.int64)

    def fingerprint(self) -> str:
        """A sha256 of the matrix and id maps: identifies the training data."""
        h = hashlib.sha256()
        for arr in (self.matrix.indptr.astype(np.int64), self.matrix.indices.astype(np.int64)):
            h.update(arr.tobytes())
        for ids in (self.user_ids.ids, self.item_ids.ids):
            h.update("\x1f".join(ids.tolist()).encode())
        return h.hexdigest()[:32]
