"""Lucene index files of the ``lucene`` backend: writing, indexing, opening, verifying.

The build side of :mod:`.lucene`: the item rows become Anserini
``JsonVectorCollection`` documents (one term per stored value's (dimension,
sign), with its integer impact), Anserini's ``IndexCollection`` turns them
into a Lucene index, and an index on disk is opened for impact scoring or
checked file by file. The term mapping and quantisation are documented in
:mod:`.lucene`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from elsa_index.errors import BackendError

from . import _jvm

__all__ = ["new_work_dir", "remove_stale_work_dirs", "FIELD", "clean_rows", "impacts", "write_documents", "run_indexer", "open_searcher", "verify_checksums",
           "release", "IndexingProgress", "doc_rows", "segments", "check_doc_rows"]

FIELD = "contents"  # Anserini's default field of the pseudo-document


#: prefix of a build's working folder in the system temp directory (documents, then the Lucene index)
WORK_PREFIX = "elsa-index-lucene-"
#: file in a working folder naming the process that owns it
_OWNER = "owner.pid"


def new_work_dir() -> Path:
    """A fresh working folder for one build, tagged with this process's id; stale ones are removed first."""
    remove_stale_work_dirs()
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX))
    (work / _OWNER).write_text(str(os.getpid()))
    return work


def remove_stale_work_dirs(root: Path | None = None) -> list[Path]:
    """Remove working folders left by builds whose process is gone (killed); returns what was removed.

    A folder is removed only when its owner file names a process that no longer exists; folders of live
    processes, and folders without an owner file, are left alone.
    """
    removed = []
    for d in Path(root or tempfile.gettempdir()).glob(WORK_PREFIX + "*"):
        try:
            pid = int((d / _OWNER).read_text())
        except (OSError, ValueError):
            continue
        if not _alive(pid):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or cannot tell: keep it
    return True


def run_indexer(rt, docs: Path, index: Path, expected: int, *, threads: int, optimize: bool,
                progress: bool) -> dict[str, int]:
    """Run Anserini's ``IndexCollection`` over the JSON documents in ``docs``; return its counters."""
    args = rt.IndexCollectionArgs()
    args.input = str(docs)
    args.index = str(index)
    args.collectionClass = "JsonVectorCollection"
    args.generatorClass = "DefaultLuceneDocumentGenerator"
    args.impact = True
    args.pretokenized = True
    args.threads = int(threads)
    args.optimize = bool(optimize)
    args.memoryBuffer = _jvm.indexing_buffer_mb(rt)
    args.quiet = True
    try:
        indexer = rt.IndexCollection(args)
        counters = indexer.getCounters()
        with IndexingProgress(counters, expected, progress):
            indexer.run()  # pyjnius releases the GIL while Java runs
    except rt.JavaException as exc:
        raise BackendError(f"Anserini failed to build the Lucene index: {_jvm.java_error(exc)}") from None
    return {f: int(getattr(counters, f).get()) for f in ("indexed", "empty", "unindexable", "skipped", "errors")}


def clean_rows(embeddings) -> sp.csr_matrix:
    """A float32 CSR copy with sorted indices and no stored zeros; finite values required."""
    emb = sp.csr_matrix(embeddings, dtype=np.float32, copy=True)
    emb.sum_duplicates()
    emb.eliminate_zeros()
    emb.sort_indices()
    if emb.nnz and not np.isfinite(emb.data).all():
        raise BackendError("the embeddings contain NaN or inf values; expected finite numbers")
    return emb


def impacts(data: np.ndarray, scale: float, max_impact: int) -> np.ndarray:
    """Integer impacts of stored values: round(|v| * scale), at least 1, at most ``max_impact``."""
    q = np.rint(np.abs(data.astype(np.float64)) * scale)
    return np.clip(q, 1, max_impact).astype(np.int64)


