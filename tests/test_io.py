"""Tests for elsa_index._io: what load_array says about files that are not plain .npy arrays."""

from __future__ import annotations

import numpy as np
import pytest

from elsa_index._io import load_array, npy_header
from elsa_index.errors import CheckpointError


def test_plain_array_loads_and_memory_maps(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(10, dtype=np.int64))
    assert npy_header(tmp_path / "a.npy", CheckpointError) == ((10,), np.dtype(np.int64))
    np.testing.assert_array_equal(load_array(tmp_path / "a.npy", CheckpointError, mmap=True), np.arange(10))


@pytest.mark.parametrize("damage, message", [
    ("text", "is not a .npy file"),
    ("pickled", "holds pickled Python objects"),
    ("truncated", "truncated or corrupt"),
    ("padded", "truncated or corrupt"),
    ("header", "malformed .npy header"),
])
def test_each_kind_of_bad_file_is_named(tmp_path, damage, message):
    p = tmp_path / "a.npy"
    np.save(p, np.arange(10, dtype=np.float32))
    raw = p.read_bytes()
    if damage == "text":
        p.write_text("not an array")
    elif damage == "pickled":
        np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif damage == "truncated":
        p.write_bytes(raw[:-4])
    elif damage == "padded":
        p.write_bytes(raw + b"\0" * 4)
    else:
        p.write_bytes(raw.replace(b"'shape': (10,)", b"'shape': (1x,)"))
    with pytest.raises(CheckpointError, match=message):
        load_array(p, CheckpointError)
