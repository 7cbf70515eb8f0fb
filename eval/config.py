"""Benchmark configuration: a TOML file parsed into checked dataclasses.

A configuration names what to measure; :mod:`elsa_index.eval.harness` runs
it. Every key is checked when the file is read, so that a typo or a value of
the wrong type fails at once with a message that names the key, the expected
type and the value received (a :class:`ConfigError`), not an hour into a run.

Schema (every top-level key but ``datasets`` and ``backends`` is optional)::

    title = "..."                  # report title
    k = 100                        # results per query (retrieval depth)
    queries = 1000                 # queries per dataset (held-out users or synthetic)
    warmup = 50                    # warm-up queries before the timed single-query pass
    threads = [1, 2]               # thread counts of the batched throughput runs
    throughput_repeats = 3         # batched passes per thread count (median reported)
    metrics = ["recall@20", "recall@50", "ndcg@100", "retrieval_recall@20", "retrieval_recall@100"]
    memory_probe = "build"         # "build": one fresh process per built index; "each": per
                                   # search-parameter set; "off"
    recall_target = 0.99           # retrieval recall@R a configuration must reach to be
                                   # "tuned" in comparisons (R: first retrieval_recall metric)
    seed = 0
    overhead = { backend = "sparse" }   # the harness-overhead check (false: skip)

    [[datasets]]                   # interaction data: held-out users are the queries
    name = "ml-1m"
    queries = 1000                 # optional per-dataset override
    measure = true                 # false: only provide checkpoints (e.g. for a scale fit)
    [datasets.data]                # fields of elsa_index.workflow.DataSpec
    source = "${ELSA_INDEX_DATA}/ml-1m.parquet"   # environment variables are expanded
    rating_col = "rating"
    min_rating = 4.0
    [[datasets.checkpoints]]
    name = "celsa-16"
    train = { kind = "compressed", dims = 1024, nnz = 16, epochs = 10 }  # make_model(kind, **rest)
    validation_users = 0           # optional, train_checkpoint(validation_users=...)
    [[datasets.checkpoints]]
    name = "given"
    path = "runs/ckpt"             # or load an existing checkpoint directory
    # use_checkpoints = ["celsa-16"]  (in the dataset table) keeps only the matching
    # checkpoints (fnmatch patterns), e.g. in a [quick] override

    [[datasets]]                   # synthetic catalogues fitted from a trained checkpoint
    name = "scale"
    kind = "scale"
    sizes = [10000, 100000, 1000000]
    query_terms = 200              # median terms per query (default: as fitted)
    dense_dims = 32                # width of the dense counterpart (default 2 x nnz; 0: none)
    extrapolate = [10000000, 100000000]
    fit = { dataset = "ml-1m", checkpoint = "celsa-16" }  # or { path = "ckpt-dir" }

    [[backends]]
    name = "faiss-hnsw"            # a registered backend
    label = "hnsw"                 # optional display name (default: name)
    datasets = ["ml-1m"]           # optional fnmatch patterns (default: every dataset)
    checkpoints = ["elsa-*"]       # optional patterns (default: every compatible checkpoint)
    build = { M = [16, 32] }       # grid: lists are swept (cartesian product), scalars fixed;
    search = { ef_search = [16, 64, 256] }  # an array of tables is a union of such grids

    [quick]                        # overrides applied by --quick (deep merge; arrays of
    queries = 100                  # tables merge entry by entry on "name"; an entry may
    [[quick.datasets]]             # set enabled = false to drop it)
    name = "scale"
    sizes = [10000]
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from elsa_index.errors import ElsaIndexError, ConfigError

__all__ = [
    "ConfigError",
    "BenchConfig",
    "DatasetSpec",
    "CheckpointSpec",
    "ScaleSpec",
    "BackendSpec",
    "load_config",
    "parse_config",
    "expand_grid",
    "KNOWN_BACKENDS",
]

#: Backends the project ships (some need optional dependencies).
KNOWN_BACKENDS = ("sparse", "lucene", "faiss-flat", "faiss-hnsw", "faiss-ivf")
#: Search parameters the harness itself controls (never part of a grid).
HARNESS_PARAMS = ("threads",)

_QUICK_CAPS = {"queries": 100, "warmup": 10, "throughput_repeats": 1}
_MEMORY_MODES = ("build", "each", "off")
_MODEL_KINDS = {"elsa": "dense", "dense": "dense", "compressed_elsa": "sparse", "compressed": "sparse"}


# ------------------------------------------------------------------ dataclasses


@dataclass
class CheckpointSpec:
    """One checkpoint of a dataset: trained from a recipe or loaded from a directory.

    Attributes
    ----------
    name : unique within its dataset.
    storage : ``"sparse"`` or ``"dense"`` (from the model kind or the checkpoint manifest).
    train : ``make_model`` arguments with ``kind``; None when loaded.
    path : checkpoint directory; None when trained.
    validation_users : passed to ``train_checkpoint``.
    """

    name: str
    storage: str
    train: dict | None = None
    path: str | None = None
    validation_users: int = 0

    def key(self) -> dict:
        """What identifies the checkpoint's content (for run ids)."""
        return {"name": self.name, "train": self.train, "path": self.path, "validation_users": self.validation_users}


