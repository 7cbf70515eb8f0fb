"""Loaders for the public datasets of the Compressed ELSA paper.

Each loader reads a dataset in its *official* file format and returns a
:class:`~elsa_index.data.Log` with string ids, float32 ratings and, where the
dataset has them, int64 timestamps in seconds since the Unix epoch (UTC).

========================  ==============================================  ============
name                      official file                                   download
========================  ==============================================  ============
``ml-100k``               ``ml-100k.zip`` -> ``u.data`` (tab-separated)   GroupLens
``ml-1m``                 ``ml-1m.zip`` -> ``ratings.dat`` (``::``)       GroupLens
``ml-20m``                ``ml-20m.zip`` -> ``ratings.csv``               GroupLens
``goodbooks-10k``         ``ratings.csv`` (user_id,book_id,rating)        GitHub
``netflix``               ``combined_data_*.txt`` or ``mv_*.txt``         local only
========================  ==============================================  ============

Downloads, the cache directory and checksums are handled by
:mod:`elsa_index.data.download` (re-exported here: ``SOURCES``, ``Source``,
``CACHE_ENV``, ``resolve_cache_dir``, ``download_dataset``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import zipfile
import zlib
from pathlib import Path
from typing import IO, Iterator, Sequence, TypeAlias

import numpy as np

from ..errors import DataError
from .download import CACHE_ENV, SOURCES, Source, download_dataset, locate_dataset, resolve_cache_dir
from .log import Log

logger = logging.getLogger(__name__)

# pyarrow (~0.3 s to import) is imported inside the parsers: importing the package
# (every CLI command, `elsa-index --help`) must not pay for it.

__all__ = [
    "DATASETS",
    "CACHE_ENV",
    "SOURCES",
    "Source",
    "list_datasets",
    "resolve_cache_dir",
    "download_dataset",
    "load_dataset",
    "load_movielens",
    "load_goodbooks",
    "load_netflix",
]

_PathLike: TypeAlias = "str | os.PathLike[str]"

DATASETS: tuple[str, ...] = ("ml-100k", "ml-1m", "ml-20m", "goodbooks-10k", "netflix")
"""Names accepted by :func:`load_dataset`."""


def list_datasets() -> list[str]:
    """Names of the datasets :func:`load_dataset` knows, in a fixed order."""
    return list(DATASETS)


# ------------------------------------------------------------------- MovieLens

# variant -> (folder inside the zip, ratings file name, format description)
_MOVIELENS = {
    "100k": ("ml-100k", "u.data", "tab-separated 'user id, item id, rating, timestamp' lines"),
    "1m": ("ml-1m", "ratings.dat", "'UserID::MovieID::Rating::Timestamp' lines"),
    "20m": ("ml-20m", "ratings.csv", "CSV with header 'userId,movieId,rating,timestamp'"),
}
_ML_COLUMNS = ("user", "item", "rating", "timestamp")


def load_movielens(variant: str, path: _PathLike | None = None, *,
                   cache_dir: _PathLike | None = None, download: bool = True) -> Log:
    """Load MovieLens 100K, 1M or 20M ratings from the official GroupLens files.

    Parameters
    ----------
    variant : ``"100k"``, ``"1m"`` or ``"20m"`` (an ``"ml-"`` prefix is accepted).
    path : the official zip (``ml-1m.zip``), the extracted ratings file
        (``u.data``, ``ratings.dat``, ``ratings.csv``), or a directory holding
        either (directly or in an ``ml-1m/`` sub-folder). None: use the cache,
        downloading if allowed.
    cache_dir : see :func:`resolve_cache_dir`.
    download : when ``path`` is None and nothing is cached, download (True)
        or raise (False).

    Returns
    -------
    Log
        ``user``/``item`` ids as strings, ``rating`` float32 (1-5 stars; 0.5
        steps for 20M), ``timestamp`` int64 seconds.

    Raises
    ------
    DataError
        Unknown variant, missing file, or a file not in the official format.

    Notes
    -----
    ``ratings.dat`` is documented as latin-1; its ratings lines are plain
    ASCII digits, so they are parsed as bytes.
    """
    key = str(variant).lower().removeprefix("ml-")
    if key not in _MOVIELENS:
        raise DataError(f"unknown MovieLens variant {variant!r}; expected one of {sorted(_MOVIELENS)}")
    folder, filename, expected = _MOVIELENS[key]
    where = locate_dataset(folder, path, cache_dir, download)
    with _open_ratings(where, folder, filename) as (stream, desc):
        if key == "20m":
            header = ("userId", "movieId", "rating", "timestamp")
            table = _read_csv(stream, desc, expected, header=header, names=_ML_COLUMNS)
        else:
            data = stream.read()
            if key == "1m":
                data = data.replace(b"::", b"\t")  # pyarrow wants a one-byte delimiter
            table = _read_csv(data, desc, expected, names=_ML_COLUMNS, delimiter="\t")
    logger.info("loaded MovieLens %s: %d ratings from %s", key.upper(), table["user"].size, desc)
    return _make_log(table["user"], table["item"], table["rating"], table["timestamp"])


@contextlib.contextmanager
def _open_ratings(path: Path, folder: str, filename: str, *, zipped: bool = True) -> Iterator[tuple[IO[bytes], str]]:
    """Yield a binary stream of the ratings file and its description.

    ``path`` is the file itself, the official ``{folder}.zip`` (when the
    dataset is published ``zipped``) or a directory holding either, directly
    or in a ``folder/`` sub-directory.
    """
    if path.is_dir():
        path = _find_in_dir(path, folder, filename, zipped=zipped)
    if zipped and zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                member = _zip_member(zf, path, filename)
                with zf.open(member) as stream:
                    yield stream, f"{path}:{member}"
        except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError) as exc:
            # BadZipFile: bad CRC; zlib.error / EOFError: corrupt or truncated deflate data.
            raise DataError(f"cannot read the zip file {path}: {exc}") from None
    else:
        with open(path, "rb") as stream:
            yield stream, str(path)


def _find_in_dir(directory: Path, folder: str, filename: str, *, zipped: bool) -> Path:
    candidates = [directory / filename, directory / folder / filename]
    if zipped:
        candidates.append(directory / f"{folder}.zip")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    official = f"the official {folder}.zip or its {filename}" if zipped else f"the {folder} {filename}"
    raise DataError(
        f"{directory} has no {filename} (looked for {[str(c.relative_to(directory)) for c in candidates]}); "
        f"pass {official}"
    )


def _zip_member(zf: zipfile.ZipFile, path: Path, filename: str) -> str:
    members = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == filename]
    if not members:
        raise DataError(f"the zip file {path} has no {filename}; expected the official MovieLens zip")
    return min(members, key=len)  # the top-level one if several


# ---------------------------------------------------------------- goodbooks-10k


def load_goodbooks(path: _PathLike | None = None, *,
                   cache_dir: _PathLike | None = None, download: bool = True) -> Log:
    """Load goodbooks-10k ratings (``ratings.csv`` of github.com/zygmuntz/goodbooks-10k).

    Parameters
    ----------
    path : the ``ratings.csv`` file (header ``user_id,book_id,rating``) or a
        directory holding it. None: use the cache, downloading if allowed.
    cache_dir, download : as for :func:`load_movielens`.

    Returns
    -------
    Log
        ``user``/``item`` (book) ids as strings, ``rating`` float32 1-5, no
        timestamps (the dataset has none).

    Raises
    ------
    DataError
        Missing file or a file not in the official format.
    """
    where = locate_dataset("goodbooks-10k", path, cache_dir, download)
    expected = "CSV with header 'user_id,book_id,rating'"
    header = ("user_id", "book_id", "rating")
    # goodbooks-10k is published as a plain CSV file, not in a zip.
    with _open_ratings(where, "goodbooks-10k", "ratings.csv", zipped=False) as (stream, desc):
        table = _read_csv(stream, desc, expected, header=header, names=("user", "item", "rating"))
    logger.info("loaded goodbooks-10k: %d ratings from %s", table["user"].size, desc)
    return _make_log(table["user"], table["item"], table["rating"], None)


# ---------------------------------------------------------------------- Netflix

_NETFLIX_FORMAT = "'MovieID:' lines, each followed by 'CustomerID,Rating,YYYY-MM-DD' lines"
_NETFLIX_BATCH_BYTES = 256 << 20  # per-movie files are parsed in batches of about this size


def load_netflix(path: str | os.PathLike | Sequence[str | os.PathLike]) -> Log:
    """Load the Netflix Prize training ratings from a local copy.

    The original source is gone, so nothing is downloaded. Both official
    layouts hold ``MovieID:`` lines, each followed by that movie's
    ``CustomerID,Rating,YYYY-MM-DD`` lines:

    - ``combined_data_1.txt`` ... ``combined_data_4.txt`` (many movies a file);
    - ``training_set/mv_0000001.txt`` ... (one movie a file).

    Parameters
    ----------
    path : one such file, a list of them, or a directory holding
        ``combined_data_*.txt`` (preferred when present), ``mv_*.txt`` or a
        ``training_set/`` folder of them.

    Returns
    -------
    Log
        ``user`` = CustomerID, ``item`` = MovieID (strings), ``rating``
        float32 1-5, ``timestamp`` int64 seconds (the date at 00:00 UTC).

    Raises
    ------
    DataError
        Missing files or a file not in this format (``probe.txt`` and
        ``qualifying.txt`` are not training files and are rejected).

    Notes
    -----
    Parsing is vectorised: each ``MovieID:`` line is rewritten in bytes to a
    row ``MovieID,0,`` (an impossible rating and no date), the whole buffer is
    read by pyarrow's multithreaded CSV reader, and movie ids are carried
    forward to the rows below their header with a cumulative sum.
    """
    files = _netflix_files(path)
    parts = [_parse_netflix_batch(batch) for batch in _netflix_batches(files)]
    movie, user, rating, days = (np.concatenate(cols) for cols in zip(*parts))
    logger.info("loaded Netflix Prize: %d ratings from %d file(s)", len(user), len(files))
    return _make_log(user, movie, rating, days.astype(np.int64) * 86_400)


def _netflix_files(path) -> list[Path]:
    if isinstance(path, (str, os.PathLike)):
        return _netflix_files_at(Path(path).expanduser())
    files = [f for p in path for f in _netflix_files(p)]
    if not files:
        raise DataError("load_netflix got an empty list of paths")
    return files


def _netflix_files_at(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"netflix: no such file or directory: {path}")
    for pattern in ("combined_data_*.txt", "mv_*.txt", "training_set/mv_*.txt"):
        found = sorted(path.glob(pattern))
        if found:
            return found
    raise DataError(
        f"{path} holds no Netflix Prize training files; expected combined_data_*.txt, "
        "mv_*.txt or training_set/mv_*.txt"
    )


def _netflix_batches(files: list[Path]) -> Iterator[list[tuple[bytes, Path]]]:
    """Group the files' contents into batches of about ``_NETFLIX_BATCH_BYTES``."""
    batch: list[tuple[bytes, Path]] = []
    size = 0
    for f in files:
        try:
            data = f.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read the Netflix Prize file {f}: {exc}") from None
        if not data.endswith(b"\n"):
            data += b"\n"
        _check_netflix_start(data, f)
        batch.append((data, f))
        size += len(data)
        if size >= _NETFLIX_BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _parse_netflix_batch(batch: list[tuple[bytes, Path]]) -> tuple[np.ndarray, ...]:
    """Parse a batch of files in one buffer; an error names the offending file.

    Every file ends with a newline and starts with a ``MovieID:`` line, so the
    concatenation parses exactly as the files one by one. Only when it fails
    are the files parsed one by one, to find the file to name in the error.
    """
    if len(batch) == 1:
        data, f = batch[0]
        return _parse_netflix(data, str(f))
    try:
        return _parse_netflix(b"".join(data for data, _ in batch), f"{len(batch)} files")
    except DataError:
        for data, f in batch:
            _parse_netflix(data, str(f))
        raise


