"""Verifying Alibaba Cloud MNS HTTP-endpoint push requests.

MNS signs each push with its private key; the request carries

* ``Authorization``: Base64 of an RSA-SHA1 (PKCS#1 v1.5) signature over::

      POST\\n<Content-MD5>\\n<Content-Type>\\n<Date>\\n<x-mns-* headers>\\n...<request path>

  where the ``x-mns-*`` headers are lowercased, sorted, each written ``name:value`` followed by a
  newline, and the path is the request target as sent (with its query string, if any);
* ``x-mns-signing-cert-url``: Base64 of the URL of the X.509 certificate holding the public key.

The certificate URL is attacker-controlled until verified, so it is allow-listed before anything is
fetched: ``https`` only, no userinfo, no port, an ASCII host equal to an allowed name or ending in
``.`` + an allowed name (default: ``aliyuncs.com``). Certificates are fetched with a short timeout,
without following redirects, size-capped, and cached. For tests and air-gapped hosts an offline
trust store (a directory or a mapping URL -> PEM) replaces the network entirely.

MNS's own certificate is known to be long expired while still in use, so validity dates are not
checked: trust comes from the allow-listed HTTPS origin, not from the certificate's chain.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .config import MnsSettings
from .errors import BatchBridgeError

log = logging.getLogger("batchbridge.mns")

#: a certificate larger than this is not a certificate
MAX_CERT_BYTES = 64 * 1024
#: how long a failed fetch is remembered, so a flood of pushes does not become a flood of fetches
NEGATIVE_TTL = 30.0
MAX_CACHED = 64
_HOST = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$")


class SignatureError(BatchBridgeError):
    """An MNS push request failed verification (the HTTP receiver answers 403)."""

    code = "bad_signature"


def is_mns_request(headers: Mapping[str, str]) -> bool:
    """Whether a request presents itself as an MNS push (and so must carry a valid MNS signature)."""
    return "x-mns-signing-cert-url" in headers


def check_cert_url(url: str, allowed_hosts: Sequence[str]) -> str:
    """Return ``url`` if it may be fetched as an MNS signing certificate; raise SignatureError if not."""
    if any(c in url for c in "@\\") or any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in url):
        raise SignatureError("certificate URL has forbidden characters (userinfo, backslash, space, non-ASCII)",
                             where="x-mns-signing-cert-url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise SignatureError("certificate URL is not a valid URL", where="x-mns-signing-cert-url") from None
    if parts.scheme != "https":
        raise SignatureError("certificate URL must use https", where="x-mns-signing-cert-url")
    if parts.username is not None or parts.password is not None or port is not None or ":" in parts.netloc:
        raise SignatureError("certificate URL must not carry userinfo or a port", where="x-mns-signing-cert-url")
    host = (parts.hostname or "").rstrip(".")
    if not _HOST.match(host) or host != parts.netloc.lower().rstrip("."):
        raise SignatureError("certificate URL has no plain host name", where="x-mns-signing-cert-url")
    if not any(host == allowed or host.endswith("." + allowed) for allowed in allowed_hosts):
        raise SignatureError(f"certificate host {host!r} is not allowed (allowed: {', '.join(allowed_hosts)} "
                             "and their subdomains)", where="x-mns-signing-cert-url")
    return url


def trust_store_name(url: str) -> str:
    """The file name a certificate for ``url`` has in a trust-store directory."""
    return hashlib.sha256(url.encode()).hexdigest() + ".pem"


def string_to_sign(method: str, target: str, headers: Mapping[str, str],
                   mns_headers: Sequence[tuple[str, str]]) -> bytes:
    """The exact bytes MNS signs. ``headers`` has lowercase keys; ``mns_headers`` every ``x-mns-*``
    header as (lowercase name, value)."""
    lines = [method.upper(), headers.get("content-md5", ""), headers.get("content-type", ""),
             headers.get("date", "")]
    lines += [f"{k}:{v}" for k, v in sorted(mns_headers)]
    return ("\n".join(lines) + "\n" + target).encode("utf-8")


def content_md5_matches(header: str, body: bytes) -> bool:
    """MNS sends the MD5 of the body as hex; clients have also used Base64 of the digest or of the hex."""
    digest = hashlib.md5(body, usedforsecurity=False)
    hex_digest = digest.hexdigest()
    value = header.strip()
    candidates = [hex_digest, base64.b64encode(digest.digest()).decode(),
                  base64.b64encode(hex_digest.encode()).decode(),
                  base64.b64encode(hex_digest.upper().encode()).decode()]
    return any(hmac.compare_digest(value.lower() if len(value) == 32 else value, c) for c in candidates)


def _fetch(url: str, timeout: float) -> bytes:
    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None  # a redirect could leave the allow-listed host

    opener = urllib.request.build_opener(_NoRedirect)
    with opener.open(url, timeout=timeout) as resp:  # scheme and host were checked by check_cert_url
        data: bytes = resp.read(MAX_CERT_BYTES + 1)
    if len(data) > MAX_CERT_BYTES:
        raise SignatureError("certificate is too large", where="x-mns-signing-cert-url")
    return data


def _public_key(data: bytes) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

    try:
        cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError:
        raise SignatureError("the signing certificate cannot be parsed", where="x-mns-signing-cert-url") from None
    key = cert.public_key()
    if not isinstance(key, RSAPublicKey):
        raise SignatureError("the signing certificate does not hold an RSA key", where="x-mns-signing-cert-url")
    return key


def _split(headers: Sequence[tuple[str, str]]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Lowercased single-valued headers, and the ``x-mns-*`` ones; a repeated signed header is refused
    (which copy was signed would be ambiguous)."""
    single: dict[str, str] = {}
    mns: list[tuple[str, str]] = []
    for name, value in headers:
        k = name.lower()
        if k in single and (k.startswith("x-mns-") or k in ("authorization", "content-md5", "content-type", "date")):
            raise SignatureError(f"header {k} appears twice", where=k)
        single[k] = value
        if k.startswith("x-mns-"):
            mns.append((k, value))
    return single, mns


