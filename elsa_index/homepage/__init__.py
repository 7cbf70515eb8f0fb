"""A static homepage preview: the plain "Recommended for you" row plus one row per recommended segment.

:func:`render_homepage` turns the rows of
:func:`~elsa_index.segments.recommend_segments` into one self-contained HTML
page (inline CSS, no script, no external asset; a Content-Security-Policy
forbids loading any), :func:`write_homepage` writes it atomically, and
:func:`make_homepage` does everything for one history: opens the index or
checkpoint and its segments, recommends the rows, reads the metadata, renders
and writes. Item titles and details (e.g. genres) come from item metadata
through :func:`item_metadata`; without it the cards show the external item ids.

The page is rendered from the jinja2 template ``templates/homepage.html``
with autoescaping: every text and attribute value is HTML-escaped. The page
has stable hooks for tests and tools::

    <body data-fallback="false" data-rows="6">
    <section id="history"> <li class="history-item" data-item-id=...>
    <main id="rows">
      <section class="row" id="row-0" data-row="0" data-kind="top" data-segment="-1" data-label=... data-score="">
        <h2 class="row-label">  <span class="row-score">  <span class="row-meta">
        <ol class="items">
          <li class="item" data-item-id=... data-rank="1" data-score=...>
            <div class="poster">  <span class="title">  <span class="detail">  <span class="score">
      <section class="row" id="row-1" data-row="1" data-kind="segment" data-segment="12" ...>

Segment rows follow in descending segment score; ``data-score`` holds
``u·v_s`` with full precision (in a popularity fallback, the segment's total
training popularity, and ``data-fallback="true"`` on the body).
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
import math
import os
import tempfile
import zlib
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

from .. import __version__
from ..data.tables import cell_text, is_missing, read_table
from ..errors import HomepageError, SegmentError
from ..segments import Segments, find_segments, open_source, recommend_segments, serving_index

logger = logging.getLogger(__name__)

__all__ = ["HomepageError", "ItemInfo", "item_metadata", "render_homepage", "write_homepage", "make_homepage"]


class ItemInfo(NamedTuple):
    """What a card shows for one item: its title and a detail line (e.g. genres); either may be empty."""

    title: str
    detail: str


# ==================================================================== metadata


def item_metadata(
    metadata,
    item_ids: Sequence[str] | None = None,
    *,
    id_col: str = "item_id",
    title_col: str | None = "title",
    detail_cols: Sequence[str] | None = None,
) -> dict[str, ItemInfo]:
    """Titles and detail lines of items, keyed by external item id.

    Parameters
    ----------
    metadata : a pyarrow Table, a pandas DataFrame, a mapping of column name
        to values, or a ``.parquet`` / ``.csv`` / ``.tsv`` path (as for
        :func:`~elsa_index.data.tables.read_table`).
    item_ids : the catalogue's external ids; only these are kept, and at
        least one of them must appear in ``id_col``. None: keep every row.
    id_col : column holding the external item ids.
    title_col : column with the display title; None: no titles (cards show ids).
    detail_cols : columns joined (``" · "``) into the detail line. None: the
        ``genres`` column when the table has one, else no detail line.

    Returns
    -------
    dict mapping item id (str) to :class:`ItemInfo`; the first row of a
    repeated id wins.

    Raises
    ------
    HomepageError
        Unreadable metadata, a missing id, title or detail column, or no id
        of ``item_ids`` in the table.
    """
    columns = read_table(metadata, string_columns=(id_col,), error=HomepageError)
    names = sorted(columns)
    if id_col not in columns:
        raise HomepageError(f"item metadata has no id column {id_col!r}; its columns are {names}; pass the column "
                            "holding the catalogue's item ids (--id-col)")
    if title_col is not None and title_col not in columns:
        raise HomepageError(f"item metadata has no title column {title_col!r}; its columns are {names}; pass the "
                            "column with display titles (--title-col)")
    if detail_cols is None:
        detail_cols = ("genres",) if "genres" in columns else ()
    missing = [c for c in detail_cols if c not in columns]
    if missing:
        raise HomepageError(f"item metadata lacks the detail column(s) {missing}; its columns are {names}")

    wanted = None if item_ids is None else {str(i) for i in item_ids}
    out: dict[str, ItemInfo] = {}
    for r, raw in enumerate(columns[id_col]):
        if is_missing(raw):
            continue
        key = str(raw)
        if key in out or (wanted is not None and key not in wanted):
            continue
        title = cell_text(columns[title_col][r]) if title_col is not None else ""
        detail = " · ".join(t for t in (cell_text(columns[c][r]) for c in detail_cols) if t)
        out[key] = ItemInfo(title, detail)
    if wanted is not None:
        if not out:
            ids = [cell_text(v) for v in columns[id_col][:3]]
            raise HomepageError(
                f"no item id of the catalogue appears in the metadata column {id_col!r} (catalogue ids e.g. "
                f"{sorted(wanted)[:3]}, metadata ids e.g. {ids}); check --id-col and that both use the same ids"
            )
        if len(out) < len(wanted):
            logger.warning("item metadata covers %d of %d catalogue items; the others show their ids",
                           len(out), len(wanted))
    return out


# ===================================================================== render


@functools.lru_cache(maxsize=1)
def _template():
    """The page template; every ``{{ value }}`` is HTML-escaped (autoescape)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template("homepage.html")