def _check_netflix_start(data: bytes, path: Path) -> None:
    first = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not re.fullmatch(rb"\d+:", first):
        raise DataError(
            f"{path} does not start with a 'MovieID:' line (got {first[:40]!r}); expected {_NETFLIX_FORMAT}"
        )


def _parse_netflix(data: bytes, desc: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parse one buffer into (movie, customer, rating, days since epoch) arrays."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    data = data.replace(b":\r\n", b",0,\r\n").replace(b":\n", b",0,\n")
    try:
        table = pcsv.read_csv(
            pa.BufferReader(data),
            read_options=pcsv.ReadOptions(column_names=["id", "rating", "date"], block_size=16 << 20),
            parse_options=pcsv.ParseOptions(quote_char=False),
            convert_options=pcsv.ConvertOptions(
                column_types={"id": pa.int64(), "rating": pa.float32(), "date": pa.date32()}
            ),
        )
    except pa.ArrowInvalid as exc:
        raise DataError(f"{desc} is not in the Netflix Prize format ({_NETFLIX_FORMAT}): {exc}") from None
    ids = table["id"]
    if ids.null_count:
        raise DataError(f"{desc} has lines without a customer or movie id; expected {_NETFLIX_FORMAT}")
    ids = ids.to_numpy()
    rating = table["rating"].fill_null(-1.0).to_numpy()
    no_date = pc.is_null(table["date"]).to_numpy(zero_copy_only=False)
    is_header = no_date & (rating == 0)
    bad = (no_date | (rating < 0)) & ~is_header
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{desc}: a rating line lacks its rating or date (customer {ids[row]}); expected {_NETFLIX_FORMAT}"
        )
    movie = ids[is_header][np.cumsum(is_header) - 1]  # first row is a header (checked)
    days = table["date"].cast(pa.int32()).fill_null(0).to_numpy()
    keep = ~is_header
    return movie[keep], ids[keep], rating[keep], days[keep]