def write_documents(emb: sp.csr_matrix, scale: float, max_impact: int, folder: Path, n_files: int,
                     progress: bool) -> int:
    """Write one ``JsonVectorCollection`` document per item row; return the number of empty rows."""
    n = emb.shape[0]
    indptr = emb.indptr
    bounds = np.linspace(0, n, n_files + 1).astype(np.int64)
    bar = _bar(progress, n, "lucene: writing documents")
    try:
        for f in range(n_files):
            lo, hi = int(bounds[f]), int(bounds[f + 1])
            start, stop = indptr[lo], indptr[hi]
            data = emb.data[start:stop]
            # '"p12": 37' / '"n12": 37': the JSON entry of a stored value's (dimension, sign) term and impact.
            sign = np.where(data > 0, '"p', '"n').astype(object)
            entries = (sign + emb.indices[start:stop].astype(str).astype(object) + '": '
                       + impacts(data, scale, max_impact).astype(str).astype(object)).tolist()
            lines = []
            for i in range(lo, hi):
                body = ", ".join(entries[indptr[i] - start : indptr[i + 1] - start])
                lines.append(f'{{"id": "{i}", "vector": {{{body}}}}}\n')
            with open(folder / f"items-{f:05d}.jsonl", "w", encoding="utf-8") as fh:
                fh.writelines(lines)
            if bar is not None:
                bar.update(hi - lo)
    finally:
        if bar is not None:
            bar.close()
    return int(np.count_nonzero(np.diff(indptr) == 0))


def open_searcher(rt, index: Path, dims: int):
    """Open a Lucene index for impact scoring: (reader, searcher)."""
    try:
        directory = rt.FSDirectory.open(rt.Paths.get(str(index)))
        reader = rt.DirectoryReader.open(directory)
        searcher = rt.IndexSearcher(rt.cast("org.apache.lucene.index.IndexReader", reader))
        searcher.setSimilarity(rt.ImpactSimilarity())
        searcher.setQueryCache(None)  # every query is new; keep timings free of cache effects
    except rt.JavaException as exc:
        raise BackendError(
            f"cannot open the Lucene index in {index} (missing or corrupted files?): {_jvm.java_error(exc)}") from None
    # A query has at most one term per dimension; Lucene's default limit is 1,024 clauses (process-wide).
    if rt.IndexSearcher.getMaxClauseCount() < dims:
        rt.IndexSearcher.setMaxClauseCount(int(dims))
    return reader, searcher


def verify_checksums(rt, index: Path) -> None:
    """Read every Lucene file of ``index`` and check its stored checksum."""
    try:
        directory = rt.FSDirectory.open(rt.Paths.get(str(index)))
        try:
            names = [str(f) for f in directory.listAll()]
            if not any(f.startswith("segments_") for f in names):
                raise BackendError(f"{index} holds no Lucene commit (segments_N file); the index is incomplete")
            for name in names:
                if name == "write.lock":
                    continue
                stream = directory.openInput(name, rt.IOContext.READONCE)
                try:
                    rt.CodecUtil.checksumEntireFile(stream)
                finally:
                    stream.close()
        finally:
            directory.close()
    except rt.JavaException as exc:
        raise BackendError(f"the Lucene index in {index} is corrupted or incomplete: {_jvm.java_error(exc)}") from None


#: documents read per call when the docid -> row table is made (bounds the Java objects alive at once)
_PAGE = 65_536
#: documents whose stored id is compared with the docid -> row table when an index is opened
_SAMPLE = 64


def doc_rows(rt, reader, searcher, n_items: int, where: Path) -> np.ndarray:
    """The item row of every Lucene document, by docid (int32, length ``maxDoc``), read once from the stored ids.

    Lucene's docids need not follow the row order (merges may reorder
    segments; empty rows are not indexed), so the row of each document is read
    from its stored field ``id`` once here and kept as a table: a search then
    maps its hits with one array lookup instead of reading a stored field per
    hit. The documents come in pages of a match-all query (constant scores,
    so in docid order; Anserini's ``ScoredDocs`` reads the ids in Java, and
    the page crosses into Python as two arrays).

    Raises
    ------
    BackendError : a stored id that is not a row number in ``[0, n_items)``,
        a row held by several documents, or a document left without a row.
    """
    n_docs = int(reader.maxDoc())
    table = np.full(n_docs, -1, np.int64)
    query = rt.MatchAllDocsQuery()
    after = None
    try:
        while True:
            top = searcher.search(query, _PAGE) if after is None else searcher.searchAfter(after, query, _PAGE)
            found = rt.ScoredDocs.fromTopDocs(top, searcher)
            docs = np.asarray(found.lucene_docids, dtype=np.int64)
            if not len(docs):
                break
            try:
                rows = np.array(found.docids, dtype=np.int64)
            except (ValueError, TypeError, OverflowError):
                raise BackendError(f"the Lucene index in {where} holds a document whose stored id is not an item row "
                                   "number; the index is corrupted: rebuild it") from None
            table[docs] = rows
            last = int(docs.argmax())
            after = rt.ScoreDoc(int(docs[last]), float(found.scores[last]))
            if len(docs) < _PAGE:
                break
    except rt.JavaException as exc:
        raise BackendError(f"cannot read the stored item ids of the Lucene index in {where}: "
                           f"{_jvm.java_error(exc)}") from None
    if (table < 0).any() or (table >= n_items).any():
        raise BackendError(f"the Lucene index in {where} holds documents without an item row in [0, {n_items}) "
                           f"({int((table < 0).sum() + (table >= n_items).sum())} of {n_docs}); the index is "
                           "corrupted: rebuild it")
    if len(np.unique(table)) != n_docs:
        raise BackendError(f"the Lucene index in {where} holds several documents for one item row; "
                           "the index is corrupted: rebuild it")
    return table.astype(np.int32)


