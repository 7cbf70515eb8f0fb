"""Compiled kernels of the approximate sparse backend (numba).

Index layout (built by :func:`item_order` and :func:`build_lists`):

* internal item order: items grouped by their dominant signed dimension
  (largest ``|value|``), by decreasing dominant magnitude. The heads of the
  impact lists then hold runs of consecutive items, so the candidates a
  query meets first sit next to each other in the forward index.
* impact lists: for each dimension ``d`` two lists, ``2d`` holding the items
  with a positive value in ``d`` and ``2d + 1`` those with a negative one,
  each sorted by decreasing ``|value|`` (ties: lower internal item first),
  optionally cut to a share of their largest entries. Magnitudes are stored
  as uint8 codes on a log scale (3.7% steps over 4 decades below the
  largest ``|value|``), rounded up: a code never understates a magnitude, so
  a bound computed from codes holds for the true values. Only the traversal
  order and the stopping rule read them.
* forward index: the item rows in internal order (CSR, dims ascending,
  uint16 dims when there are at most 65,536), from which every candidate is
  scored exactly. When every row has the same number of entries (Compressed
  ELSA keeps a fixed number per item) row ``j`` starts at ``j * nnz`` and
  the kernel never reads the row offsets (:func:`uniform_stride`).

Search (:func:`search_batch`), for one query ``u``: a query term ``(d, w)``
can raise an item's score only through the list of its own sign (``w > 0``:
the positive list of ``d``; ``w < 0``: the negative one), where the item's
contribution is ``|w| * |a_jd|``. Terms are kept by decreasing ``|w|`` up
to ``query_share`` of the query's L1 mass. Their agreeing lists are read in
rounds of decreasing contribution threshold ``tau`` (x0.9 per round), so
the postings with the largest contributions across all terms come first, and
an item is met first through (about) its largest contribution. Within a round
a term's list is read while its codes reach the term's smallest code worth
``tau`` (one integer compare per posting). Items met for the first time are
gathered, scored exactly through the forward index and offered to a top-k
heap. Scoring is bound by memory latency (an item's row is one random
access of ~100 B, plus its offset for ragged rows): while a candidate is
scored, the row of the candidate 8 places ahead (and for ragged rows the
offset of the one 16 places ahead) is prefetched, so that about 8 rows are
in flight at once. Measured at 1M items of 16 entries, 200-term queries:
the prefetching made a query ~1.2x faster (a row 1.6x cheaper in
isolation), skipping the offsets another ~1.25x.

Stopping: after a round, an item not yet met has every agreeing
contribution below ``tau``, so (when every term is kept) its score is below
``nnz_max * tau``: a safe bound, but loose (items score on few of their
dimensions). The kernel also measures ``ratio``, the mean over the items
admitted to the heap of score / the contribution they were found by, and
stops once ``tau * min(nnz_max, max(1, ratio) / heap_factor)`` falls to the
current k-th score, or when ``max_postings`` postings were read. With
``heap_factor <= 1 / nnz_max``, ``query_share = 1`` and no posting budget
the bound is the safe one and the result is the exact top k. If fewer than
k items were met, or the k-th score is not positive, the remaining items
are scored in original index order until the top k is settled (items met by
no agreeing list score <= 0).

Scores follow the package's one summation order
(:func:`elsa_index.scoring.score_rows`): float32 products ``a_jd * u_d``
added in float32, from 0, in ascending dimension order. The forward rows are
sorted by dimension, and products with dimensions absent from the query are
``±0``, which leave a float32 sum unchanged; so the scores equal the exact
backend's bit for bit, and ties go to the lower original item index.
"""

from __future__ import annotations

import numpy as np

# The exact kernel's min-heap: one tie rule (equal scores: the lower item index wins) for both backends.
from ._kernels import _heap_less, _pop_sorted, _prefetch, _sift_down, _sift_up, exclusion_arrays

