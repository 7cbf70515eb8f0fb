"""Range checks of a loaded faiss index: nothing in a file may make faiss read outside its arrays.

Checked at load, whether or not the index directory's digests were verified:
stored vector sizes and finite values (every index), HNSW offsets, levels,
neighbour ids and entry point, IVF list ids and totals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from elsa_index.errors import BackendError

__all__ = ["check_vectors", "check_hnsw", "check_ivf"]


def check_vectors(faiss, index, file: Path, ntotal: int, d: int) -> None:
    """A flat (or flat-storage) index holds exactly ``ntotal`` finite float32 vectors of ``d`` dims."""
    if not hasattr(index, "get_xb"):
        return
    if int(index.ntotal) != int(ntotal) or int(index.code_size) != 4 * int(d) or index.codes.size() != ntotal * 4 * d:
        raise BackendError(f"{file}: the stored vectors ({index.codes.size()} bytes, {index.ntotal} vectors) do not "
                           f"match {ntotal} vectors of {d} float32 dims; the file is corrupted")
    if ntotal and not np.isfinite(faiss.rev_swig_ptr(index.get_xb(), ntotal * d)).all():
        raise BackendError(f"{file}: the stored vectors contain NaN or inf values; expected finite embeddings")


def check_hnsw(faiss, hnsw, ntotal: int, file: Path) -> None:
    """Graph arrays of an HNSW index: every link a node in ``[0, ntotal)`` (or -1) that lives on the link's level."""
    bad = f"{file}: the HNSW graph is inconsistent"
    cum = faiss.vector_to_array(hnsw.cum_nneighbor_per_level).astype(np.int64)
    levels = faiss.vector_to_array(hnsw.levels).astype(np.int64)
    offsets = faiss.vector_to_array(hnsw.offsets).astype(np.int64)
    neighbors = faiss.vector_to_array(hnsw.neighbors)  # int32, 2M links per node on level 0
    if len(cum) < 2 or cum[0] != 0 or (np.diff(cum) < 0).any():
        raise BackendError(f"{bad} (neighbours per level); the file is corrupted")
    if len(levels) != ntotal or len(offsets) != ntotal + 1 or (ntotal and (levels.min() < 1 or levels.max() >= len(cum))):
        raise BackendError(f"{bad} (levels or offsets of {ntotal} nodes); the file is corrupted")
    if offsets[0] != 0 or offsets[-1] != len(neighbors) or (np.diff(offsets) != cum[levels]).any():
        raise BackendError(f"{bad} (neighbour offsets); the file is corrupted")
    if len(neighbors) and (neighbors.min() < -1 or neighbors.max() >= ntotal):
        raise BackendError(f"{bad}: neighbour ids outside [0, {ntotal}); the file is corrupted")
    if not ntotal:
        return
    ep, top = int(hnsw.entry_point), int(hnsw.max_level)
    if not 0 <= ep < ntotal or levels[ep] - 1 != top:
        raise BackendError(f"{bad} (entry point {ep}, max level {top}); the file is corrupted")
    # Level 0 (cum[0]..cum[1] of every node) links any node; a link stored at a level l >= 1 of node i
    # must point to a node that has level l, since faiss follows it there. Upper levels hold few nodes.
    upper = np.flatnonzero(levels > 1)
    for i in upper.tolist():
        for lv in range(1, int(levels[i])):
            nb = neighbors[offsets[i] + cum[lv] : offsets[i] + cum[lv + 1]]
            nb = nb[nb >= 0]
            if len(nb) and (levels[nb] <= lv).any():
                raise BackendError(f"{bad}: node {i} links on level {lv} to nodes absent from it; "
                                   "the file is corrupted")


def check_ivf(faiss, index, file: Path) -> None:
    """Inverted lists of an IVF index: sizes add up to ``ntotal``, every id in ``[0, ntotal)``, codes complete."""
    nlist, ntotal = int(index.nlist), int(index.ntotal)
    quantizer = faiss.downcast_index(index.quantizer)
    check_vectors(faiss, quantizer, file, nlist, index.d)
    lists = index.invlists
    if int(lists.nlist) != nlist or int(lists.code_size) != int(index.code_size):
        raise BackendError(f"{file}: the inverted lists do not match the index ({lists.nlist} lists, expected "
                           f"{nlist}); the file is corrupted")
    total = 0
    for l in range(nlist):
        size = int(lists.list_size(l))
        total += size
        if total > ntotal:
            break
        if size:
            ids = faiss.rev_swig_ptr(lists.get_ids(l), size)
            if ids.min() < 0 or ids.max() >= ntotal:
                raise BackendError(f"{file}: inverted list {l} holds ids outside [0, {ntotal}); the file is corrupted")
    if total != ntotal:
        raise BackendError(f"{file}: the inverted lists hold {total} entries; the index says {ntotal}; "
                           "the file is corrupted")