def segments(rt, reader) -> list[dict]:
    """The segments of an open index in docid order: ``[{"name", "id", "docs"}]``.

    ``id`` is Lucene's unique segment id (hex), ``docs`` the segment's size.

    Docids are assigned segment after segment, so the same segments in the
    same order mean the same docids: a docid -> row table is valid exactly
    for the segment list it was made with.
    """
    out = []
    leaves = reader.leaves()
    for i in range(int(leaves.size())):
        seg = rt.cast("org.apache.lucene.index.SegmentReader", leaves.get(i).reader())
        raw = seg.getSegmentInfo().info.getId()
        out.append({"name": str(seg.getSegmentName()), "id": bytes(b & 0xFF for b in raw).hex(),
                    "docs": int(seg.maxDoc())})
    return out


def check_doc_rows(rt, reader, table: np.ndarray, recorded: list, where: Path) -> None:
    """Check a stored docid -> row table against an opened index: same segments, and a sample of stored ids.

    The segment list (names, unique ids, sizes, order) must be the one the
    table was made with; the stored ids of up to 64 documents spread over the
    index (first and last included) must equal the table's rows.
    """
    now = segments(rt, reader)
    if now != recorded:
        raise BackendError(
            f"the Lucene index in {where} does not hold the segments its docid -> row table was made for "
            f"(found {[(s['name'], s['docs']) for s in now]}, "
            f"recorded {[(s.get('name'), s.get('docs')) for s in recorded]}): "
            "its documents may be in another order; rebuild the index")
    n_docs = int(reader.maxDoc())
    if len(table) != n_docs:
        raise BackendError(f"the docid -> row table of {where} has {len(table)} entries for {n_docs} Lucene documents; "
                           "rebuild the index")
    if not n_docs:
        return
    try:
        stored = reader.storedFields()
        for doc in np.unique(np.linspace(0, n_docs - 1, min(_SAMPLE, n_docs)).astype(np.int64)).tolist():
            got = stored.document(int(doc)).get("id")
            if got is None or str(got) != str(int(table[doc])):
                raise BackendError(
                    f"Lucene document {doc} of {where} holds item {got!r}, but the docid -> row table says "
                    f"{int(table[doc])}: the documents are in another order than when the table was made; "
                    "rebuild the index")
    except rt.JavaException as exc:
        raise BackendError(f"cannot read the stored item ids of the Lucene index in {where}: "
                           f"{_jvm.java_error(exc)}") from None


def release(reader, owned: Path | None) -> None:
    """Close a Lucene reader and remove a temporary index folder (finalizer; never raises)."""
    try:
        if reader is not None:
            reader.close()
    except Exception:  # the JVM may be shutting down
        pass
    if owned is not None:
        shutil.rmtree(owned, ignore_errors=True)


def _bar(progress: bool, total: int, desc: str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item", leave=False)


class IndexingProgress:
    """While Anserini indexes (GIL released), a thread polls its counters into a progress bar."""

    def __init__(self, counters, total: int, progress: bool):
        self.counters, self.total, self.progress = counters, total, progress
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.progress:
            self._thread = threading.Thread(target=self._poll, name="elsa-lucene-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return False

    def _poll(self) -> None:
        _jvm.attach_current_thread()
        bar = _bar(True, self.total, "lucene: indexing")
        try:
            done = 0
            while True:
                stopped = self._stop.wait(0.5)
                now = int(self.counters.indexed.get())
                bar.update(now - done)
                done = now
                if stopped:
                    break
        finally:
            bar.close()