try:
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - numba is a dependency
    HAVE_NUMBA = False

#: uint8 magnitude codes: code c > 0 stands for scale x LEVELS[c], levels spaced by a constant ratio over
#: LEVEL_DECADES decades below scale (3.7% apart); code 0 is an exact zero
CODE_MAX = 255
LEVEL_DECADES = 4.0
LEVELS = np.concatenate([[0.0], 10.0 ** (LEVEL_DECADES * (np.arange(1, CODE_MAX + 1) - CODE_MAX) / (CODE_MAX - 1))])
#: threshold ratio between rounds: smaller reads more postings per round past the point of stopping
ROUND_RATIO = 0.9
#: a round threshold this far below the first one reads everything that is left
TAU_FLOOR = 1e-6
#: candidates gathered before they are scored together
FLUSH = 256
#: relative slack of the stopping bound for float32 rounding of the scores
BOUND_SLACK = 1e-3
#: candidates ahead of the one being scored whose row offset / row is prefetched
AHEAD_OFFSET = 16
AHEAD_ROW = 8


def _dominant(indptr, indices, data, dom, mag):
    # Per row: 2 d + (value < 0) of its largest |value| (first such dimension), and that magnitude.
    for i in range(indptr.shape[0] - 1):
        best = -1.0
        for p in range(indptr[i], indptr[i + 1]):
            m = abs(data[p])
            if m > best:
                best = m
                dom[i] = 2 * np.int64(indices[p]) + (1 if data[p] < 0 else 0)
        mag[i] = best if best > 0 else 0.0


def item_order(indptr, indices, data, n_items):
    """Internal item order: grouped by dominant signed dimension, by decreasing dominant magnitude.

    An item's dominant entry is its largest ``|value|`` (ties: the lower dimension). Items sharing a
    dominant (dimension, sign) are the ones that head that dimension's impact list of that sign, so a
    query reading the head of a list reads consecutive forward rows. Returns int64 ``perm`` (internal ->
    original row).
    """
    dom = np.full(n_items, -1, np.int64)
    mag = np.zeros(n_items, np.float32)
    _dominant(indptr, indices, data, dom, mag)
    top = float(mag.max(initial=0.0)) or 1.0
    fine = 1 << 20
    code = fine - np.floor(mag.astype(np.float64) / top * fine).astype(np.int64)
    # One integer key; the stable sort keeps the original order among equal keys.
    return np.argsort((dom + 1) * (fine + 1) + code, kind="stable").astype(np.int64)


def _code(value, scale, levels):
    # Rounded up: a code never understates a magnitude (levels[c] >= |value| / scale), so bounds from codes
    # hold; zero only for zero.
    r = abs(np.float64(value)) / scale
    if r == 0.0:
        return 0
    c = np.int64(np.ceil(CODE_MAX + np.log10(r) * (CODE_MAX - 1) / LEVEL_DECADES))
    c = min(max(c, 1), CODE_MAX)
    while c > 1 and levels[c - 1] >= r:
        c -= 1
    while c < CODE_MAX and levels[c] < r:
        c += 1
    return c


