"""Homepage preview: HTML rendering and escaping, atomic writes, the segments/homepage CLI, and a real browser.

The browser test renders the page with headless Chromium (Debian's ``chromium``
package), takes a screenshot and dumps the rendered DOM. Without a Chromium
binary it is skipped, unless ``ELSA_INDEX_REQUIRE_BROWSER=1`` (set by CI), in
which case it fails. ``ELSA_INDEX_CHROMIUM`` may name the binary.
"""

import os
import re
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numba
import numpy as np
import pytest

from elsa_index.cli import main
from elsa_index.errors import ElsaIndexError
from elsa_index.homepage import HomepageError, ItemInfo, item_metadata, render_homepage, write_homepage
from elsa_index.search import build_index, open_index
from elsa_index.segments import TOP_ROW_LABEL, SegmentRow, Segments, recommend_segments

GENRES = ["Comedy", "Drama", "Action", "Horror", "Sci-Fi", "Western", "Romance", "Crime"]
HISTORY = ["item0000", "item0008", "item0016", "item0024"]  # group 0 of the planted fixture
ROWS, K = 5, 10


def title_of(i: int) -> str:
    # Markup characters in every title: the page must show them as text.
    return f'Film {i} <Part "{i % 8}"> & Co'


# ------------------------------------------------------------------ DOM helpers


class Node:
    def __init__(self, tag, attrs, parent=None):
        self.tag, self.attrs, self.parent, self.children, self.text_parts = tag, dict(attrs), parent, [], []

    @property
    def classes(self):
        return (self.attrs.get("class") or "").split()

    def text(self) -> str:
        return "".join(self.text_parts + [c.text() for c in self.children]).strip()

    def find_all(self, tag=None, cls=None):
        out = []
        for c in self.children:
            if (tag is None or c.tag == tag) and (cls is None or cls in c.classes):
                out.append(c)
            out += c.find_all(tag, cls)
        return out


class TreeBuilder(HTMLParser):
    VOID = {"meta", "link", "br", "img", "hr", "input", "area", "base", "col", "embed", "source", "track", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.cur = self.root
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        node = Node(tag, attrs, self.cur)
        self.cur.children.append(node)
        if tag not in self.VOID:
            self.cur = node

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        self.cur.children.append(Node(tag, attrs, self.cur))

    def handle_endtag(self, tag):
        node = self.cur
        while node is not self.root and node.tag != tag:
            node = node.parent
        if node is not self.root:
            self.cur = node.parent

    def handle_data(self, data):
        self.cur.text_parts.append(data)


def parse(html_text: str) -> TreeBuilder:
    b = TreeBuilder()
    b.feed(html_text)
    b.close()
    return b


def page_rows(tree: TreeBuilder):
    """[(section node, label, [item ids], [titles])] in document order."""
    out = []
    for sec in tree.root.find_all("section", "row"):
        label = sec.find_all("h2", "row-label")
        items = sec.find_all("li", "item")
        out.append((sec, label[0].text() if label else "", [li.attrs["data-item-id"] for li in items],
                    [li.find_all("span", "title")[0].text() for li in items]))
    return out


# ------------------------------------------------------------------ PNG decoding


@numba.njit(cache=True)  # compiled once, then loaded from tests/__pycache__ (compiling takes about a second)
def _unfilter_rows(raw, h, stride, bpp):
    """Undo the per-row PNG filters; an empty result for an unknown filter type."""
    out = np.zeros((h, stride), np.uint8)
    for y in range(h):
        f = raw[y * (stride + 1)]
        src = raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]
        for x in range(stride):
            a = np.int32(out[y, x - bpp]) if x >= bpp else 0
            b = np.int32(out[y - 1, x]) if y > 0 else 0
            c = np.int32(out[y - 1, x - bpp]) if (x >= bpp and y > 0) else 0
            v = np.int32(src[x])
            if f == 1:
                v += a
            elif f == 2:
                v += b
            elif f == 3:
                v += (a + b) // 2
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                v += a if (pa <= pb and pa <= pc) else (b if pb <= pc else c)
            elif f != 0:
                return out[:0]
            out[y, x] = v & 0xFF
    return out


