"""Tests for elsa_index.data.datasets and .download: tiny files in the official formats, no network.

Every fixture is written into ``tmp_path`` exactly as the dataset ships it
(zip layout, separators, headers); downloads use ``file://`` URLs.
"""

from __future__ import annotations

import hashlib
import os
import stat
import urllib.request
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import requests

from elsa_index.data import datasets
from elsa_index.data import Log
from elsa_index.data.datasets import (
    DATASETS,
    Source,
    download_dataset,
    list_datasets,
    load_dataset,
    load_goodbooks,
    load_movielens,
    load_netflix,
    resolve_cache_dir,
)
from elsa_index.errors import DataError

# ----------------------------------------------------------------- fixtures

# (user, item, rating, timestamp) rows as the official files hold them.
ML_ROWS = {
    "100k": [(196, 242, 3, 881250949), (186, 302, 3, 891717742), (22, 377, 1, 878887116)],
    "1m": [(1, 1193, 5, 978300760), (1, 661, 3, 978302109), (6040, 1097, 4, 956715518)],
    # 20M has half stars and ids above the dense-id shortcut of _ids_to_str.
    "20m": [(1, 2, 3.5, 1112486027), (1, 29, 0.5, 1112484676), (138493, 131262, 4.5, 1427784002)],
}
ML_FILES = {"100k": ("ml-100k", "u.data"), "1m": ("ml-1m", "ratings.dat"), "20m": ("ml-20m", "ratings.csv")}


def error_message(load, *args, **kwargs) -> str:
    """The message of the DataError that ``load(*args, **kwargs)`` raises."""
    with pytest.raises(DataError) as err:
        load(*args, **kwargs)
    return str(err.value)


def ml_text(variant: str, rows=None) -> str:
    """A ratings file in the official format of a MovieLens variant."""
    rows = ML_ROWS[variant] if rows is None else rows
    if variant == "100k":
        return "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows)
    if variant == "1m":
        return "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows)
    return "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows)


def write_zip(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return path


def ml_zip(directory: Path, variant: str, text: str | None = None) -> Path:
    """``ml-1m.zip`` holding ``ml-1m/ratings.dat`` (plus a sibling file, as the real zips)."""
    folder, filename = ML_FILES[variant]
    members = {f"{folder}/README": "readme\n", f"{folder}/{filename}": ml_text(variant) if text is None else text}
    return write_zip(directory / f"{folder}.zip", members)


def assert_ml_log(log: Log, variant: str) -> None:
    rows = ML_ROWS[variant]
    assert isinstance(log, Log)
    assert log.user.dtype.kind == "U" and log.item.dtype.kind == "U"
    assert log.rating.dtype == np.float32
    assert log.timestamp.dtype == np.int64
    assert log.user.tolist() == [str(r[0]) for r in rows]
    assert log.item.tolist() == [str(r[1]) for r in rows]
    np.testing.assert_array_equal(log.rating, np.array([r[2] for r in rows], np.float32))
    np.testing.assert_array_equal(log.timestamp, np.array([r[3] for r in rows], np.int64))
    assert log.split is None


GOODBOOKS = "user_id,book_id,rating\n1,258,5\n2,4081,4\n53424,10000,1\n"


def utc(date: str) -> int:
    return int(datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp())


# Netflix Prize: two combined_data files, the second with CRLF line ends.
NETFLIX_1 = "1:\n1488844,3,2005-09-06\n822109,5,2005-05-13\n2:\n2059652,4,2005-09-05\n"
NETFLIX_2 = "3:\r\n1488844,1,1999-12-31\r\n4:\r\n30878,2,2004-02-29\r\n"
# (customer, movie, rating, date) in file order.
NETFLIX_ROWS = [
    (1488844, 1, 3, "2005-09-06"),
    (822109, 1, 5, "2005-05-13"),
    (2059652, 2, 4, "2005-09-05"),
    (1488844, 3, 1, "1999-12-31"),
    (30878, 4, 2, "2004-02-29"),
]


def assert_netflix_log(log: Log, rows=NETFLIX_ROWS) -> None:
    assert log.user.tolist() == [str(r[0]) for r in rows]
    assert log.item.tolist() == [str(r[1]) for r in rows]
    assert log.rating.dtype == np.float32 and log.timestamp.dtype == np.int64
    np.testing.assert_array_equal(log.rating, np.array([r[2] for r in rows], np.float32))
    np.testing.assert_array_equal(log.timestamp, np.array([utc(r[3]) for r in rows], np.int64))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())
    return path


