"""Benchmark configuration: a TOML file checked against a pydantic schema.

A configuration names what to measure; :mod:`elsa_index.eval.harness` runs
it. The whole file is checked when it is read, so that a typo or a value of
the wrong type fails at once with a :class:`ConfigError` that names the key
(``backends[2].search.ef_search: ...``), what was expected and what was
received, not an hour into a run.

Schema (every top-level key but ``datasets`` and ``backends`` is optional)::

    title = "..."                  # report title
    k = 100                        # results per query (retrieval depth)
    queries = 1000                 # queries per dataset (held-out users or synthetic)
    warmup = 50                    # warm-up queries before the timed single-query pass
    index_warmup_seconds = 3.0     # once per opened index, before its first configuration: the query set,
                                   # cycled, for this long (a JVM compiles its hot code after thousands of
                                   # calls; without it the first configuration of an index is timed cold)
    threads = [1, 2]               # thread counts of the batched throughput runs
    throughput_repeats = 3         # batched passes per thread count (median reported)
    metrics = ["recall@20", "recall@50", "ndcg@100", "retrieval_recall@20", "retrieval_recall@100"]
    memory_probe = "build"         # "build": one fresh process per built index; "each": per
                                   # search-parameter set; "off"
    recall_target = 0.99           # retrieval recall@R a configuration must reach to be
                                   # "tuned" in comparisons (R: first retrieval_recall metric)
    seed = 0
    bandwidth_mb = 256             # size of each array of the memory-bandwidth measurement (well
                                   # above the last-level cache; the lower bounds divide by it)
    overhead = { backend = "sparse" }   # the harness-overhead check (false: skip)
    [report]                       # what the report checks the results against
    latency_target_ms = 10.0       # p50 target of the exact backends at the largest catalogue
    latency_goal_ms = 2.0          # and the (stricter) goal

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
    name = "faiss-hnsw"            # a registered backend (elsa_index.indexers.BACKENDS)
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
import os
from pathlib import Path

from pydantic import ValidationError

from elsa_index.errors import ConfigError

from .schema import (
    DATASET_KINDS, HARNESS_PARAMS, BackendSpec, BenchConfig, CheckpointSpec, DatasetSpec, FitSpec, InteractionsDataset,
    Issue, Nested, OverheadSpec, ReportSpec, ScaleDataset, default_storage, expand_grid, type_name,
)

__all__ = [
    "ConfigError",
    "BenchConfig",
    "DatasetSpec",
    "InteractionsDataset",
    "ScaleDataset",
    "FitSpec",
    "CheckpointSpec",
    "BackendSpec",
    "OverheadSpec",
    "ReportSpec",
    "HARNESS_PARAMS",
    "load_config",
    "parse_config",
    "expand_grid",
    "default_storage",
]

_QUICK_CAPS = {"queries": 100, "warmup": 10, "throughput_repeats": 1, "index_warmup_seconds": 0.5}


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
        environment variables in paths; the message starts with the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"benchmark config not found: {path}")
    try:
        import tomllib  # standard library from Python 3.11; the optional tomli package before
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
    """Check a configuration given as a dict (the parsed TOML); see the module docstring.

    Raises
    ------
    ConfigError
        The first problem found, as ``location: what is wrong, what was expected``.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a table, got {type_name(raw)}")
    raw = copy.deepcopy(raw)
    quick_table = raw.pop("quick", None)
    if quick_table is not None and not isinstance(quick_table, dict):
        raise ConfigError(f"quick: must be a table of overrides, got {type_name(quick_table)}")
    if quick:
        if quick_table:
            raw = _merge(raw, quick_table)
        for key, cap in _QUICK_CAPS.items():
            if key in (quick_table or {}):
                continue  # the config's own quick value wins
            if isinstance(raw.get(key), (int, float)) and not isinstance(raw.get(key), bool):
                raw[key] = min(raw[key], cap)
            elif key not in raw:
                raw[key] = cap
    try:
        cfg = BenchConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_message(exc)) from None
    cfg.quick, cfg.raw = quick, raw
    return cfg


# ------------------------------------------------------------------ messages


def _where(loc) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in DATASET_KINDS and i > 0 and isinstance(loc[i - 1], int):
            continue  # the discriminator's tag is not a key of the file
        else:
            out += f".{part}" if out else str(part)
    return out


_TEMPLATES = {
    "missing": "is required",
    "int_type": "must be an integer, got {got}",
    "float_type": "must be a number, got {got}",
    "string_type": "must be a string, got {got}",
    "bool_type": "must be a boolean (true/false), got {got}",
    "list_type": "must be an array, got {got}",
    "dict_type": "must be a table, got {got}",
    "model_type": "must be a table, got {got}",
    "greater_than_equal": "must be >= {ge}, got {input!r}",
    "greater_than": "must be > {gt}, got {input!r}",
    "less_than_equal": "must be <= {le}, got {input!r}",
    "too_short": "must not be empty",
    "literal_error": "must be one of {expected}, got {input!r}",
    "union_tag_invalid": "kind must be one of {expected_tags}, got {tag!r}",
}


def _message(exc: ValidationError) -> str:
    """``location: problem`` of the first error of a pydantic validation (nested ones resolved)."""
    err = exc.errors(include_url=False)[0]
    loc = tuple(err["loc"])
    ctx = err.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, Nested):
        inner = _message(cause.exc)
        head = _where(loc)
        return f"{head}.{inner}" if inner[:1] not in ("[", ":") else f"{head}{inner}"
    if isinstance(cause, Issue):
        return f"{_where(loc + cause.at)}: {cause}" if loc + cause.at else str(cause)
    typ = err["type"]
    v = err.get("input")
    got = f"{type_name(v)}: {v!r}"
    template = _TEMPLATES.get(typ)
    if template is not None:
        try:
            text = template.format(got=got, input=v, **ctx)
        except (KeyError, IndexError):
            text = f"{err['msg']}, got {got}"
    elif cause is not None:
        text = str(cause)
    else:
        text = f"{err['msg']}, got {got}"
    return f"{_where(loc)}: {text}" if loc else text


def _merge(base: dict, over: dict) -> dict:
    """Deep merge: tables merge, arrays of named tables merge by ``name``, anything else is replaced."""
    out = dict(base)
    for k, v in over.items():
        b = out.get(k)
        if isinstance(b, dict) and isinstance(v, dict):
            out[k] = _merge(b, v)
        elif (isinstance(b, list) and isinstance(v, list) and v and all(isinstance(x, dict) and "name" in x for x in v)
              and all(isinstance(x, dict) for x in b)):
            merged = [dict(x) for x in b]
            for x in v:
                hit = [i for i, y in enumerate(merged) if y.get("name") == x["name"]
                       and y.get("label") == x.get("label", y.get("label"))]
                if hit:
                    merged[hit[0]] = _merge(merged[hit[0]], x)
                else:
                    merged.append(dict(x))
            out[k] = merged
        else:
            out[k] = v
    return out
