"""Overwrite safety and atomic replace (issue 13): nothing lost, nothing stranded.

Fault injection only on the rename/remove calls (``os.rename``, ``os.replace``,
``shutil.rmtree`` and the rename-exchange of :mod:`elsa_index._io`); a kill is a
real ``SIGKILL`` of a child process.
"""

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import elsa_index._atomic as io_mod
from elsa_index._atomic import atomic_directory, atomic_file, check_output_path, recover
from elsa_index.checkpoint import Checkpoint
from elsa_index.cli import main
from elsa_index.errors import BackendError, CheckpointError, ElsaIndexError
from elsa_index.search import build_index
from elsa_index.segments import Segments


def _ckpt(seed: int, n: int = 30, d: int = 8) -> Checkpoint:
    rng = np.random.default_rng(seed)
    return Checkpoint(rng.normal(size=(n, d)).astype(np.float32), [f"i{k}" for k in range(n)], np.arange(n),
                      kind="elsa")


def _siblings(path: Path) -> list[str]:
    """Names next to ``path`` other than ``path`` itself."""
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def _user_folder(path: Path) -> Path:
    path.mkdir()
    (path / "notes.txt").write_text("my own notes\n")
    return path


# ------------------------------------------------------------------ what --overwrite accepts


def test_overwrite_refuses_a_folder_of_other_files(tmp_path):
    out = _user_folder(tmp_path / "mine")
    with pytest.raises(CheckpointError, match=r"mine is not an elsa-index directory.*refusing"):
        _ckpt(0).save(out, overwrite=True)
    assert (out / "notes.txt").read_text() == "my own notes\n" and _siblings(out) == []