class MnsVerifier:
    """Verify MNS push requests. Thread-safe; certificates are cached per URL for ``cache_ttl``."""

    def __init__(self, settings: MnsSettings | None = None, *,
                 trust_store: Mapping[str, str | bytes | Path] | Path | None = None,
                 fetch: Callable[[str, float], bytes] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings or MnsSettings()
        self._store = trust_store if trust_store is not None else self.settings.trust_store
        self._fetch = fetch or _fetch
        self._clock = clock
        self._cache: dict[str, tuple[float, Any]] = {}
        self._failed: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()
        # at most a few fetches at once, whatever the request rate
        self._fetching = threading.BoundedSemaphore(4)

    def verify(self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes | None = None) -> None:
        """Raise SignatureError unless the request is a correctly signed MNS push. ``headers`` are the
        raw (name, value) pairs; ``body``, when given, is checked against ``Content-MD5`` as well (or
        call :meth:`verify_body` once it has been read)."""
        single, mns = _split(headers)
        signature_b64 = single.get("authorization", "").strip()
        if not signature_b64:
            raise SignatureError("MNS push without an Authorization signature", where="authorization")
        try:
            signature = base64.b64decode(signature_b64, validate=True)
            url = base64.b64decode(single.get("x-mns-signing-cert-url", ""), validate=True).decode("ascii")
        except (binascii.Error, UnicodeDecodeError):
            raise SignatureError("signature or certificate URL is not valid Base64", where="authorization") from None
        check_cert_url(url, self.settings.allowed_hosts)
        self._check_date(single.get("date"))
        key = self.public_key(url)
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        try:
            key.verify(signature, string_to_sign(method, target, single, mns), padding.PKCS1v15(), hashes.SHA1())
        except InvalidSignature:
            raise SignatureError("the MNS signature does not match the request", where="authorization") from None
        if body is not None:
            self.verify_body(headers, body)

    def verify_body(self, headers: Sequence[tuple[str, str]], body: bytes) -> None:
        """The signature covers ``Content-MD5``, not the body: this ties the body to it."""
        md5 = _split(headers)[0].get("content-md5")
        if md5:
            if not content_md5_matches(md5, body):
                raise SignatureError("the body does not match its signed Content-MD5", where="content-md5")
        elif self.settings.require_content_md5:
            raise SignatureError("MNS push without Content-MD5 (serve.mns.require_content_md5)", where="content-md5")

    def _check_date(self, date: str | None) -> None:
        if self.settings.max_skew <= 0:
            return
        try:
            when = parsedate_to_datetime(date or "").timestamp()
        except (TypeError, ValueError):
            raise SignatureError("MNS push without a valid Date header", where="date") from None
        if abs(self._clock() - when) > self.settings.max_skew:
            raise SignatureError(f"the request's Date is more than {self.settings.max_skew:g}s off", where="date")

    def public_key(self, url: str) -> Any:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(url)
            if hit and hit[0] > now:
                return hit[1]
            failed = self._failed.get(url)
            if failed and failed[0] > now:
                raise SignatureError(failed[1], where="x-mns-signing-cert-url")
        try:
            key = _public_key(self._load(url))
        except SignatureError as exc:
            with self._lock:
                self._failed[url] = (now + NEGATIVE_TTL, exc.reason)
            raise
        with self._lock:
            if len(self._cache) >= MAX_CACHED:
                self._cache.pop(next(iter(self._cache)))
            self._cache[url] = (now + self.settings.cache_ttl, key)
            self._failed.pop(url, None)
        return key

    def _load(self, url: str) -> bytes:
        store = self._store
        if store is not None:
            if isinstance(store, Mapping):
                entry = store.get(url)
                if entry is None:
                    raise SignatureError("the certificate URL is not in the offline trust store",
                                         where="x-mns-signing-cert-url")
                if isinstance(entry, Path):
                    return entry.read_bytes()
                return entry.encode() if isinstance(entry, str) else bytes(entry)
            path = Path(store) / trust_store_name(url)
            try:
                return path.read_bytes()
            except OSError:
                raise SignatureError("the certificate URL is not in the offline trust store",
                                     where="x-mns-signing-cert-url") from None
        if not self._fetching.acquire(timeout=self.settings.cert_timeout):
            raise SignatureError("too many certificate fetches in progress", where="x-mns-signing-cert-url")
        try:
            return self._fetch(url, self.settings.cert_timeout)
        except SignatureError:
            raise
        except (OSError, urllib.error.URLError, ValueError) as exc:
            log.warning("cannot fetch the MNS signing certificate from %s: %s", url, exc)
            raise SignatureError("the signing certificate could not be fetched",
                                 where="x-mns-signing-cert-url") from None
        finally:
            self._fetching.release()