def _unfilter(raw: np.ndarray, h: int, stride: int, bpp: int) -> np.ndarray:
    out = _unfilter_rows(raw, h, stride, bpp)
    assert out.shape[0] == h, "unknown PNG filter type"
    return out


def decode_png(data: bytes) -> np.ndarray:
    """Pixels (h, w, channels) uint8 of an 8-bit, non-interlaced PNG (grey, grey+alpha, RGB or RGBA)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    pos, idat, header = 8, [], None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        assert zlib.crc32(kind + body) == struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])[0], f"bad CRC in {kind}"
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + n
    assert header is not None, "no IHDR chunk"
    w, h, depth, color, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(color)
    assert depth == 8 and channels and interlace == 0, f"unsupported PNG: depth {depth}, colour type {color}"
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8)
    assert raw.size == h * (w * channels + 1), "IDAT size does not match the header"
    return _unfilter(raw, h, w * channels, channels).reshape(h, w, channels)


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def site(tmp_path_factory, sparse_checkpoint):
    """A planted checkpoint, a sparse index with segments inside, item metadata, and a homepage from the CLI."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("homepage")
    ckpt = sparse_checkpoint
    sparse_checkpoint.save(root / "ckpt")
    build_index(root / "ckpt", "sparse", root / "index")
    n = ckpt.n_items
    pq.write_table(pa.table({
        "item_id": ckpt.item_ids.ids.tolist(),
        "title": [title_of(i) for i in range(n)],
        "genres": [f"{GENRES[i % 8]} {GENRES[(3 * i + 1) % 8]}" for i in range(n)],
    }), root / "items.parquet")
    assert main(["segments", str(root / "index"), "--merge-to", "8", "--items", str(root / "items.parquet")]) == 0
    assert main(["homepage", str(root / "index"), "--history", *HISTORY, "--rows", str(ROWS), "--k", str(K),
                 "--items", str(root / "items.parquet"), "--out", str(root / "page.html")]) == 0
    index = open_index(root / "index")
    seg = Segments.load(root / "index" / "segments", checkpoint=index.checkpoint)
    expected = recommend_segments(index, seg, HISTORY, rows=ROWS, k=K)
    return {"root": root, "page": root / "page.html", "expected": expected, "segments": seg, "ckpt": ckpt}


def find_chromium():
    """The Chromium binary: $ELSA_INDEX_CHROMIUM, else the first of the usual names on PATH; None if absent."""
    named = os.environ.get("ELSA_INDEX_CHROMIUM")
    if named:
        path = shutil.which(named)
        assert path, f"ELSA_INDEX_CHROMIUM={named!r} is not an executable"
        return path
    for name in ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def require_chromium():
    """Skip without Chromium, or fail when ELSA_INDEX_REQUIRE_BROWSER=1 (CI)."""
    path = find_chromium()
    if path is None:
        msg = ("headless Chromium not found (install Debian's package: apt-get install -y --no-install-recommends "
               "chromium, or set ELSA_INDEX_CHROMIUM)")
        if os.environ.get("ELSA_INDEX_REQUIRE_BROWSER") == "1":
            pytest.fail(msg + "; ELSA_INDEX_REQUIRE_BROWSER=1 requires it", pytrace=False)
        pytest.skip(msg)
    return path


def run_chromium(binary, page: Path, profile: Path, *args) -> subprocess.CompletedProcess:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           "--no-first-run", "--no-default-browser-check", "--disable-extensions", f"--user-data-dir={profile}",
           "--window-size=1200,2000", *args, page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc


# ------------------------------------------------------------------ the browser test