@pytest.fixture(autouse=True)
def offline_and_isolated(monkeypatch, tmp_path):
    """No test reaches the network or the user's real cache."""
    real = urllib.request.urlopen

    def file_only(url, *args, **kwargs):
        full = url if isinstance(url, str) else url.full_url
        assert full.startswith("file:"), f"network access attempted: {full}"
        return real(url, *args, **kwargs)

    def no_http(self, method, url, *args, **kwargs):
        raise AssertionError(f"network access attempted: {method} {url}")

    monkeypatch.setattr(urllib.request, "urlopen", file_only)
    monkeypatch.setattr(requests.sessions.Session, "request", no_http)
    monkeypatch.setenv(datasets.CACHE_ENV, str(tmp_path / "default-cache"))


# ----------------------------------------------------------------- MovieLens


@pytest.mark.parametrize("variant", ["100k", "1m", "20m"])
def test_movielens_from_official_zip(tmp_path, variant):
    log = load_movielens(variant, ml_zip(tmp_path, variant))
    assert_ml_log(log, variant)


@pytest.mark.parametrize("variant", ["100k", "1m", "20m"])
@pytest.mark.parametrize("layout", ["bare_file", "extracted_folder", "parent_of_folder", "dir_with_zip"])
def test_movielens_from_extracted_layouts(tmp_path, variant, layout):
    folder, filename = ML_FILES[variant]
    if layout == "dir_with_zip":
        ml_zip(tmp_path, variant)
        path = tmp_path
    else:
        ratings = write(tmp_path / folder / filename, ml_text(variant))
        path = {"bare_file": ratings, "extracted_folder": ratings.parent, "parent_of_folder": tmp_path}[layout]
    assert_ml_log(load_movielens(variant, path), variant)


def test_movielens_variant_spelling_and_path_types(tmp_path):
    path = ml_zip(tmp_path, "1m")
    assert_ml_log(load_movielens("ml-1m", str(path)), "1m")
    assert_ml_log(load_movielens("ML-1M", path), "1m")


def test_movielens_picks_exact_member_name(tmp_path):
    # The real ml-100k.zip also holds u.item, ua.base ...; a __MACOSX copy must lose.
    members = {
        "__MACOSX/ml-100k/u.data": "garbage\n",
        "ml-100k/ua.base": "9\t9\t9\t9\n",
        "ml-100k/u.data": ml_text("100k"),
    }
    log = load_movielens("100k", write_zip(tmp_path / "ml-100k.zip", members))
    assert_ml_log(log, "100k")


def test_movielens_crlf_and_no_trailing_newline(tmp_path):
    text = ml_text("1m").replace("\n", "\r\n").rstrip("\r\n")
    assert_ml_log(load_movielens("1m", write(tmp_path / "ratings.dat", text)), "1m")


def test_movielens_unknown_variant():
    with pytest.raises(DataError, match=r"unknown MovieLens variant '10m'.*'100k', '1m', '20m'"):
        load_movielens("10m", "unused")


# ------------------------------------------------------------- goodbooks-10k


def test_goodbooks_file_and_directory(tmp_path):
    path = write(tmp_path / "ratings.csv", GOODBOOKS)
    for where in (path, tmp_path, str(path)):
        log = load_goodbooks(where)
        assert log.user.tolist() == ["1", "2", "53424"]
        assert log.item.tolist() == ["258", "4081", "10000"]
        assert log.rating.dtype == np.float32
        np.testing.assert_array_equal(log.rating, np.array([5, 4, 1], np.float32))
        assert log.timestamp is None