# ------------------------------------------------------------------- dispatcher


def load_dataset(name: str, path: str | os.PathLike | None = None, **kwargs) -> Log:
    """Load a dataset by name (see :data:`DATASETS`).

    Parameters
    ----------
    name : ``"ml-100k"``, ``"ml-1m"``, ``"ml-20m"``, ``"goodbooks-10k"`` or ``"netflix"``.
    path : a local copy; required for ``"netflix"``.
    **kwargs : ``cache_dir``, ``download`` (ignored for ``"netflix"``, which is
        never downloaded).

    Raises
    ------
    DataError
        Unknown name, or ``"netflix"`` without a path; see the loaders.
    """
    key = str(name).lower()
    if key.startswith("ml-") and key in DATASETS:
        return load_movielens(key, path, **kwargs)
    if key == "goodbooks-10k":
        return load_goodbooks(path, **kwargs)
    if key == "netflix":
        if path is None:
            raise DataError(
                "the Netflix Prize data cannot be downloaded (the original source is gone); "
                "pass path= to your combined_data_*.txt files or training_set/ folder"
            )
        kwargs.pop("cache_dir", None), kwargs.pop("download", None)
        return load_netflix(path, **kwargs)
    raise DataError(f"unknown dataset {name!r}; expected one of {list(DATASETS)}")


