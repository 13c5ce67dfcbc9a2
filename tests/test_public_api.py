"""The stable API: exactly ``batchbridge.core.__all__`` (and the ``batchbridge.contrib`` handlers),
every name resolving, documented and typed, imported lazily, and the examples in its docstrings
running as written."""

from __future__ import annotations

import doctest
import importlib
import inspect
import subprocess
import sys
import types
from typing import Any

import batchbridge.core as core
import pytest

CONTRIB = ("aws_lambda", "gcp_functions", "azure_functions", "fastapi")


def test_all_is_sorted_and_unique() -> None:
    assert list(core.__all__) == sorted(set(core.__all__))


def test_the_public_surface_is_exactly_all() -> None:
    assert dir(core) == list(core.__all__)
    star: dict[str, Any] = {}
    exec("from batchbridge.core import *", star)
    assert sorted(k for k in star if k != "__builtins__") == sorted(core.__all__)
    # apart from dunders and the private submodules, the package holds nothing but public names
    leaked = [k for k, v in vars(core).items()
              if not k.startswith("_") and not isinstance(v, types.ModuleType) and k not in core.__all__]
    assert leaked == []


@pytest.mark.parametrize("name", core.__all__)
def test_every_name_resolves_and_is_documented(name: str) -> None:
    value = getattr(core, name)
    assert value is not None
    assert inspect.getdoc(value), f"{name} has no docstring"
    if inspect.isfunction(value):
        sig = inspect.signature(value)
        assert sig.return_annotation is not inspect.Signature.empty, f"{name} has no return annotation"
        missing = [p.name for p in sig.parameters.values()
                   if p.annotation is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        assert missing == [], f"{name}: parameters without annotations: {missing}"


def test_errors_are_one_hierarchy() -> None:
    errors = [getattr(core, n) for n in core.__all__ if n.endswith("Error")]
    assert all(issubclass(e, core.BatchBridgeError) for e in errors)


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'canonical_event'"):
        core.canonical_event  # noqa: B018  (private: bridge.canonical_event)


def _fresh(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()


def test_import_is_cheap() -> None:
    loaded = _fresh("import sys, batchbridge.core; print(' '.join(sorted(sys.modules)))").split()
    assert [m for m in loaded if m.startswith("batchbridge")] == ["batchbridge", "batchbridge.core"]
    heavy = {"orjson", "tenacity", "defusedxml", "sqlite3", "boto3", "google", "azure", "starlette", "opentelemetry"}
    assert heavy.isdisjoint(m.split(".")[0] for m in loaded)


def test_normalize_stays_the_function_after_its_module_is_imported() -> None:
    """Importing the module that defines ``normalize`` (as the bridge does on first use) must not
    replace the public function on the package (the module is named apart from it)."""
    out = _fresh(
        "import batchbridge.core as bb, batchbridge.core.normalizing, batchbridge.core.bridge\n"
        "from batchbridge.core import normalize\n"
        "print(callable(bb.normalize), normalize is bb.normalize, bb.normalize.__module__)")
    assert out == "True True batchbridge.core.normalizing"


@pytest.mark.parametrize("module", ["batchbridge.core", "batchbridge.core.logs", "batchbridge.core.tracing"])
def test_docstring_examples_run(module: str) -> None:
    if module.endswith("tracing"):
        pytest.importorskip("opentelemetry.sdk")
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("name", CONTRIB)
def test_contrib_handlers_are_public_typed_and_documented(name: str) -> None:
    module = importlib.import_module(f"batchbridge.contrib.{name}")
    assert inspect.getdoc(module)
    assert module.__all__
    for public in module.__all__:
        value = getattr(module, public)
        assert inspect.getdoc(value), f"{name}.{public} has no docstring"
        if inspect.isfunction(value):
            assert inspect.signature(value).return_annotation is not inspect.Signature.empty


def test_contrib_imports_no_platform_sdk() -> None:
    code = ("import sys\n" + "".join(f"import batchbridge.contrib.{n}\n" for n in CONTRIB)
            + "print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))")
    loaded = set(_fresh(code).split())
    assert {"flask", "functions_framework", "azure", "fastapi", "boto3", "google"}.isdisjoint(loaded)
