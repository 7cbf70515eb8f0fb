"""Downloads of public dataset files into a local cache, verified by checksum.

Fetching, checksum verification and the atomic move into place are done by
`pooch <https://www.fatiando.org/pooch>`_; this module names the sources,
chooses the cache directory and turns every failure into a
:class:`~elsa_index.errors.DataError` that says what to do.

The cache directory is the ``cache_dir`` argument, else the
``ELSA_INDEX_CACHE`` environment variable, else ``~/.cache/elsa-index``. A
file is moved into the cache only after its md5 matched (where the source
publishes one: GroupLens ``.md5`` files), so the cache never holds a partial
or corrupt download; a cached file is reused without any network access.
``file://`` URLs are served from the local file system (mirrors, tests).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import secrets
import shutil
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable

from ..errors import DataError

logger = logging.getLogger(__name__)

# pooch (~0.1 s to import) is imported only when something is downloaded.

__all__ = ["CACHE_ENV", "Source", "SOURCES", "resolve_cache_dir", "download_dataset", "locate_dataset"]

CACHE_ENV = "ELSA_INDEX_CACHE"
"""Environment variable naming the cache directory."""

_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Source:
    """Where a downloadable dataset file lives.

    Attributes
    ----------
    url : the file's URL (``https://``, ``ftp://`` or ``file://``).
    filename : the name it gets in the cache directory.
    md5_url : URL of a published checksum file (any text holding one
        32-digit hex md5), or None.
    md5 : a known md5 hex digest, or None. Takes precedence over ``md5_url``.
    """

    url: str
    filename: str
    md5_url: str | None = None
    md5: str | None = None


_GROUPLENS = "https://files.grouplens.org/datasets/movielens/"

SOURCES: dict[str, Source] = {
    f"ml-{v}": Source(f"{_GROUPLENS}ml-{v}.zip", f"ml-{v}.zip", md5_url=f"{_GROUPLENS}ml-{v}.zip.md5")
    for v in ("100k", "1m", "20m")
}
# The goodbooks-10k repository publishes no checksum.
SOURCES["goodbooks-10k"] = Source(
    "https://raw.githubusercontent.com/zygmuntz/goodbooks-10k/master/ratings.csv",
    "goodbooks-10k-ratings.csv",
)


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache directory: the argument, else ``$ELSA_INDEX_CACHE``, else ``~/.cache/elsa-index``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "elsa-index"


def download_dataset(name: str, *, cache_dir: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Download a dataset's official file into the cache, verifying its checksum.

    Parameters
    ----------
    name : a key of :data:`SOURCES` (``"ml-100k"``, ``"ml-1m"``, ``"ml-20m"``,
        ``"goodbooks-10k"``).
    cache_dir : see :func:`resolve_cache_dir`.
    force : download again even if the file is cached (a cached copy is
        replaced only once the new download has been verified).

    Returns
    -------
    Path of the cached file.

    Raises
    ------
    DataError
        Unknown name, the cache directory is not writable, the download
        failed, or the checksum did not match (the download is removed).
    """
    source = _source(name)
    dest = resolve_cache_dir(cache_dir) / source.filename
    if dest.is_file() and not force:
        logger.info("using cached %s", dest)
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(_unwritable_cache(dest.parent, exc)) from None
    expected = source.md5.lower() if source.md5 else (_fetch_md5(source.md5_url) if source.md5_url else None)
    _retrieve(source, dest, expected)
    return dest