@dataclass
class ScaleSpec:
    """Synthetic catalogues whose statistics are fitted from a checkpoint.

    Attributes
    ----------
    sizes : catalogue sizes (items).
    fit_dataset, fit_checkpoint : a checkpoint of another dataset of the config;
        its held-out users give the history-length and query statistics.
    fit_path : or a checkpoint directory (then ``query_terms`` is required).
    query_terms : median terms per query (None: as fitted).
    dense_dims : width of the dense counterpart (None: 2 x median nnz; 0: none).
    dims : width of the synthetic sparse space (None: the fitted checkpoint's).
    extrapolate : sizes the report extrapolates latency and memory to.
    history_mean : mean history length when fitting from a path (no held-out users).
    """

    sizes: list[int]
    fit_dataset: str | None = None
    fit_checkpoint: str | None = None
    fit_path: str | None = None
    query_terms: int | None = None
    dense_dims: int | None = None
    dims: int | None = None
    extrapolate: list[int] = field(default_factory=list)
    history_mean: float = 30.0


@dataclass
class DatasetSpec:
    """A dataset entry: interaction data (``kind="interactions"``) or synthetic scale catalogues."""

    name: str
    kind: str = "interactions"
    data: Any = None  # elsa_index.workflow.DataSpec for interaction data
    checkpoints: list[CheckpointSpec] = field(default_factory=list)
    scale: ScaleSpec | None = None
    queries: int | None = None
    measure: bool = True

    def checkpoint(self, name: str) -> CheckpointSpec:
        for c in self.checkpoints:
            if c.name == name:
                return c
        raise ConfigError(f"dataset {self.name!r} has no checkpoint {name!r}; it has {[c.name for c in self.checkpoints]}")

    def key(self) -> dict:
        d = {"name": self.name, "kind": self.kind}
        if self.data is not None:
            d["data"] = self.data.to_dict()
        if self.scale is not None:
            d["scale"] = {f.name: getattr(self.scale, f.name) for f in fields(self.scale) if f.name != "extrapolate"}
        return d


@dataclass
class BackendSpec:
    """A backend with its grids of build and search parameters."""

    name: str
    label: str
    build_grid: list[dict]
    search_grid: list[dict]
    datasets: list[str] | None = None
    checkpoints: list[str] | None = None

    def applies_to(self, dataset: str, checkpoint: str, storage: str, accepts: str | None) -> bool:
        """Whether this backend runs on a checkpoint (patterns, else the storage rule)."""
        if self.datasets is not None and not any(fnmatch.fnmatchcase(dataset, p) for p in self.datasets):
            return False
        if self.checkpoints is not None:
            return any(fnmatch.fnmatchcase(checkpoint, p) for p in self.checkpoints)
        return default_storage(self.name, accepts) == storage


def default_storage(name: str, accepts: str | None) -> str:
    """Which checkpoints a backend gets when none are named: dense for dense-only backends, else sparse."""
    if accepts == "dense" or (accepts is None and name.startswith("faiss")):
        return "dense"
    return "sparse"


