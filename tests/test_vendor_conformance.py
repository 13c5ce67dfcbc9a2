"""The vendor conformance suite (tests/vendor_conformance.py) on the five built-in vendors and on a
sixth, ``toy``, installed the way a third party's package is: a dist-info with an entry point in the
``batchbridge.vendors`` group, in a site directory put on ``sys.path`` -- found by importlib.metadata,
never imported by path."""

from __future__ import annotations

import shutil
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from batchbridge.core import config_from_dict, names, vendors
from batchbridge.core.errors import ConfigError
from batchbridge.core.normalizing import normalize
from vendor_conformance import VendorCase, VendorConformance
from vendor_payloads import corpus

HERE = Path(__file__).parent
TOY_PAYLOADS = (
    b'{"toy_event": "JobStarted", "job": "j-1", "at": "2024-05-01T10:00:00Z", "region": "lab-1"}',
    b'{"toy_event": "JobDone", "job": "j-1", "at": "2024-05-01T10:05:00Z", "region": "lab-1", "exit_code": 0}',
    b'{"toy_event": "JobBroke", "job": "j-2", "at": "2024-05-01T10:06:00Z", "exit_code": 3}',
)


def _by_provider() -> dict[str, tuple[bytes, ...]]:
    out: dict[str, list[bytes]] = defaultdict(list)
    for _, payload in corpus():
        out[normalize(payload)[0]["data"]["provider"]].append(payload)
    return {k: tuple(v[:6]) for k, v in out.items()}


BUILT_IN = _by_provider()


def install(site: Path, dist: str, module: Path, entry: str) -> None:
    """A minimal installed distribution: the module, and a dist-info naming its entry point."""
    shutil.copy(module, site / module.name)
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[batchbridge.vendors]\n{entry}\n")


@pytest.fixture
def toy_site(tmp_path: Path) -> Iterator[Path]:
    site = tmp_path / "site-packages"
    site.mkdir()
    install(site, "batchbridge_toy", HERE / "toy_vendor" / "toyvendor.py", "toy = toyvendor:VENDOR")
    sys.path.insert(0, str(site))
    vendors.reload()
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("toyvendor", None)
        vendors.reload()


class TestBuiltIn(VendorConformance):
    @pytest.fixture(params=sorted(BUILT_IN))
    def case(self, request: pytest.FixtureRequest) -> VendorCase:
        return VendorCase(request.param, BUILT_IN[request.param])


class TestInstalledToy(VendorConformance):
    @pytest.fixture
    def case(self, toy_site: Path) -> VendorCase:
        return VendorCase("toy", TOY_PAYLOADS)


def test_built_ins_come_through_the_entry_point_group() -> None:
    from importlib import metadata

    declared = {ep.name: ep.value for ep in metadata.entry_points(group=vendors.ENTRY_POINT_GROUP)}
    assert declared == {p: f"batchbridge.core.vendors.{p}:VENDOR" for p in ("tencent", "alibaba", "aws", "gcp",
                                                                               "azure")}
    assert vendors.providers() == ("tencent", "alibaba", "aws", "gcp", "azure")


def test_an_installed_vendor_reaches_config_names_and_cli_choices(toy_site: Path) -> None:
    assert vendors.providers()[-1] == "toy"
    assert names.canonical_type_for_name("JobBroke") == {"batch.job.failed"}
    config = config_from_dict({"outbox": {"path": str(toy_site / "o.db")},
                               "routes": [{"to": "memory://t", "provider": "toy", "match": ["JobDone"]}]})
    assert config.routes[0].providers == frozenset({"toy"})
    from batchbridge.core.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["normalize", "--provider", "nope", "-"])
    assert build_parser().parse_args(["normalize", "--provider", "toy", "-"]).provider == "toy"


def test_without_the_vendor_its_payloads_are_refused_with_a_typed_error() -> None:
    from batchbridge.core.errors import UnrecognizedFormatError

    with pytest.raises(UnrecognizedFormatError):
        normalize(TOY_PAYLOADS[0])
    with pytest.raises(ConfigError, match="unknown provider 'toy'"):
        normalize(TOY_PAYLOADS[0], provider="toy")


def test_a_broken_entry_point_is_named(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    bad = tmp_path / "brokenvendor.py"
    bad.write_text("raise ImportError('no such SDK')\n")
    install(site, "batchbridge_broken", bad, "broken = brokenvendor:VENDOR")
    sys.path.insert(0, str(site))
    vendors.reload()
    try:
        with pytest.raises(ConfigError, match="cannot load vendor brokenvendor:VENDOR") as info:
            vendors.registered()
        assert info.value.where == "entry point batchbridge.vendors:broken"
    finally:
        sys.path.remove(str(site))
        vendors.reload()
    assert orjson.loads(TOY_PAYLOADS[0])  # the registry is whole again
    assert "broken" not in vendors.providers()
