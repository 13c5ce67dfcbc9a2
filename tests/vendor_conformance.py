"""What every vendor must do, built-in or installed through the ``batchbridge.vendors`` entry point.

Subclass :class:`VendorConformance` and provide a ``case`` fixture (a :class:`VendorCase`: the
provider name and a few native payloads). Checked: the registry holds it; detection picks it and no
other; ids are deterministic (32 hex digits, equal on every run); every event is valid against the
schemas as this installation's registry makes them, with ``source`` and ``data.provider`` naming it;
its event names resolve for configs; mutated input only ever raises typed input errors.
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from batchbridge.core import names, vendors
from batchbridge.core.errors import InputError
from batchbridge.core.normalizing import normalize
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource


@dataclass(frozen=True)
class VendorCase:
    provider: str
    payloads: tuple[bytes, ...]


def _validator() -> Draft202012Validator:
    data = vendors.schema()
    registry = Registry().with_resource(data["$id"], Resource.from_contents(data))
    return Draft202012Validator(vendors.schema("cloudevent-v1.json"), registry=registry,
                                format_checker=FormatChecker())


def _valid(event: dict[str, Any], provider: str) -> None:
    errors = sorted(_validator().iter_errors(event), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
    assert event["data"]["provider"] == provider
    assert event["source"].startswith(f"batch://{provider}/")
    assert event["type"] == f"batch.{event['data']['kind']}.{event['data']['transition']}"


_REPLACEMENTS: tuple[Any, ...] = (None, 0, -1, 1.5, "", "x" * 300, [], {}, True, "\u0000")


def _mutations(obj: Any, depth: int = 0) -> Iterator[Any]:
    """Copies of ``obj`` with one key dropped or one value replaced, two levels deep."""
    if not isinstance(obj, dict) or depth > 1:
        return
    for key, value in obj.items():
        dropped = copy.deepcopy(obj)
        del dropped[key]
        yield dropped
        for other in _REPLACEMENTS:
            changed = copy.deepcopy(obj)
            changed[key] = other
            yield changed
        for inner in _mutations(value, depth + 1):
            changed = copy.deepcopy(obj)
            changed[key] = inner
            yield changed


class VendorConformance:
    def test_registered(self, case: VendorCase) -> None:
        found = vendors.registered()[case.provider]
        assert found.provider == case.provider
        assert case.provider in vendors.providers()
        assert found.match_keys and all(isinstance(k, str) for k in found.match_keys)

    def test_detected_and_deterministic(self, case: VendorCase) -> None:
        for payload in case.payloads:
            first = normalize(payload)
            assert first, payload[:80]
            again = normalize(payload)
            forced = normalize(payload, provider=case.provider)
            assert [e["id"] for e in first] == [e["id"] for e in again] == [e["id"] for e in forced]
            assert first == again == forced
            for event in first:
                assert re.fullmatch(r"[0-9a-f]{32}", event["id"])
                _valid(event, case.provider)

    def test_event_names_resolve(self, case: VendorCase) -> None:
        declared = vendors.registered()[case.provider].event_names()
        assert declared
        for name, types in declared.items():
            assert names.canonical_type_for_name(name) >= set(types), name
        produced = {e["type"] for p in case.payloads for e in normalize(p)}
        assert produced <= names.known_types()

    def test_mutated_input_raises_only_typed_errors(self, case: VendorCase) -> None:
        tried = 0
        for payload in case.payloads:
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue  # an enveloped form (XML, Base64): the envelope tests cover those
            for mutated in _mutations(obj):
                body = orjson.dumps(mutated)
                for provider in (None, case.provider):
                    tried += 1
                    try:
                        events = normalize(body, provider=provider)
                    except InputError as exc:
                        assert exc.reason and exc.code
                        continue
                    for event in events:
                        _valid(event, event["data"]["provider"])
            for cut in (1, len(payload) // 2, len(payload) - 1):
                with contextlib.suppress(InputError):  # anything else fails the test
                    normalize(payload[:cut], provider=case.provider)
        assert tried > 0