def _fill_lists(indptr, indices, data, dims, scale, levels, share, lptr, lids, lcodes):
    """Write the impact lists into lptr/lids/lcodes (sized for every nonzero entry); return the kept count."""
    n_lists = 2 * dims
    count = np.zeros(n_lists, np.int64)
    for p in range(indptr[-1]):
        if _code(data[p], scale, levels) > 0:
            count[2 * np.int64(indices[p]) + (1 if data[p] < 0 else 0)] += 1
    start = np.zeros(n_lists + 1, np.int64)
    for L in range(n_lists):
        start[L + 1] = start[L] + count[L]
    # Rows ascending within each list, then a stable sort of each list by decreasing code.
    pos = start[:-1].copy()
    for i in range(indptr.shape[0] - 1):
        for p in range(indptr[i], indptr[i + 1]):
            c = _code(data[p], scale, levels)
            if c > 0:
                L = 2 * np.int64(indices[p]) + (1 if data[p] < 0 else 0)
                lids[pos[L]] = i
                lcodes[pos[L]] = c
                pos[L] += 1
    out = 0
    lptr[0] = 0
    for L in range(n_lists):
        a, b = start[L], start[L + 1]
        m = b - a
        keep = m if share >= 1.0 else min(m, max(1, np.int64(np.ceil(m * share))))
        if m > 0:
            seg_ids = lids[a:b].copy()
            seg_codes = lcodes[a:b].copy()
            order = np.argsort(-seg_codes.astype(np.int64), kind="mergesort")
            for r in range(keep):
                lids[out + r] = seg_ids[order[r]]
                lcodes[out + r] = seg_codes[order[r]]
        out += keep
        lptr[L + 1] = out
    return out


def build_lists(indptr, indices, data, n_items, dims, share):
    """Impact lists of a CSR item matrix (rows sorted by dimension).

    Parameters
    ----------
    indptr, indices, data : the item CSR arrays (int64, int, float32), in internal item order.
    n_items, dims : its shape.
    share : float in (0, 1], the share of each list kept (its largest magnitudes, at least one entry).

    Returns
    -------
    (lptr int64 (2 dims + 1,), lids int32, lcodes uint8, scale float)
    """
    mag_max = float(np.abs(data).max()) if len(data) else 0.0
    scale = mag_max if mag_max > 0 else 1.0
    lptr = np.zeros(2 * dims + 1, np.int64)
    lids = np.empty(len(data), np.int32)
    lcodes = np.empty(len(data), np.uint8)
    kept = _fill_lists(np.asarray(indptr, np.int64), indices, data, dims, scale, LEVELS, float(share), lptr, lids,
                       lcodes)
    return lptr, lids[:kept].copy(), lcodes[:kept].copy(), scale


def _offer(hs, hi, size, k, s, j):
    """Offer (s, j) to the heap of ``size`` entries (capacity k); return the new size."""
    if size < k:
        hs[size] = s
        hi[size] = j
        _sift_up(hs, hi, size)
        return size + 1
    if _heap_less(hs[0], hi[0], s, j):
        hs[0] = s
        hi[0] = j
        _sift_down(hs, hi, 0, size)
    return size


def _row(fptr, stride, j):
    # Row j's entries: [j * stride, (j + 1) * stride) when every row has ``stride`` entries (no offset to
    # load: one dependent cache miss less per candidate), else from the offsets.
    if stride > 0:
        a = j * stride
        return a, a + stride
    return fptr[j], fptr[j + 1]


def _score(fptr, stride, fdim, fval, qdense, j):
    # The shared summation order: float32 products, float32 sum from 0, ascending dims. With uniform rows of
    # 16 entries (the measured case) the trip count is known to the compiler, which then issues every load and
    # product of the row up front (measured 5-15% faster per query than a loop of unknown length); only the
    # sum is serial. Other rows go eight entries per step.
    s = np.float32(0.0)
    if stride == 16:
        a = j * 16
        for p in range(a, a + 16):
            s += fval[p] * qdense[fdim[p]]
        return s
    a, b = _row(fptr, stride, j)
    p = a
    while p + 8 <= b:
        for e in range(p, p + 8):
            s += fval[e] * qdense[fdim[e]]
        p += 8
    while p < b:
        s += fval[p] * qdense[fdim[p]]
        p += 1
    return s


def _code_at_least(levels, m, tau):
    # The smallest code c with levels[c] * m >= tau (CODE_MAX + 1 when none): a list entry reaches tau exactly
    # when its code is at least this (levels increase with the code).
    lo = 1
    hi = CODE_MAX + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if levels[mid] * m >= tau:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _prefetch_row(fptr, stride, fdim, fval, j):
    # The first and last cache lines of row j's dims and values (a 16-entry row spans at most two of each;
    # the hardware prefetcher follows the lines between of longer rows).
    a, b = _row(fptr, stride, j)
    b = max(a, b - 1)
    _prefetch(fdim, a)
    _prefetch(fdim, b)
    _prefetch(fval, a)
    _prefetch(fval, b)