def _hue(item_id: str) -> int:
    """A stable colour for an item's placeholder poster."""
    return zlib.crc32(item_id.encode("utf-8")) % 360


def _initials(text: str) -> str:
    words = [w for w in text.replace("(", " ").split() if w[:1].isalnum()]
    return "".join(w[0] for w in words[:2]).upper() or "?"


def _fmt_score(value: float, fallback: bool) -> str:
    if not math.isfinite(value):
        return ""
    return f"popularity {value:,.0f}" if fallback else f"score {value:.3f}"


def render_homepage(
    page: Sequence,
    *,
    history: Sequence[str] = (),
    items: Mapping[str, ItemInfo] | None = None,
    segments=None,
    heading: str = "Homepage preview",
    source: str = "",
) -> str:
    """One self-contained HTML page with a section per row of ``page``.

    Parameters
    ----------
    page : rows from :func:`~elsa_index.segments.recommend_segments`
        (:class:`~elsa_index.segments.SegmentRow`: ``segment`` -1 for the plain
        row, ``label``, ``score``, ``items``, ``item_scores``, ``fallback``).
    history : the user's history ids, shown at the top (unknown ones too).
    items : :class:`ItemInfo` per item id (from :func:`item_metadata`); items
        without an entry show their id.
    segments : the :class:`~elsa_index.segments.Segments` the rows come from;
        adds each segment's size and keys to its row.
    heading : the page title.
    source : where the recommendations come from (shown in the footer).

    Returns
    -------
    str, the HTML document (UTF-8 text), rendered from
    ``templates/homepage.html`` with every value autoescaped.
    """
    items = items or {}
    fallback = any(bool(getattr(r, "fallback", False)) for r in page)

    def name(item_id: str) -> str:
        info = items.get(item_id)
        return info.title if info is not None and info.title else item_id

    rows = []
    for row in page:
        seg = int(row.segment)
        score = float(row.score)
        cards = []
        for item_id, s in zip(row.items, row.item_scores):
            item_id = str(item_id)
            info = items.get(item_id)
            title = name(item_id)
            cards.append({
                "id": item_id, "data_score": repr(float(s)), "hue": _hue(item_id), "initials": _initials(title),
                "title": title, "detail": info.detail if info is not None else "",
                "score_text": _fmt_score(float(s), bool(row.fallback)),
            })
        rows.append({
            "kind": "top" if seg < 0 else "segment", "segment": seg, "label": str(row.label),
            "data_score": repr(score) if math.isfinite(score) else "",
            "score_text": _fmt_score(score, bool(row.fallback)), "meta": _row_meta(segments, seg), "cards": cards,
        })
    return _template().render(
        version=__version__, heading=heading, fallback=fallback, rows=rows, source=source,
        history=[{"id": str(h), "name": name(str(h))} for h in history],
        stamp=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )


def _row_meta(segments, seg: int) -> str:
    if segments is None or seg < 0 or seg >= segments.n_segments:
        return ""
    keys = segments.keys(seg)
    shown = ", ".join(f"{d}{'+' if g > 0 else '-'}" for d, g in keys[:3])
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return f"segment {seg} · {int(segments.sizes[seg])} items · dims {shown}{more}"


# ====================================================================== write


