"""Public entry points: payloads in, canonical CloudEvents out.

:func:`normalize` turns one delivered payload (any envelope, any vendor) into its events;
:func:`iter_payloads` and :func:`normalize_stream` do the same for CLI input (one document or JSON
Lines), reporting each bad payload as a typed error instead of stopping, and :func:`normalize_lines`
for JSON Lines read a line at a time; :func:`dumps` is the one serialiser the CLI and the backends share.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import orjson

from . import envelopes
from .envelopes import (
    Leaf,
    Payload,
    decode_base64,
    is_xml_document,
    load_json,
    looks_base64,
    unwrap,
    unwrap_object,
)
from .errors import ConfigError, InputError, MalformedPayloadError, UnrecognizedFormatError, UnsupportedEventError
from .event import ordering_key
from .vendors import Vendor, on_reload, registered

__all__ = ["dumps", "iter_payloads", "normalize", "normalize_lines", "normalize_stream", "ordering_key"]

Matcher = Callable[[Mapping[str, Any]], bool]


Normalizer = Callable[[dict[str, Any], str], list[Any]]

#: the registered vendors' pre-tests and tests in detection order, and their normalisers by name:
#: read from the registry on first use (plain globals: detection runs for every JSON object)
_MATCHERS: tuple[tuple[str, tuple[str, ...], Matcher], ...] = ()
_NORMALIZERS: dict[str, Normalizer] = {}


def _load() -> None:
    global _MATCHERS, _NORMALIZERS
    found = registered()
    _NORMALIZERS = {name: v.normalize for name, v in found.items()}
    _MATCHERS = tuple((name, v.match_keys, v.matches) for name, v in found.items())


def _forget() -> None:
    global _MATCHERS, _NORMALIZERS
    _MATCHERS, _NORMALIZERS = (), {}


on_reload(_forget)


def check_provider(provider: str | None) -> Vendor | None:
    if provider is None:
        return None
    name = provider.strip().lower()
    found = registered().get(name)
    if found is None:
        raise ConfigError(f"unknown provider {provider!r}; expected one of {', '.join(registered())}")
    return found


def _claims(obj: Mapping[str, Any]) -> list[str]:
    """Every vendor that claims ``obj`` (empty, hence false, when none does): one test serves both
    "is this a native event?" during unwrapping and "whose?" afterwards."""
    claims = []
    if not _MATCHERS:
        _load()
    for name, keys, matches in _MATCHERS:
        # a vendor's test runs only when a key it cannot do without is there: every object meets
        # five tests, and usually four of them are over with one dictionary lookup
        for key in keys:
            if key in obj:
                if matches(obj):
                    claims.append(name)
                break
    return claims


def _vendor_for(leaf: Leaf) -> str:
    claims: list[str] = leaf.claim
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
    return _normalize(payload, check_provider(provider), skip_unsupported)


def _normalize(payload: Payload, forced: Vendor | None, skip_unsupported: bool) -> list[dict[str, Any]]:
    try:
        return _normalize_as(payload, forced, skip_unsupported)
    except InputError as exc:
        if forced is not None:
            _blame_forced(exc, payload, forced.provider)
        raise


def _blame_forced(exc: InputError, payload: Payload, forced: str) -> None:
    """A payload refused under a forced provider that detection gives to another vendor: say so, rather
    than leave a reason ("missing detail-type") that sends the user looking at the payload."""
    try:
        events = _normalize_as(payload, None, True)
    except InputError:
        return
    found = sorted({str((e.get("data") or {}).get("provider")) for e in events} - {forced})
    if found:
        exc.reason = (f"{exc.reason} -- detection says this payload is from {' and '.join(found)}, but the "
                      f"provider was forced to {forced}: drop --provider (provider=) or pass {found[0]}")
        exc.args = (str(exc),)


def _normalize_as(payload: Payload, forced: Vendor | None, skip_unsupported: bool) -> list[dict[str, Any]]:
    if not _NORMALIZERS:
        _load()
    if (forced is None and payload.__class__ is bytes and payload[:1] == b"{"
            and len(payload) <= envelopes.MAX_PAYLOAD_BYTES):  # read here: a test may lower it
        return _detected(load_json(payload.strip(), "$"), skip_unsupported)
    leaves = unwrap(payload, is_native=forced.matches if forced else _claims, keep_unknown=forced is not None)
    return _from_leaves(leaves, forced, skip_unsupported)


def _detected(obj: Any, skip_unsupported: bool) -> list[dict[str, Any]]:
    """The events of a top-level JSON value (parsed by ``load_json``), its vendor detected. The common
    case -- a JSON object one vendor claims as its own event -- goes straight to that vendor, without
    the leaves of the general path (unwrap's own fast path, inlined)."""
    claims = _claims(obj)
    if len(claims) == 1:
        try:
            events: list[Any] = _NORMALIZERS[claims[0]](obj, "$")
        except InputError as exc:
            return _refused(exc, claims[0], skip_unsupported)
        return events
    return _from_leaves(unwrap_object(obj, claims, is_native=_claims), None, skip_unsupported)


def _from_leaves(leaves: list[Leaf], forced: Vendor | None, skip_unsupported: bool) -> list[dict[str, Any]]:
    events: list[Any] = []
    for leaf in leaves:
        vendor = forced.provider if forced else _vendor_for(leaf)
        to_events = forced.normalize if forced else _NORMALIZERS[vendor]
        try:
            events.extend(to_events(leaf.obj, leaf.where))
        except InputError as exc:
            _refused(exc, vendor, skip_unsupported)
    return events


def _refused(exc: InputError, vendor: str, skip_unsupported: bool) -> list[Any]:
    """Nothing, for an unsupported event that may be skipped; else ``exc`` raised, naming ``vendor``."""
    if skip_unsupported and isinstance(exc, UnsupportedEventError):
        return []
    if exc.provider is None:
        exc.provider = vendor
        exc.args = (str(exc),)
    raise exc


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


def _is_json(data: bytes) -> bool:
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def _nonblank_lines(data: bytes) -> Iterator[tuple[str, bytes]]:
    """``("line N", stripped line)`` for each non-blank line, numbered as ``data.split(b"\n")`` would."""
    size = len(data)
    find = data.find
    number = 0
    pos = 0
    while pos <= size:
        end = find(b"\n", pos)
        if end < 0:
            end = size
        number += 1
        line = data[pos:end].strip()
        if line:
            yield f"line {number}", line
        pos = end + 1


def _last_nonblank_line(data: bytes) -> bytes:
    end = len(data)
    while end > 0:
        start = data.rfind(b"\n", 0, end) + 1
        line = data[start:end].strip()
        if line:
            return line
        end = start - 1
    return b""


def iter_payloads(data: bytes) -> Iterator[tuple[str, bytes]]:
    """Split CLI input into payloads: ``("input", whole)`` for one multi-line document, else one per line.

    One document: valid JSON of any indentation, well-formed XML, Base64 wrapped over several lines,
    or a broken pretty-printed document (first line ``{``/``[`` and last ``}``/``]``, or first line an
    XML declaration alone) so that it fails once. Anything else is JSON Lines: each non-blank line is a
    payload, named ``line N``.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    # One lazy pass: the decisions below need only the first two non-blank lines (and the last one),
    # so JSON Lines input of any length is never split into a list or copied whole.
    lines = _nonblank_lines(data)
    first = next(lines, None)
    if first is None:
        return
    second = next(lines, None)
    if second is None:
        yield first
        return
    head = first[1]
    # A first line that is a JSON value by itself cannot begin one document spanning several lines
    # (the parser would stop at its end and meet the next line), which spares parsing the whole input.
    if head[:1] == b"<" or not _is_json(head):
        whole = data.strip()
        if _complete_document(whole):
            yield "input", whole
            return
    if looks_base64(head):
        bodies = [line for _, line in _nonblank_lines(data)]
        if all(looks_base64(body) for body in bodies) and not all(_decodes_to_document(body) for body in bodies):
            joined = b"".join(bodies)
            if _decodes_to_document(joined):
                yield "input", joined
                return
    # a line holding only an opening bracket or an XML declaration cannot be a payload of its own:
    # this is one broken document, and it should fail once rather than line by line
    if (head in (b"{", b"[") and _last_nonblank_line(data) in (b"}", b"]")) or _XML_DECLARATION.fullmatch(head):
        yield "input", data.strip()
        return
    yield first
    yield second
    yield from lines


def normalize_stream(
    data: bytes, *, provider: str | None = None, skip_unsupported: bool = False
) -> Iterator[tuple[str, list[dict[str, Any]] | InputError]]:
    """Each payload of CLI input with its events, or with the typed error that stopped it.

    A bad payload never stops the stream, and its error's ``where`` starts with its line. An unknown
    ``provider`` raises ConfigError at once, before any input is read.
    """
    forced = check_provider(provider)
    return _stream(iter_payloads(data), forced, skip_unsupported)


def normalize_lines(
    lines: Iterable[bytes], *, provider: str | None = None, skip_unsupported: bool = False
) -> Iterator[tuple[str, list[dict[str, Any]] | InputError]]:
    """:func:`normalize_stream` for JSON Lines that arrive a line at a time (a file opened ``"rb"``, a pipe).

    Each item of ``lines`` is one line (a trailing newline is fine); each non-blank one is a payload
    named ``line N``. Lines are read only as the result is iterated and none is kept, so memory stays
    flat however long the stream. Unlike :func:`normalize_stream`, the input is never read as one
    multi-line document: a pretty-printed document fails line by line.
    """
    forced = check_provider(provider)
    return ((f"line {number}", outcome) for number, outcome in line_outcomes(lines, forced, skip_unsupported))


def line_outcomes(
    lines: Iterable[bytes], forced: Vendor | None = None, skip_unsupported: bool = False
) -> Iterator[tuple[int, list[dict[str, Any]] | InputError]]:
    """:func:`normalize_lines` with each payload named by its line number alone (``forced`` a vendor
    from the registry, or None to detect): the CLI's loop, which formats ``line N`` only for an error.

    One generator from the line to its events: a stream of a million lines pays for each layer of
    generators, and for each name it formats, a million times over."""
    if not _NORMALIZERS:
        _load()
    limit = envelopes.MAX_PAYLOAD_BYTES
    number = 0
    for line in lines:
        number += 1
        if line.__class__ is not bytes and isinstance(line, (bytearray, memoryview)):
            line = bytes(line)  # the compiled decoders (core/speedups.py) take bytes, as their types say
        if number == 1 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        body = line.strip()
        if not body:
            continue
        try:
            if forced is None and body[:1] == b"{" and len(body) <= limit:
                events = _detected(load_json(body, "$"), skip_unsupported)  # _normalize_as's fast path
            else:
                events = _normalize(body, forced, skip_unsupported)
        except InputError as exc:
            exc.located(f"line {number}")
            yield number, exc
        else:
            yield number, events


def numbered_lines(lines: Iterable[bytes]) -> Iterator[tuple[str, bytes]]:
    """Each non-blank line as ``("line N", body)``, a leading BOM dropped."""
    for number, line in enumerate(lines, start=1):
        if number == 1 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        body = line.strip()
        if body:
            yield f"line {number}", body


def _stream(
    payloads: Iterator[tuple[str, bytes]], provider: Vendor | None, skip_unsupported: bool
) -> Iterator[tuple[str, list[dict[str, Any]] | InputError]]:
    for where, payload in payloads:
        try:
            events = _normalize(payload, provider, skip_unsupported)
        except InputError as exc:
            exc.located(where)
            yield where, exc
        else:
            yield where, events
