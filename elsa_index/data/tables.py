"""Item metadata tables: titles, genres and other columns keyed by external item id.

Segment labels (:func:`elsa_index.segments.discover_segments`) and homepage
cards (:func:`elsa_index.homepage.item_metadata`) both read one *items table*:
one row per item, an id column holding the catalogue's external item ids, and
any other columns (``title``, ``genres``...). This module reads such a table
from a file or an in-memory table into plain columns, and turns cells into
text and label tokens with one rule for missing values.

Accepted sources: a ``.parquet``, ``.csv`` or ``.tsv`` path, a pyarrow
``Table``, a pandas ``DataFrame``, or a mapping of column name to values.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import DataError

logger = logging.getLogger(__name__)

# pyarrow (~0.3 s to import) is imported inside the reader: importing the package
# (every CLI command, `elsa-index --help`) must not pay for it.

__all__ = ["read_table", "is_missing", "cell_text", "column_tokenizer", "item_tokens"]


def read_table(source, *, string_columns: Sequence[str] = (),
               error: Callable[[str], Exception] = DataError) -> dict[str, list]:
    """The columns of an items table as Python lists, keyed by column name.

    Parameters
    ----------
    source : a ``.parquet`` / ``.csv`` / ``.tsv`` path (str or path-like), a
        pyarrow Table, a pandas DataFrame, or a mapping of column name to
        values (all of one length).
    string_columns : columns of a CSV/TSV file read as text whatever they look
        like (ids such as ``"007"`` stay ``"007"``); absent columns are ignored.
    error : exception class raised for bad input (e.g. the caller's own error).

    Returns
    -------
    dict mapping column name (str) to a list of cell values (``None`` where
    the file has no value).

    Raises
    ------
    DataError (or ``error``)
        The file is missing, unreadable or of another type, the columns of a
        mapping differ in length, or ``source`` is none of the accepted kinds.
    """
    if isinstance(source, (str, os.PathLike)):
        source = _read_file(Path(source), tuple(string_columns), error)
    if hasattr(source, "column_names") and hasattr(source, "column"):  # pyarrow Table
        return {name: source.column(name).to_pylist() for name in source.column_names}
    if hasattr(source, "columns") and hasattr(source, "to_dict"):  # pandas DataFrame
        return {str(c): source[c].tolist() for c in source.columns}
    if isinstance(source, Mapping):
        cols = {str(k): list(v) for k, v in source.items()}
        if len({len(v) for v in cols.values()}) > 1:
            raise error("item metadata columns have different lengths; expected one value per item in every column")
        return cols
    raise error(
        f"item metadata must be a pyarrow Table, a pandas DataFrame, a mapping of columns or a .parquet/.csv path, "
        f"got {type(source).__name__}"
    )


def _read_file(path: Path, string_columns: tuple[str, ...], error: Callable[[str], Exception]):
    if not path.is_file():
        raise error(f"item metadata file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv", ".tsv"):
        raise error(f"unsupported metadata file {path.name}; expected .parquet, .csv or .tsv")
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        import pyarrow as pa
        import pyarrow.csv as pcsv

        return pcsv.read_csv(
            path,
            parse_options=pcsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ","),
            convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in string_columns}),
        )
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise error(f"could not read item metadata {path}: {exc}") from None


def is_missing(value: Any) -> bool:
    """True for an absent cell: ``None`` or a float NaN (how pandas marks a missing value)."""
    return value is None or (isinstance(value, float) and value != value)


def cell_text(value: Any) -> str:
    """A cell as display text: ``""`` when missing, list cells joined with ``", "``, else ``str`` stripped."""
    if is_missing(value):
        return ""
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(str(x) for x in value if not is_missing(x))
    return str(value).strip()


def column_tokenizer(values: Sequence) -> Callable[[Any], list[str]]:
    """A function splitting the cells of one column into tokens (e.g. genres).

    A string cell is split on ``|`` when any string cell of ``values`` holds
    one, else on whitespace (ML-1M writes ``"Animation Children's Comedy"``);
    list cells are used as they are; missing cells give no token.
    """
    pipe = any(isinstance(v, str) and "|" in v for v in values)

    def tokens(v) -> list[str]:
        if is_missing(v):
            return []
        if isinstance(v, (list, tuple, np.ndarray)):
            parts = [str(x) for x in v if not is_missing(x)]
        else:
            parts = str(v).split("|") if pipe else str(v).split()
        return [p.strip() for p in parts if p.strip()]

    return tokens


def item_tokens(
    metadata,
    item_ids,
    *,
    id_col: str = "item_id",
    label_cols: Sequence[str] = ("genres",),
    error: Callable[[str], Exception] = DataError,
) -> list[tuple[str, ...] | None]:
    """The label tokens (e.g. genres) of each catalogue item, in catalogue order.

    Parameters
    ----------
    metadata : an items table (any source :func:`read_table` accepts, or the
        dict it returns).
    item_ids : the catalogue's external ids in row order (an
        :class:`~elsa_index.data.IdMap` or a sequence of str).
    id_col : column holding the external item ids; the first row of a
        repeated id is used (logged).
    label_cols : columns whose tokens are joined, first occurrence kept
        (see :func:`column_tokenizer` for how cells split).
    error : exception class raised for bad input.

    Returns
    -------
    list with one entry per catalogue item: a tuple of tokens (maybe empty),
    or None where the table has no row for the item.

    Raises
    ------
    DataError (or ``error``)
        Unreadable metadata, a missing id or label column, or no catalogue id
        in the id column.
    """
    columns = read_table(metadata, string_columns=(id_col,), error=error)
    if isinstance(label_cols, str):
        label_cols = (label_cols,)
    label_cols = tuple(label_cols)
    if id_col not in columns:
        raise error(
            f"item metadata has no id column {id_col!r}; its columns are {sorted(columns)}; pass id_col=<the column "
            "holding the checkpoint's item ids>"
        )
    missing = [c for c in label_cols if c not in columns]
    if missing:
        raise error(f"item metadata lacks the label column(s) {missing}; its columns are {sorted(columns)}")
    catalogue = item_ids.ids.tolist() if hasattr(item_ids, "ids") else [str(i) for i in item_ids]
    ids = ["" if v is None else str(v) for v in columns[id_col]]
    row_of: dict[str, int] = {}
    for r, v in enumerate(ids):
        row_of.setdefault(v, r)
    if len(row_of) < len(ids):
        logger.warning("item metadata repeats %d id(s); the first row of each is used", len(ids) - len(row_of))
    rows = [row_of.get(v, -1) for v in catalogue]
    matched = sum(r >= 0 for r in rows)
    if matched == 0:
        raise error(
            f"no item id of the checkpoint appears in the metadata column {id_col!r} (checkpoint ids e.g. "
            f"{catalogue[:3]}, metadata ids e.g. {ids[:3]}); check id_col and that both use the same ids"
        )
    if matched < len(rows):
        logger.warning("item metadata covers %d of %d checkpoint items", matched, len(rows))
    split = [column_tokenizer(columns[c]) for c in label_cols]
    out: list[tuple[str, ...] | None] = []
    for r in rows:
        if r < 0:
            out.append(None)
            continue
        toks: list[str] = []
        for c, tok in zip(label_cols, split):
            for t in tok(columns[c][r]):
                if t not in toks:
                    toks.append(t)
        out.append(tuple(toks))
    return out

