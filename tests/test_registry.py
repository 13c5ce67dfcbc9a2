"""The URI registry: schemes, typed options, entry points, redaction, the options table."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from batchbridge.core import registry
from batchbridge.core.backends import open_publisher
from batchbridge.core.errors import ConfigError, MissingDependencyError, UnknownSchemeError
from batchbridge.core.registry import Option, parse_uri
from batchbridge.core.secrets import redact, redact_uri


@pytest.fixture(autouse=True)
def _restore_registry() -> Iterator[None]:
    saved = dict(registry._registered), dict(registry._loaded), registry._entry_points_read
    yield
    registry._registered.clear()
    registry._registered.update(saved[0])
    registry._loaded.clear()
    registry._loaded.update(saved[1])
    registry._entry_points_read = saved[2]


def test_unknown_scheme_names_the_known_ones() -> None:
    with pytest.raises(UnknownSchemeError) as info:
        parse_uri("kafka://topic")
    assert "'kafka'" in info.value.reason and "sqs" in info.value.reason and "memory" in info.value.reason


def test_unknown_option_names_it_and_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        parse_uri("memory://q?dedup_windw=5")
    assert "'dedup_windw'" in info.value.reason and "dedup_window" in info.value.reason


@pytest.mark.parametrize(("uri", "needle"), [
    ("memory://q?max_bytes=lots", "must be int"),
    ("memory://q?create=perhaps", "must be bool"),
    ("memory://q?mode=xml", "must be one of structured, binary"),
])
def test_options_are_typed(uri: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_uri(uri)


def test_options_are_converted() -> None:
    _, uri = parse_uri("memory://q?max_bytes=2048&create=yes&mode=binary&concurrency=2")
    assert uri.options["max_bytes"] == 2048 and uri.options["create"] is True
    assert uri.options["mode"] == "binary" and uri.options["concurrency"] == 2
    assert uri.options["dedup_window"] == 0.0  # defaults filled in


def test_uri_without_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="needs a scheme"):
        open_publisher("/tmp/events.jsonl")


def test_secrets_never_in_repr_str_or_errors() -> None:
    raw = "memory://user:hunter2pass@q?api_key=AKIAXYZSECRET&max_bytes=oops"
    with pytest.raises(ConfigError) as info:
        parse_uri(raw)
    for text in (str(info.value), repr(info.value), str(info.value.to_dict())):
        assert "hunter2pass" not in text and "AKIAXYZSECRET" not in text
    assert redact_uri(raw) == "memory://user:***@q?api_key=***&max_bytes=oops"


def test_parsed_uri_repr_is_redacted() -> None:
    class Secretive:
        schemes = ("secretive",)
        extra = ""
        forms = ("secretive://NAME",)
        options = (Option("token", str, None, "a token", secret=True),)

        def open_publisher(self, uri: object) -> None:
            raise NotImplementedError

        def open_subscriber(self, uri: object) -> None:
            raise NotImplementedError

    registry.register("secretive", Secretive(), replace=True)
    _, uri = parse_uri("secretive://x?token=tok-abcdef123")
    assert "tok-abcdef123" not in repr(uri) and "tok-abcdef123" not in str(uri)
    # remembered: the bare value is scrubbed from any text, e.g. an SDK's exception message
    assert redact("SDK said: bad token tok-abcdef123") == "SDK said: bad token ***"


def test_connection_strings_are_redacted() -> None:
    cs = "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=abc/def+ghi="
    assert "abc/def+ghi=" not in redact(f"failed: {cs}")
    assert "SharedAccessKey=***" in redact(cs)


def test_register_refuses_to_shadow_a_builtin_silently() -> None:
    with pytest.raises(ConfigError, match="already registered"):
        registry.register("sqs", "somewhere:ELSE")


def test_third_party_scheme_through_an_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "bb_thirdparty.py"
    pkg.write_text(
        "from batchbridge.adapters.memory import _MemoryBackend\n"
        "class Custom(_MemoryBackend):\n    schemes = ('custom',)\n    forms = ('custom://NAME',)\n"
        "BACKEND = Custom()\n"
    )
    dist = tmp_path / "bb_thirdparty-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bb-thirdparty\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[batchbridge.backends]\ncustom = bb_thirdparty:BACKEND\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_entry_points_read", False)
    assert "custom" in registry.schemes()
    with open_publisher("custom://q1") as pub:
        assert pub.publish_one({"specversion": "1.0", "id": "a" * 32, "source": "s", "type": "t"}).ok
    monkeypatch.delitem(sys.modules, "bb_thirdparty")


def test_missing_sdk_is_a_typed_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._BUILTIN, "nosdk", "batchbridge.adapters.not_there:BACKEND")
    monkeypatch.delitem(registry._loaded, "nosdk", raising=False)
    with pytest.raises(MissingDependencyError, match="could not be imported"):
        parse_uri("nosdk://x")


def test_options_table_lists_every_scheme() -> None:
    table = registry.options_table()
    for scheme in ("memory", "file", "sqs", "sns", "pubsub", "servicebus"):
        assert f"`{scheme}`" in table, scheme
    assert "`dedup_window`" in table and "`fsync`" in table and "`mode`" in table


def _readme_section(name: str) -> str:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    assert begin in readme and end in readme
    return readme.split(begin, 1)[1].split(end, 1)[0].strip()


def test_readme_options_table_is_current() -> None:
    assert _readme_section("options-table") == registry.options_table().strip(), "run docs/update_readme.py"


def test_readme_canonical_example_is_what_normalize_prints() -> None:
    sys.path.insert(0, str(Path(__file__).parent.parent / "docs"))
    try:
        import update_readme
    finally:
        sys.path.pop(0)
    assert _readme_section("canonical-example") == update_readme.canonical_example().strip()


def test_redacted_uri_keeps_an_empty_authority() -> None:
    assert redact_uri("servicebus:///q?sessions=true") == "servicebus:///q?sessions=true"
    assert redact_uri("file:///var/x.jsonl") == "file:///var/x.jsonl"
