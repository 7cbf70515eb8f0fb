"""Milvus backend: the item embeddings in a Milvus collection, embedded (Milvus Lite) or on a cluster.

One collection per index: an ``INT64`` primary key (the item's *key*, see
below) and one vector field, ``SPARSE_FLOAT_VECTOR`` for sparse checkpoints
(an inverted index, ``SPARSE_INVERTED_INDEX``) or ``FLOAT_VECTOR`` for dense
ones (``HNSW``, ``IVF_FLAT``, ``IVF_SQ8`` or ``FLAT``), both with the inner
product metric. Milvus finds candidates; the top ``k`` are then re-ranked
exactly with the checkpoint's own embeddings (:func:`elsa_index.scoring.score_rows`,
the order and tie rule every exact path uses).

Where the collection lives
--------------------------
``uri=None`` (default): a Milvus Lite database inside the index directory
(``backend/milvus.db/``), so ``build_index(ckpt, "milvus", out)`` works offline
with nothing running. Milvus Lite runs in the calling process and lets one
process use a database at a time (a second process gets a clear error).
``uri="http://host:19530"`` (or ``uri_env`` naming an environment variable
that holds it): a Milvus server or cluster; the index directory then records
the URI and the collection name, never the token. ``uri`` may also name a
Lite file of your own (``/path/file.db``), recorded as an absolute path.

Milvus Lite answers correctly but searches by brute force (about 137 ms per
200-term query at 100k items, 65 ms even for one term, whatever
``inverted_index_algo`` says): it is a functional stand-in for development
and tests; speed is a Milvus server's job.

Signed values
-------------
Milvus refuses negative sparse weights (in documents and queries), so each
(dimension, sign) pair is its own sparse dimension: ``a_jd > 0`` goes to
``2d`` and ``a_jd < 0`` to ``2d + 1``, with weight ``|a_jd|``, as the
``lucene`` backend maps them to terms ``p{d}`` / ``n{d}``. A query sends its
entries the same way, so an item matches only on agreeing signs and Milvus
ranks by the positive part of ``u . a_j``; the exact re-rank of the top
``depth`` candidates restores the signed score. Rows without a non-zero
(Milvus refuses empty sparse vectors) are not stored and never returned.

Item keys
---------
An item's key is its row index when the index is built; ``keys_`` (stored
as ``keys.npy``, strictly increasing) maps rows to keys. Deleting items
removes their keys (the other items keep theirs, so nothing is re-inserted)
and appended items get keys above the largest ever used, so the row of a
returned key is a binary search away.

Build parameters
----------------
uri : str or None. See above. URIs carrying credentials (``user:pw@``) are
    refused: give them through ``token_env``.
uri_env : str or None. Name of an environment variable holding the URI,
    read when ``uri`` is None (so one benchmark config can point at a cluster).
token_env : str or None. Name of an environment variable holding the token
    (``user:password`` or an API key), read at every connection; the token
    itself is never stored, logged or shown in errors.
collection : str or None. Collection name; None: ``elsa_`` + the first 16
    hex digits of the checkpoint fingerprint.
drop_existing : bool, default False. Replace a collection of that name;
    False refuses to build over one (naming its checkpoint and dims).
index_type : str or None. Sparse: ``SPARSE_INVERTED_INDEX`` (default) or
    ``SPARSE_WAND``; dense: ``HNSW`` (default), ``IVF_FLAT``, ``IVF_SQ8``,
    ``FLAT`` or ``AUTOINDEX``.
inverted_index_algo : ``DAAT_MAXSCORE`` (default), ``DAAT_WAND`` or
    ``TAAT_NAIVE``: the sparse index's query algorithm on a server.
M, ef_construction : HNSW graph degree (16) and build beam (200).
nlist : IVF lists (1024).
shards : shards of a new collection (1); replicas : in-memory replicas
    loaded for search (1). Both matter on clusters only.
connect_timeout : seconds to wait for the server (10); an unreachable one
    fails with a clear error naming the URI after at most about this long.

Search parameters
-----------------
depth : candidates fetched from Milvus per query (200), at least ``k`` plus
    the query's exclusions; at most 16,384 (Milvus's limit on ``limit``).
query_terms : send only this many largest ``|u_d|`` of a sparse query
    (None: all); the re-rank always uses the whole query.
ef : HNSW search beam (None: ``depth``; never below the fetched count).
nprobe : IVF lists probed (16).
drop_ratio_search : fraction of the smallest query weights a sparse index
    ignores (0.0).
rerank : re-score the candidates exactly (True); False returns Milvus's
    scores (the agreeing-sign part of the score for sparse checkpoints).
timeout : seconds a search may take per query (30; a request of n queries
    gets n times that).

Catalogue updates
-----------------
``supports_updates``: :meth:`~.base.Backend.upsert_items` upserts the changed
and new rows (rows that became empty are deleted), :meth:`~.base.Backend.delete_items`
deletes keys; both are visible to the next search (Milvus's default
``Strong`` consistency) and set the collection's fingerprint property to the
new checkpoint's. When the backend was loaded from a directory, ``keys.npy``,
``milvus.json`` and ``backend.json`` are rewritten there (each replaced in one
step). Updates must not run concurrently with searches.

Files
-----
``milvus.json`` (URI or bundled Lite, collection, field, storage, counts,
versions), ``keys.npy``, the embeddings' copy (left out inside an index
directory) and, for the bundled Lite, ``milvus.db/`` (the database: its files
change while it is used, so they carry no digests; the collection's
fingerprint property and row count are checked at load instead).

Thread safety
-------------
The pymilvus client is thread-safe (one gRPC channel); searches only read
the backend's arrays.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import threading
import time
import weakref
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import scipy.sparse as sp

from elsa_index._checks import check_int
from elsa_index._io import load_csr, read_json, save_array, save_csr, write_json
from elsa_index.errors import BackendError
from elsa_index.scoring import score_rows

from .base import Backend
from .requests import prune, query_entries, rerank_rows

logger = logging.getLogger(__name__)

__all__ = ["MilvusIndex"]

MANIFEST = "milvus.json"
LITE_DIR = "milvus.db"
KEYS = "keys.npy"
KEY_FIELD = "item_key"
VEC_FIELD = "embedding"
#: collection properties written at build and checked at load
FP_PROP, DIMS_PROP, STORAGE_PROP = "elsa_index.fingerprint", "elsa_index.dims", "elsa_index.storage"
#: Milvus's largest ``limit`` (topk) of one search
MAX_TOPK = 16384
_INSERT_BATCH = 2000
_QUERY_BATCH = 256
SPARSE_INDEXES = ("SPARSE_INVERTED_INDEX", "SPARSE_WAND")
DENSE_INDEXES = ("HNSW", "IVF_FLAT", "IVF_SQ8", "FLAT", "AUTOINDEX")
ALGOS = ("DAAT_MAXSCORE", "DAAT_WAND", "TAAT_NAIVE")

# Milvus Lite lets one process hold a database; backends of this process share its in-process server, which is
# released (and its lock freed) when the last of them closes.
_LITE_USERS: dict[str, int] = {}
_LITE_LOCK = threading.Lock()


def _is_lite(uri: str) -> bool:
    return uri.endswith(".db") and "://" not in uri


class MilvusIndex(Backend):
    """Top-k inner products from a Milvus collection (Milvus Lite or a server), re-ranked exactly.

    See the module documentation for the collection layout, parameters and faults.
    """

    name = "milvus"
    accepts = "any"
    exact = False
    supports_updates = True
    build_params = {"uri": None, "uri_env": None, "token_env": None, "collection": None, "drop_existing": False,
                    "index_type": None, "inverted_index_algo": "DAAT_MAXSCORE", "M": 16, "ef_construction": 200,
                    "nlist": 1024, "shards": 1, "replicas": 1, "connect_timeout": 10.0}
    search_params = {"depth": 200, "query_terms": None, "ef": None, "nprobe": 16, "drop_ratio_search": 0.0,
                     "rerank": True, "timeout": 30.0}
    requires = ("pymilvus", "milvus_lite")
    install_hint = 'pip install "elsa-index[milvus]"'
    param_docs = {
        "uri": "Milvus server URI (http://host:19530) or a Lite .db file; default: Milvus Lite in the index directory",
        "uri_env": "environment variable holding the URI, read when uri is not given",
        "token_env": "environment variable holding the token (user:password or API key); never stored",
        "collection": "collection name (default: elsa_ + checkpoint fingerprint prefix)",
        "drop_existing": "replace an existing collection of that name (default False: refuse)",
        "index_type": "SPARSE_INVERTED_INDEX/SPARSE_WAND (sparse), HNSW/IVF_FLAT/IVF_SQ8/FLAT/AUTOINDEX (dense)",
        "inverted_index_algo": "sparse index algorithm: DAAT_MAXSCORE (default), DAAT_WAND, TAAT_NAIVE",
        "M": "HNSW graph degree (default 16)",
        "ef_construction": "HNSW build beam (default 200)",
        "nlist": "IVF lists (default 1024)",
        "shards": "shards of the new collection (default 1; clusters)",
        "replicas": "in-memory replicas loaded for search (default 1; clusters)",
        "connect_timeout": "seconds to wait for the server before failing (default 10)",
        "depth": "candidates fetched from Milvus per query, at least the results fetched (default 200, max 16384)",
        "query_terms": "send only this many largest query entries of a sparse query (default None = all)",
        "ef": "HNSW search beam (default None = depth)",
        "nprobe": "IVF lists probed (default 16)",
        "drop_ratio_search": "fraction of the smallest sparse query weights ignored by the index (default 0)",
        "rerank": "re-score the candidates exactly with the checkpoint's embeddings (default True)",
        "timeout": "seconds a search may take per query of a request (default 30)",
    }

    def __init__(self, **params):
        super().__init__(**params)
        self.keys_: np.ndarray | None = None
        #: the rows for the exact re-rank: the checkpoint's own arrays (not a copy) when built or opened with one
        self.emb_ = None
        self.uri_: str | None = None
        self.collection_: str | None = None
        self.storage_: str | None = None
        self.index_type_: str | None = None
        self._lite_bundled = False
        self._client = None
        self._token = ""
        self._finalizer = None
        self._pending_fp: str | None = None

    # ------------------------------------------------------------ parameters

    def _check_params(self) -> None:
        p, s = self.params, self._search_params
        for key in ("uri", "uri_env", "token_env", "collection", "index_type"):
            if p[key] is not None and (not isinstance(p[key], str) or not p[key]):
                raise BackendError(f"{key} must be a non-empty string or None, got {p[key]!r}")
        if p["uri"] is not None:
            _check_uri(p["uri"])
        if p["collection"] is not None and not _valid_name(p["collection"]):
            raise BackendError(f"collection {p['collection']!r} is not a valid Milvus collection name; expected "
                               "letters, digits and underscores, starting with a letter or underscore (at most 255)")
        if p["index_type"] is not None and p["index_type"] not in SPARSE_INDEXES + DENSE_INDEXES:
            raise BackendError(f"index_type must be one of {SPARSE_INDEXES + DENSE_INDEXES} or None, "
                               f"got {p['index_type']!r}")
        if p["inverted_index_algo"] not in ALGOS:
            raise BackendError(f"inverted_index_algo must be one of {ALGOS}, got {p['inverted_index_algo']!r}")
        if not isinstance(p["drop_existing"], (bool, np.bool_)):
            raise BackendError(f"drop_existing must be True or False, got {p['drop_existing']!r}")
        for key, low in (("M", 2), ("ef_construction", 1), ("nlist", 1), ("shards", 1), ("replicas", 1)):
            check_int(p[key], key, low, error=BackendError)
        _check_seconds("connect_timeout", p["connect_timeout"])
        check_int(s["depth"], "depth", 1, MAX_TOPK, error=BackendError, hint=" (candidates fetched per query)")
        check_int(s["query_terms"], "query_terms", 1, allow_none=True, error=BackendError,
                  hint="; expected the number of largest query entries kept, or None for all")
        check_int(s["ef"], "ef", 1, allow_none=True, error=BackendError, hint=" (HNSW search beam)")
        check_int(s["nprobe"], "nprobe", 1, error=BackendError, hint=" (IVF lists probed)")
        d = s["drop_ratio_search"]
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < 1:
            raise BackendError(f"drop_ratio_search must be a number in [0, 1), got {d!r}")
        if not isinstance(s["rerank"], (bool, np.bool_)):
            raise BackendError(f"rerank must be True or False, got {s['rerank']!r}")
        _check_seconds("timeout", s["timeout"])

    # ------------------------------------------------------------ connection

    def _connect(self, uri: str, *, lite_bundled: bool = False, owned_dir: Path | None = None) -> None:
        """Connect to ``uri`` (a server, or a Lite file started in this process); BackendError naming the URI."""
        pymilvus = _import_pymilvus(self)
        token_env = self.params["token_env"]
        token = ""
        if token_env is not None:
            token = os.environ.get(token_env, "")
            if not token:
                raise BackendError(f"token_env={token_env!r} names an environment variable that is not set (or "
                                   "empty); set it to the Milvus token (user:password or an API key)")
        timeout = float(self.params["connect_timeout"])
        lite = _is_lite(uri)
        if lite:
            if not lite_bundled and not Path(uri).parent.is_dir():
                raise BackendError(f"the folder of the Milvus Lite file {uri} does not exist")
            _lite_acquire(uri)
        try:
            client = pymilvus.MilvusClient(uri=uri, token=token, timeout=timeout)
            client.get_server_version(timeout=timeout)  # a request that needs the server and the credentials
        except Exception as exc:  # noqa: BLE001 - every client failure becomes one clear error
            if lite:
                _lite_release(uri)
            raise BackendError(_connect_error(uri, exc, token, token_env, timeout, lite)) from None
        self.close()
        self._client, self._token, self.uri_, self._lite_bundled = client, token, uri, lite_bundled
        # Disconnects (and removes a build's temporary Lite folder) at close(), garbage collection or exit.
        self._finalizer = weakref.finalize(self, _disconnect, client, uri if lite else None,
                                           None if owned_dir is None else str(owned_dir))

    def close(self) -> None:
        """Disconnect (a bundled Lite database built in a temporary folder is removed); idempotent."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self._client = None
        self._token = ""

    def _call(self, what: str, fn, *args, **kwargs):
        """Run a client call; Milvus errors become BackendError naming the URI and collection (token scrubbed)."""
        if self._client is None:
            raise BackendError("the 'milvus' index was closed; build or load it again")
        try:
            return fn(*args, **kwargs)
        except BackendError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"Milvus {what} failed (collection {self.collection_!r} at {_shown(self.uri_)}): "
                               f"{_scrub(_message(exc), self._token)}") from None

    # ------------------------------------------------------------------ build

    def build(self, checkpoint, *, progress: bool = False) -> "MilvusIndex":
        self._pending_fp = checkpoint.fingerprint  # the collection carries it (base.build sets fingerprint_ after)
        try:
            return super().build(checkpoint, progress=progress)
        finally:
            self._pending_fp = None

    def _build(self, embeddings, *, progress: bool) -> None:
        sparse = sp.issparse(embeddings)
        index_type = self.params["index_type"] or ("SPARSE_INVERTED_INDEX" if sparse else "HNSW")
        if (index_type in SPARSE_INDEXES) != sparse:
            raise BackendError(f"index_type {index_type!r} does not index {'sparse' if sparse else 'dense'} "
                               f"embeddings; expected one of {SPARSE_INDEXES if sparse else DENSE_INDEXES}")
        emb = sp.csr_matrix(embeddings, dtype=np.float32, copy=False) if sparse else np.asarray(embeddings, np.float32)
        fp = self._pending_fp or "unknown"
        name = self.params["collection"] or "elsa_" + fp[:16]
        uri = self.params["uri"]
        if uri is None and self.params["uri_env"] is not None:
            uri = os.environ.get(self.params["uri_env"], "")
            if not uri:
                raise BackendError(f"uri_env={self.params['uri_env']!r} names an environment variable that is not "
                                   "set (or empty); set it to the Milvus URI, e.g. http://host:19530")
            _check_uri(uri)
        work = None
        if uri is None:  # bundled Lite: a temporary database until save() copies it into the index directory
            work = Path(tempfile.mkdtemp(prefix="elsa-milvus-"))
            uri = str(work / LITE_DIR)
        elif _is_lite(uri):
            uri = str(Path(uri).absolute())
        created = False
        try:
            self.path_ = None  # a built index describes no directory until saved
            self._connect(uri, lite_bundled=work is not None, owned_dir=work)
            self.collection_, self.storage_, self.index_type_ = name, ("sparse" if sparse else "dense"), index_type
            created = self._prepare_collection(name, emb.shape[1], fp)
            keys = np.arange(emb.shape[0], dtype=np.int64)
            t0 = time.perf_counter()
            n_done = self._write_rows(emb, np.arange(emb.shape[0]), keys, progress=progress)
            self._call("flush", self._client.flush, name)
            # A server: wait until the index is built. Milvus Lite indexes in the call (and has no timestamp
            # service, which the wait asks for first).
            self._call("index creation", self._client.create_index, name, self._index_params(index_type),
                       sync=not _is_lite(uri))
            load = {"replica_number": int(self.params["replicas"])} if int(self.params["replicas"]) > 1 else {}
            self._call("collection load", self._client.load_collection, name, **load)
            count = self._count()
            if count != n_done:
                raise BackendError(f"Milvus holds {count} entities in collection {name!r} after inserting {n_done}")
            logger.info("milvus: indexed %d item rows into %r at %s in %.1fs", n_done, name, _shown(uri),
                        time.perf_counter() - t0)
        except BaseException:
            if created:  # nothing half-created: drop the collection this build made
                try:
                    self._client.drop_collection(name)
                except Exception:  # noqa: BLE001 - the build's own error matters more
                    logger.warning("milvus: could not drop the half-built collection %r at %s", name, _shown(uri))
            self.close()
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
            raise
        # The re-rank reads the checkpoint's rows themselves; no second copy is kept.
        self.keys_, self.emb_ = keys, (rerank_rows(embeddings) if sparse else embeddings)

    def _prepare_collection(self, name: str, dims: int, fp: str) -> bool:
        """Create the (empty, not yet indexed) collection; True once created."""
        from pymilvus import DataType, MilvusClient

        client = self._client
        if self._call("collection check", client.has_collection, name):
            if not self.params["drop_existing"]:
                props = self._properties(name)
                raise BackendError(
                    f"collection {name!r} already exists at {_shown(self.uri_)} (built from checkpoint "
                    f"{props.get(FP_PROP, 'unknown')}, {props.get(DIMS_PROP, '?')} dims); pass drop_existing=True to "
                    "replace it, or collection=NAME to build another one")
            logger.info("milvus: dropping the existing collection %r at %s", name, _shown(self.uri_))
            self._call("drop", client.drop_collection, name)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                            description=f"elsa-index item embeddings of checkpoint {fp}")
        schema.add_field(KEY_FIELD, DataType.INT64, is_primary=True)
        if self.storage_ == "sparse":
            schema.add_field(VEC_FIELD, DataType.SPARSE_FLOAT_VECTOR)
        else:
            schema.add_field(VEC_FIELD, DataType.FLOAT_VECTOR, dim=int(dims))
        props = {FP_PROP: fp, DIMS_PROP: str(int(dims)), STORAGE_PROP: self.storage_}
        extra = {"num_shards": int(self.params["shards"])} if int(self.params["shards"]) > 1 else {}
        self._call("collection creation", client.create_collection, name, schema=schema, properties=props,
                   consistency_level="Strong", **extra)
        return True

    def _index_params(self, index_type: str):
        p = self.params
        ip = self._client.prepare_index_params()
        if index_type == "SPARSE_INVERTED_INDEX":
            params = {"inverted_index_algo": p["inverted_index_algo"]}
        elif index_type == "HNSW":
            params = {"M": int(p["M"]), "efConstruction": int(p["ef_construction"])}
        elif index_type.startswith("IVF"):
            params = {"nlist": int(p["nlist"])}
        else:
            params = {}
        ip.add_index(field_name=VEC_FIELD, index_type=index_type, metric_type="IP", params=params)
        return ip

    def _write_rows(self, emb, rows: np.ndarray, keys: np.ndarray, *, progress: bool = False, upsert=False) -> int:
        """Insert (or upsert) the non-empty ``rows`` of ``emb`` under ``keys``; returns how many were written."""
        fn = self._client.upsert if upsert else self._client.insert
        n_done = 0
        for start in range(0, len(rows), _INSERT_BATCH):
            batch = [e for e in (_entity(emb, int(r), int(kk)) for r, kk in
                                 zip(rows[start:start + _INSERT_BATCH], keys[start:start + _INSERT_BATCH])) if e]
            if batch:
                self._call("upsert" if upsert else "insert", fn, self.collection_, batch)
                n_done += len(batch)
            if progress and start and start % (50 * _INSERT_BATCH) == 0:
                logger.info("milvus: wrote %d of %d rows", start, len(rows))
        return n_done

    def _count(self) -> int:
        res = self._call("count", self._client.query, self.collection_, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def _properties(self, name: str) -> dict:
        desc = self._call("describe", self._client.describe_collection, name)
        return dict(desc.get("properties") or {})

    # ----------------------------------------------------------------- search

    def _search(self, queries, k: int):
        if k > MAX_TOPK:
            raise BackendError(f"this search needs {k} results per query (k plus the excluded items); Milvus returns "
                               f"at most {MAX_TOPK}; lower k or the exclusions")
        client = self._client
        if client is None:
            raise BackendError("the 'milvus' index was closed; build or load it again")
        s = self._search_params
        n = queries.shape[0]
        depth = min(max(int(s["depth"]), k), MAX_TOPK)
        sparse = self.storage_ == "sparse"
        data, rows = [], []
        for r in range(n):
            if sparse:
                dims, vals = query_entries(queries, r)
                dims, vals = prune(dims, vals, s["query_terms"])
                if not len(dims):
                    continue  # nothing to match: the row stays padded
                data.append(dict(zip((2 * dims.astype(np.int64) + (vals < 0)).tolist(), np.abs(vals).tolist())))
            else:
                row = queries[r].toarray()[0] if sp.issparse(queries) else queries[r]
                data.append(np.asarray(row, np.float32))
            rows.append(r)
        cand = np.full((n, depth), -1, np.int64)
        mscore = np.full((n, depth), -np.inf, np.float32)
        params = {"metric_type": "IP", "params": self._knobs(depth)}
        for start in range(0, len(data), _QUERY_BATCH):
            res = self._call("search", client.search, self.collection_, data=data[start:start + _QUERY_BATCH],
                             limit=depth, anns_field=VEC_FIELD, search_params=params, output_fields=[KEY_FIELD],
                             timeout=float(s["timeout"]) * len(data[start:start + _QUERY_BATCH]))
            for hits, r in zip(res, rows[start:start + _QUERY_BATCH]):
                got = np.asarray(hits.ids, np.int64)
                cand[r, :len(got)] = self._rows(got)
                mscore[r, :len(got)] = np.asarray(hits.distances, np.float32)
        scores = score_rows(self.emb_, queries, cand) if s["rerank"] else mscore
        order = np.lexsort((np.where(cand < 0, np.iinfo(np.int64).max, cand), -scores), axis=1)[:, :k]
        return np.take_along_axis(cand, order, axis=1), np.take_along_axis(scores, order, axis=1)

    def _knobs(self, depth: int) -> dict:
        s = self._search_params
        t = self.index_type_
        if t == "HNSW":
            return {"ef": max(int(s["ef"] or depth), depth)}
        if t.startswith("IVF"):
            return {"nprobe": int(s["nprobe"])}
        if t in SPARSE_INDEXES:
            return {"drop_ratio_search": float(s["drop_ratio_search"])}
        return {}

    def _rows(self, keys: np.ndarray) -> np.ndarray:
        """Item rows of returned keys; BackendError when the collection holds keys this index does not know."""
        rows = np.searchsorted(self.keys_, keys)
        bad = (rows >= len(self.keys_)) | (self.keys_[np.minimum(rows, len(self.keys_) - 1)] != keys)
        if bad.any():
            raise BackendError(
                f"collection {self.collection_!r} at {_shown(self.uri_)} returned item key {int(keys[bad][0])}, "
                "which this index does not hold; the collection was changed outside this index directory (e.g. by "
                "another index using the same collection): rebuild the index")
        return rows

    # ------------------------------------------------------- catalogue updates

    def _upsert_items(self, checkpoint, rows: np.ndarray) -> None:
        emb = self._rerank_source(checkpoint)
        n_old = self.n_items_
        new = rows[rows >= n_old]
        if len(new) and not np.array_equal(new, np.arange(n_old, checkpoint.n_items)):
            raise BackendError("the rows appended by an upsert must be every row after the indexed ones")
        next_key = int(self.keys_[-1]) + 1 if len(self.keys_) else 0
        keys = np.concatenate([self.keys_, np.arange(next_key, next_key + len(new), dtype=np.int64)])
        row_keys = keys[rows]
        empty = ~_nonempty(emb[rows])
        self._write_rows(emb, rows[~empty], row_keys[~empty], upsert=True)
        if empty.any():  # a row that lost every non-zero cannot be stored: it leaves the collection
            self._call("delete", self._client.delete, self.collection_, ids=row_keys[empty].tolist())
        self.keys_, self.emb_ = keys, emb
        self._after_update(checkpoint)

    def _delete_items(self, checkpoint, rows: np.ndarray) -> None:
        if len(rows):
            self._call("delete", self._client.delete, self.collection_, ids=self.keys_[rows].tolist())
        self.keys_ = np.delete(self.keys_, rows)
        self.emb_ = self._rerank_source(checkpoint)
        self._after_update(checkpoint)

    def _rerank_source(self, checkpoint):
        return rerank_rows(checkpoint.embeddings) if self.storage_ == "sparse" else checkpoint.embeddings

    def _after_update(self, checkpoint) -> None:
        self._call("property update", self._client.alter_collection_properties, self.collection_,
                   properties={FP_PROP: checkpoint.fingerprint})
        if self.path_ is not None:  # the directory it was loaded from describes the new catalogue
            self.n_items_, self.fingerprint_ = checkpoint.n_items, checkpoint.fingerprint
            m = read_json(self.path_ / "backend.json", BackendError)
            if m.get("with_embeddings", True):
                self._replace(lambda d: _save_embeddings(d, self.emb_), ("embeddings",))
            self._replace(lambda d: save_array(d / KEYS, self.keys_), (KEYS,))
            self._replace(lambda d: write_json(d / MANIFEST, self._manifest()), (MANIFEST,))
            self._write_manifest(self.path_, with_embeddings=bool(m.get("with_embeddings", True)))

    def _replace(self, write, names) -> None:
        """Write files into a temporary sibling folder, then move each into the backend directory in one step."""
        tmp = Path(tempfile.mkdtemp(prefix=".update-", dir=self.path_))
        try:
            write(tmp)
            for f in tmp.iterdir():
                os.replace(f, self.path_ / f.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------ persistence

    def _manifest(self) -> dict:
        return {"uri": None if self._lite_bundled else self.uri_, "lite": _is_lite(self.uri_ or ""),
                "collection": self.collection_, "storage": self.storage_, "index_type": self.index_type_,
                "key_field": KEY_FIELD, "vector_field": VEC_FIELD, "versions": self._versions(),
                "sparse_dims": "2d for positive values, 2d+1 for negative values (weights |value|)"}

    def _save(self, directory: Path, *, with_embeddings: bool = True) -> None:
        if self._client is None:
            raise BackendError("the 'milvus' index was closed; build or load it again before saving")
        save_array(directory / KEYS, self.keys_)
        if with_embeddings:  # else the re-rank rows come from the checkpoint next to it
            _save_embeddings(directory, self.emb_)
        if self._lite_bundled:  # the database travels with the directory: a flushed copy of its files
            self._call("flush", self._client.flush, self.collection_)
            shutil.copytree(self.uri_, directory / LITE_DIR, ignore=shutil.ignore_patterns("LOCK"))
        write_json(directory / MANIFEST, self._manifest())

    @classmethod
    def _unrecorded(cls, directory: Path) -> tuple[str, ...]:
        lite = Path(directory) / LITE_DIR
        if not lite.is_dir():
            return ()
        return tuple(p.relative_to(directory).as_posix() for p in lite.rglob("*") if p.is_file())

    def _load(self, directory: Path, *, checkpoint=None, mmap: bool = False) -> None:
        m = read_json(directory / MANIFEST, BackendError)
        storage, name, index_type = m.get("storage"), m.get("collection"), m.get("index_type")
        if storage not in ("sparse", "dense") or not isinstance(name, str) or not _valid_name(name) \
                or index_type not in SPARSE_INDEXES + DENSE_INDEXES:
            raise BackendError(f"{directory / MANIFEST} is not a valid milvus backend manifest (storage "
                               f"{storage!r}, collection {name!r}, index_type {index_type!r})")
        shape = (self.n_items_, self.dims_)
        if checkpoint is not None:
            if checkpoint.sparse != (storage == "sparse") or checkpoint.embeddings.shape != shape:
                raise BackendError(f"{directory}: the checkpoint given is not a {storage} {shape} one")
            emb = rerank_rows(checkpoint.embeddings) if storage == "sparse" else checkpoint.embeddings
        elif storage == "sparse":
            emb = load_csr(directory, "embeddings_", shape, BackendError, mmap=mmap)
        else:
            emb = _load_dense(directory / "embeddings.npy", shape, mmap)
        keys = np.load(directory / KEYS, allow_pickle=False)
        if keys.dtype != np.int64 or keys.shape != (self.n_items_,) or (len(keys) and keys[0] < 0) \
                or (np.diff(keys) <= 0).any():
            raise BackendError(f"{directory / KEYS} must hold {self.n_items_} strictly increasing non-negative "
                               f"int64 keys, got {keys.dtype} {keys.shape}")
        if m.get("uri") is None:
            bundled = directory / LITE_DIR
            if not bundled.is_dir():
                raise BackendError(f"{directory} lacks its Milvus Lite database {LITE_DIR}/; expected a directory "
                                   "written by the 'milvus' backend")
            uri, is_bundled = str(bundled.absolute()), True
        elif isinstance(m["uri"], str):
            uri, is_bundled = m["uri"], False
            _check_uri(uri)
        else:
            raise BackendError(f"{directory / MANIFEST}: uri must be a string or null, got {m['uri']!r}")
        self.path_ = directory  # set again by Backend.load; known here so the connection is not a temporary one
        self.storage_, self.index_type_, self.collection_ = storage, index_type, name
        self._connect(uri, lite_bundled=is_bundled)
        try:
            self._check_collection(name, storage)
            self.keys_, self.emb_ = keys, emb
            n_stored = int(np.count_nonzero(_nonempty(emb)))
            count = self._count()
            if count != n_stored:
                raise BackendError(f"collection {name!r} at {_shown(uri)} holds {count} items; this index has "
                                   f"{n_stored} non-empty item rows: it was changed outside this index directory; "
                                   "rebuild the index")
        except BaseException:
            self.close()
            raise

    def _check_collection(self, name: str, storage: str) -> None:
        if not self._call("collection check", self._client.has_collection, name):
            raise BackendError(f"collection {name!r} does not exist at {_shown(self.uri_)} (dropped, or another "
                               "server or database); rebuild the index")
        props = self._properties(name)
        if props.get(FP_PROP) != self.fingerprint_:
            raise BackendError(
                f"collection {name!r} at {_shown(self.uri_)} holds checkpoint {props.get(FP_PROP, 'unknown')}, but "
                f"this index was built from checkpoint {self.fingerprint_}; it was rebuilt or updated by someone "
                "else: rebuild this index (or open the index directory that matches it)")
        if props.get(DIMS_PROP) != str(self.dims_) or props.get(STORAGE_PROP) != storage:
            raise BackendError(f"collection {name!r} at {_shown(self.uri_)} holds {props.get(STORAGE_PROP)} vectors "
                               f"of {props.get(DIMS_PROP)} dims; this index has {storage} {self.dims_}-dim ones")
        load = {"replica_number": int(self.params["replicas"])} if int(self.params["replicas"]) > 1 else {}
        self._call("collection load", self._client.load_collection, name, **load)

    # ------------------------------------------------------------------ info

    def info(self) -> dict[str, Any]:
        out = super().info()
        if self.collection_ is not None:
            lite = _is_lite(self.uri_ or "")
            out["index"] = {
                "uri": "bundled Milvus Lite" if self._lite_bundled else _shown(self.uri_),
                "collection": self.collection_, "index_type": self.index_type_,
                "engine": ("Milvus Lite: brute-force search, a functional stand-in (not the speed of a Milvus server)"
                           if lite else "Milvus server"),
            }
        return out

    def _versions(self) -> dict[str, str]:
        out = {}
        for pkg in ("pymilvus", "milvus-lite"):
            try:
                out[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                out[pkg] = "not installed"
        return out


# ----------------------------------------------------------------- helpers


def _import_pymilvus(be):
    try:
        import pymilvus
    except ImportError:
        raise BackendError(be.missing_dependency() or
                           f"backend 'milvus' needs pymilvus; install it with {be.install_hint}") from None
    return pymilvus


def _check_uri(uri: str) -> None:
    if _is_lite(uri):
        return
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https", "tcp", "grpc", "unix") or not (parts.netloc or parts.path):
        raise BackendError(f"uri {uri!r} is neither a Milvus server URI (http://host:19530, https://...) nor a "
                           "Milvus Lite file (a path ending in .db)")
    if parts.username or parts.password:
        raise BackendError("the Milvus URI carries credentials (user:password@); give them through token_env (an "
                           "environment variable holding user:password or an API key) so they are never stored")


def _shown(uri: str | None) -> str:
    return str(uri)


def _valid_name(name: str) -> bool:
    return (0 < len(name) <= 255 and (name[0].isalpha() or name[0] == "_") and name.isascii()
            and all(c.isalnum() or c == "_" for c in name))


def _check_seconds(name: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise BackendError(f"{name} must be a positive number of seconds, got {v!r}")


def _message(exc: BaseException) -> str:
    msg = getattr(exc, "message", None)
    if not msg and callable(getattr(exc, "code", None)) and callable(getattr(exc, "details", None)):
        msg = f"{exc.code().name}: {exc.details()}"  # a gRPC error (e.g. DEADLINE_EXCEEDED)
    return str(msg if msg else exc) or type(exc).__name__


def _scrub(text: str, token: str) -> str:
    """``text`` with the token replaced (and its password half, unless too short to tell from ordinary words)."""
    if token:
        text = text.replace(token, "***")
        password = token.partition(":")[2]
        if len(password) >= 8:
            text = text.replace(password, "***")
    return text


def _connect_error(uri: str, exc: BaseException, token: str, token_env, timeout: float, lite: bool) -> str:
    msg = _scrub(_message(exc), token)
    if lite:
        return (f"cannot open the Milvus Lite database {uri}: {msg}. Milvus Lite lets one process use a database at "
                "a time: close the other process that has it open (an open index, a notebook), or copy the index")
    low = msg.lower()
    if any(w in low for w in ("auth", "credential", "permission", "token", "password", "unauthenticated")):
        who = f"the token in ${token_env}" if token_env else "no token (set token_env)"
        return f"Milvus at {_shown(uri)} refused the credentials ({who}): {msg}"
    return (f"cannot reach a Milvus server at {_shown(uri)} within {timeout:g}s: {msg}; check the URI and that the "
            "server is running and reachable")


def _lite_acquire(uri: str) -> None:
    with _LITE_LOCK:
        key = os.path.abspath(uri)
        _LITE_USERS[key] = _LITE_USERS.get(key, 0) + 1


def _lite_release(uri: str) -> None:
    key = os.path.abspath(uri)
    with _LITE_LOCK:
        left = _LITE_USERS.get(key, 0) - 1
        if left > 0:
            _LITE_USERS[key] = left
            return
        _LITE_USERS.pop(key, None)
    try:  # the last user in this process: stop the in-process server, freeing the database's lock
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(key)
    except Exception:  # noqa: BLE001 - releasing is best effort (interpreter exit also stops it)
        logger.debug("milvus: could not release the Milvus Lite server of %s", key)


def _disconnect(client, lite_uri: str | None, owned_dir: str | None) -> None:
    try:
        client.close()
    except Exception:  # noqa: BLE001
        pass
    if lite_uri is not None:
        _lite_release(lite_uri)
    if owned_dir is not None:
        shutil.rmtree(owned_dir, ignore_errors=True)



def _nonempty(emb) -> np.ndarray:
    """bool (n_items,): rows with a non-zero (only those are stored in Milvus)."""
    if sp.issparse(emb):
        nz = np.zeros(emb.shape[0], bool)
        rows = np.repeat(np.arange(emb.shape[0]), np.diff(emb.indptr))
        nz[rows[np.asarray(emb.data) != 0]] = True
        return nz
    return np.ones(emb.shape[0], bool)


def _entity(emb, r: int, key: int) -> dict | None:
    """One Milvus entity of row ``r``: sign-split sparse weights or the dense vector; None for an empty sparse row."""
    if sp.issparse(emb):
        a, b = emb.indptr[r], emb.indptr[r + 1]
        vals = np.asarray(emb.data[a:b], np.float64)
        dims = np.asarray(emb.indices[a:b], np.int64)
        keep = vals != 0
        if not keep.any():
            return None
        vals, dims = vals[keep], dims[keep]
        return {KEY_FIELD: key, VEC_FIELD: dict(zip((2 * dims + (vals < 0)).tolist(), np.abs(vals).tolist()))}
    return {KEY_FIELD: key, VEC_FIELD: np.asarray(emb[r], np.float32)}


def _save_embeddings(directory: Path, emb) -> None:
    if sp.issparse(emb):
        save_csr(directory, "embeddings_", emb)
    else:
        save_array(directory / "embeddings.npy", np.asarray(emb, np.float32))


def _load_dense(path: Path, shape, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise BackendError(f"{path.parent} lacks {path.name}; expected a directory written by the 'milvus' backend")
    arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    if arr.dtype != np.float32 or arr.shape != tuple(shape):
        raise BackendError(f"{path} holds {arr.dtype} {arr.shape}; expected float32 {tuple(shape)}")
    if not np.isfinite(arr).all():
        raise BackendError(f"{path}: values contain NaN or inf")
    return arr