@dataclass
class BenchConfig:
    """A parsed, checked benchmark configuration."""

    datasets: list[DatasetSpec]
    backends: list[BackendSpec]
    title: str = "elsa-index benchmark"
    k: int = 100
    queries: int = 1000
    warmup: int = 50
    threads: list[int] = field(default_factory=lambda: [1])
    throughput_repeats: int = 3
    metrics: list[str] = field(default_factory=lambda: [
        "recall@20", "recall@50", "ndcg@100", "retrieval_recall@20", "retrieval_recall@100"])
    memory_probe: str = "build"
    recall_target: float = 0.99
    seed: int = 0
    overhead: dict | None = field(default_factory=lambda: {"backend": "sparse"})
    path: str | None = None
    quick: bool = False
    raw: dict = field(default_factory=dict)

    def dataset(self, name: str) -> DatasetSpec:
        for d in self.datasets:
            if d.name == name:
                return d
        raise ConfigError(f"no dataset {name!r}; the config has {[d.name for d in self.datasets]}")

    @property
    def retrieval_metric(self) -> str | None:
        """The first retrieval-recall metric (used for Pareto fronts and tuning)."""
        for m in self.metrics:
            if m.startswith("retrieval_recall"):
                return m
        return None


# ---------------------------------------------------------------------- loading


def load_config(path: str | os.PathLike, *, quick: bool = False) -> BenchConfig:
    """Read and check a TOML benchmark configuration.

    Parameters
    ----------
    path : the ``.toml`` file.
    quick : apply the file's ``[quick]`` overrides and cap query counts (a smoke run).

    Raises
    ------
    ConfigError
        Unreadable file, invalid TOML, unknown keys, values of the wrong type
        or range, references to missing datasets or checkpoints, unset
        environment variables in paths.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"benchmark config not found: {path}")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigError("reading TOML configs on Python 3.10 needs the 'tomli' package: pip install tomli") from None
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    try:
        cfg = parse_config(raw, quick=quick)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    cfg.path = str(path)
    return cfg


def parse_config(raw: dict, *, quick: bool = False) -> BenchConfig:
    """Check a configuration given as a dict (the parsed TOML); see the module docstring."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a table, got {type(raw).__name__}")
    raw = copy.deepcopy(raw)
    quick_table = raw.pop("quick", None)
    if quick_table is not None and not isinstance(quick_table, dict):
        raise ConfigError(f"'quick' must be a table of overrides, got {_tname(quick_table)}")
    if quick:
        if quick_table:
            raw = _merge(raw, quick_table, "quick")
        for key, cap in _QUICK_CAPS.items():
            if key in (quick_table or {}):
                continue  # the config's own quick value wins
            if isinstance(raw.get(key), int) and not isinstance(raw.get(key), bool):
                raw[key] = min(raw[key], cap)
            elif key not in raw:
                raw[key] = cap
    t = _Table(raw, "")
    cfg = BenchConfig(datasets=[], backends=[], quick=quick, raw=raw)
    cfg.title = t.get("title", str, cfg.title)
    cfg.k = t.get_int("k", cfg.k, low=1)
    cfg.queries = t.get_int("queries", cfg.queries, low=1)
    cfg.warmup = t.get_int("warmup", cfg.warmup, low=0)
    cfg.threads = t.get_int_list("threads", cfg.threads, low=1)
    cfg.throughput_repeats = t.get_int("throughput_repeats", cfg.throughput_repeats, low=1)
    cfg.metrics = t.get_str_list("metrics", cfg.metrics)
    cfg.memory_probe = t.get_choice("memory_probe", _MEMORY_MODES, cfg.memory_probe)
    cfg.recall_target = t.get_float("recall_target", cfg.recall_target, low=0.0, high=1.0)
    cfg.seed = t.get_int("seed", cfg.seed, low=0)
    ov = t.raw.get("overhead", cfg.overhead)
    t.seen.add("overhead")
    if ov is False:
        cfg.overhead = None
    elif isinstance(ov, dict):
        ot = _Table(ov, "overhead")
        cfg.overhead = {"backend": ot.get("backend", str, "sparse"), "dataset": ot.get("dataset", str, None),
                        "queries": ot.get_int("queries", 200, low=1)}
        ot.done()
    else:
        raise ConfigError(f"'overhead' must be a table like {{ backend = \"sparse\" }} or false, got {_tname(ov)}: {ov!r}")
    _check_metrics(cfg.metrics, cfg.k)

    datasets = t.get("datasets", list, None, required=True)
    if not datasets:
        raise ConfigError("'datasets' must list at least one [[datasets]] table")
    for i, d in enumerate(datasets):
        where = f"datasets[{i}]"
        if not isinstance(d, dict):
            raise ConfigError(f"{where} must be a table, got {_tname(d)}")
        if d.get("enabled", True) is False:
            continue
        cfg.datasets.append(_parse_dataset(d, where))
    names = [d.name for d in cfg.datasets]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"dataset names must be unique; repeated: {dup}")
    if not cfg.datasets:
        raise ConfigError("every dataset is disabled; expected at least one enabled [[datasets]] table")
    _check_scale_refs(cfg, datasets)

    backends = t.get("backends", list, None, required=True)
    for i, b in enumerate(backends):
        where = f"backends[{i}]"
        if not isinstance(b, dict):
            raise ConfigError(f"{where} must be a table, got {_tname(b)}")
        if b.get("enabled", True) is False:
            continue
        cfg.backends.append(_parse_backend(b, where))
    labels = [b.label for b in cfg.backends]
    dup = sorted({n for n in labels if labels.count(n) > 1})
    if dup:
        raise ConfigError(f"backend labels must be unique (set 'label' to tell two entries apart); repeated: {dup}")
    if not cfg.backends:
        raise ConfigError("'backends' must list at least one enabled [[backends]] table")
    t.done()
    return cfg