def _flush(fptr, stride, fdim, fval, perm, qdense, buf, cbuf, nbuf, sbuf, hs, hi, size, k, rstat):
    # Score the gathered candidates, software-pipelined: while candidate c is scored, the row offset of
    # c + AHEAD_OFFSET and the row of c + AHEAD_ROW are loading (prefetches never stall the core, so ~8 rows
    # are in flight; measured 1.6x faster per row than touching all offsets, then all rows, then scoring);
    # then offer them to the heap.
    ahead = AHEAD_OFFSET if stride == 0 else 0  # uniform rows: no offsets to load
    for c in range(min(nbuf, ahead)):
        _prefetch(fptr, buf[c])
    for c in range(min(nbuf, AHEAD_ROW)):
        _prefetch_row(fptr, stride, fdim, fval, buf[c])
    for c in range(nbuf):
        if c + ahead < nbuf and ahead > 0:
            _prefetch(fptr, buf[c + ahead])
        if c + AHEAD_ROW < nbuf:
            _prefetch_row(fptr, stride, fdim, fval, buf[c + AHEAD_ROW])
        sbuf[c] = _score(fptr, stride, fdim, fval, qdense, buf[c])
    for c in range(nbuf):
        j = perm[buf[c]]
        if size < k or _heap_less(hs[0], hi[0], sbuf[c], j):
            # Admitted: the ratio of its score to the contribution it was found by (its largest, within a round).
            rstat[0] += sbuf[c] / cbuf[c]
            rstat[1] += 1.0
            size = _offer(hs, hi, size, k, sbuf[c], j)
    return size


