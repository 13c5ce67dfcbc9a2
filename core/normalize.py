"""Public entry points: payloads in, canonical CloudEvents out.

:func:`normalize` turns one delivered payload (any envelope, any vendor) into its events;
:func:`iter_payloads` and :func:`normalize_stream` do the same for CLI input (one document or JSON
Lines), reporting each bad payload as a typed error instead of stopping; :func:`dumps` is the one
serialiser the CLI and the backends share.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import orjson

from .envelopes import Leaf, Payload, decode_base64, is_xml_document, looks_base64, unwrap
from .errors import ConfigError, InputError, MalformedPayloadError, UnrecognizedFormatError, UnsupportedEventError
from .event import PROVIDERS, CloudEvent, ordering_key
from .vendors import alibaba, aws, azure, gcp, tencent

__all__ = ["PROVIDERS", "dumps", "iter_payloads", "normalize", "normalize_stream", "ordering_key"]

Matcher = Callable[[Mapping[str, Any]], bool]
Normalizer = Callable[[dict[str, Any], str], list[CloudEvent]]

_VENDORS: dict[str, tuple[Matcher, Normalizer]] = {
    "tencent": (tencent.matches, tencent.normalize),
    "alibaba": (alibaba.matches, alibaba.normalize),
    "aws": (aws.matches, aws.normalize),
    "gcp": (gcp.matches, gcp.normalize),
    "azure": (azure.matches, azure.normalize),
}


def _check_provider(provider: str | None) -> str | None:
    if provider is None:
        return None
    name = provider.strip().lower()
    if name not in _VENDORS:
        raise ConfigError(f"unknown provider {provider!r}; expected one of {', '.join(PROVIDERS)}")
    return name


def _any_vendor(obj: Mapping[str, Any]) -> bool:
    return any(matches(obj) for matches, _ in _VENDORS.values())


def _vendor_for(leaf: Leaf) -> str:
    claims = [name for name, (matches, _) in _VENDORS.items() if matches(leaf.obj)]
    if len(claims) != 1:
        # vendor shapes are disjoint by design; if two ever claim one event, refuse to pick
        raise UnrecognizedFormatError(
            f"payload matches {' and '.join(claims) or 'no vendor'}; pass provider= to choose", where=leaf.where
        )
    return claims[0]


def normalize(payload: Payload, *, provider: str | None = None, skip_unsupported: bool = False) -> list[dict[str, Any]]:
    """One payload -> its canonical CloudEvents (a CMQ message or an Azure export may hold several).

    ``provider`` forces one vendor (envelopes are still unwrapped). ``skip_unsupported`` drops
    well-formed events this version does not map (e.g. other Azure operations mixed into a
    ``records`` export) instead of failing the whole payload. Raises only InputError subclasses —
    and ConfigError for an unknown ``provider``.
    """
    forced = _check_provider(provider)
    is_native = _VENDORS[forced][0] if forced else _any_vendor
    leaves = unwrap(payload, is_native=is_native, keep_unknown=forced is not None)
    events: list[CloudEvent] = []
    for leaf in leaves:
        vendor = forced or _vendor_for(leaf)
        try:
            events.extend(_VENDORS[vendor][1](leaf.obj, leaf.where))
        except InputError as exc:
            if skip_unsupported and isinstance(exc, UnsupportedEventError):
                continue
            if exc.provider is None:
                exc.provider = vendor
                exc.args = (str(exc),)
            raise
    return cast(list[dict[str, Any]], events)


def dumps(event: Mapping[str, Any]) -> bytes:
    """Compact JSON bytes of one event (orjson; keys in the order the event was built)."""
    return orjson.dumps(event if isinstance(event, dict) else dict(event))


# --- CLI input: one document or JSON Lines ----------------------------------------------------------


_XML_DECLARATION = re.compile(rb"<\?xml[^>]*\?>")


def _complete_document(data: bytes) -> bool:
    """Whether ``data`` alone is a whole JSON value or a well-formed XML document."""
    if data[:1] == b"<":
        return is_xml_document(data)
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def _decodes_to_document(data: bytes) -> bool:
    try:
        return _complete_document(decode_base64(data, "").strip())
    except MalformedPayloadError:
        return False


def iter_payloads(data: bytes) -> Iterator[tuple[str, bytes]]:
    """Split CLI input into payloads: ``("input", whole)`` for one multi-line document, else one per line.

    One document: valid JSON of any indentation, well-formed XML, Base64 wrapped over several lines,
    or a broken pretty-printed document (first line ``{``/``[`` and last ``}``/``]``, or first line an
    XML declaration alone) so that it fails once. Anything else is JSON Lines: each non-blank line is a
    payload, named ``line N``.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = [(number, line.strip()) for number, line in enumerate(data.split(b"\n"), start=1) if line.strip()]
    if not lines:
        return
    if len(lines) == 1:
        number, line = lines[0]
        yield f"line {number}", line
        return
    whole = data.strip()
    if _complete_document(whole):
        yield "input", whole
        return
    bodies = [line for _, line in lines]
    if all(looks_base64(body) for body in bodies) and not all(_decodes_to_document(body) for body in bodies):
        joined = b"".join(bodies)
        if _decodes_to_document(joined):
            yield "input", joined
            return
    # a line holding only an opening bracket or an XML declaration cannot be a payload of its own:
    # this is one broken document, and it should fail once rather than line by line
    if (bodies[0] in (b"{", b"[") and bodies[-1] in (b"}", b"]")) or _XML_DECLARATION.fullmatch(bodies[0]):
        yield "input", whole
        return
    for number, line in lines:
        yield f"line {number}", line


def normalize_stream(
    data: bytes, *, provider: str | None = None, skip_unsupported: bool = False
) -> Iterator[tuple[str, list[dict[str, Any]] | InputError]]:
    """Each payload of CLI input with its events, or with the typed error that stopped it.

    A bad payload never stops the stream, and its error's ``where`` starts with its line. An unknown
    ``provider`` raises ConfigError at once, before any input is read.
    """
    forced = _check_provider(provider)
    return _stream(data, forced, skip_unsupported)


def _stream(
    data: bytes, provider: str | None, skip_unsupported: bool
) -> Iterator[tuple[str, list[dict[str, Any]] | InputError]]:
    for where, payload in iter_payloads(data):
        try:
            events = normalize(payload, provider=provider, skip_unsupported=skip_unsupported)
        except InputError as exc:
            exc.located(where)
            yield where, exc
        else:
            yield where, events