# ---------------------------------------------------------------------- parts


def _parse_dataset(d: dict, where: str) -> DatasetSpec:
    from elsa_index.workflow import DataSpec

    t = _Table(d, where)
    t.seen.add("enabled")
    name = t.get("name", str, None, required=True)
    _check_name(name, f"{where}.name")
    kind = t.get_choice("kind", ("interactions", "scale"), "interactions")
    spec = DatasetSpec(name=name, kind=kind)
    spec.queries = t.get_int("queries", None, low=1)
    spec.measure = t.get("measure", bool, True)
    if kind == "interactions":
        data = t.get("data", dict, None, required=True)
        data = dict(data)
        known = {f.name for f in fields(DataSpec)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}.data has unknown key(s) {unknown}; expected some of {sorted(known)}")
        if "source" not in data:
            raise ConfigError(f"{where}.data.source is required: a .parquet/.csv path, a dataset name or 'synthetic'")
        for f in fields(DataSpec):
            if f.name in data:
                data[f.name] = _check_dataspec_value(f, data[f.name], f"{where}.data.{f.name}")
        data["source"] = _expand(data["source"], f"{where}.data.source")
        spec.data = DataSpec(**data)
        cks = t.get("checkpoints", list, None, required=True)
        if not cks:
            raise ConfigError(f"{where}.checkpoints must list at least one [[datasets.checkpoints]] table")
        for j, c in enumerate(cks):
            cw = f"{where}.checkpoints[{j}]"
            if not isinstance(c, dict):
                raise ConfigError(f"{cw} must be a table, got {_tname(c)}")
            if c.get("enabled", True) is False:
                continue
            spec.checkpoints.append(_parse_checkpoint(c, cw))
        names = [c.name for c in spec.checkpoints]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"{where}.checkpoints: names must be unique; repeated: {dup}")
        keep = t.get_str_list("use_checkpoints", None)
        if keep is not None:
            spec.checkpoints = [c for c in spec.checkpoints if any(fnmatch.fnmatchcase(c.name, p) for p in keep)]
            if not spec.checkpoints:
                raise ConfigError(f"{where}.use_checkpoints {keep} matches none of the checkpoints {names}")
    else:
        sizes = t.get_int_list("sizes", None, low=2, required=True)
        sc = ScaleSpec(sizes=sorted(set(sizes)))
        fit = t.get("fit", dict, None, required=True)
        ft = _Table(fit, f"{where}.fit")
        sc.fit_dataset = ft.get("dataset", str, None)
        sc.fit_checkpoint = ft.get("checkpoint", str, None)
        path = ft.get("path", str, None)
        sc.fit_path = None if path is None else _expand(path, f"{where}.fit.path")
        ft.done()
        if sc.fit_path is None and (sc.fit_dataset is None or sc.fit_checkpoint is None):
            raise ConfigError(f"{where}.fit must name {{ dataset = ..., checkpoint = ... }} of this config, or {{ path = ... }}")
        if sc.fit_path is not None and sc.fit_dataset is not None:
            raise ConfigError(f"{where}.fit: give either 'path' or 'dataset'/'checkpoint', not both")
        sc.query_terms = t.get_int("query_terms", None, low=1)
        sc.dense_dims = t.get_int("dense_dims", None, low=0)
        sc.dims = t.get_int("dims", None, low=2)
        sc.extrapolate = t.get_int_list("extrapolate", [], low=1)
        sc.history_mean = t.get_float("history_mean", 30.0, low=1.0)
        if sc.fit_path is not None and sc.query_terms is None:
            raise ConfigError(f"{where}.query_terms is required when fitting from a path (no held-out queries to fit it from)")
        spec.scale = sc
        spec.checkpoints = [CheckpointSpec(name="sparse", storage="sparse")]
        if sc.dense_dims != 0:
            spec.checkpoints.append(CheckpointSpec(name="dense", storage="dense"))
    t.done()
    return spec


