"""What the command line is given, read and checked before any work: JSON-lines histories, output paths, limits.

Every problem is an :class:`~elsa_index.errors.ElsaIndexError` naming the
option, what was wrong and what was expected; nothing here writes a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ._atomic import check_output_path
from ._memory import check_fits
from .errors import ElsaIndexError

__all__ = ["read_histories", "check_output_writable", "check_recommend_args", "check_recommend_memory", "RESULT_SLOT_BYTES",
           "check_new_output", "check_output_file", "MAX_K", "OUTPUT_KINDS"]


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON (expected a finite number, a string or null)")


def _finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text} is out of range (not a finite 64-bit float)")
    return value


def read_histories(path: str):
    """(users, histories) of a JSON-lines file; every problem is an ElsaIndexError naming the line.

    Item ids are JSON strings or integers; NaN/Infinity (not JSON) and
    numbers that overflow to infinity are refused, so what is echoed back
    (the ``user`` field) is always valid JSON.
    """
    users, hists = [], []
    try:
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ElsaIndexError(f"{path} line {n} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                                         "expected UTF-8 JSON lines") from None
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line, parse_constant=_reject_constant, parse_float=_finite_float)
                except RecursionError:
                    raise ElsaIndexError(f"{path} line {n} nests JSON arrays/objects too deeply; expected a list "
                                         "of item ids or an object with a 'history' list") from None
                except ValueError as exc:  # JSONDecodeError, or a refused constant/number
                    raise ElsaIndexError(f"{path} line {n} is not valid JSON: {exc}") from None
                if isinstance(obj, dict):
                    extra = sorted(set(obj) - {"user", "history"})
                    if extra or not isinstance(obj.get("history"), list):
                        what = (f"unknown key(s) {extra}" if extra else
                                "no 'history' key" if "history" not in obj else
                                f"a 'history' that is {type(obj['history']).__name__}, not a list")
                        raise ElsaIndexError(f"{path} line {n}: expected a JSON list of item ids or an object "
                                             "{\"user\": ..., \"history\": [item ids]}, but the object has "
                                             f"{what} (options such as --k, --allow, --deny apply to every line)")
                    user, items = obj.get("user", n - 1), obj["history"]
                elif isinstance(obj, list):
                    user, items = n - 1, obj
                else:
                    raise ElsaIndexError(f"{path} line {n}: expected a JSON list of item ids or an object with a "
                                         f"'history' list, got {type(obj).__name__}")
                bad = [x for x in items if isinstance(x, bool) or not isinstance(x, (str, int))]
                if bad:
                    raise ElsaIndexError(f"{path} line {n}: item ids must be strings or integers, got "
                                         f"{json.dumps(bad[0])[:80]}")
                users.append(user), hists.append([str(x) for x in items])
    except OSError as exc:
        raise ElsaIndexError(f"cannot read {path}: {exc.strerror or exc}") from None
    return users, hists


def check_output_writable(path: str, option: str = "--output") -> None:
    """Refuse an output file that cannot be written, before any work (the file itself is not touched)."""
    p = Path(path)
    if p.is_dir():
        raise ElsaIndexError(f"{option} {path} is a directory; expected a file path")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise ElsaIndexError(f"{option} {path}: directory {parent} does not exist; create it first")
    if not parent.is_dir():
        raise ElsaIndexError(f"{option} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ElsaIndexError(f"{option} {path}: permission denied (cannot write {p if p.exists() else 'in ' + str(parent)})")


#: the largest result count: item positions are 32-bit in some backends
MAX_K = 2**31 - 1
#: bytes per result slot of a recommend batch (external id, item index, score, and their working copies)
RESULT_SLOT_BYTES = 64


def check_recommend_args(args) -> None:
    """Validate recommend's options before the index is opened or any file is touched."""
    if args.batch_size < 1:
        raise ElsaIndexError(f"--batch-size must be a positive integer (histories per batch), got {args.batch_size}")
    if not 1 <= args.k <= MAX_K:
        raise ElsaIndexError(f"--k must be a positive integer (items per user) at most {MAX_K:,}, got {args.k}")
    if args.output:
        check_output_writable(args.output)


def check_recommend_memory(k: int, n_users: int, batch_size: int, n_items: int) -> None:
    rows = max(1, min(n_users, batch_size))
    check_fits(float(rows) * k * RESULT_SLOT_BYTES, f"--k {k} ({rows} histories per batch x k results)",
               hint=f"the catalogue has {n_items} items, so results beyond k={n_items} are only padding; "
                    "lower --k (or --batch-size)")


OUTPUT_KINDS = {"checkpoint": "elsa-index-checkpoint", "index": "elsa-index-index", "segments": "elsa-index-segments"}


def check_new_output(out: Path, overwrite: bool, kind: str | None = None, *, inputs=(), inside_inputs: bool = False,
                      error=ElsaIndexError) -> None:
    """Refuse an ``--out`` directory before the work starts (the library checks again when it writes).

    It may exist only with ``--overwrite`` and then only as the same ``kind``
    of elsa-index directory (``checkpoint``, ``index``, ``segments``); it may
    not be, contain or (unless ``inside_inputs``) lie inside one of the
    command's ``inputs``. See :func:`elsa_index._atomic.check_output_path`.
    """
    check_output_path(out, overwrite=overwrite, kind=OUTPUT_KINDS.get(kind), inputs=inputs, inside_inputs=inside_inputs,
                      error=error)
    # Missing parent folders are created when writing; the nearest existing one must be a writable directory.
    parent = out.parent if str(out.parent) else Path(".")
    try:
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise error(f"--out {out}: {parent} is not a directory")
    except OSError as exc:  # e.g. a symlink loop in the path
        raise error(f"--out {out}: {exc.strerror or exc}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise error(f"--out {out}: permission denied (cannot write in {parent})")


def check_output_file(output: str, inputs) -> None:
    """Refuse an ``--output`` file that is one of the command's inputs or lies inside an input directory."""
    target = Path(output).resolve()
    for inp in inputs:
        if inp is not None and os.path.lexists(inp):
            src = Path(inp).resolve()
            if target == src or src in target.parents:
                what = inp if target == src else f"a file of the input {inp}"
                raise ElsaIndexError(f"--output {output} would replace {what}; choose another output file")