def _query(fptr, stride, fdim, fval, perm, inv, lptr, lids, lcodes, levels, scale, nnz_max, q_dims, q_w, excluded,
           qdense, seen, k, heap_factor, query_share, max_postings, out_ids, out_scores, stats):
    n_items = fptr.shape[0] - 1
    nt = q_dims.shape[0]
    for t in range(nt):
        qdense[q_dims[t]] = q_w[t]
    # Excluded items (original rows) count as met: never gathered, scored or offered.
    for x in range(excluded.shape[0]):
        i = inv[excluded[x]]
        seen[i >> 6] |= np.uint64(1) << np.uint64(i & 63)
    hs = np.empty(k, np.float32)
    hi = np.empty(k, np.int64)
    size = 0
    buf = np.empty(FLUSH, np.int64)
    cbuf = np.empty(FLUSH, np.float64)
    sbuf = np.empty(FLUSH, np.float32)
    nbuf = 0
    # Query terms by decreasing |w| (stable: ties in dimension order) until query_share of the L1 mass.
    absw = np.abs(q_w).astype(np.float64)
    order = np.argsort(-absw, kind="mergesort")
    total = absw.sum()
    n_keep = 0
    mass = 0.0
    while n_keep < nt and absw[order[n_keep]] > 0.0 and (query_share >= 1.0 or mass < query_share * total):
        mass += absw[order[n_keep]]
        n_keep += 1
    # Each kept term's agreeing list and the largest contribution it can make (|w| x scale x level).
    cur = np.empty(n_keep, np.int64)
    end = np.empty(n_keep, np.int64)
    mult = np.empty(n_keep, np.float64)
    top = np.empty(n_keep, np.float64)
    for r in range(n_keep):
        t = order[r]
        lst = 2 * np.int64(q_dims[t]) + (1 if q_w[t] < 0 else 0)
        cur[r] = lptr[lst]
        end[r] = lptr[lst + 1]
        mult[r] = absw[t] * scale
        top[r] = levels[lcodes[cur[r]]] * mult[r] if cur[r] < end[r] else 0.0
    torder = np.argsort(-top, kind="mergesort")
    cur, end, mult, top = cur[torder], end[torder], mult[torder], top[torder]
    # Each term's next contribution (its list head), so that a term with nothing to read this round costs one
    # compare; 0 once its list is read.
    head = top.copy()
    scanned = 0
    met = 0
    rstat = np.zeros(2, np.float64)
    if n_keep > 0 and top[0] > 0.0:
        tau = top[0]
        floor = tau * TAU_FLOOR
        while True:
            left = 0
            spent = False
            for r in range(n_keep):
                if top[r] < tau:  # terms sorted by top: none further can reach tau yet
                    left += n_keep - r
                    break
                if head[r] < tau:
                    if head[r] > 0.0:
                        left += 1
                    continue
                c = cur[r]
                e = end[r]
                m = mult[r]
                stop = e if max_postings <= 0 else min(e, c + (max_postings - scanned))
                cth = _code_at_least(levels, m, tau)
                while c < stop and lcodes[c] >= cth:
                    j = lids[c]
                    c += 1
                    w = j >> 6
                    bit = np.uint64(1) << np.uint64(j & 63)
                    if seen[w] & bit:
                        continue
                    seen[w] |= bit
                    buf[nbuf] = j
                    cbuf[nbuf] = levels[lcodes[c - 1]] * m
                    nbuf += 1
                    if nbuf == FLUSH:
                        size = _flush(fptr, stride, fdim, fval, perm, qdense, buf, cbuf, nbuf, sbuf, hs, hi, size, k,
                                      rstat)
                        met += nbuf
                        nbuf = 0
                scanned += c - cur[r]
                cur[r] = c
                head[r] = levels[lcodes[c]] * m if c < e else 0.0
                if c < e:
                    left += 1
                if max_postings > 0 and scanned >= max_postings:
                    spent = True
                    break
            size = _flush(fptr, stride, fdim, fval, perm, qdense, buf, cbuf, nbuf, sbuf, hs, hi, size, k, rstat)
            met += nbuf
            nbuf = 0
            if spent or left == 0 or tau == 0.0:
                break
            # Unseen items: every agreeing contribution < tau, so (all terms kept) score < nnz_max * tau. The
            # admitted items scored on average ratio x the contribution they were found by; assume unseen ones
            # score at most max(1, ratio) / heap_factor x tau (never more than the safe nnz_max x tau).
            ratio = max(1.0, rstat[0] / rstat[1]) if rstat[1] > 0 else 1.0
            bound = tau * min(np.float64(nnz_max), ratio / heap_factor) * (1.0 + BOUND_SLACK)
            if size == k and hs[0] > 0.0 and bound <= hs[0]:
                break
            tau *= ROUND_RATIO
            if tau < floor:
                tau = 0.0
    # Too few items met, or a k-th score <= 0: items met by no agreeing list (score <= 0 when every list was
    # read) may belong to the top k; score the rest in original index order until nothing later can enter.
    if size < k or hs[0] <= 0.0:
        for j in range(n_items):
            if size == k and (hs[0] > 0.0 or (hs[0] == 0.0 and hi[0] < j)):
                break
            i = inv[j]
            if seen[i >> 6] & (np.uint64(1) << np.uint64(i & 63)):
                continue
            met += 1
            size = _offer(hs, hi, size, k, _score(fptr, stride, fdim, fval, qdense, i), j)
    # Leave the scratch clean for the next query.
    for t in range(nt):
        qdense[q_dims[t]] = 0.0
    seen[:] = 0
    _pop_sorted(hs, hi, size, out_ids, out_scores)
    stats[0] += scanned
    stats[1] += met