def _parse_checkpoint(c: dict, where: str) -> CheckpointSpec:
    t = _Table(c, where)
    t.seen.add("enabled")
    name = t.get("name", str, None, required=True)
    _check_name(name, f"{where}.name")
    train = t.get("train", dict, None)
    path = t.get("path", str, None)
    vu = t.get_int("validation_users", 0, low=0)
    t.done()
    if (train is None) == (path is None):
        raise ConfigError(f"{where} needs exactly one of 'train' (a model recipe) or 'path' (a checkpoint directory)")
    if train is not None:
        train = dict(train)
        kind = train.get("kind")
        if kind not in _MODEL_KINDS:
            raise ConfigError(f"{where}.train.kind must be one of {sorted(_MODEL_KINDS)}, got {kind!r}")
        for k, v in train.items():
            if isinstance(v, (dict, list)):
                raise ConfigError(f"{where}.train.{k} must be a scalar model parameter, got {_tname(v)}")
        try:  # constructor and range checks, cheap: no data needed
            from elsa_index.workflow import make_model

            make_model(kind, **{k: v for k, v in train.items() if k != "kind"})
        except ElsaIndexError as exc:
            raise ConfigError(f"{where}.train: {exc}") from None
        return CheckpointSpec(name=name, storage=_MODEL_KINDS[kind], train=train, validation_users=vu)
    path = _expand(path, f"{where}.path")
    manifest = Path(path) / "manifest.json"
    storage = "sparse"
    if manifest.is_file():
        try:
            storage = "sparse" if json.loads(manifest.read_text()).get("storage") == "csr" else "dense"
        except (OSError, ValueError):
            raise ConfigError(f"{where}.path: {manifest} is not readable JSON") from None
    else:
        raise ConfigError(f"{where}.path: no checkpoint at {path} (missing manifest.json)")
    return CheckpointSpec(name=name, storage=storage, path=path, validation_users=vu)


def _parse_backend(b: dict, where: str) -> BackendSpec:
    t = _Table(b, where)
    t.seen.add("enabled")
    name = t.get("name", str, None, required=True)
    label = t.get("label", str, name)
    _check_name(label, f"{where}.label")
    datasets = t.get_str_list("datasets", None)
    checkpoints = t.get_str_list("checkpoints", None)
    build = expand_grid(t.raw.get("build"), f"{where}.build")
    search = expand_grid(t.raw.get("search"), f"{where}.search")
    t.seen.update(("build", "search"))
    t.done()
    for p in search:
        bad = [k for k in p if k in HARNESS_PARAMS]
        if bad:
            raise ConfigError(f"{where}.search sets {bad}: the harness sets search threads itself "
                              "(1 for latency, each of the top-level 'threads' for throughput)")
    return BackendSpec(name=name, label=label, build_grid=build, search_grid=search,
                       datasets=datasets, checkpoints=checkpoints)