def test_homepage_renders_in_headless_chromium(site, tmp_path):
    chromium = require_chromium()
    shot = tmp_path / "shot.png"
    # One browser run both takes the screenshot (a file) and dumps the rendered DOM (stdout).
    dom = run_chromium(chromium, site["page"], tmp_path / "profile", f"--screenshot={shot}", "--dump-dom").stdout

    # Screenshot: a real PNG of the window size, with content (posters) in it.
    assert shot.is_file() and shot.stat().st_size > 10_000
    data = shot.read_bytes()
    w, h = struct.unpack(">II", data[16:24])
    assert (w, h) == (1200, 2000)
    px = decode_png(data)[:, :, :3].astype(np.int16)
    assert px.shape == (2000, 1200, 3)
    codes = (px[:, :, 0].astype(np.int32) << 16) | (px[:, :, 1].astype(np.int32) << 8) | px[:, :, 2]
    _, counts = np.unique(codes, return_counts=True)
    assert len(counts) > 200, "screenshot looks blank"
    assert counts.max() / counts.sum() < 0.8, "one colour covers most of the screenshot"
    saturated = (px.max(axis=2) - px.min(axis=2)) > 60  # the coloured poster placeholders
    assert saturated.mean() > 0.1, f"only {saturated.mean():.1%} of the screenshot is coloured; cards missing?"

    # Rendered DOM: the rows and items of the page, exactly as recommended.
    tree = parse(dom)
    assert "script" not in tree.tags
    rows = page_rows(tree)
    expected = site["expected"]
    assert len(rows) == 1 + ROWS == len(expected)
    assert [r[1] for r in rows] == [r.label for r in expected]
    assert rows[0][1] == TOP_ROW_LABEL and rows[0][0].attrs["data-kind"] == "top"
    assert all(label for _, label, _, _ in rows)
    for (sec, label, ids, titles), exp in zip(rows, expected):
        assert int(sec.attrs["data-segment"]) == exp.segment
        assert sec.attrs["data-label"] == label
        assert ids == exp.items.tolist()
        assert titles == [title_of(int(i[4:])) for i in ids]  # markup characters shown as text
        assert 1 <= len(ids) <= K
    assert len(rows[0][2]) == K
    shown = [i for r in rows for i in r[2]]
    assert len(shown) == len(set(shown)), "an item appears in two rows"
    assert not set(shown) & set(HISTORY)
    assert len(tree.root.find_all("li", "history-item")) == len(HISTORY)
    body = tree.root.find_all("body")[0]
    assert body.attrs["data-fallback"] == "false" and body.attrs["data-rows"] == str(1 + ROWS)


# ------------------------------------------------------------------ page content without a browser


def test_page_is_self_contained_and_matches_rows(site):
    text = site["page"].read_text(encoding="utf-8")
    tree = parse(text)
    assert not {"script", "link", "img", "iframe", "object"} & set(tree.tags)
    assert "http://" not in text and "https://" not in text and "url(" not in text
    assert "Content-Security-Policy" in text
    rows = page_rows(tree)
    assert [r[2] for r in rows] == [r.items.tolist() for r in site["expected"]]
    # segment rows name their segment's size and keys; scores are stored in full precision
    for (sec, _, _, _), exp in zip(rows[1:], site["expected"][1:]):
        assert float(sec.attrs["data-score"]) == pytest.approx(exp.score, rel=1e-6)
        meta = sec.find_all("span", "row-meta")[0].text()
        assert f"segment {exp.segment} · {site['segments'].sizes[exp.segment]} items" in meta
    assert not list(site["page"].parent.glob(".page.html.tmp-*"))


def test_render_escapes_every_value():
    evil = '<script>alert("x")</script>&'
    row = SegmentRow(3, f"Label {evil}", 0.5, np.array([evil, "plain"]), np.array([0.9, 0.1], np.float32),
                     np.array([0, 1]), False)
    top = SegmentRow(-1, TOP_ROW_LABEL, float("nan"), np.array(["a'b"]), np.array([1.0], np.float32),
                     np.array([2]), False)
    text = render_homepage([top, row], history=[evil], items={"plain": ItemInfo(f"Title {evil}", f"Genre {evil}")},
                           heading=f"Head {evil}")
    assert "<script>" not in text and "&lt;script&gt;" in text
    tree = parse(text)
    assert "script" not in tree.tags
    rows = page_rows(tree)
    assert [r[1] for r in rows] == [TOP_ROW_LABEL, f"Label {evil}"]
    assert rows[1][2] == [evil, "plain"] and rows[1][3] == [evil, f"Title {evil}"]
    assert rows[0][2] == ["a'b"] and rows[0][0].attrs["data-score"] == ""
    assert tree.root.find_all("span", "detail")[0].text() == f"Genre {evil}"
    assert tree.root.find_all("title")[0].text() == f"Head {evil}"