def write_homepage(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a temporary sibling renamed into place); returns the path.

    An existing file is replaced; parent directories are created.

    Raises
    ------
    HomepageError
        ``path`` is a directory or cannot be written.
    """
    path = Path(path)
    if path.is_dir():
        raise HomepageError(f"{path} is a directory; expected an HTML file path such as {path / 'page.html'}")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=parent)
    except OSError as exc:
        raise HomepageError(f"cannot write {path}: {exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a page is meant to be opened by others
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise HomepageError(f"cannot write {path}: {exc}") from None
        raise
    logger.info("wrote homepage %s", path)
    return path


class Homepage(NamedTuple):
    """What :func:`make_homepage` made.

    html : the page text.
    rows : the :class:`~elsa_index.segments.SegmentRow` list shown, top to bottom.
    segments_dir : the directory the segments were loaded from (None when a
        :class:`~elsa_index.segments.Segments` object was given).
    path : where the page was written (None without ``out``).
    """

    html: str
    rows: list
    segments_dir: Path | None
    path: Path | None


def make_homepage(
    source,
    history_ids: Sequence[str],
    *,
    segments=None,
    rows: int = 5,
    k: int = 10,
    metadata=None,
    id_col: str = "item_id",
    title_col: str | None = "title",
    out: str | os.PathLike | None = None,
    heading: str = "Homepage preview",
) -> Homepage:
    """Recommend homepage rows for one history, render them, and write the page with ``out``.

    Parameters
    ----------
    source : an :class:`~elsa_index.search.Index`, a sparse
        :class:`~elsa_index.checkpoint.Checkpoint`, or the directory of
        either (what :func:`~elsa_index.segments.recommend_segments` takes).
    history_ids : the user's external item ids (unknown ones are ignored with
        an :class:`~elsa_index.errors.UnknownItemsWarning`; none known: a
        :class:`~elsa_index.errors.SegmentFallbackWarning` and popular rows).
    segments : a :class:`~elsa_index.segments.Segments`, a segments
        directory, or None: the segments kept next to ``source``
        (:func:`~elsa_index.segments.find_segments`; ``source`` must then be
        a directory or an index opened from one).
    rows, k : segment rows and items per row.
    metadata, id_col, title_col : item metadata for titles and details
        (:func:`item_metadata`).
    out : write the page here (atomically; an existing file is replaced).
    heading : the page title.

    Returns
    -------
    Homepage

    Raises
    ------
    SegmentError
        Dense embeddings, no segments found, segments of another checkpoint,
        or ``rows``/``k`` out of range.
    HomepageError
        Unusable metadata, or ``out`` cannot be written.
    """
    index, ckpt = open_source(source)
    segments_dir = None
    if not isinstance(segments, Segments):
        if segments is None:
            where = index.path if index is not None and index.path is not None else source
            if not isinstance(where, (str, os.PathLike)):
                raise SegmentError("segments=None needs a directory to look next to; pass segments= (a Segments or "
                                   "a segments directory) with an in-memory index or checkpoint")
            segments_dir = find_segments(where)
        else:
            segments_dir = Path(segments)
    if out is not None:
        _check_out_is_not_an_input(out, [source, segments_dir, metadata, None if index is None else index.path])
    if not isinstance(segments, Segments):
        segments = Segments.load(segments_dir, checkpoint=ckpt)
    info = None if metadata is None else item_metadata(metadata, ckpt.item_ids.ids, id_col=id_col, title_col=title_col)
    page = recommend_segments(index if index is not None else serving_index(ckpt), segments, history_ids,
                              rows=rows, k=k)
    text = render_homepage(page, history=[str(h) for h in history_ids], items=info, segments=segments,
                           heading=heading, source=_describe(source, index))
    path = None if out is None else write_homepage(out, text)
    return Homepage(text, page, segments_dir, path)


def _check_out_is_not_an_input(out, inputs) -> None:
    """Refuse an ``out`` page that is an input file or lies inside an input directory (index, segments)."""
    target = Path(out).resolve()
    for inp in inputs:
        if isinstance(inp, (str, os.PathLike)) and os.path.lexists(inp):
            src = Path(inp).resolve()
            if target == src or src in target.parents:
                what = str(inp) if target == src else f"a file inside the input {inp}"
                raise HomepageError(f"out {out} would replace {what}; write the page somewhere else")


def _describe(source, index) -> str:
    """Where the rows come from, for the page footer."""
    where = f" {source}" if isinstance(source, (str, os.PathLike)) else ""
    if index is not None:
        return f"the {index.backend.name} index{where}"
    return f"checkpoint{where}" if where else ""