def test_overwrite_refuses_a_file_a_symlink_and_another_kind(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        _ckpt(0).save(tmp_path / "f", overwrite=True)
    _ckpt(0).save(tmp_path / "ck")
    os.symlink(tmp_path / "ck", tmp_path / "link")
    with pytest.raises(CheckpointError, match="symbolic link"):
        _ckpt(1).save(tmp_path / "link", overwrite=True)
    with pytest.raises(ElsaIndexError, match=r"holds a checkpoint, not a segments directory"):
        check_output_path(tmp_path / "ck", overwrite=True, kind="elsa-index-segments")
    assert Checkpoint.load(tmp_path / "ck").fingerprint == _ckpt(0).fingerprint
    assert (tmp_path / "f").read_text() == "x" and os.path.islink(tmp_path / "link")


def test_overwrite_accepts_the_same_kind_and_an_empty_directory(tmp_path):
    _ckpt(0).save(tmp_path / "ck")
    _ckpt(1).save(tmp_path / "ck", overwrite=True)
    assert Checkpoint.load(tmp_path / "ck").fingerprint == _ckpt(1).fingerprint
    (tmp_path / "empty").mkdir()
    _ckpt(2).save(tmp_path / "empty", overwrite=True)
    assert Checkpoint.load(tmp_path / "empty").fingerprint == _ckpt(2).fingerprint
    assert _siblings(tmp_path / "ck") == ["empty"]


def test_without_kind_the_written_manifest_must_match(tmp_path):
    """A caller that does not name the kind: checked against what the body wrote, after it."""
    _ckpt(0).save(tmp_path / "ck")
    with pytest.raises(ElsaIndexError, match="holds a checkpoint, not a segments directory"):
        with atomic_directory(tmp_path / "ck", overwrite=True) as tmp:
            (tmp / "manifest.json").write_text(json.dumps({"format": "elsa-index-segments"}))
    with pytest.raises(ElsaIndexError, match="not an elsa-index directory; refusing"):
        with atomic_directory(tmp_path / "ck", overwrite=True) as tmp:
            (tmp / "data.txt").write_text("x")
    assert Checkpoint.load(tmp_path / "ck").fingerprint == _ckpt(0).fingerprint
    assert _siblings(tmp_path / "ck") == []


def test_an_index_part_and_an_input_are_never_replaced(tmp_path):
    _ckpt(0).save(tmp_path / "ck")
    index_dir = tmp_path / "ix"
    index_dir.mkdir()
    (index_dir / "index.json").write_text(json.dumps({"format": "elsa-index-index", "format_version": 1}))
    _ckpt(0).save(index_dir / "checkpoint")
    with pytest.raises(CheckpointError, match=r"part of the index directory"):
        _ckpt(1).save(index_dir / "checkpoint", overwrite=True)
    # the output may not be the input, contain it, or lie inside it
    with pytest.raises(ElsaIndexError, match="is the input"):
        check_output_path(tmp_path / "ck", overwrite=True, kind="elsa-index-checkpoint", inputs=[tmp_path / "ck"])
    with pytest.raises(ElsaIndexError, match="contains the input"):
        check_output_path(tmp_path, overwrite=True, inputs=[tmp_path / "ck"])
    with pytest.raises(ElsaIndexError, match="lies inside the input"):
        check_output_path(tmp_path / "ck" / "sub", inputs=[tmp_path / "ck"])
    check_output_path(tmp_path / "ck" / "sub", inputs=[tmp_path / "ck"], inside_inputs=True)
    check_output_path(tmp_path / "new", inputs=["no-such-dataset-name", None])


def test_build_index_refuses_its_own_checkpoint_as_output(tmp_path, sparse_checkpoint):
    sparse_checkpoint.save(tmp_path / "ck")
    with pytest.raises(BackendError, match="is the input"):
        build_index(str(tmp_path / "ck"), "sparse", tmp_path / "ck", overwrite=True)
    assert Checkpoint.load(tmp_path / "ck").fingerprint == sparse_checkpoint.fingerprint


def test_cli_overwrite_refusals_keep_the_users_data(tmp_path, sparse_checkpoint, capsys):
    ck = tmp_path / "ck"
    sparse_checkpoint.save(ck)
    mine = _user_folder(tmp_path / "mine")
    cases = [
        (["build", str(ck), "--backend", "sparse", "--out", str(mine), "--overwrite", "--quiet"],
         "mine is not an elsa-index directory"),
        (["build", str(ck), "--backend", "sparse", "--out", str(ck), "--overwrite", "--quiet"], "is the input"),
        (["build", str(ck), "--backend", "sparse", "--out", str(tmp_path), "--overwrite", "--quiet"],
         "contains the input"),
        (["build", str(ck), "--backend", "sparse", "--out", str(ck / "ix"), "--quiet"], "lies inside the input"),
        (["segments", str(ck), "--out", str(ck), "--overwrite"], "is the input"),
        (["segments", str(ck), "--out", str(mine), "--overwrite"], "mine is not an elsa-index directory"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, (argv, err)
    assert (mine / "notes.txt").read_text() == "my own notes\n"
    assert Checkpoint.load(ck).fingerprint == sparse_checkpoint.fingerprint
    assert not [p for p in ck.iterdir() if p.name.startswith(".")]  # nothing was written inside the input
    # the same kind is replaced: an index over an index, segments over segments
    assert main(["build", str(ck), "--backend", "sparse", "--out", str(tmp_path / "ix"), "--quiet"]) == 0
    assert main(["build", str(ck), "--backend", "sparse", "--out", str(tmp_path / "ix"), "--overwrite", "--quiet"]) == 0
    assert main(["segments", str(tmp_path / "ix"), "--show", "0"]) == 0  # default: inside the index
    assert main(["segments", str(tmp_path / "ix"), "--show", "0", "--overwrite"]) == 0
    assert Segments.load(tmp_path / "ix" / "segments").n_items == sparse_checkpoint.n_items
    # an index is not replaced by a checkpoint's segments, nor a checkpoint by an index
    assert main(["segments", str(ck), "--out", str(tmp_path / "ix"), "--overwrite"]) == 2
    assert "holds a index directory, not a segments directory" in capsys.readouterr().err
    sparse_checkpoint.save(tmp_path / "ck2")
    assert main(["build", str(ck), "--backend", "sparse", "--out", str(tmp_path / "ck2"), "--overwrite",
                 "--quiet"]) == 2
    assert "holds a checkpoint, not a index directory" in capsys.readouterr().err


# ------------------------------------------------------------------ atomic replace under faults


class _Faults:
    """Make the ``n``-th call (1-based) of a function raise EACCES; with ``sticky`` every later call too."""

    def __init__(self, monkeypatch, owner, name: str, n: int, sticky: bool = False):
        self.calls, self.n, self.sticky = 0, n, sticky
        real = getattr(owner, name)

        def wrapper(*a, **k):
            self.calls += 1
            if self.calls == self.n or (self.sticky and self.calls > self.n):
                raise PermissionError(errno.EACCES, f"injected failure of {name} call {self.calls}")
            return real(*a, **k)

        monkeypatch.setattr(owner, name, wrapper)


def _exchange_works(tmp_path: Path) -> bool:
    (tmp_path / "xa").mkdir(), (tmp_path / "xb").mkdir()
    try:
        return io_mod._exchange(tmp_path / "xa", tmp_path / "xb")
    finally:
        os.rmdir(tmp_path / "xa"), os.rmdir(tmp_path / "xb")


@pytest.fixture(params=["exchange", "rename-aside"])
def replace_mode(request, tmp_path, monkeypatch):
    """Both ways of replacing: the atomic exchange (Linux) and the portable rename-aside with restore."""
    if request.param == "exchange":
        if not _exchange_works(tmp_path):
            pytest.skip("no renameat2(RENAME_EXCHANGE) on this platform or file system")
    else:
        monkeypatch.setattr(io_mod, "_exchange", lambda a, b: False)
    return request.param


def _state(path: Path, old: Checkpoint, new: Checkpoint) -> str:
    """"old" or "new": ``path`` loads completely (verified) as one of them; anything else fails."""
    fp = Checkpoint.load(path).fingerprint
    assert fp in (old.fingerprint, new.fingerprint)
    return "old" if fp == old.fingerprint else "new"


@pytest.mark.parametrize("call", [1, 2, 3])
@pytest.mark.parametrize("fn", ["rename", "rmtree"])
@pytest.mark.parametrize("sticky", [False, True])
def test_replace_with_a_failure_at_each_step(tmp_path, monkeypatch, replace_mode, fn, call, sticky):
    target = tmp_path / "ck"
    old, new, later = _ckpt(0), _ckpt(1), _ckpt(2)
    old.save(target)
    owner = shutil if fn == "rmtree" else os
    faults = _Faults(monkeypatch, owner, fn, call, sticky)
    try:
        new.save(target, overwrite=True)
        failed = False
    except CheckpointError as exc:
        assert "injected failure" in str(exc) and "left as it was" in str(exc)
        failed = True
    monkeypatch.undo()  # the file system works again
    if replace_mode == "rename-aside":
        monkeypatch.setattr(io_mod, "_exchange", lambda a, b: False)
    # never missing, never a mix: the old version or the new one, complete (opening restores if needed)
    state = _state(target, old, new)
    assert state == ("old" if failed else "new")
    # moving the old version aside (1st rename) or the new one in (2nd) fails the save; a failure to remove
    # the replaced version (3rd rename, 1st rmtree) at worst leaves a leftover behind
    assert failed == (replace_mode == "rename-aside" and fn == "rename" and call <= 2)
    if not failed:
        assert bool(_siblings(target)) == (fn == "rmtree" and call == 1)
    # the next write of the same target removes whatever the failure left behind
    later.save(target, overwrite=True)
    assert _state(target, later, later) == "old" and _siblings(target) == []


def test_readers_never_see_the_target_missing_during_replaces(tmp_path):
    """With the exchange, a reader opening the target while it is replaced again and again always finds it."""
    if not _exchange_works(tmp_path):
        pytest.skip("no renameat2(RENAME_EXCHANGE) here")
    target, ck = tmp_path / "ck", _ckpt(0)
    ck.save(target)
    stop, seen, errors = threading.Event(), [], []

    def reader():
        while not stop.is_set():
            try:
                seen.append(Checkpoint.load(target).fingerprint)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(25):
            ck.save(target, overwrite=True)
    finally:
        stop.set()
        t.join()
    assert not errors and seen and set(seen) == {ck.fingerprint}
    assert _siblings(target) == []


@pytest.mark.parametrize("call", [1, 2])
def test_exchange_failure_keeps_the_old_version(tmp_path, monkeypatch, call):
    if not _exchange_works(tmp_path):
        pytest.skip("no renameat2(RENAME_EXCHANGE) here")
    target = tmp_path / "ck"
    _ckpt(0).save(target)
    _Faults(monkeypatch, io_mod, "_exchange", 1, sticky=call == 2)
    with pytest.raises(CheckpointError, match="injected failure"):
        _ckpt(1).save(target, overwrite=True)
    assert Checkpoint.load(target).fingerprint == _ckpt(0).fingerprint and _siblings(target) == []


def test_restore_failure_is_repaired_by_the_next_open(tmp_path, monkeypatch):
    """Rename-aside with the 2nd rename and the restore both failing: the target is back at the next open."""
    monkeypatch.setattr(io_mod, "_exchange", lambda a, b: False)
    target = tmp_path / "ck"
    _ckpt(0).save(target)
    with monkeypatch.context() as m:
        _Faults(m, os, "rename", 2, sticky=True)
        with pytest.raises(CheckpointError, match="injected failure"):
            _ckpt(1).save(target, overwrite=True)
    assert not target.exists() and [n.startswith(".ck.old-") for n in _siblings(target)] == [True]
    assert Checkpoint.load(target).fingerprint == _ckpt(0).fingerprint  # restored by the reader
    assert _siblings(target) == []


_KILLER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import elsa_index._atomic as io_mod
    from elsa_index.checkpoint import Checkpoint

    where, target = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(1)
    new = Checkpoint(rng.normal(size=(30, 8)).astype(np.float32), [f"i{k}" for k in range(30)], np.arange(30),
                     kind="elsa")
    io_mod._exchange = lambda a, b: False   # the portable rename-aside path
    real_rename, calls = os.rename, []
    def rename(a, b):
        calls.append(1)
        if where == "between-renames" and len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_rename(a, b)
    os.rename = rename
    import elsa_index._io as files_mod
    real_write = files_mod.write_json
    def write_json(path, obj):
        if where == "in-body":
            os.kill(os.getpid(), signal.SIGKILL)
        return real_write(path, obj)
    import elsa_index.checkpoint as ck_mod
    ck_mod.write_json = write_json
    new.save(target, overwrite=True)
""")


@pytest.mark.parametrize("where", ["between-renames", "in-body"])
def test_sigkill_during_a_replace_loses_nothing(tmp_path, where):
    target = tmp_path / "ck"
    old = _ckpt(0)
    old.save(target)
    proc = subprocess.run([sys.executable, "-c", _KILLER, where, str(target)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert _siblings(target)  # the killed writer left something behind
    if where == "between-renames":
        assert not target.exists()  # the window the exchange closes on Linux; the next open repairs it
    assert Checkpoint.load(target).fingerprint == old.fingerprint
    _ckpt(1).save(target, overwrite=True)  # the next writer cleans up the leftovers
    assert Checkpoint.load(target).fingerprint == _ckpt(1).fingerprint and _siblings(target) == []


def test_leftovers_of_other_targets_and_legacy_names(tmp_path):
    target = tmp_path / "ck"
    for name in (".ck.tmp-123-0123456789abcdef", ".ck.tmp-abc_1234", ".ck.old-99-fedcba9876543210"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x").write_text("partial")
    keep = [".ckx.tmp-123-0123456789abcdef", ".ck.tmp-b.tmp-123-0123456789abcdef", "ck.tmp-abc_1234"]
    for name in keep:
        (tmp_path / name).mkdir()
    # a missing target with a complete old version in the legacy layout (.NAME.old-XXXXXXXX/old) is restored
    legacy = tmp_path / ".ck.old-k2j4h6g8"
    legacy.mkdir()
    _ckpt(0).save(legacy / "old")
    assert recover(target) and Checkpoint.load(target).fingerprint == _ckpt(0).fingerprint
    assert sorted(_siblings(target)) == sorted(keep)


def test_new_directories_get_the_usual_permissions(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    _ckpt(0).save(tmp_path / "ck")
    assert stat.S_IMODE((tmp_path / "ck").stat().st_mode) == 0o777 & ~umask


def test_a_write_error_in_the_body_is_a_clear_error(tmp_path):
    _ckpt(0).save(tmp_path / "ck")
    with pytest.raises(CheckpointError, match=r"writing .*ck failed: .*No space left.*left as it was"):
        with atomic_directory(tmp_path / "ck", overwrite=True, error=CheckpointError):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert Checkpoint.load(tmp_path / "ck").fingerprint == _ckpt(0).fingerprint and _siblings(tmp_path / "ck") == []


def test_a_target_made_meanwhile_by_another_program_is_kept(tmp_path):
    target = tmp_path / "ck"
    with pytest.raises(ElsaIndexError, match="appeared while it was being written"):
        with atomic_directory(target, kind="elsa-index-checkpoint") as tmp:
            (tmp / "manifest.json").write_text(json.dumps({"format": "elsa-index-checkpoint"}))
            _user_folder(target)
    assert (target / "notes.txt").read_text() == "my own notes\n" and _siblings(target) == []


# ------------------------------------------------------------------ two writers


def test_a_second_writer_fails_at_once_and_then_sees_the_target(tmp_path):
    target = tmp_path / "ck"
    inside, release, errors = threading.Event(), threading.Event(), []

    def first():
        try:
            with atomic_directory(target, error=CheckpointError) as tmp:
                (tmp / "manifest.json").write_text(json.dumps({"format": "elsa-index-checkpoint"}))
                inside.set()
                release.wait(10)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=first)
    t.start()
    assert inside.wait(10)
    try:
        with pytest.raises(CheckpointError, match=r"another writer is writing .*ck"):
            _ckpt(1).save(target)
        with pytest.raises(CheckpointError, match="another writer"):
            _ckpt(1).save(target, overwrite=True)
    finally:
        release.set()
        t.join()
    assert not errors
    with pytest.raises(CheckpointError, match="already exists"):  # checked again under the lock
        with atomic_directory(target, error=CheckpointError):
            pass
    assert _siblings(target) == []


def test_two_cli_builds_to_the_same_out_one_wins(tmp_path, sparse_checkpoint):
    sparse_checkpoint.save(tmp_path / "ck")
    cmd = [sys.executable, "-m", "elsa_index", "build", str(tmp_path / "ck"), "--backend", "sparse",
           "--out", str(tmp_path / "ix"), "--quiet"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(120), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close(), p.stderr.close()
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    err = next(e for rc, e in results if rc == 2)
    assert err.startswith("error: ") and ("already exists" in err or "another writer" in err), err
    assert _siblings(tmp_path / "ix") == ["ck"]


# ------------------------------------------------------------------ recommend --output


@pytest.fixture
def index_dir(tmp_path, sparse_checkpoint):
    sparse_checkpoint.save(tmp_path / "ck")
    build_index(tmp_path / "ck", "sparse", tmp_path / "ix")
    return tmp_path / "ix"


def test_recommend_output_is_kept_on_error_and_replaced_atomically(tmp_path, index_dir, capsys):
    result = tmp_path / "res.jsonl"
    result.write_text('{"items": ["old"]}\n')
    os.chmod(result, 0o640)
    assert main(["recommend", str(index_dir), "--history", "item0001", "--allow", "no-such-item",
                 "--output", str(result)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert result.read_text() == '{"items": ["old"]}\n' and _siblings(result) == ["ck", "ix"]
    assert main(["recommend", str(index_dir), "--history", "item0001", "--k", "3", "--output", str(result)]) == 0
    assert len(json.loads(result.read_text())["items"]) == 3
    assert stat.S_IMODE(result.stat().st_mode) == 0o640 and _siblings(result) == ["ck", "ix"]


def test_recommend_output_path_errors(tmp_path, index_dir, capsys):
    hist = tmp_path / "h.jsonl"
    hist.write_text('["item0001"]\n')
    cases = [
        (["--output", str(tmp_path)], "is a directory"),
        (["--output", str(tmp_path / "missing" / "r.jsonl")], "does not exist"),
        (["--input", str(hist), "--output", str(hist)], "would replace"),
        (["--output", str(index_dir / "index.json")], "would replace a file of the input"),
    ]
    for extra, message in cases:
        argv = ["recommend", str(index_dir), *extra]
        if "--input" not in extra:
            argv += ["--history", "item0001"]
        assert main(argv) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, (extra, err)
    assert hist.read_text() == '["item0001"]\n'
    assert json.loads((index_dir / "index.json").read_text())["format"] == "elsa-index-index"


def test_atomic_file_leaves_nothing_on_error(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("before")
    with pytest.raises(RuntimeError):
        with atomic_file(path) as f:
            f.write("half")
            raise RuntimeError("stop")
    with pytest.raises(ElsaIndexError, match="writing .* failed"):
        with atomic_file(path) as f:
            raise OSError(errno.ENOSPC, "No space left on device")
    assert path.read_text() == "before" and _siblings(path) == []
    with _Faults_ctx(os, "replace", 1):
        with pytest.raises(ElsaIndexError, match="could not move the new"):
            with atomic_file(path) as f:
                f.write("after")
    assert path.read_text() == "before" and _siblings(path) == []
    with atomic_file(path) as f:
        f.write("after")
    assert path.read_text() == "after" and _siblings(path) == []


class _Faults_ctx:
    """:class:`_Faults` as a context manager (without pytest's monkeypatch)."""

    def __init__(self, owner, name, n):
        self.owner, self.name, self.n = owner, name, n

    def __enter__(self):
        self.mp = pytest.MonkeyPatch()
        _Faults(self.mp, self.owner, self.name, self.n)
        return self

    def __exit__(self, *exc):
        self.mp.undo()