def test_goodbooks_columns_matched_by_name(tmp_path):
    # The first release of goodbooks-10k ordered the columns book_id,user_id,rating.
    log = load_goodbooks(write(tmp_path / "ratings.csv", "book_id,user_id,rating\n258,1,5\n4081,2,4\n"))
    assert log.user.tolist() == ["1", "2"]
    assert log.item.tolist() == ["258", "4081"]


# ------------------------------------------------------------------- Netflix


def test_netflix_several_combined_files(tmp_path):
    f1 = write(tmp_path / "combined_data_1.txt", NETFLIX_1)
    f2 = write(tmp_path / "combined_data_2.txt", NETFLIX_2)
    assert_netflix_log(load_netflix([f1, f2]))
    assert_netflix_log(load_netflix(tmp_path))  # the directory: files sorted by name
    assert_netflix_log(load_netflix([str(f2), str(f1)]), NETFLIX_ROWS[3:] + NETFLIX_ROWS[:3])


def test_netflix_single_file_without_trailing_newline(tmp_path):
    log = load_netflix(write(tmp_path / "combined_data_1.txt", NETFLIX_1.rstrip("\n")))
    assert_netflix_log(log, NETFLIX_ROWS[:3])


def test_netflix_batches_split_across_files(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "_NETFLIX_BATCH_BYTES", 1)  # one file a batch
    f1 = write(tmp_path / "combined_data_1.txt", NETFLIX_1)
    f2 = write(tmp_path / "combined_data_2.txt", NETFLIX_2)
    assert_netflix_log(load_netflix([f1, f2]))


def test_netflix_per_movie_training_set(tmp_path):
    ts = tmp_path / "training_set"
    write(ts / "mv_0000001.txt", "1:\n1488844,3,2005-09-06\n822109,5,2005-05-13\n")
    write(ts / "mv_0000002.txt", "2:\n2059652,4,2005-09-05\n")
    expected = NETFLIX_ROWS[:3]
    assert_netflix_log(load_netflix(tmp_path), expected)  # finds training_set/
    assert_netflix_log(load_netflix(ts), expected)
    assert_netflix_log(load_netflix(ts / "mv_0000002.txt"), expected[2:])


def test_netflix_directory_prefers_combined_files(tmp_path):
    write(tmp_path / "combined_data_1.txt", NETFLIX_1)
    write(tmp_path / "mv_0000009.txt", "9:\n1,1,2001-01-01\n")
    assert_netflix_log(load_netflix(tmp_path), NETFLIX_ROWS[:3])


def test_netflix_timestamps_are_utc_midnight(tmp_path):
    log = load_netflix(write(tmp_path / "combined_data_1.txt", "7:\n5,2,1970-01-02\n6,3,2000-03-01\n"))
    assert log.timestamp.tolist() == [86_400, 951_868_800]


# ---------------------------------------------------------------- dispatcher


def test_list_datasets():
    assert list_datasets() == ["ml-100k", "ml-1m", "ml-20m", "goodbooks-10k", "netflix"]
    assert list_datasets() == list(DATASETS)


@pytest.mark.parametrize("variant", ["100k", "1m", "20m"])
def test_load_dataset_movielens(tmp_path, variant):
    assert_ml_log(load_dataset(f"ml-{variant}", ml_zip(tmp_path, variant)), variant)


def test_load_dataset_goodbooks_and_netflix(tmp_path):
    log = load_dataset("goodbooks-10k", write(tmp_path / "ratings.csv", GOODBOOKS))
    assert log.item.tolist() == ["258", "4081", "10000"]
    nf = write(tmp_path / "nf" / "combined_data_1.txt", NETFLIX_1)
    # cache_dir / download are accepted and ignored for netflix.
    assert_netflix_log(load_dataset("netflix", nf, cache_dir=tmp_path, download=False), NETFLIX_ROWS[:3])


def test_load_dataset_unknown_name_lists_known():
    msg = error_message(load_dataset, "movielens")
    assert "'movielens'" in msg
    for name in DATASETS:
        assert name in msg


def test_load_dataset_netflix_needs_path():
    with pytest.raises(DataError, match="Netflix Prize data cannot be downloaded"):
        load_dataset("netflix")