def test_fallback_page_is_marked():
    row = SegmentRow(-1, TOP_ROW_LABEL, float("nan"), np.array(["x"]), np.array([42], np.float32),
                     np.array([0]), True)
    tree = parse(render_homepage([row], history=["unknown"]))
    assert tree.root.find_all("body")[0].attrs["data-fallback"] == "true"
    assert tree.root.find_all("p", "notice")
    assert "popularity 42" in tree.root.find_all("span", "score")[0].text()


def test_write_is_atomic_and_replaces(tmp_path):
    path = tmp_path / "sub" / "page.html"
    write_homepage(path, "one")
    write_homepage(path, "two")
    assert path.read_text() == "two" and sorted(p.name for p in path.parent.iterdir()) == ["page.html"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    with pytest.raises(HomepageError, match="is a directory"):
        write_homepage(tmp_path, "x")


def test_item_metadata_errors():
    meta = {"item_id": ["a", "b", None], "title": ["A", None, "C"], "genres": [["X", "Y"], None, "Z"]}
    info = item_metadata(meta, ["a", "b", "zzz"])
    assert info == {"a": ItemInfo("A", "X, Y"), "b": ItemInfo("", "")}
    assert item_metadata(meta, None, title_col=None)["a"] == ItemInfo("", "X, Y")
    with pytest.raises(HomepageError, match="no id column 'movie'"):
        item_metadata(meta, ["a"], id_col="movie")
    with pytest.raises(HomepageError, match="no title column 'name'"):
        item_metadata(meta, ["a"], title_col="name")
    with pytest.raises(HomepageError, match="detail column"):
        item_metadata(meta, ["a"], detail_cols=["year"])
    with pytest.raises(HomepageError, match="no item id of the catalogue"):
        item_metadata(meta, ["q", "r"])
    with pytest.raises(HomepageError, match="not found"):
        item_metadata("/nonexistent/items.parquet", ["a"])


# ------------------------------------------------------------------ CLI


def test_segments_cli_summary_and_default_locations(site, tmp_path, capsys):
    root = site["root"]
    assert (root / "index" / "segments" / "manifest.json").is_file()
    # a checkpoint's segments go to the sibling CKPT.segments, and homepage finds them there
    assert main(["segments", str(root / "ckpt"), "--show", "3"]) == 0
    out = capsys.readouterr().out
    assert "dominant-dimension segments" in out and "no merging asked" in out and "more (--show 0" in out
    assert (root / "ckpt.segments" / "manifest.json").is_file()
    assert main(["homepage", str(root / "ckpt"), "--history", "item0001", "--out", str(tmp_path / "p.html")]) == 0
    assert "ckpt.segments" in capsys.readouterr().out
    # explicit --out, merge summary with titles from the metadata
    assert main(["segments", str(root / "ckpt"), "--merge-to", "8", "--min-size", "2", "--out", str(tmp_path / "s"),
                 "--items", str(root / "items.parquet"), "--show", "0"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"after merging\s+8 \(", out) and "merge to 8" in out and "Film " in out
    assert Segments.load(tmp_path / "s").n_segments == 8
    err = main(["segments", str(root / "ckpt"), "--out", str(tmp_path / "s")])
    assert err == 2 and "already exists" in capsys.readouterr().err


def test_cli_errors(site, tmp_path, dense_checkpoint, capsys):
    root = site["root"]
    dense_checkpoint.save(tmp_path / "dense")
    cases = [
        (["segments", str(tmp_path / "dense")], "dense embeddings"),
        (["segments", str(root / "index"), "--merge-to", "0", "--out", str(tmp_path / "a")], "merge_to"),
        (["segments", str(root / "index"), "--merge-to", "100000", "--out", str(tmp_path / "a")], "out of range"),
        (["segments", str(root / "index"), "--items", str(root / "items.parquet"), "--id-col", "movie",
          "--out", str(tmp_path / "a")], "no id column 'movie'"),
        (["segments", str(root / "index"), "--items", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "a")],
         "not found"),
        (["homepage", str(tmp_path / "dense"), "--history", "item0001", "--out", str(tmp_path / "p.html")],
         "dense embeddings"),
        (["homepage", str(root / "index"), "--history", "item0001", "--segments", str(tmp_path / "missing"),
          "--out", str(tmp_path / "p.html")], "not found"),
        (["homepage", str(root / "index"), "--history", "item0001", "--items", str(root / "items.parquet"),
          "--title-col", "name", "--out", str(tmp_path / "p.html")], "no title column 'name'"),
        (["homepage", str(root / "index"), "--history", "item0001", "--k", "0", "--out", str(tmp_path / "p.html")],
         "k must be"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, (argv, err)
    assert not (tmp_path / "a").exists() and not (tmp_path / "p.html").exists()

    # an index without segments: a clear hint
    build_index(site["ckpt"], "sparse", tmp_path / "bare")
    assert main(["homepage", str(tmp_path / "bare"), "--history", "item0001", "--out", str(tmp_path / "p.html")]) == 2
    assert "run 'elsa-index segments" in capsys.readouterr().err


def test_cli_unknown_history_falls_back_with_warning(site, tmp_path, capsys):
    out = tmp_path / "fallback.html"
    assert main(["homepage", str(site["root"] / "index"), "--history", "nope", "nada", "--rows", "2", "--k", "3",
                 "--out", str(out)]) == 0
    cap = capsys.readouterr()
    assert "warning:" in cap.err and "fall back" in cap.err and "popularity fallback" in cap.out
    tree = parse(out.read_text())
    assert tree.root.find_all("body")[0].attrs["data-fallback"] == "true"
    rows = page_rows(tree)
    assert len(rows) == 3 and all(len(r[2]) == 3 for r in rows)
    shown = [i for r in rows for i in r[2]]
    assert len(shown) == len(set(shown))
    # partly unknown: a warning, no fallback
    assert main(["homepage", str(site["root"] / "index"), "--history", "item0001", "nope", "--out", str(out)]) == 0
    cap = capsys.readouterr()
    assert "not in the catalogue" in cap.err and "popularity fallback" not in cap.out


# ------------------------------------------------------------------ library


def test_make_homepage_finds_segments_renders_and_writes(site, tmp_path):
    from elsa_index.homepage import Homepage, make_homepage

    root = site["root"]
    out = tmp_path / "lib.html"
    made = make_homepage(str(root / "index"), HISTORY, rows=ROWS, k=K, metadata=root / "items.parquet", out=out)
    assert isinstance(made, Homepage) and made.path == out and out.read_text(encoding="utf-8") == made.html
    assert made.segments_dir == root / "index" / "segments"
    assert [r.items.tolist() for r in made.rows] == [r.items.tolist() for r in site["expected"]]
    rows = page_rows(parse(made.html))
    assert [r[2] for r in rows] == [r.items.tolist() for r in site["expected"]]
    assert rows[1][3][0].startswith("Film ") and "the sparse index" in made.html
    # an opened index and a Segments object: nothing to look up, nothing written
    index = open_index(root / "index")
    again = make_homepage(index, HISTORY, segments=site["segments"], rows=ROWS, k=K)
    assert again.segments_dir is None and again.path is None
    assert [r.items.tolist() for r in again.rows] == [r.items.tolist() for r in made.rows]
    with pytest.raises(ElsaIndexError, match="segments=None needs a directory"):
        make_homepage(site["ckpt"], HISTORY)