def expand_grid(value, where: str) -> list[dict]:
    """Parameter sets of a grid.

    Parameters
    ----------
    value : None (one empty set), a table whose list values are swept (the
        cartesian product; scalars are fixed), or an array of such tables
        (the union of their products, in order).
    where : the key, for messages.

    Returns
    -------
    list of dict, never empty; duplicates removed, order kept.
    """
    if value is None:
        return [{}]
    tables = value if isinstance(value, list) else [value]
    out: list[dict] = []
    for i, tab in enumerate(tables):
        w = f"{where}[{i}]" if isinstance(value, list) else where
        if not isinstance(tab, dict):
            raise ConfigError(f"{w} must be a table of parameter values (lists are swept), got {_tname(tab)}: {tab!r}")
        keys = list(tab)
        axes = []
        for k in keys:
            v = tab[k]
            vals = v if isinstance(v, list) else [v]
            if not vals:
                raise ConfigError(f"{w}.{k} is an empty list; expected at least one value to sweep")
            for x in vals:
                if isinstance(x, (dict, list)):
                    raise ConfigError(f"{w}.{k} must hold scalars (numbers, strings, booleans), got {_tname(x)}")
            axes.append(vals)
        for combo in itertools.product(*axes):
            p = dict(zip(keys, combo))
            if p not in out:
                out.append(p)
    return out or [{}]


def _check_scale_refs(cfg: BenchConfig, raw_datasets: list) -> None:
    for d in cfg.datasets:
        if d.kind != "scale" or d.scale.fit_dataset is None:
            continue
        src = next((x for x in cfg.datasets if x.name == d.scale.fit_dataset), None)
        if src is None:
            raise ConfigError(f"dataset {d.name!r}: fit.dataset {d.scale.fit_dataset!r} is not an enabled dataset of this config; "
                              f"expected one of {[x.name for x in cfg.datasets if x.kind == 'interactions']}")
        if src.kind != "interactions":
            raise ConfigError(f"dataset {d.name!r}: fit.dataset {src.name!r} must be interaction data, not {src.kind!r}")
        ck = next((c for c in src.checkpoints if c.name == d.scale.fit_checkpoint), None)
        if ck is None:
            raise ConfigError(f"dataset {d.name!r}: fit.checkpoint {d.scale.fit_checkpoint!r} is not a checkpoint of "
                              f"{src.name!r}; expected one of {[c.name for c in src.checkpoints]}")
        if ck.storage != "sparse":
            raise ConfigError(f"dataset {d.name!r}: fit.checkpoint {ck.name!r} must be sparse (Compressed ELSA)")


def _check_metrics(metrics: list[str], k: int) -> None:
    from .registry import get_metric

    for m in metrics:
        try:
            metric, at = get_metric(m)
        except ElsaIndexError as exc:
            raise ConfigError(f"metrics: {exc}") from None
        if at is not None and metric.kind in ("quality", "retrieval") and at > k:
            raise ConfigError(f"metrics: {m!r} needs the top {at} results but k = {k}; raise k or lower the cut-off")


def _check_dataspec_value(f, v, where: str):
    ann = str(f.type)
    if "int" in ann and "float" not in ann:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{where} must be an integer, got {_tname(v)}: {v!r}")
    elif "float" in ann:
        if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{where} must be a number, got {_tname(v)}: {v!r}")
        v = float(v)
    elif "str" in ann:
        if not isinstance(v, str):
            raise ConfigError(f"{where} must be a string, got {_tname(v)}: {v!r}")
    return v


def _expand(s: str, where: str) -> str:
    out = os.path.expandvars(s)
    missing = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", out)
    if missing:
        raise ConfigError(f"{where} uses the environment variable(s) {missing}, which are not set "
                          f"(value {s!r}); set them, e.g. ELSA_INDEX_DATA=/path/to/data")
    return out


