"""Segments: discovery on planted structure, merging, persistence, homepage rows, explanations, bad input."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from elsa_index.checkpoint import Checkpoint
from elsa_index.errors import ElsaIndexError
from elsa_index.indexers.sparse import ExactSparse
from elsa_index.search import Index, UnknownItemsWarning, build_index
from elsa_index.segments import (
    FORMAT_VERSION,
    TOP_ROW_LABEL,
    SegmentError,
    SegmentFallbackWarning,
    Segments,
    discover_segments,
    explain_item,
    explain_user,
    recommend_segments,
)

# Planted groups: key (dim, sign) -> rows of (dominant value, {other dim: value}).
# g3 and g4 are near-duplicates (each item active in 5 and 8, same signs).
GROUPS = {
    "g0": ((0, +1), [(0.9, {10: 0.2}), (0.8, {11: 0.3}), (0.9, {}), (0.85, {10: 0.1}), (0.7, {11: -0.2}), (0.9, {2: 0.1})]),
    "g1": ((1, +1), [(0.9, {10: -0.2}), (0.8, {}), (0.9, {3: 0.2}), (0.75, {11: 0.1}), (0.9, {10: 0.3})]),
    # Same dim, opposite sign; the last item ties |-0.7| with dim 4 and keeps the lower dim.
    "g2": ((1, -1), [(-0.9, {11: 0.2}), (-0.8, {10: 0.1}), (-0.9, {}), (-0.7, {4: 0.7})]),
    "g3": ((5, +1), [(0.8, {8: 0.5}), (0.85, {8: 0.45}), (0.8, {8: 0.5, 10: 0.1}), (0.9, {8: 0.4})]),
    "g4": ((8, +1), [(0.8, {5: 0.5}), (0.85, {5: 0.5}), (0.8, {5: 0.45, 11: 0.1})]),
}
DIMS = 12


def planted():
    """(checkpoint, {group: set of item ids}); items shuffled, one item with an empty row."""
    entries = [(g, dominant, key[0], other) for g, (key, items) in GROUPS.items() for dominant, other in items]
    order = np.random.default_rng(0).permutation(len(entries) + 1)  # last slot: the empty row
    rows, cols, vals = [], [], []
    groups: dict[str, set] = {g: set() for g in GROUPS}
    ids = [f"i{j:02d}" for j in range(len(order))]
    for pos, e in enumerate(order):
        if e == len(entries):
            continue
        g, dominant, dim, other = entries[e]
        c = [dim, *other]
        v = np.array([dominant, *other.values()])
        rows += [pos] * len(c)
        cols += c
        vals += (v / np.linalg.norm(v)).tolist()
        groups[g].add(ids[pos])
    emb = sp.csr_matrix((np.float32(vals), (rows, cols)), shape=(len(order), DIMS))
    pop = np.arange(len(order)) * 7 % 23 + 1
    return Checkpoint(emb, ids, pop, kind="compressed_elsa"), groups


@pytest.fixture(scope="module")
def toy():
    return planted()


def member_ids(seg, s):
    return set(seg.item_ids.ids[seg.members(s)].tolist())


# ------------------------------------------------------------------ discovery


def test_planted_segments_recovered_exactly(toy):
    ckpt, groups = toy
    seg = discover_segments(ckpt)
    assert seg.n_segments == 5 and seg.info["n_initial_segments"] == 5 and seg.info["n_merges"] == 0
    found = {tuple(seg.keys(s)): member_ids(seg, s) for s in range(seg.n_segments)}
    assert found == {(key,): groups[g] for g, (key, _) in GROUPS.items()}
    # ids ordered by size, then main key; the empty row is unsegmented
    assert list(seg.sizes) == [6, 5, 4, 4, 3]
    assert [seg.keys(s)[0] for s in range(5)] == [(0, 1), (1, 1), (1, -1), (5, 1), (8, 1)]
    empty = np.flatnonzero(np.diff(ckpt.embeddings.indptr) == 0)
    assert seg.assignment[empty].tolist() == [-1] and (np.delete(seg.assignment, empty) >= 0).all()
    assert list(seg.labels) == ["dim 0+", "dim 1+", "dim 1-", "dim 5+", "dim 8+"]


def test_segment_vectors_and_central_items(toy):
    ckpt, _ = toy
    seg = discover_segments(ckpt, n_central=3)
    norms = np.sqrt(np.asarray(seg.vectors.multiply(seg.vectors).sum(axis=1)).ravel())
    np.testing.assert_allclose(norms, 1, rtol=1e-5)
    for s in range(seg.n_segments):
        members = seg.members(s)
        mean = np.asarray(ckpt.embeddings[members].mean(axis=0)).ravel()
        np.testing.assert_allclose(seg.vectors[s].toarray().ravel(), mean / np.linalg.norm(mean), rtol=1e-5)
        # spans exactly the dims its items use
        assert set(seg.vectors[s].indices) == set(ckpt.embeddings[members].indices)
        ip = np.asarray(ckpt.embeddings[members] @ seg.vectors[s].T.toarray()).ravel()
        expected = members[np.lexsort((members, -ip))][:3]
        assert seg.central(s).tolist() == expected.tolist()
        assert seg.central_scores[seg.central_indptr[s]:seg.central_indptr[s + 1]] == pytest.approx(np.sort(ip)[::-1][:3], rel=1e-5)


def test_fixture_segments_are_pure_and_nonneg_groups_recovered(sparse_checkpoint, nonneg_checkpoint):
    group = np.arange(300) % 8
    seg = discover_segments(sparse_checkpoint)
    assert all(len(set(group[seg.members(s)])) == 1 for s in range(seg.n_segments))
    seg = discover_segments(nonneg_checkpoint, merge_to=8)
    parts = sorted(sorted(set(group[seg.members(s)].tolist())) for s in range(8))
    assert parts == [[g] for g in range(8)]


def test_merge_near_duplicates_first(toy):
    ckpt, groups = toy
    seg = discover_segments(ckpt, merge_to=4)
    assert seg.n_segments == 4 and seg.info["n_merges"] == 1
    merged = [s for s in range(4) if len(seg.keys(s)) == 2]
    assert len(merged) == 1
    s = merged[0]
    assert seg.keys(s) == [(5, 1), (8, 1)]  # main key (more items) first
    assert member_ids(seg, s) == groups["g3"] | groups["g4"]
    assert seg.sizes[0] == 7 and s == 0
    assert seg.labels[s] == "dim 5+ & 1 more"


def test_merging_deterministic_nested_and_reaches_target(nonneg_checkpoint):
    m = discover_segments(nonneg_checkpoint).n_segments
    previous = None
    for target in (m, 40, 20, 8, 3, 1):
        a = discover_segments(nonneg_checkpoint, merge_to=target)
        b = discover_segments(nonneg_checkpoint, merge_to=target)
        assert a.n_segments == target
        for name, x in a._arrays().items():
            np.testing.assert_array_equal(x, b._arrays()[name], err_msg=name)
        if previous is not None:  # greedy merging only unites segments of the finer level
            for s in range(previous.n_segments):
                assert len(set(a.assignment[previous.members(s)])) == 1
        previous = a
    assert previous.sizes.tolist() == [300]


def test_min_size_merges_small_segments_into_most_similar(toy):
    ckpt, groups = toy
    seg = discover_segments(ckpt, min_size=4)
    assert seg.n_segments == 4
    assert {frozenset(member_ids(seg, s)) for s in range(4)} == {
        frozenset(groups["g0"]), frozenset(groups["g1"]), frozenset(groups["g2"]), frozenset(groups["g3"] | groups["g4"])}


# ------------------------------------------------------------------ labels


def _metadata(ckpt, groups):
    genre = {"g0": "Comedy|Romance", "g1": "Action|Thriller", "g2": "Drama", "g3": "Sci-Fi|Action", "g4": "Sci-Fi"}
    ids, genres = [], []
    for g, members in groups.items():
        for i, item in enumerate(sorted(members)):
            ids.append(item)
            genres.append(genre[g] if not (g == "g0" and i == 0) else "Comedy")
    ids.append("not-in-checkpoint")
    genres.append("Western")
    return {"item_id": ids, "title": [f"Title {x}" for x in ids], "genres": genres}


def test_labels_from_metadata_table_frame_mapping_and_file(toy, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    ckpt, groups = toy
    meta = _metadata(ckpt, groups)
    # g1 ties Action and Thriller 5-5: the rarer token in the catalogue (Thriller) comes first
    expected = ["Comedy, Romance", "Thriller, Action", "Drama", "Sci-Fi, Action", "Sci-Fi"]
    table = pa.table(meta)
    pq.write_table(table, tmp_path / "items.parquet")
    sources = [meta, table, tmp_path / "items.parquet", str(tmp_path / "items.parquet")]
    try:
        import pandas as pd

        sources.append(pd.DataFrame(meta))
    except ImportError:
        pass
    for source in sources:
        seg = discover_segments(ckpt, metadata=source)
        assert list(seg.labels) == expected, type(source)
        assert seg.info["metadata_coverage"] == pytest.approx(1 - 1 / ckpt.n_items)  # the empty row has none
    # merged segment: Sci-Fi on all 7 central items, Action on 4
    assert discover_segments(ckpt, metadata=meta, merge_to=4).labels[0] == "Sci-Fi, Action"
    assert list(discover_segments(ckpt, metadata=meta, n_label=1).labels) == ["Comedy", "Thriller", "Drama", "Sci-Fi", "Sci-Fi"]


def test_labels_whitespace_genres_and_real_ml1m_items():
    titles = ["Toy Story (1995)", "Aladdin (1992)", "Heat (1995)", "Casino (1995)"]
    emb = sp.csr_matrix(np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32))
    ckpt = Checkpoint(emb, titles, np.ones(4), kind="imported")
    meta = {"item_id": titles, "genres": ["Animation Children's Comedy", "Animation Children's Comedy Musical",
                                          "Action Crime Thriller", "Drama Thriller"]}
    seg = discover_segments(ckpt, metadata=meta, n_label=3)
    assert list(seg.labels) == ["Animation, Children's, Comedy", "Thriller, Action, Crime"]
    data = os.environ.get("ELSA_INDEX_DATA")
    path = Path(data) / "ml-1m.items.parquet" if data else None
    if path is not None and path.is_file():  # the real ML-1M metadata joins on titles
        assert list(discover_segments(ckpt, metadata=path, n_label=3).labels) == list(seg.labels)


def test_metadata_tables_csv_ids_stay_text_and_missing_cells(tmp_path):
    from elsa_index.data.tables import cell_text, is_missing, item_tokens, read_table

    (tmp_path / "items.csv").write_text("item_id,genres\n007,Drama|War\n7,\n010,Comedy\n")
    cols = read_table(tmp_path / "items.csv", string_columns=("item_id",))
    assert cols["item_id"] == ["007", "7", "010"]
    assert item_tokens(tmp_path / "items.csv", ["7", "007", "x"]) == [(), ("Drama", "War"), None]
    (tmp_path / "items.tsv").write_text("item_id\tgenres\n1\tA B\n")
    assert item_tokens(tmp_path / "items.tsv", ["1"]) == [("A", "B")]
    assert is_missing(None) and is_missing(float("nan")) and not is_missing("") and not is_missing(0)
    assert cell_text(["a", None, "b"]) == "a, b" and cell_text(float("nan")) == "" and cell_text(" x ") == "x"
    with pytest.raises(ElsaIndexError, match="different lengths"):
        read_table({"item_id": ["a"], "genres": []})
    with pytest.raises(ElsaIndexError, match="unsupported metadata file"):
        (tmp_path / "items.json").write_text("{}")
        read_table(tmp_path / "items.json")


# ------------------------------------------------------------------ persistence


def test_save_load_round_trip(toy, tmp_path):
    ckpt, groups = toy
    seg = discover_segments(ckpt, merge_to=4, metadata=_metadata(ckpt, groups), n_central=2)
    path = seg.save(tmp_path / "segments")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "elsa-index-segments" and manifest["format_version"] == FORMAT_VERSION == 2
    assert manifest["checkpoint_fingerprint"] == ckpt.fingerprint and manifest["n_segments"] == 4
    assert not list(tmp_path.glob(".segments.tmp-*"))
    back = Segments.load(path, checkpoint=ckpt)
    for name, x in seg._arrays().items():
        np.testing.assert_array_equal(back._arrays()[name], x, err_msg=name)
    assert back.params == seg.params and back.info == seg.info and back.fingerprint == seg.fingerprint
    assert [back.members(s).tolist() for s in range(4)] == [seg.members(s).tolist() for s in range(4)]
    assert back.key_owner(8, 1) == seg.key_owner(8, 1) == 0
    with pytest.raises(SegmentError, match="already exists"):
        seg.save(path)
    seg.save(path, overwrite=True)


def test_format_1_directories_still_load(toy, tmp_path):
    """Format 1 stored the vector indices as int64 (format 2: int32 through _io.save_csr); both load."""
    ckpt, _ = toy
    seg = discover_segments(ckpt, merge_to=4)
    path = seg.save(tmp_path / "segments")
    assert np.load(path / "vector_indices.npy").dtype == np.int32
    np.save(path / "vector_indices.npy", seg.vectors.indices.astype(np.int64))
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    back = Segments.load(path, checkpoint=ckpt)
    assert (back.vectors != seg.vectors).nnz == 0 and back.labels.tolist() == seg.labels.tolist()
    manifest["format_version"] = FORMAT_VERSION + 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SegmentError, match="newer than this elsa-index supports"):
        Segments.load(path)


def test_load_rejects_bad_directories(toy, tmp_path, sparse_checkpoint):
    ckpt, _ = toy
    seg = discover_segments(ckpt)
    path = seg.save(tmp_path / "s")
    with pytest.raises(SegmentError, match="discovered from checkpoint"):
        Segments.load(path, checkpoint=sparse_checkpoint)
    with pytest.raises(SegmentError, match="not found"):
        Segments.load(tmp_path / "missing")
    np.save(path / "assignment.npy", np.zeros(ckpt.n_items, np.int64))
    with pytest.raises(SegmentError, match="digest"):
        Segments.load(path)
    np.save(path / "labels.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(SegmentError, match="pickled"):
        Segments.load(path)
    (path / "manifest.json").write_text(json.dumps({"format": "elsa-index-checkpoint", "format_version": 1}))
    with pytest.raises(SegmentError, match="not an elsa-index segments"):
        Segments.load(path)


# ------------------------------------------------------------------ recommendation


def brute_rows(ckpt, seg, history, rows, k):
    """Reference: exact scores, segments by u·v, greedy page without repeats."""
    X = np.zeros(ckpt.n_items)
    hist = ckpt.item_ids.index(history)
    X[hist] = 1
    A = ckpt.embeddings.toarray().astype(np.float64)
    u = X @ A
    scores = A @ u
    shown = np.zeros(ckpt.n_items, bool)
    shown[hist] = True

    def take(cand):
        cand = cand[~shown[cand]]
        top = cand[np.lexsort((cand, -scores[cand]))][:k]
        shown[top] = True
        return top

    out = [(-1, take(np.arange(ckpt.n_items)))]
    seg_scores = seg.vectors.toarray() @ u
    for s in np.lexsort((np.arange(seg.n_segments), -seg_scores)):
        if len(out) > rows:
            break
        top = take(seg.members(s))
        if len(top):
            out.append((s, top))
    return out, seg_scores


HISTORIES = [["i03"], ["i00", "i05", "i12"], ["i01", "i02", "i07", "i09", "i20"]]


@pytest.mark.parametrize("history", HISTORIES)
@pytest.mark.parametrize("rows,k", [(5, 2), (2, 3), (10, 10)])
def test_rows_match_reference_no_repeats_history_excluded(toy, history, rows, k):
    ckpt, _ = toy
    seg = discover_segments(ckpt)
    page = recommend_segments(ckpt, seg, history, rows=rows, k=k)
    ref, seg_scores = brute_rows(ckpt, seg, history, rows, k)
    assert [r.segment for r in page] == [s for s, _ in ref]
    for r, (_, top) in zip(page, ref):
        assert r.indices.tolist() == top.tolist()
    assert page[0].label == TOP_ROW_LABEL and np.isnan(page[0].score)
    shown = np.concatenate([r.items for r in page])
    assert len(shown) == len(set(shown)) and not set(shown) & set(history)
    segs = page[1:]
    assert len(segs) <= rows
    assert all(a.score >= b.score for a, b in zip(segs, segs[1:]))
    for r in segs:
        assert r.score == pytest.approx(seg_scores[r.segment], abs=1e-5) and r.label == seg.labels[r.segment]
        assert (seg.assignment[r.indices] == r.segment).all() and 1 <= len(r.items) <= k
        assert np.all(np.diff(r.item_scores) <= 0) and not r.fallback
        assert r.items.tolist() == ckpt.item_ids.ids[r.indices].tolist()


def test_without_top_row_and_with_history_included(toy):
    ckpt, _ = toy
    seg = discover_segments(ckpt)
    page = recommend_segments(ckpt, seg, ["i03", "i05"], rows=3, k=4, top_row=False, exclude_history=False)
    assert len(page) == 3 and all(r.segment >= 0 for r in page)
    shown = np.concatenate([r.items for r in page]).tolist()
    assert len(shown) == len(set(shown)) and {"i03", "i05"} <= set(shown)
    assert recommend_segments(ckpt, seg, ["i03"], rows=0, top_row=False) == []


class HookedSparse(ExactSparse):
    """Stands in for a backend that filters candidates itself (e.g. Lucene with a segment filter)."""

    name = "sparse-hooked"

    def _search_within(self, queries, k, candidates):
        self.calls = getattr(self, "calls", 0) + 1
        keep = np.zeros(self.n_items_, bool)
        keep[candidates] = True
        res = self.search(queries, k, exclude=[np.flatnonzero(~keep)] * queries.shape[0])
        return res.ids, res.scores


def test_rows_identical_across_checkpoint_index_allow_path_and_backend_hook(sparse_checkpoint, histories):
    seg = discover_segments(sparse_checkpoint, merge_to=12)
    index = build_index(sparse_checkpoint, "sparse")
    hooked = Index(sparse_checkpoint, HookedSparse().build(sparse_checkpoint))
    ids = sparse_checkpoint.item_ids.ids
    for u in range(histories.shape[0]):
        history = ids[histories[u].indices].tolist()
        pages = [recommend_segments(src, seg, history, rows=4, k=5) for src in (sparse_checkpoint, index, hooked)]
        for page in pages[1:]:
            assert [r.segment for r in page] == [r.segment for r in pages[0]]
            for a, b in zip(page, pages[0]):
                assert a.items.tolist() == b.items.tolist()
                np.testing.assert_array_equal(a.item_scores, b.item_scores)
        # the generic path a Lucene index can serve: Index.recommend with an allow- and a deny-list
        shown = list(pages[0][0].items)
        for r in pages[0][1:]:
            rec = index.recommend([history], 5, allow=ids[seg.members(r.segment)].tolist(), deny=shown)
            got = rec.ids[0][rec.indices[0] >= 0]
            assert got.tolist() == r.items.tolist()
            np.testing.assert_allclose(rec.scores[0][: len(got)], r.item_scores, rtol=1e-5, atol=1e-6)
            shown += list(r.items)
    assert hooked.backend.calls > 0


def test_unknown_history_falls_back_to_popularity(toy):
    ckpt, _ = toy
    seg = discover_segments(ckpt)
    with pytest.warns(SegmentFallbackWarning), pytest.warns(UnknownItemsWarning):
        page = recommend_segments(ckpt, seg, ["nope", "also-nope"], rows=3, k=2)
    assert all(r.fallback for r in page)
    pop = ckpt.popularity
    order = np.lexsort((np.arange(ckpt.n_items), -pop))
    assert page[0].indices.tolist() == order[:2].tolist()
    assert page[0].item_scores.tolist() == pop[order[:2]].tolist()
    seg_pop = [pop[seg.members(s)].sum() for s in range(seg.n_segments)]
    assert [r.score for r in page[1:]] == sorted(seg_pop, reverse=True)[:3]
    shown = np.concatenate([r.indices for r in page])
    assert len(shown) == len(set(shown))
    with pytest.warns(SegmentFallbackWarning):
        assert recommend_segments(ckpt, seg, [], rows=1, k=1)[0].fallback
    with pytest.warns(UnknownItemsWarning):  # partly known: no fallback
        assert not recommend_segments(ckpt, seg, ["i03", "nope"], rows=1)[0].fallback


# ------------------------------------------------------------------ interpretability


def test_explain_user(toy):
    ckpt, groups = toy
    seg = discover_segments(ckpt)
    history = sorted(groups["g3"])  # u is active in dims 5, 8 and 10
    ex = explain_user(ckpt, seg, history, top=3, k=4)
    page = recommend_segments(ckpt, seg, history, rows=1, k=4)
    assert ex.recommended.tolist() == page[0].items.tolist() and not ex.fallback
    assert ex.dims[0].dim == 5 and ex.dims[0].sign == 1
    assert ex.dims[0].segment == seg.key_owner(5, 1) and ex.dims[0].via == "key" and ex.dims[0].label == "dim 5+"
    contrib = [d.contribution for d in ex.dims]
    assert contrib == sorted(contrib, reverse=True) and len(ex.dims) == 3
    full = explain_user(ckpt, seg, history, top=DIMS, k=4)
    assert sum(d.contribution for d in full.dims) == pytest.approx(float(ex.scores.sum()), rel=1e-5)
    assert sum(d.share for d in full.dims) == pytest.approx(1, rel=1e-5)
    # dim 10 dominates no item: it maps through the segment vectors
    by_dim = {d.dim: d for d in full.dims}
    assert set(by_dim) == {5, 8, 10}
    assert by_dim[8].segment == seg.key_owner(8, 1) and by_dim[8].via == "key"
    lean = seg.vectors[:, 10].toarray().ravel()
    assert by_dim[10].via == "vector" and by_dim[10].segment == int(np.argmax(lean))
    assert ex.top_segments[0][0] == seg.key_owner(5, 1)
    with pytest.warns(SegmentFallbackWarning), pytest.warns(UnknownItemsWarning):
        fb = explain_user(ckpt, seg, ["nope"])
    assert fb.fallback and fb.dims == [] and len(fb.recommended) == 10


def test_explain_item(toy):
    ckpt, groups = toy
    seg = discover_segments(ckpt)
    tie_item = next(i for i in groups["g2"] if ckpt.embeddings[ckpt.item_ids.index([i])[0]].nnz == 2
                    and 4 in ckpt.embeddings[ckpt.item_ids.index([i])[0]].indices)
    ex = explain_item(ckpt, seg, tie_item)
    assert ex.dims.tolist() == [1, 4] and ex.values[0] < 0
    assert ex.segment == seg.key_owner(1, -1) and ex.keys == [(1, -1)] and ex.label == "dim 1-"
    assert ex.centrality > 0
    empty = ckpt.item_ids.ids[np.diff(ckpt.embeddings.indptr) == 0][0]
    ex = explain_item(ckpt, seg, empty)
    assert ex.segment == -1 and len(ex.dims) == 0
    best = seg.central(0)[0]
    assert explain_item(ckpt, seg, ckpt.item_ids.ids[best]).central


# ------------------------------------------------------------------ bad input


def test_bad_input(toy, dense_checkpoint, sparse_checkpoint, tmp_path):
    ckpt, groups = toy
    assert issubclass(SegmentError, ElsaIndexError)
    with pytest.raises(SegmentError, match="sparse embeddings"):
        discover_segments(dense_checkpoint)
    for bad in (0, 6, -1, True, 2.5, "3"):
        with pytest.raises(SegmentError, match="merge_to"):
            discover_segments(ckpt, merge_to=bad)
    with pytest.raises(SegmentError, match=r"\[1, 5\]"):
        discover_segments(ckpt, merge_to=6)
    with pytest.raises(SegmentError, match="min_size"):
        discover_segments(ckpt, min_size=0)
    meta = _metadata(ckpt, groups)
    with pytest.raises(SegmentError, match="no id column 'movie'"):
        discover_segments(ckpt, metadata=meta, id_col="movie")
    with pytest.raises(SegmentError, match="label column"):
        discover_segments(ckpt, metadata=meta, label_cols=("tags",))
    with pytest.raises(SegmentError, match="no item id of the checkpoint"):
        discover_segments(ckpt, metadata={"item_id": ["x", "y"], "genres": ["A", "B"]})
    with pytest.raises(SegmentError, match="not found"):
        discover_segments(ckpt, metadata=tmp_path / "missing.parquet")
    with pytest.raises(SegmentError, match="must be a pyarrow Table"):
        discover_segments(ckpt, metadata=42)
    empty = Checkpoint(sp.csr_matrix((3, 4), dtype=np.float32), ["a", "b", "c"], np.zeros(3), kind="imported")
    with pytest.raises(SegmentError, match="empty"):
        discover_segments(empty)

    seg = discover_segments(ckpt)
    with pytest.raises(SegmentError, match="discovered from checkpoint"):
        recommend_segments(sparse_checkpoint, seg, ["item0001"])
    with pytest.raises(SegmentError, match="sparse embeddings"):
        recommend_segments(dense_checkpoint, seg, ["item0001"])
    with pytest.raises(SegmentError, match="list of item ids"):
        recommend_segments(ckpt, seg, "i03")
    for kw in ({"k": 0}, {"rows": -1}, {"k": True}):
        with pytest.raises(SegmentError):
            recommend_segments(ckpt, seg, ["i03"], **kw)
    with pytest.raises(SegmentError, match="unknown item id"):
        explain_item(ckpt, seg, "nope")
    with pytest.raises(SegmentError, match="expected a Checkpoint"):
        explain_item(object(), seg, "i03")
    with pytest.raises(SegmentError, match="segment must be"):
        seg.members(99)
    with pytest.raises(SegmentError, match="unknown item id"):
        seg.segment_of(["nope"])


def test_central_items_are_members_for_every_segment(sparse_checkpoint):
    from elsa_index.segments import discover_segments

    for merge_to in (None, 30, 8):
        seg = discover_segments(sparse_checkpoint, merge_to=merge_to, n_central=10)
        for s in range(len(seg.sizes)):
            c = seg.central(s)
            assert len(c) == min(seg.sizes[s], 10)
            assert (seg.assignment[c] == s).all()


def test_merging_keeps_sizes_balanced(sparse_checkpoint):
    from elsa_index.segments import discover_segments

    seg = discover_segments(sparse_checkpoint, merge_to=8)
    # 300 items over 8 segments: no catch-all segment.
    assert seg.sizes.max() <= 3 * 300 / 8


def test_rows_from_lucene_index_identical_to_exact(sparse_checkpoint, histories):
    seg = discover_segments(sparse_checkpoint, merge_to=12)
    exact = build_index(sparse_checkpoint, "sparse")
    lucene = build_index(sparse_checkpoint, "lucene")
    calls = []
    inner = lucene.backend.search_within
    lucene.backend.search_within = lambda *a, **kw: calls.append(1) or inner(*a, **kw)
    ids = sparse_checkpoint.item_ids.ids
    for u in range(histories.shape[0]):
        history = ids[histories[u].indices].tolist()
        a = recommend_segments(exact, seg, history, rows=4, k=5)
        b = recommend_segments(lucene, seg, history, rows=4, k=5)
        assert [r.segment for r in a] == [r.segment for r in b]
        for ra, rb in zip(a, b):
            assert ra.items.tolist() == rb.items.tolist()
            np.testing.assert_allclose(ra.item_scores, rb.item_scores, rtol=1e-5, atol=1e-6)
    assert len(calls) > 0  # rows came through Lucene's segment-restricted search
