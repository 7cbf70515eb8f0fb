"""A static homepage preview: the plain "Recommended for you" row plus one row per recommended segment.

:func:`render_homepage` turns the rows of
:func:`~elsa_index.segments.recommend_segments` into one self-contained HTML
page (inline CSS, no script, no external asset; a Content-Security-Policy
forbids loading any), :func:`write_homepage` writes it atomically, and
:func:`make_homepage` does both for a history. Item titles and details (e.g.
genres) come from item metadata through :func:`item_metadata`; without it the
cards show the external item ids.

Every text and attribute value is escaped with :func:`html.escape`. The page
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
import html
import logging
import math
import os
import tempfile
import zlib
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from . import __version__
from .errors import ElsaIndexError, HomepageError

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
        :func:`~elsa_index.segments.discover_segments`).
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
    from .segments import SegmentError, _is_missing, _read_table

    try:
        columns = _read_table(metadata)
    except SegmentError as exc:
        raise HomepageError(str(exc)) from None
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

    def text(v) -> str:
        if _is_missing(v):
            return ""
        if isinstance(v, (list, tuple, np.ndarray)):
            return ", ".join(str(x) for x in v if not _is_missing(x))
        return str(v).strip()

    wanted = None if item_ids is None else {str(i) for i in item_ids}
    out: dict[str, ItemInfo] = {}
    for r, raw in enumerate(columns[id_col]):
        if _is_missing(raw):
            continue
        key = str(raw)
        if key in out or (wanted is not None and key not in wanted):
            continue
        title = text(columns[title_col][r]) if title_col is not None else ""
        detail = " · ".join(t for t in (text(columns[c][r]) for c in detail_cols) if t)
        out[key] = ItemInfo(title, detail)
    if wanted is not None:
        if not out:
            ids = [text(v) for v in columns[id_col][:3]]
            raise HomepageError(
                f"no item id of the catalogue appears in the metadata column {id_col!r} (catalogue ids e.g. "
                f"{sorted(wanted)[:3]}, metadata ids e.g. {ids}); check --id-col and that both use the same ids"
            )
        if len(out) < len(wanted):
            logger.warning("item metadata covers %d of %d catalogue items; the others show their ids",
                           len(out), len(wanted))
    return out


# ===================================================================== render


_CSS = """
:root { color-scheme: light; --ink: #1d2230; --muted: #5d6478; --line: #dfe3ec; --bg: #f5f6fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--ink); background: var(--bg); }
#page-header { padding: 20px 32px 12px; background: #fff; border-bottom: 1px solid var(--line); }
#page-header h1 { margin: 0 0 4px; font-size: 22px; }
.meta, .row-meta { color: var(--muted); font-size: 12px; }
.notice { margin: 12px 32px 0; padding: 10px 14px; border-radius: 6px; background: #fff4d6;
          border: 1px solid #f0d58a; }
#history { padding: 8px 32px 0; }
#history h2 { font-size: 13px; margin: 8px 0 6px; color: var(--muted); text-transform: uppercase;
              letter-spacing: .04em; }
#history ul { list-style: none; margin: 0; padding: 0; display: flex; flex-wrap: wrap; gap: 6px; }
.history-item { background: #fff; border: 1px solid var(--line); border-radius: 12px; padding: 2px 10px;
                font-size: 12px; max-width: 260px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
#rows { padding: 8px 32px 32px; }
.row { margin-top: 18px; }
.row-head { display: flex; align-items: baseline; gap: 12px; flex-wrap: wrap; margin-bottom: 8px; }
.row-label { margin: 0; font-size: 18px; }
.row[data-kind="top"] .row-label { color: #8a1c3b; }
.row-score { font-size: 12px; font-variant-numeric: tabular-nums; background: #e8ebf3; border-radius: 10px;
             padding: 1px 8px; }
.items { list-style: none; margin: 0; padding: 0; display: flex; flex-wrap: wrap; gap: 12px; }
.item { width: 100px; background: #fff; border: 1px solid var(--line); border-radius: 8px; overflow: hidden;
        display: flex; flex-direction: column; }
.poster { height: 130px; display: flex; align-items: center; justify-content: center; color: #fff;
          font-size: 30px; font-weight: 700; text-shadow: 0 1px 3px rgba(0, 0, 0, .35);
          background: linear-gradient(150deg, hsl(var(--hue) 62% 58%), hsl(calc(var(--hue) + 45) 55% 32%)); }
.card-text { padding: 6px 7px 8px; display: flex; flex-direction: column; gap: 2px; }
.title { font-size: 12px; font-weight: 600; line-height: 1.25; overflow-wrap: anywhere;
         display: -webkit-box; -webkit-line-clamp: 3; -webkit-box-orient: vertical; overflow: hidden; }
.detail { font-size: 11px; color: var(--muted); overflow-wrap: anywhere; }
.score { font-size: 11px; color: var(--muted); font-variant-numeric: tabular-nums; }
.empty { color: var(--muted); font-style: italic; }
#page-footer { padding: 12px 32px 24px; color: var(--muted); font-size: 11px; }
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


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
    str, the HTML document (UTF-8 text).
    """
    items = items or {}
    fallback = any(bool(getattr(r, "fallback", False)) for r in page)

    def name(item_id: str) -> str:
        info = items.get(item_id)
        return info.title if info is not None and info.title else item_id

    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta name="generator" content="elsa-index {_e(__version__)}">',
        f"<title>{_e(heading)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        f'<body data-fallback="{"true" if fallback else "false"}" data-rows="{len(page)}">',
        '<header id="page-header">',
        f"<h1>{_e(heading)}</h1>",
        f'<p class="meta">{len(page)} row{"s" if len(page) != 1 else ""} for a history of '
        f'{len(history)} item{"s" if len(history) != 1 else ""}</p>',
        "</header>",
    ]
    if fallback:
        out.append('<p class="notice" id="fallback-notice">No item of this history is in the catalogue: '
                   "showing the most popular segments and items instead.</p>")
    if len(history):
        out += ['<section id="history">', "<h2>Because of your history</h2>", "<ul>"]
        for h in history:
            h = str(h)
            out.append(f'<li class="history-item" data-item-id="{_e(h)}" title="{_e(h)}">{_e(name(h))}</li>')
        out += ["</ul>", "</section>"]
    out.append('<main id="rows">')
    for n, row in enumerate(page):
        seg = int(row.segment)
        kind = "top" if seg < 0 else "segment"
        score = float(row.score)
        data_score = repr(score) if math.isfinite(score) else ""
        out.append(f'<section class="row" id="row-{n}" data-row="{n}" data-kind="{kind}" data-segment="{seg}" '
                   f'data-label="{_e(row.label)}" data-score="{_e(data_score)}">')
        out.append('<div class="row-head">')
        out.append(f'<h2 class="row-label">{_e(row.label)}</h2>')
        if math.isfinite(score):
            out.append(f'<span class="row-score">{_e(_fmt_score(score, bool(row.fallback)))}</span>')
        meta = _row_meta(segments, seg)
        if meta:
            out.append(f'<span class="row-meta">{_e(meta)}</span>')
        out.append("</div>")
        if len(row.items):
            out.append('<ol class="items">')
            for rank, (item_id, s) in enumerate(zip(row.items, row.item_scores), 1):
                item_id = str(item_id)
                info = items.get(item_id)
                title = name(item_id)
                detail = info.detail if info is not None else ""
                out.append(
                    f'<li class="item" data-item-id="{_e(item_id)}" data-rank="{rank}" data-score="{float(s)!r}" '
                    f'title="{_e(item_id)}">'
                    f'<div class="poster" style="--hue:{_hue(item_id)}" aria-hidden="true">{_e(_initials(title))}</div>'
                    f'<div class="card-text"><span class="title">{_e(title)}</span>'
                    + (f'<span class="detail">{_e(detail)}</span>' if detail else "")
                    + f'<span class="score">{_e(_fmt_score(float(s), bool(row.fallback)))}</span></div></li>'
                )
            out.append("</ol>")
        else:
            out.append('<p class="empty">No items left for this row.</p>')
        out.append("</section>")
    out.append("</main>")
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    src = f" from {_e(source)}" if source else ""
    out.append(f'<footer id="page-footer">Generated by elsa-index {_e(__version__)}{src} at {_e(stamp)}. '
               "Segment rows follow the user's segment scores; no item appears twice.</footer>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


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


def make_homepage(
    index_or_checkpoint,
    segments,
    history_ids: Sequence[str],
    *,
    rows: int = 5,
    k: int = 10,
    metadata=None,
    id_col: str = "item_id",
    title_col: str | None = "title",
    out: str | os.PathLike | None = None,
    heading: str = "Homepage preview",
) -> tuple[str, list]:
    """Recommend homepage rows for one history and render them (and write them with ``out``).

    Parameters
    ----------
    index_or_checkpoint, segments, history_ids, rows, k : as for
        :func:`~elsa_index.segments.recommend_segments` (its warnings, e.g.
        :class:`~elsa_index.segments.SegmentFallbackWarning`, pass through).
    metadata, id_col, title_col : item metadata for titles (:func:`item_metadata`).
    out : write the page here (atomically).

    Returns
    -------
    (html, rows): the page text and the :class:`~elsa_index.segments.SegmentRow` list.
    """
    from .segments import _resolve, recommend_segments

    index, ckpt = _resolve(index_or_checkpoint)
    page = recommend_segments(index if index is not None else ckpt, segments, history_ids, rows=rows, k=k)
    info = None if metadata is None else item_metadata(metadata, ckpt.item_ids.ids, id_col=id_col, title_col=title_col)
    source = "" if index is None else f"the {index.backend.name} index"
    text = render_homepage(page, history=[str(h) for h in history_ids], items=info, segments=segments,
                           heading=heading, source=source)
    if out is not None:
        write_homepage(out, text)
    return text, page
