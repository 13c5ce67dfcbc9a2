"""The build's one addition to pyproject.toml: the normalising path compiled with mypyc.

:data:`batchbridge.core.speedups.MODULES` are compiled when mypy (a build requirement) and a C
compiler are there; when either is missing, or ``BATCHBRIDGE_COMPILE=0``, the package installs as
pure Python -- the same source, slower (``core/speedups.py`` says why and how the choice is made at
run time). A build that fails part-way leaves nothing compiled behind: the compiled modules call one
another directly, so a partial set could not run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _speedups() -> Any:
    spec = importlib.util.spec_from_file_location("_batchbridge_speedups", ROOT / "core" / "speedups.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SPEEDUPS = _speedups()


def _say(message: str) -> None:
    print(f"batchbridge setup: {message}", file=sys.stderr)


def _extensions() -> list[Any]:
    if os.environ.get("BATCHBRIDGE_COMPILE", "1").strip().lower() in ("0", "false", "no", "off"):
        _say("BATCHBRIDGE_COMPILE=0: installing the pure-Python normalising path")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        _say("mypyc is not installed: installing the pure-Python normalising path")
        return []
    # mypy names a module after the directories holding __init__.py files: give it the installed
    # layout (batchbridge/core/...), which this checkout only has through package-dir
    tree = ROOT / "build" / "mypyc-src"
    shutil.rmtree(tree, ignore_errors=True)
    package = tree / "batchbridge"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for part in ("core", "adapters", "contrib"):
        (package / part).symlink_to(ROOT / part, target_is_directory=True)
    config = tree / "mypy.ini"
    # the type check itself is CI's (.ci/typecheck, --strict); here only what compiling needs
    config.write_text("[mypy]\nignore_missing_imports = True\n")
    paths = [str(SPEEDUPS.source(m, package / "core")) for m in SPEEDUPS.MODULES]
    try:
        return list(mypycify(["--config-file", str(config), *paths], opt_level="3",
                             group_name=SPEEDUPS.GROUP, target_dir=str(ROOT / "build" / "mypyc")))
    except BaseException as exc:  # mypyc exits through SystemExit on a type error
        _say(f"mypyc could not compile the normalising path ({type(exc).__name__}: {exc}): pure Python")
        return []


class BuildExt(build_ext):
    """All or nothing: a failed extension removes the others; a built set gets its stamp."""

    def _stamp(self) -> Path:
        return Path(self.get_ext_fullpath(SPEEDUPS.GROUP + "__mypyc")).parent / SPEEDUPS.STAMP

    def run(self) -> None:
        if not self.extensions:
            return
        try:
            super().run()
        except Exception as exc:  # a missing compiler or header surfaces as any of several errors
            for ext in self.extensions:
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            self._stamp().unlink(missing_ok=True)
            _say(f"compiling the normalising path failed ({type(exc).__name__}: {exc}): installing it as pure Python")
            return
        self._stamp().write_text(SPEEDUPS.stamp_text(ROOT / "core"))

    def get_outputs(self) -> list[str]:
        outputs: list[str] = super().get_outputs()
        if self.extensions and self._stamp().exists():
            outputs.append(str(self._stamp()))
        return outputs


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
