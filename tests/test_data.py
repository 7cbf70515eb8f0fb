"""Tests for elsa_index.data: reading, filtering, id maps, matrices, splits.

Files are written with pyarrow into ``tmp_path``; no network.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from elsa_index.data import IdMap, Interactions, Log, filter_log, read_log
from elsa_index.errors import DataError


def _table():
    return pa.table(
        {
            "uid": ["007", "7", "007", "abc"],
            "iid": ["0042", "42", "x", "0042"],
            "score": [5.0, 3.5, 1.0, 4.0],
            "when": pa.array([100, 200, 300, 400], pa.int64()),
            "fold": ["train", "train", "test", "train"],
        }
    )


def _pairs(log: Log) -> list[tuple[str, str]]:
    return list(zip(log.user.tolist(), log.item.tolist()))


# ----------------------------------------------------------------- read_log


COLS = dict(user_col="uid", item_col="iid", rating_col="score", timestamp_col="when", split_col="fold")


def _check_table_log(log: Log):
    assert log.user.tolist() == ["007", "7", "007", "abc"]
    assert log.item.tolist() == ["0042", "42", "x", "0042"]
    assert log.user.dtype.kind == "U" and log.item.dtype.kind == "U"
    assert log.rating.dtype == np.float32
    np.testing.assert_array_equal(log.rating, [5.0, 3.5, 1.0, 4.0])
    assert log.timestamp.dtype == np.int64
    np.testing.assert_array_equal(log.timestamp, [100, 200, 300, 400])
    assert log.split.tolist() == ["train", "train", "test", "train"]


def test_read_parquet_custom_columns(tmp_path):
    path = tmp_path / "log.parquet"
    pq.write_table(_table(), path)
    _check_table_log(read_log(path, **COLS))


def test_read_csv_custom_columns_keeps_leading_zeros(tmp_path):
    path = tmp_path / "log.csv"
    pcsv.write_csv(_table(), path)
    _check_table_log(read_log(path, **COLS))


def test_read_unquoted_numeric_ids_stay_strings(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,rating\n007,0042,5\n7,42,3\n")
    log = read_log(path, rating_col="rating")
    assert log.user.tolist() == ["007", "7"]
    assert log.item.tolist() == ["0042", "42"]
    np.testing.assert_array_equal(log.rating, [5.0, 3.0])
    assert log.timestamp is None and log.split is None


def test_read_tsv_and_explicit_format(tmp_path):
    path = tmp_path / "log.tsv"
    path.write_text("user_id\titem_id\n01\ta\n02\tb\n")
    log = read_log(path)
    assert _pairs(log) == [("01", "a"), ("02", "b")]
    other = tmp_path / "log.data"
    pq.write_table(pa.table({"user_id": ["u"], "item_id": ["i"]}), other)
    assert _pairs(read_log(other, file_format="parquet")) == [("u", "i")]
    with pytest.raises(DataError, match="unsupported file format 'data'"):
        read_log(other)


def test_read_only_requested_columns(tmp_path):
    path = tmp_path / "log.parquet"
    pq.write_table(_table(), path)
    log = read_log(path, user_col="uid", item_col="iid")
    assert log.rating is None and log.timestamp is None and log.split is None
    assert len(log) == 4


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_missing_column_names_it_and_the_available_ones(tmp_path, suffix):
    path = tmp_path / f"log.{suffix}"
    (pq.write_table if suffix == "parquet" else pcsv.write_csv)(_table(), path)
    with pytest.raises(DataError) as info:
        read_log(path, user_col="uid", item_col="item_id", rating_col="score")
    msg = str(info.value)
    assert "'item_id'" in msg
    for col in ("uid", "iid", "score", "when", "fold"):
        assert col in msg
    with pytest.raises(DataError, match=r"no column\(s\) \['rating'\]"):
        read_log(path, user_col="uid", item_col="iid", rating_col="rating")


def test_non_numeric_rating_raises(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,rating\na,x,5\nb,y,five\n")
    with pytest.raises(DataError, match=r"rating column 'rating'.*must be numeric.*'five'"):
        read_log(path, rating_col="rating")
    pq_path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": ["a", "b"], "item_id": ["x", "y"], "rating": ["4.5", "good"]}), pq_path)
    with pytest.raises(DataError, match="'good'"):
        read_log(pq_path, rating_col="rating")


def test_numeric_strings_as_ratings_are_accepted(tmp_path):
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": ["a", "b"], "item_id": ["x", "y"], "rating": ["4.5", "2"]}), path)
    np.testing.assert_array_equal(read_log(path, rating_col="rating").rating, [4.5, 2.0])


@pytest.mark.parametrize(
    "name, content, message",
    [("nope.parquet", None, "interaction file not found"),
     ("broken.parquet", b"this is not parquet", "could not read .*broken.parquet as parquet"),
     ("log.csv", b"user_id,item_id\na,x\n,y\n", "column 'user_id'.*1 missing values")],
    ids=["missing", "unreadable", "null-ids"],
)
def test_missing_unreadable_or_invalid_file_raises(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_log(path)


def test_timestamp_type_is_converted_to_seconds(tmp_path):
    path = tmp_path / "log.parquet"
    ts = pa.array([1_500, 86_400_000], pa.timestamp("ms"))  # 1.5 s (sub-second), 1 day
    pq.write_table(pa.table({"user_id": ["a", "b"], "item_id": ["x", "y"], "t": ts}), path)
    log = read_log(path, timestamp_col="t")
    np.testing.assert_array_equal(log.timestamp, [1, 86_400])


def test_null_timestamp_raises_instead_of_garbage(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,t\na,x,10\nb,y,\n")
    with pytest.raises(DataError, match="timestamp column contains missing"):
        read_log(path, timestamp_col="t")


def test_from_arrays_validates_lengths_and_nulls():
    with pytest.raises(DataError, match="differ in length: 2 vs 1"):
        Log.from_arrays(["a", "b"], ["x"])
    with pytest.raises(DataError, match="rating column has 1 rows, expected 2"):
        Log.from_arrays(["a", "b"], ["x", "y"], rating=[1.0])
    with pytest.raises(DataError, match="user column contains missing"):
        Log.from_arrays(np.array(["a", None], dtype=object), ["x", "y"])
    with pytest.raises(DataError, match="NaN or infinite"):
        Log.from_arrays(["a"], ["x"], rating=[float("nan")])


# --------------------------------------------------------------- filter_log


def test_min_rating_keeps_ratings_at_or_above_threshold():
    log = Log.from_arrays(["a", "a", "b", "b"], ["x", "y", "x", "z"], rating=[3.5, 4.0, 4.5, 1.0])
    out = filter_log(log, min_rating=4.0, min_user_support=1)
    assert _pairs(out) == [("a", "y"), ("b", "x")]
    np.testing.assert_array_equal(out.rating, [4.0, 4.5])
    with pytest.raises(DataError, match=r"no interactions with rating >= 5.0 \(of 4 rows\)"):
        filter_log(log, min_rating=5.0, min_user_support=1)
    with pytest.raises(DataError, match="log has no rating column"):
        filter_log(Log.from_arrays(["a"], ["x"]), min_rating=1.0, min_user_support=1)


def test_deduplicate_keeps_first_occurrence_in_file_order():
    log = Log.from_arrays(
        ["b", "a", "b", "a", "b"], ["x", "y", "x", "y", "z"], rating=[1, 2, 3, 4, 5], timestamp=[50, 40, 30, 20, 10]
    )
    out = filter_log(log, min_user_support=1)
    assert _pairs(out) == [("b", "x"), ("a", "y"), ("b", "z")]
    np.testing.assert_array_equal(out.rating, [1, 2, 5])
    np.testing.assert_array_equal(out.timestamp, [50, 40, 10])
    assert len(filter_log(log, min_user_support=1, deduplicate=False)) == 5


def test_iterative_pruning_reaches_a_fixed_point():
    # D has one item -> removed; then i3 has one user (C) -> removed;
    # then C has one item -> removed. Three passes; only {A, B} x {i1, i2} survive.
    rows = [("A", "i1"), ("A", "i2"), ("B", "i1"), ("B", "i2"), ("C", "i2"), ("C", "i3"), ("D", "i3")]
    log = Log.from_arrays([u for u, _ in rows], [i for _, i in rows])
    out = filter_log(log, min_user_support=2, min_item_support=2)
    assert _pairs(out) == [("A", "i1"), ("A", "i2"), ("B", "i1"), ("B", "i2")]
    # A fixed point: filtering again changes nothing.
    assert _pairs(filter_log(out, min_user_support=2, min_item_support=2)) == _pairs(out)
    # Only the user condition: D goes, C stays (C still has 2 items).
    only_users = filter_log(log, min_user_support=2, min_item_support=1)
    assert sorted(set(only_users.user.tolist())) == ["A", "B", "C"]
    assert len(only_users) == 6


@pytest.mark.parametrize("kwargs, message", [
    ({"min_user_support": -1}, r"min_user_support must be an integer >= 0, got -1"),
    ({"min_item_support": 2.5}, r"min_item_support must be an integer >= 0, got 2.5"),
    ({"min_rating": "4"}, r"min_rating must be a finite number, got '4'"),
])
def test_filter_log_bad_settings(kwargs, message):
    with pytest.raises(DataError, match=message):
        filter_log(Log.from_arrays(["a"], ["x"], rating=[5.0]), **kwargs)


def test_empty_after_filtering_raises_clear_error():
    log = Log.from_arrays(["a", "b"], ["x", "y"])
    with pytest.raises(DataError, match=r"empty after filtering \(2 rows in.*min_user_support=3.*lower the thresholds"):
        filter_log(log, min_user_support=3)


# -------------------------------------------------------------------- IdMap


def test_idmap_is_sorted_unique_and_order_independent():
    m = IdMap.from_values(["b", "a", "c", "a"])
    assert m.ids.tolist() == ["a", "b", "c"]
    assert m == IdMap.from_values(["c", "b", "a"])
    assert m != IdMap.from_values(["a", "b"])
    assert len(m) == 3 and "b" in m and "d" not in m
    # Numbers are ids, sorted as strings.
    assert IdMap.from_values([10, 9, 10]).ids.tolist() == ["10", "9"]


def test_idmap_round_trip_and_missing_policy():
    m = IdMap(["z", "007", "7"])  # given order is kept
    idx = m.index(["7", "z", "007"])
    assert idx.dtype == np.int64 and idx.tolist() == [2, 0, 1]
    assert m.external(idx).tolist() == ["7", "z", "007"]
    with pytest.raises(DataError, match=r"unknown id\(s\) \['nope'\]"):
        m.index(["z", "nope"])
    with pytest.raises(DataError, match=r"unknown id\(s\) \['gen'\]"):
        m.index(v for v in ["z", "gen"])  # generators report the unknown id too
    ignored = m.index(["z", "nope"], missing="ignore")
    assert ignored.tolist() == [0, -1]
    assert m.external(ignored).tolist() == ["z", ""]
    with pytest.raises(DataError, match="missing must be 'raise' or 'ignore'"):
        m.index(["z"], missing="drop")
    with pytest.raises(DataError, match="1 duplicates"):
        IdMap(["a", "b", "a"])


@pytest.mark.parametrize("ids", [["a", "bb", "c"], ["c", "a", "bb"]], ids=["sorted", "unsorted"])
def test_idmap_lookup_same_for_sorted_and_unsorted_ids(ids):
    # Sorted ids are searched by bisection, others through a dict: same answers.
    m = IdMap(ids)
    keys = ["bb", "b", "bbb", "", "zzzz", "c", "a", 7]
    expected = [ids.index(k) if k in ids else -1 for k in keys]
    assert m.index(keys, missing="ignore").tolist() == expected
    assert m.index(np.array(["c", "a"])).tolist() == [ids.index("c"), ids.index("a")]
    assert [k in m for k in keys] == [e >= 0 for e in expected]
    assert m.index([]).tolist() == []
    with pytest.raises(DataError, match="1-D"):
        m.index([["a"]])
    empty = IdMap([])
    assert empty.index(["a"], missing="ignore").tolist() == [-1] and "a" not in empty


# ------------------------------------------------------------- Interactions


def _small_log():
    return Log.from_arrays(
        ["u2", "u1", "u1", "u2", "u3", "u1"],
        ["b", "a", "c", "b", "c", "a"],  # (u2,b) and (u1,a) duplicated
    )


def test_interactions_binary_csr_and_popularity():
    inter = Interactions.from_log(_small_log())
    m = inter.matrix
    assert sp.isspmatrix_csr(m) and m.dtype == np.float32
    assert m.shape == (3, 3) and inter.n_users == 3 and inter.n_items == 3
    assert inter.user_ids.ids.tolist() == ["u1", "u2", "u3"]
    assert inter.item_ids.ids.tolist() == ["a", "b", "c"]
    np.testing.assert_array_equal(m.toarray(), [[1, 0, 1], [0, 1, 0], [0, 0, 1]])
    assert inter.nnz == 4 and np.all(m.data == 1.0) and m.has_sorted_indices
    np.testing.assert_array_equal(inter.item_popularity(), [1, 1, 2])
    assert inter.item_popularity().dtype == np.int64


def test_interactions_with_given_maps_drops_outside_rows():
    inter = Interactions.from_log(_small_log(), item_ids=IdMap(["a", "c", "zz"]), user_ids=IdMap(["u1", "u3"]))
    np.testing.assert_array_equal(inter.matrix.toarray(), [[1, 1, 0], [0, 1, 0]])
    empty_items = Interactions.from_log(_small_log(), item_ids=IdMap([]))
    assert empty_items.matrix.shape == (3, 0) and empty_items.nnz == 0
    with pytest.raises(DataError, match="empty log"):
        Interactions.from_log(_small_log().take(np.zeros(6, bool)))


def test_fingerprint_is_stable_and_sensitive():
    log = _small_log()
    fp = Interactions.from_log(log).fingerprint()
    assert len(fp) == 32 and int(fp, 16) >= 0
    assert Interactions.from_log(log).fingerprint() == fp
    shuffled = log.take(np.array([5, 3, 1, 0, 4, 2]))
    assert Interactions.from_log(shuffled).fingerprint() == fp
    more = Log.from_arrays(np.append(log.user, "u3"), np.append(log.item, "a"))
    assert Interactions.from_log(more).fingerprint() != fp
    renamed = Log.from_arrays(log.user, np.where(log.item == "c", "d", log.item))
    assert Interactions.from_log(renamed).fingerprint() != fp


@pytest.mark.parametrize("ids", [["a", "a\x00"], ["x", "a\x00b"], np.array(["x", "a\x00b"])])
def test_ids_with_nul_characters_are_refused(ids):
    # numpy's string arrays drop trailing NULs, so "a\x00" would silently become "a".
    with pytest.raises(DataError, match="must not contain NUL characters"):
        IdMap(ids)


def test_duplicate_ids_are_named():
    with pytest.raises(DataError, match="1 duplicates found, e.g. 'b'"):
        IdMap(["b", "a", "b"])