# ---------------------------------------------------------------------- parsing


def _read_csv(source, desc: str, expected: str, *, names, header=None, delimiter: str = ","):
    """Read a delimited ratings file into numpy columns named ``names``.

    ``header`` is the file's own header (checked, then renamed to ``names``);
    None means the file has no header. Ids are parsed as integers (the
    official files use integer ids), rating as float32, timestamp as int64.
    """
    import pyarrow as pa
    import pyarrow.csv as pcsv

    kinds = {"user": pa.int64(), "item": pa.int64(), "rating": pa.float32(), "timestamp": pa.int64()}
    file_names = list(header) if header else list(names)
    types = {f: kinds[n] for f, n in zip(file_names, names)}
    if isinstance(source, bytes):
        source = pa.BufferReader(source)
    try:
        table = pcsv.read_csv(
            source,
            read_options=pcsv.ReadOptions(column_names=None if header else file_names),
            parse_options=pcsv.ParseOptions(delimiter=delimiter),
            convert_options=pcsv.ConvertOptions(column_types=types),
        )
    except pa.ArrowInvalid as exc:
        raise DataError(f"{desc} is not in the expected format ({expected}): {exc}") from None
    missing = [f for f in file_names if f not in table.column_names]
    if missing:
        raise DataError(
            f"{desc} lacks column(s) {missing}; expected {expected}, found header {table.column_names}"
        )
    if table.num_rows == 0:
        raise DataError(f"{desc} holds no ratings; expected {expected}")
    out = {}
    for f, n in zip(file_names, names):
        col = table[f]
        if col.null_count:
            raise DataError(f"{desc} has {col.null_count} empty value(s) in column {f!r}; expected {expected}")
        out[n] = col.to_numpy()
    return out


def _make_log(user, item, rating, timestamp) -> Log:
    """Build a Log from integer id arrays; columns already have Log's dtypes.

    ``Log(...)`` is called directly rather than ``Log.from_arrays`` to avoid
    copying columns of up to 100M rows; the dtypes are guaranteed here.
    """
    return Log(
        _ids_to_str(np.asarray(user)),
        _ids_to_str(np.asarray(item)),
        None if rating is None else np.asarray(rating, dtype=np.float32),
        None if timestamp is None else np.asarray(timestamp, dtype=np.int64),
    )


def _ids_to_str(ids: np.ndarray) -> np.ndarray:
    """Integer ids as the shortest fixed-width unicode array (``7`` -> ``"7"``)."""
    if ids.size == 0:
        return ids.astype("U1")
    lo, hi = int(ids.min()), int(ids.max())
    width = max(len(str(lo)), len(str(hi)))
    if lo >= 0 and hi < max(4 * ids.size, 1 << 16):
        # Dense small ids: convert each distinct value once, then gather.
        return np.arange(hi + 1).astype(f"U{width}")[ids]
    return ids.astype(f"U{width}")