def _batch(fptr, stride, fdim, fval, perm, inv, lptr, lids, lcodes, levels, scale, nnz_max, q_indptr, q_dims, q_w,
           x_indptr, x_items, qdense, seen, k, heap_factor, query_share, max_postings, out_ids, out_scores, stats):
    for r in range(q_indptr.shape[0] - 1):
        a, b = q_indptr[r], q_indptr[r + 1]
        _query(fptr, stride, fdim, fval, perm, inv, lptr, lids, lcodes, levels, scale, nnz_max, q_dims[a:b], q_w[a:b],
               x_items[x_indptr[r] : x_indptr[r + 1]], qdense, seen, k, heap_factor[r], query_share, max_postings,
               out_ids[r], out_scores[r], stats)


if HAVE_NUMBA:
    _jit = numba.njit(nogil=True, cache=True)
    _dominant = _jit(_dominant)
    _code = _jit(_code)
    _fill_lists = _jit(_fill_lists)
    _offer = _jit(_offer)
    _row = _jit(_row)
    _score = _jit(_score)
    _code_at_least = _jit(_code_at_least)
    _prefetch_row = _jit(_prefetch_row)
    _flush = _jit(_flush)
    _query = _jit(_query)
    _batch = _jit(_batch)


def uniform_stride(fptr, nnz_max) -> int:
    """``nnz_max`` when every row has exactly that many entries (rows then start at multiples of it), else 0."""
    fptr = np.asarray(fptr)
    n = fptr.shape[0] - 1
    return int(nnz_max) if nnz_max > 0 and int(fptr[-1]) == n * int(nnz_max) and \
        bool((np.diff(fptr) == nnz_max).all()) else 0


def search_batch(forward, lists, queries, k, qdense, seen, heap_factor, query_share, max_postings, row_stride=None,
                 exclude=None):
    """Approximate top-k of sparse ``queries`` (CSR n x dims, indices sorted).

    Parameters
    ----------
    forward : (fptr int64, fdim uint16/int32, fval float32, perm int64, inv int64, nnz_max int): the item
        rows in internal order, internal -> original row, original -> internal row, the most entries of a row.
    lists : (lptr int64, lids int32, lcodes uint8, scale float), the impact lists (internal rows).
    k : results per query (<= n_items).
    qdense : float32 (dims,) zeroed scratch; seen : uint64 (ceil(n_items / 64),) zeroed scratch (both
        left zeroed; one pair per thread).
    heap_factor : one number, or one per query (float64 array of n).
    query_share, max_postings : the search parameters (0 postings: no budget).
    row_stride : :func:`uniform_stride` of the forward rows (computed when None; pass it to save an O(n) pass).
    exclude : optional CSR (n, n_items): the stored items (original rows) of row r are never returned for
        query r (they count as met: not scored, and they take no place in the heap); rows with fewer than k
        other items are padded with -1 / -inf.

    Returns
    -------
    (ids int64 (n, k) original rows, scores float32 (n, k), stats int64 (2,): postings read, items scored)
    """
    fptr, fdim, fval, perm, inv, nnz_max = forward
    stride = uniform_stride(fptr, nnz_max) if row_stride is None else int(row_stride)
    lptr, lids, lcodes, scale = lists
    n = queries.shape[0]
    ids = np.full((n, k), -1, np.int64)
    scores = np.full((n, k), -np.inf, np.float32)
    stats = np.zeros(2, np.int64)
    x_indptr, x_items = exclusion_arrays(exclude, n)
    _batch(fptr, stride, fdim, fval, perm, inv, lptr, lids, lcodes, LEVELS, float(scale), int(nnz_max),
           queries.indptr.astype(np.int64), queries.indices.astype(np.int64), queries.data.astype(np.float32),
           x_indptr, x_items, qdense, seen, int(k), np.ascontiguousarray(np.broadcast_to(np.asarray(heap_factor, np.float64), (n,))),
           float(query_share), int(max_postings), ids, scores, stats)
    return ids, scores, stats
