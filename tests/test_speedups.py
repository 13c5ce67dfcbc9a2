"""The normalising path compiled with mypyc (``setup.py``, ``core/speedups.py``): used where it was
built from the sources beside it, skipped as a whole when they changed, never half-built.

That the compiled and the pure-Python path write the same bytes is ``test_normalize_golden.py``'s
(both builds against the same recorded hashes).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import batchbridge.core.speedups as speedups
import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "core"
HOT = [f"batchbridge.core.{m}" for m in speedups.MODULES]
SHOW = ("import batchbridge.core.speedups as s, importlib\n"
        f"files = [importlib.import_module(m).__file__ for m in {HOT!r}]\n"
        "print(s.describe()); print('\\n'.join(files))")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (speedups.PURE_ENV, "BATCHBRIDGE_COMPILE")}
    return {**env, **extra}


def _show(pythonpath: Path | None = None, **extra: str) -> tuple[str, list[str]]:
    env = _env(**extra)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    done = subprocess.run([sys.executable, "-c", SHOW], capture_output=True, text=True, env=env, timeout=60,
                          check=True)
    first, *files = done.stdout.splitlines()
    return first, files


def test_the_suite_runs_the_compiled_path_where_it_can_be_built() -> None:
    """Where a C compiler is there (CI's machines), the tests exercise what ``pip install .`` ships."""
    if not speedups.can_compile() or os.environ.get("BATCHBRIDGE_COMPILE") == "0" or os.environ.get(speedups.PURE_ENV):
        pytest.skip("no C compiler here, or the pure build was asked for: the pure path is what runs")
    line, files = _show()
    assert line == f"normalising path: compiled with mypyc ({len(HOT)} modules)"
    assert all(f.endswith(tuple(sysconfig.get_config_var("EXT_SUFFIX").split())) for f in files), files


def test_the_pure_path_is_one_variable_away() -> None:
    line, files = _show(**{speedups.PURE_ENV: "1"})
    assert line == f"normalising path: pure Python ({speedups.PURE_ENV} is set)"
    assert all(f.endswith(".py") for f in files), files


def _copy_of_the_package(tmp_path: Path) -> Path:
    package = tmp_path / "batchbridge"
    package.mkdir()
    (package / "__init__.py").write_text("")
    shutil.copytree(CORE, package / "core", ignore=shutil.ignore_patterns("__pycache__"))
    return package / "core"


@pytest.mark.skipif(not list(CORE.glob("speedups_lib__mypyc*")), reason="this checkout is not compiled")
def test_a_source_changed_since_compiling_loads_every_compiled_module_from_source(tmp_path: Path) -> None:
    core = _copy_of_the_package(tmp_path)
    line, files = _show(tmp_path)
    assert line.startswith("normalising path: compiled") and not any(f.endswith(".py") for f in files)
    # the edit a developer makes: the compiled event.py would run the old code -- so none of them runs
    with open(core / "vendors" / "gcp.py", "a") as fh:
        fh.write("\nEDITED = True\n")
    line, files = _show(tmp_path)
    assert line == ("normalising path: pure Python (core/vendors/gcp.py changed since it was compiled "
                    "(rebuild: python setup.py build_ext --inplace))")
    assert [Path(f).name for f in files] == [m.rsplit(".", 1)[-1] + ".py" for m in speedups.MODULES]
    assert all(Path(f).is_relative_to(core) for f in files), files
    # and it still normalises, from the edited source
    done = subprocess.run([sys.executable, "-m", "batchbridge.core.cli", "normalize", "samples"], env=_env(
        PYTHONPATH=str(tmp_path)), capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.count("\n") >= 20, done.stderr[-2000:]
    # a lost record of what was compiled is not trusted either
    (core / "vendors" / "gcp.py").write_bytes((CORE / "vendors" / "gcp.py").read_bytes())
    (core / speedups.STAMP).unlink()
    line, files = _show(tmp_path)
    assert line == ("normalising path: pure Python "
                    f"(the compiled modules have no {speedups.STAMP} record of their sources)")
    assert all(f.endswith(".py") for f in files)


def _copy_of_the_checkout(tmp_path: Path) -> Path:
    tree = tmp_path / "src"
    tree.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, tree / name)
    for part in ("core", "adapters", "contrib"):
        shutil.copytree(ROOT / part, tree / part,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", speedups.STAMP))
    return tree


def _build_in_place(tree: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree, env=_env(**extra),
                          capture_output=True, text=True, timeout=600, check=False)


def test_a_build_whose_compiler_fails_leaves_the_pure_package_and_says_so(tmp_path: Path) -> None:
    """All or nothing: one extension missing would leave the others unable to import."""
    tree = _copy_of_the_checkout(tmp_path)
    done = _build_in_place(tree, CC="false", LDSHARED="false")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "compiling the normalising path failed" in done.stderr and "installing it as pure Python" in done.stderr
    assert list(tree.rglob("*.so")) == [] and not (tree / "core" / speedups.STAMP).exists()


def test_compiling_can_be_turned_off(tmp_path: Path) -> None:
    tree = _copy_of_the_checkout(tmp_path)
    done = _build_in_place(tree, BATCHBRIDGE_COMPILE="0")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "BATCHBRIDGE_COMPILE=0: installing the pure-Python normalising path" in done.stderr
    assert list(tree.rglob("*.so")) == []