# ------------------------------------------------------------------ download


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def serve_ml1m(monkeypatch, src: Path, text: str | None = None, md5: str | None = None) -> Path:
    """Put ml-1m.zip and its GroupLens-style .md5 file in ``src``; point SOURCES there."""
    src.mkdir(parents=True, exist_ok=True)
    zpath = ml_zip(src, "1m", text)
    md5_file = write(src / "ml-1m.zip.md5", f"MD5 (ml-1m.zip) = {md5 or md5_of(zpath)}\n")
    monkeypatch.setitem(datasets.SOURCES, "ml-1m", Source(zpath.as_uri(), "ml-1m.zip", md5_url=md5_file.as_uri()))
    return zpath


def test_resolve_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv(datasets.CACHE_ENV, str(tmp_path / "env"))
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_cache_dir() == tmp_path / "env"
    monkeypatch.delenv(datasets.CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_cache_dir() == tmp_path / "home" / ".cache" / "elsa-index"


def test_download_verifies_md5_and_loads(tmp_path, monkeypatch):
    zpath = serve_ml1m(monkeypatch, tmp_path / "src")
    cache = tmp_path / "cache"
    got = download_dataset("ml-1m", cache_dir=cache)
    assert got == cache / "ml-1m.zip"
    assert got.read_bytes() == zpath.read_bytes()
    assert os.listdir(cache) == ["ml-1m.zip"]  # no temporary file left behind
    assert_ml_log(load_movielens("1m", cache_dir=cache), "1m")


def test_download_through_env_cache_and_reuse(tmp_path, monkeypatch):
    zpath = serve_ml1m(monkeypatch, tmp_path / "src")
    cache = tmp_path / "env-cache"
    monkeypatch.setenv(datasets.CACHE_ENV, str(cache))
    assert_ml_log(load_dataset("ml-1m"), "1m")  # downloads into $ELSA_INDEX_CACHE
    assert (cache / "ml-1m.zip").read_bytes() == zpath.read_bytes()
    zpath.unlink()  # the source is gone: the cached copy must be used
    (tmp_path / "src" / "ml-1m.zip.md5").unlink()
    assert_ml_log(load_dataset("ml-1m", download=True), "1m")
    assert download_dataset("ml-1m") == cache / "ml-1m.zip"


def test_download_force_fetches_again(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    serve_ml1m(monkeypatch, tmp_path / "src")
    download_dataset("ml-1m", cache_dir=cache)
    new_rows = [(7, 8, 2, 123)]
    serve_ml1m(monkeypatch, tmp_path / "src", ml_text("1m", new_rows))
    # Without force the old cached file is kept ...
    assert load_movielens("1m", cache_dir=cache).user.tolist() == ["1", "1", "6040"]
    # ... with force it is replaced.
    download_dataset("ml-1m", cache_dir=cache, force=True)
    log = load_movielens("1m", cache_dir=cache)
    assert log.user.tolist() == ["7"] and log.item.tolist() == ["8"] and log.timestamp.tolist() == [123]
    assert os.listdir(cache) == ["ml-1m.zip"]


def test_download_wrong_md5_leaves_nothing(tmp_path, monkeypatch):
    serve_ml1m(monkeypatch, tmp_path / "src", md5="0" * 32)
    cache = tmp_path / "cache"
    msg = error_message(download_dataset, "ml-1m", cache_dir=cache)
    assert "checksum mismatch" in msg and "ml-1m.zip" in msg and "0" * 32 in msg
    assert list(cache.iterdir()) == []
    with pytest.raises(DataError, match="checksum mismatch"):
        load_movielens("1m", cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_download_wrong_md5_with_force_keeps_good_cached_copy(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    zpath = serve_ml1m(monkeypatch, tmp_path / "src")
    good = zpath.read_bytes()
    download_dataset("ml-1m", cache_dir=cache)
    serve_ml1m(monkeypatch, tmp_path / "src", ml_text("1m", [(7, 8, 2, 123)]), md5="f" * 32)
    with pytest.raises(DataError, match="checksum mismatch"):
        download_dataset("ml-1m", cache_dir=cache, force=True)
    assert os.listdir(cache) == ["ml-1m.zip"]
    assert (cache / "ml-1m.zip").read_bytes() == good


def test_download_md5_known_in_source(tmp_path, monkeypatch):
    zpath = ml_zip(tmp_path, "100k")
    monkeypatch.setitem(datasets.SOURCES, "ml-100k", Source(zpath.as_uri(), "ml-100k.zip", md5=md5_of(zpath).upper()))
    assert_ml_log(load_dataset("ml-100k", cache_dir=tmp_path / "c"), "100k")


def test_download_without_published_checksum(tmp_path, monkeypatch):
    src = write(tmp_path / "src" / "ratings.csv", GOODBOOKS)
    monkeypatch.setitem(datasets.SOURCES, "goodbooks-10k", Source(src.as_uri(), "goodbooks-10k-ratings.csv"))
    cache = tmp_path / "cache"
    log = load_goodbooks(cache_dir=cache)
    assert log.user.tolist() == ["1", "2", "53424"]
    assert (cache / "goodbooks-10k-ratings.csv").read_text() == GOODBOOKS


def test_downloaded_file_permissions_follow_umask(tmp_path, monkeypatch):
    serve_ml1m(monkeypatch, tmp_path / "src")
    old = os.umask(0o022)
    try:
        path = download_dataset("ml-1m", cache_dir=tmp_path / "cache")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0o600


def test_no_download_and_nothing_cached(tmp_path, monkeypatch):
    serve_ml1m(monkeypatch, tmp_path / "src")
    cache = tmp_path / "cache"
    msg = error_message(load_movielens, "1m", cache_dir=cache, download=False)
    assert "download=False" in msg and str(cache / "ml-1m.zip") in msg and "path=" in msg
    assert not cache.exists()


def test_download_missing_source_or_checksum_file(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    missing = (tmp_path / "nowhere" / "ml-1m.zip").as_uri()
    monkeypatch.setitem(datasets.SOURCES, "ml-1m", Source(missing, "ml-1m.zip"))
    with pytest.raises(DataError, match=r"could not download .*nowhere/ml-1m\.zip"):
        download_dataset("ml-1m", cache_dir=cache)
    assert list(cache.iterdir()) == []
    monkeypatch.setitem(datasets.SOURCES, "ml-1m", Source(missing, "ml-1m.zip", md5_url=missing + ".md5"))
    with pytest.raises(DataError, match=r"could not fetch the checksum file .*ml-1m\.zip\.md5"):
        download_dataset("ml-1m", cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_download_network_failure_is_data_error(tmp_path, monkeypatch):
    """An https source that cannot be reached (simulated: no socket is opened) gives a clear DataError."""
    calls = []

    def unreachable(self, method, url, *args, **kwargs):
        calls.append(url)
        raise requests.ConnectionError(f"Failed to resolve {url}")

    monkeypatch.setattr(requests.sessions.Session, "request", unreachable)
    cache = tmp_path / "cache"
    url = "https://example.invalid/ml-1m.zip"
    monkeypatch.setitem(datasets.SOURCES, "ml-1m", Source(url, "ml-1m.zip", md5="0" * 32))
    with pytest.raises(DataError, match=r"could not download https://example\.invalid/ml-1m\.zip.*pass path="):
        download_dataset("ml-1m", cache_dir=cache)
    assert calls == [url] and list(cache.iterdir()) == []
    monkeypatch.setitem(datasets.SOURCES, "ml-1m", Source(url, "ml-1m.zip", md5_url=url + ".md5"))
    with pytest.raises(DataError, match=r"could not fetch the checksum file https://example\.invalid/ml-1m\.zip\.md5"):
        load_movielens("1m", cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_download_unsupported_scheme(tmp_path, monkeypatch):
    monkeypatch.setitem(datasets.SOURCES, "ml-1m", Source("gopher://old.example/ml-1m.zip", "ml-1m.zip"))
    with pytest.raises(DataError, match="unsupported URL scheme 'gopher'"):
        download_dataset("ml-1m", cache_dir=tmp_path / "cache")


def test_download_checksum_file_without_digest(tmp_path, monkeypatch):
    zpath = ml_zip(tmp_path, "1m")
    md5_file = write(tmp_path / "ml-1m.zip.md5", "<html>Not Found</html>\n")
    monkeypatch.setitem(datasets.SOURCES, "ml-1m", Source(zpath.as_uri(), "ml-1m.zip", md5_url=md5_file.as_uri()))
    with pytest.raises(DataError, match="holds no md5 digest"):
        download_dataset("ml-1m", cache_dir=tmp_path / "cache")


def test_download_unwritable_cache_is_data_error(tmp_path, monkeypatch):
    serve_ml1m(monkeypatch, tmp_path / "src")
    blocker = write(tmp_path / "blocker", "a file, not a directory")
    with pytest.raises(DataError, match="cannot write to the cache directory"):
        download_dataset("ml-1m", cache_dir=blocker / "cache")


def test_download_unknown_name():
    with pytest.raises(DataError, match=r"no download source for dataset 'netflix'.*ml-1m"):
        download_dataset("netflix")


# ----------------------------------------------------------------- bad input

EXPECT_ML = {
    "100k": "tab-separated 'user id, item id, rating, timestamp'",
    "1m": "'UserID::MovieID::Rating::Timestamp'",
    "20m": "header 'userId,movieId,rating,timestamp'",
}


@pytest.mark.parametrize(
    "variant, bad_line, detail",
    [
        ("100k", "196\t242\t3\n", "Expected 4 columns, got 3"),
        ("100k", "196\t242\tx\t881250949\n", "invalid value 'x'"),
        ("1m", "1::1193::5\n", "Expected 4 columns, got 3"),
        ("1m", "1::1193::5::978300760::9\n", "Expected 4 columns, got 5"),
        ("1m", "1::1193::five::978300760\n", "invalid value 'five'"),
        ("20m", "1,2,3.5\n", "Expected 4 columns, got 3"),
        ("20m", "1,2,good,1112486027\n", "invalid value 'good'"),
        ("20m", "1,2,,1112486027\n", "empty value(s) in column 'rating'"),
    ],
)
def test_movielens_malformed_line(tmp_path, variant, bad_line, detail):
    text = ml_text(variant) + bad_line
    folder, filename = ML_FILES[variant]
    for path in (write(tmp_path / filename, text), ml_zip(tmp_path, variant, text)):
        msg = error_message(load_movielens, variant, path)
        assert str(path) in msg and EXPECT_ML[variant] in msg and detail in msg
    assert f"ml-{variant}.zip:{folder}/{filename}" in msg  # the zip member is named


@pytest.mark.parametrize("variant", ["100k", "1m", "20m"])
def test_movielens_empty_file(tmp_path, variant):
    _, filename = ML_FILES[variant]
    path = write(tmp_path / filename, "")
    msg = error_message(load_movielens, variant, path)
    assert str(path) in msg and EXPECT_ML[variant] in msg


def test_movielens_header_only(tmp_path):
    path = write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n")
    with pytest.raises(DataError, match=r"ratings\.csv holds no ratings; expected CSV with header"):
        load_movielens("20m", path)


def test_movielens_wrong_header(tmp_path):
    path = write(tmp_path / "ratings.csv", "user,movie,rating,timestamp\n1,2,3.5,4\n")
    msg = error_message(load_movielens, "20m", path)
    assert str(path) in msg and "lacks column(s) ['userId', 'movieId']" in msg and "'user', 'movie'" in msg


@pytest.mark.parametrize("variant", ["100k", "1m", "20m"])
def test_movielens_zip_without_member(tmp_path, variant):
    folder, filename = ML_FILES[variant]
    path = write_zip(tmp_path / f"{folder}.zip", {f"{folder}/movies.dat": "1::Toy Story::Animation\n"})
    msg = error_message(load_movielens, variant, path)
    assert str(path) in msg and f"has no {filename}" in msg and "official MovieLens zip" in msg


def test_movielens_wrong_variant_zip(tmp_path):
    path = ml_zip(tmp_path, "1m")
    with pytest.raises(DataError, match=r"ml-1m\.zip has no u\.data"):
        load_movielens("100k", path)


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "deflated"])
def test_movielens_corrupt_zip(tmp_path, compression):
    body = "".join(f"{u}::{u % 50}::3::{u}\n" for u in range(3000))
    path = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        zf.writestr("ml-1m/ratings.dat", body)
    raw = bytearray(path.read_bytes())
    raw[200] ^= 0xFF  # inside the member's data: bad CRC or broken deflate stream
    raw[300] ^= 0x55
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"cannot read the zip file .*ml-1m\.zip"):
        load_movielens("1m", path)


def test_movielens_missing_path(tmp_path):
    path = tmp_path / "ml-1m.zip"
    with pytest.raises(DataError, match=rf"ml-1m: no such file or directory: {path}"):
        load_movielens("1m", path)


def test_movielens_directory_without_files(tmp_path):
    msg = error_message(load_movielens, "1m", tmp_path)
    assert str(tmp_path) in msg and "ratings.dat" in msg and "ml-1m.zip" in msg


@pytest.mark.parametrize(
    "text, detail",
    [
        (GOODBOOKS + "3,17\n", "Expected 3 columns, got 2"),
        (GOODBOOKS + "3,17,great\n", "invalid value 'great'"),
        ("user_id,item_id,rating\n1,2,3\n", "lacks column(s) ['book_id']"),
        ("user_id,book_id,rating\n", "holds no ratings"),
        ("", "Empty CSV file"),
    ],
)
def test_goodbooks_bad_file(tmp_path, text, detail):
    path = write(tmp_path / "ratings.csv", text)
    msg = error_message(load_goodbooks, path)
    assert str(path) in msg and "header 'user_id,book_id,rating'" in msg and detail in msg


def test_goodbooks_missing(tmp_path):
    with pytest.raises(DataError, match=r"goodbooks-10k: no such file or directory: .*nope\.csv"):
        load_goodbooks(tmp_path / "nope.csv")
    with pytest.raises(DataError, match=rf"{tmp_path} has no ratings\.csv"):
        load_goodbooks(tmp_path)


NETFLIX_FORMAT = "'MovieID:' lines, each followed by 'CustomerID,Rating,YYYY-MM-DD' lines"


@pytest.mark.parametrize(
    "text, detail",
    [
        ("1:\n5,3\n", "Expected 3 columns, got 2"),  # no date field
        ("1:\n5,3,2005-01-01,x\n", "Expected 3 columns, got 4"),
        ("1:\n5,three,2005-01-01\n", "invalid value 'three'"),
        ("1:\n5,3,2005-13-01\n", "2005-13-01"),
        ("1:\n5,3,\n", "lacks its rating or date (customer 5)"),
        ("1:\n5,,2005-01-01\n", "lacks its rating or date (customer 5)"),
        ("1:\n,3,2005-01-01\n", "without a customer or movie id"),
        ("1:\n30878\n", "Expected 3 columns, got 1"),  # probe.txt is not a training file
        ("5,3,2005-01-01\n", "does not start with a 'MovieID:' line"),
        ("", "does not start with a 'MovieID:' line"),
    ],
)
def test_netflix_bad_file(tmp_path, text, detail):
    path = write(tmp_path / "combined_data_1.txt", text)
    msg = error_message(load_netflix, path)
    assert str(path) in msg and NETFLIX_FORMAT in msg and detail in msg


def test_netflix_error_names_the_bad_file_among_several(tmp_path):
    good = write(tmp_path / "combined_data_1.txt", NETFLIX_1)
    bad = write(tmp_path / "combined_data_2.txt", "3:\n5,3\n")
    for files in ([good, bad], [bad, good], tmp_path):
        msg = error_message(load_netflix, files)
        assert str(bad) in msg and "combined_data_1" not in msg and "Expected 3 columns" in msg


def test_netflix_missing_paths(tmp_path):
    with pytest.raises(DataError, match=r"netflix: no such file or directory: .*combined_data_9\.txt"):
        load_netflix(tmp_path / "combined_data_9.txt")
    with pytest.raises(DataError, match=r"holds no Netflix Prize training files; expected combined_data_\*\.txt"):
        load_netflix(tmp_path)
    with pytest.raises(DataError, match="empty list of paths"):
        load_netflix([])