def locate_dataset(name: str, path, cache_dir, download: bool) -> Path:
    """A given path (must exist), else the cached file of ``name``, else a fresh download."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise DataError(f"{name}: no such file or directory: {p}")
        return p
    source = _source(name)
    cached = resolve_cache_dir(cache_dir) / source.filename
    if cached.is_file():
        return cached
    if not download:
        raise DataError(
            f"{name} is not in the cache ({cached}) and download=False; pass path= to a local "
            f"copy of {source.url} or allow the download"
        )
    return download_dataset(name, cache_dir=cache_dir)


# ----------------------------------------------------------------- internals


def _source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise DataError(f"no download source for dataset {name!r}; downloadable: {sorted(SOURCES)}") from None


def _unwritable_cache(directory: Path, exc: OSError) -> str:
    return f"cannot write to the cache directory {directory}: {exc}; pass cache_dir= or set {CACHE_ENV}"


def _retrieve(source: Source, dest: Path, md5: str | None) -> None:
    """Download ``source`` to ``dest`` through pooch, checking ``md5``.

    pooch writes into a staging folder next to ``dest`` (its own temporary
    file, moved into place after the hash check); the result then replaces
    ``dest``, so a failed or forced download never touches a good cached copy.
    """
    import pooch

    staging = dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.download")
    try:
        staging.mkdir()
    except OSError as exc:
        raise DataError(_unwritable_cache(dest.parent, exc)) from None
    logger.info("downloading %s", source.url)
    try:
        with _quiet_pooch():
            got = pooch.retrieve(source.url, known_hash=f"md5:{md5}" if md5 else None, fname=dest.name,
                                 path=staging, downloader=_downloader(source.url))
        _follow_umask(Path(got))
        os.replace(got, dest)
    except ValueError as exc:  # pooch: the hash did not match
        raise DataError(f"checksum mismatch for {source.url}: expected md5 {md5} ({exc}); the download was "
                        "removed, try again or pass path= to a verified copy") from None
    except OSError as exc:  # requests' and urllib's errors are OSErrors
        raise DataError(f"could not download {source.url}: {exc}; download it yourself and pass path=") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("saved %s (%s)", dest, "md5 verified" if md5 else "no published checksum")


def _fetch_md5(url: str) -> str:
    """The md5 digest published at ``url`` (e.g. ``MD5 (ml-1m.zip) = <hex>``)."""
    buffer = io.BytesIO()
    try:
        with _quiet_pooch():
            _downloader(url)(url, buffer, None)
    except OSError as exc:
        raise DataError(f"could not fetch the checksum file {url}: {exc}; download the dataset yourself "
                        "and pass path=") from None
    text = buffer.getvalue()[: 64 * 1024].decode("ascii", errors="replace")
    match = re.search(r"\b[0-9a-fA-F]{32}\b", text)
    if match is None:
        raise DataError(f"the checksum file {url} holds no md5 digest; got {text[:100]!r}")
    return match.group(0).lower()


def _downloader(url: str) -> Callable:
    """A pooch downloader for ``url``'s scheme (``file://`` is served here, without pooch)."""
    import pooch

    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme == "file":
        return _copy_file_url
    if scheme in ("http", "https"):
        return pooch.HTTPDownloader(timeout=_TIMEOUT_S)
    if scheme == "ftp":
        return pooch.FTPDownloader(timeout=_TIMEOUT_S)
    raise DataError(f"cannot download {url}: unsupported URL scheme {scheme!r}; expected https, http, ftp or file")


def _copy_file_url(url: str, output_file: str | IO[bytes], pooch=None) -> None:
    """Downloader for ``file://`` URLs, with pooch's downloader signature."""
    with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp:
        if hasattr(output_file, "write"):
            shutil.copyfileobj(resp, output_file)
        else:
            with open(output_file, "wb") as out:
                shutil.copyfileobj(resp, out)


def _follow_umask(path: Path) -> None:
    """Give ``path`` the usual permissions (0o666 less the umask), not a temporary file's 0o600.

    pooch downloads into a ``tempfile`` file (owner-only), which would make a
    shared cache unreadable to other users.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def _quiet_pooch():
    """pooch logs every download to stderr itself; this module logs through ``logging`` instead."""
    import pooch

    plog = pooch.get_logger()
    level = plog.level
    plog.setLevel(logging.WARNING)
    try:
        yield
    finally:
        plog.setLevel(level)
