"""The compiled normalising path: which modules are built with mypyc, and whether the built ones are used.

Turning a payload into events is pure Python through a dozen small reads per event; compiled by
mypyc (the compiler mypy ships, which black and mypy itself are built with) the same source runs in
about two thirds of the CPU time. ``setup.py`` compiles :data:`MODULES` when a C compiler is
there and installs the pure-Python package when not: both are the same source, and nothing
but speed differs (a test compares their output byte for byte).

A compiled module is used only while its source is the one it was compiled from. In a checkout
installed editable (``pip install -e .``) the built extensions sit beside the sources they were
built from; after an edit (or a ``git pull``) they no longer match, and the stale build is skipped
as a whole -- every one of :data:`MODULES` loads from source, as the compiled modules call one
another directly and cannot be mixed with source ones -- until it is rebuilt
(``python setup.py build_ext --inplace``, or reinstalling; ``tests/run.sh`` does it).
``BATCHBRIDGE_PURE_PYTHON=1`` skips the compiled modules whatever their state.

This module imports nothing of batchbridge: ``setup.py`` reads :data:`MODULES` from it before the
package exists.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

#: the modules compiled, relative to ``batchbridge.core``: every step from a parsed payload to its
#: events (detection, the public ``normalize``, stays in Python: compiled functions lose their docstrings)
MODULES = (
    "event",
    "sequence",
    "envelopes",
    "vendors.tencent",
    "vendors.alibaba",
    "vendors.aws",
    "vendors.gcp",
    "vendors.azure",
)
#: mypyc's shared library for the group (``<GROUP>__mypyc``), next to this file
GROUP = "batchbridge.core.speedups_lib"
#: the digests of the sources compiled, written beside the extensions by ``setup.py``
STAMP = "speedups.sha256"
#: set to 1 to run the pure-Python modules even where compiled ones are installed
PURE_ENV = "BATCHBRIDGE_PURE_PYTHON"

_HERE = Path(__file__).resolve().parent
_PACKAGE = "batchbridge.core"


def can_compile() -> bool:
    """Whether this interpreter has what compiling the extensions needs: a C compiler and its headers."""
    import shutil
    import sysconfig

    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) is not None and Path(sysconfig.get_paths()["include"], "Python.h").exists()


def source(module: str, core: Path = _HERE) -> Path:
    """The ``.py`` file of one of :data:`MODULES` in the package directory ``core``."""
    return core.joinpath(*module.split(".")).with_suffix(".py")


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stamp_text(core: Path) -> str:
    """The stamp ``setup.py`` writes for the sources in ``core``: ``<sha256>  <module>`` per module."""
    return "".join(f"{source_digest(source(module, core))}  {module}\n" for module in MODULES)


def _compiled_files() -> list[Path]:
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    found = []
    for module in MODULES:
        base = source(module).with_suffix("")
        found += [path for path in (base.with_name(base.name + suffix) for suffix in suffixes) if path.exists()]
    return found


def _pure_asked() -> bool:
    return os.environ.get(PURE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _stale() -> str | None:
    """None when the installed compiled modules match their sources; else why they do not."""
    try:
        lines = (_HERE / STAMP).read_text().splitlines()
    except OSError:
        return f"the compiled modules have no {STAMP} record of their sources"
    recorded = {}
    for line in lines:
        digest, _, module = line.partition("  ")
        recorded[module.strip()] = digest
    for module in MODULES:
        path = source(module)
        if module not in recorded:
            return f"{module} is not in {STAMP}"
        if path.exists() and source_digest(path) != recorded[module]:
            return (f"{path.relative_to(_HERE.parent)} changed since it was compiled "
                    "(rebuild: python setup.py build_ext --inplace)")
    return None


class _FromSource:
    """A meta-path finder that loads :data:`MODULES` from their ``.py`` files, past the extensions."""

    def __init__(self) -> None:
        self.names = {f"{_PACKAGE}.{module}": source(module) for module in MODULES}

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        found = self.names.get(name)
        if found is None:
            return None
        return importlib.util.spec_from_file_location(name, found)


#: why the compiled modules are not in use, or None when they are (set by :func:`choose`)
reason: str | None = "not chosen yet"
#: whether compiled modules are installed here, used or not (set by :func:`choose`)
installed = False
_finder: _FromSource | None = None


def choose() -> _FromSource | None:
    """Decide, once and before any of :data:`MODULES` is imported, whether the compiled ones load; the
    finder that loads them from source instead (installed first on ``sys.meta_path``), if any."""
    global reason, installed, _finder
    if reason == "not chosen yet":
        installed = bool(_compiled_files())
        if _pure_asked():
            reason = f"{PURE_ENV} is set"
        elif not installed:
            reason = "not compiled (installed without a C compiler, or from source with BATCHBRIDGE_COMPILE=0)"
        else:
            reason = _stale()
        if reason is not None and installed:
            _finder = _FromSource()
            sys.meta_path.insert(0, _finder)
    return _finder


def needs_rebuild() -> bool:
    """Whether compiled modules are installed here but no longer match their sources (an editable
    checkout after an edit): what ``tests/run.sh`` rebuilds before testing."""
    choose()
    return installed and not _pure_asked() and reason is not None


def describe() -> str:
    """One line for ``batchbridge --version``: which build of the normalising path runs."""
    choose()
    if reason is None:
        return f"normalising path: compiled with mypyc ({len(MODULES)} modules)"
    return f"normalising path: pure Python ({reason})"