def _check_name(name: str, where: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
        raise ConfigError(f"{where} must be a simple name (letters, digits, '.', '_', '+', '-'), got {name!r}")


def _merge(base: dict, over: dict, where: str) -> dict:
    """Deep merge: tables merge, arrays of named tables merge by ``name``, anything else is replaced."""
    out = dict(base)
    for k, v in over.items():
        b = out.get(k)
        if isinstance(b, dict) and isinstance(v, dict):
            out[k] = _merge(b, v, f"{where}.{k}")
        elif (isinstance(b, list) and isinstance(v, list) and v and all(isinstance(x, dict) and "name" in x for x in v)
              and all(isinstance(x, dict) for x in b)):
            merged = [dict(x) for x in b]
            for x in v:
                hit = [i for i, y in enumerate(merged) if y.get("name") == x["name"] and y.get("label") == x.get("label", y.get("label"))]
                if hit:
                    merged[hit[0]] = _merge(merged[hit[0]], x, f"{where}.{k}")
                else:
                    merged.append(dict(x))
            out[k] = merged
        else:
            out[k] = v
    return out


def _tname(v) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
            float: "a float"}.get(type(v), type(v).__name__)


_REQUIRED = object()


class _Table:
    """Typed access to one TOML table; ``done`` rejects keys that were never read."""

    def __init__(self, raw: dict, where: str):
        self.raw, self.where, self.seen = raw, where, set()

    def _key(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key, typ, default=None, *, required: bool = False):
        self.seen.add(key)
        if key not in self.raw:
            if required:
                raise ConfigError(f"{self._key(key)} is required ({_tname(typ()) if typ in (dict, list, str) else typ.__name__})")
            return default
        v = self.raw[key]
        if typ is bool and not isinstance(v, bool) or typ is not bool and (not isinstance(v, typ) or isinstance(v, bool)):
            expected = {dict: "a table", list: "an array", str: "a string", bool: "a boolean (true/false)"}.get(typ, typ.__name__)
            raise ConfigError(f"{self._key(key)} must be {expected}, got {_tname(v)}: {v!r}")
        return v

    def get_int(self, key, default, *, low=None, required=False):
        self.seen.add(key)
        if key not in self.raw:
            if required:
                raise ConfigError(f"{self._key(key)} is required (an integer)")
            return default
        v = self.raw[key]
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{self._key(key)} must be an integer{f' >= {low}' if low is not None else ''}, got {_tname(v)}: {v!r}")
        if low is not None and v < low:
            raise ConfigError(f"{self._key(key)} must be an integer >= {low}, got {v}")
        return v

    def get_float(self, key, default, *, low=None, high=None):
        self.seen.add(key)
        if key not in self.raw:
            return default
        v = self.raw[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{self._key(key)} must be a number, got {_tname(v)}: {v!r}")
        if (low is not None and v < low) or (high is not None and v > high):
            raise ConfigError(f"{self._key(key)} must be in [{low}, {high}], got {v}")
        return float(v)

    def get_choice(self, key, choices, default):
        self.seen.add(key)
        v = self.raw.get(key, default)
        if v not in choices:
            raise ConfigError(f"{self._key(key)} must be one of {list(choices)}, got {v!r}")
        return v

    def get_int_list(self, key, default, *, low=None, required=False):
        self.seen.add(key)
        if key not in self.raw:
            if required:
                raise ConfigError(f"{self._key(key)} is required (an array of integers)")
            return default
        v = self.raw[key]
        if isinstance(v, int) and not isinstance(v, bool):
            v = [v]
        if not isinstance(v, list) or not v or any(isinstance(x, bool) or not isinstance(x, int) for x in v):
            raise ConfigError(f"{self._key(key)} must be a non-empty array of integers, got {_tname(v)}: {v!r}")
        if low is not None and min(v) < low:
            raise ConfigError(f"{self._key(key)} must hold integers >= {low}, got {v}")
        return list(v)

    def get_str_list(self, key, default):
        self.seen.add(key)
        if key not in self.raw:
            return default
        v = self.raw[key]
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or any(not isinstance(x, str) for x in v):
            raise ConfigError(f"{self._key(key)} must be an array of strings, got {_tname(v)}: {v!r}")
        return list(v)

    def done(self) -> None:
        unknown = sorted(set(self.raw) - self.seen)
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in {self.where or 'the top-level table'}; "
                              f"expected some of {sorted(self.seen)}")
