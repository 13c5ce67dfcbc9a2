"""Verifying Alibaba Cloud MNS HTTP-endpoint push requests.

MNS signs each push with its private key; the request carries

* ``Authorization``: Base64 of an RSA-SHA1 (PKCS#1 v1.5) signature over::

      POST\\n<Content-MD5>\\n<Content-Type>\\n<Date>\\n<x-mns-* headers>\\n...<request path>

  where the ``x-mns-*`` headers are lowercased, sorted, each written ``name:value`` followed by a
  newline, and the path is the request target as sent (with its query string, if any);
* ``x-mns-signing-cert-url``: Base64 of the URL of the X.509 certificate holding the public key.

The certificate URL is attacker-controlled until verified, so it is allow-listed before anything is
fetched: ``https`` only, no userinfo, no port, a plain ASCII host, no query or fragment, and a URL that
starts with one of ``serve.mns.allowed_cert_urls`` -- by default only where Alibaba documents its
certificates, ``https://mnstest.oss-cn-hangzhou.aliyuncs.com/`` (the host compared exactly: every other
``*.aliyuncs.com`` name, e.g. anyone's OSS bucket, is refused). Certificates are fetched on a small
pool of their own, bounded in time, in size and in how many run at once, without following
redirects, and cached; a failed fetch puts its host on a backoff (30 s, doubling to 10 min) during
which pushes naming it are refused at once -- so a slow or dead certificate host never holds up other
requests or ``/healthz``. For tests and air-gapped hosts an offline trust store (a directory or a
mapping URL -> PEM) replaces the network entirely.

MNS's own certificate is known to be long expired while still in use, so validity dates are not
checked: trust comes from the allow-listed HTTPS origin, not from the certificate's chain.
"""

from __future__ import annotations

import asyncio
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
from concurrent.futures import Future, ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .config import DEFAULT_MNS_CERT_URLS, MnsSettings
from .errors import BatchBridgeError

log = logging.getLogger("batchbridge.mns")

#: a certificate larger than this is not a certificate
MAX_CERT_BYTES = 64 * 1024
#: how long a certificate that failed to parse is remembered for its URL
NEGATIVE_TTL = 30.0
#: the longest a host stays on backoff after repeated failed fetches
MAX_BACKOFF = 600.0
MAX_CACHED = 64
_HOST = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$")


class SignatureError(BatchBridgeError):
    """An MNS push request failed verification (the HTTP receiver answers 403)."""

    code = "bad_signature"


def is_mns_request(headers: Mapping[str, str]) -> bool:
    """Whether a request presents itself as an MNS push (and so must carry a valid MNS signature)."""
    return "x-mns-signing-cert-url" in headers


def check_cert_url(url: str, allowed_hosts: Sequence[str] = (),
                   allowed_urls: Sequence[str] = DEFAULT_MNS_CERT_URLS) -> str:
    """Return ``url`` if it may be fetched as an MNS signing certificate; raise SignatureError if not.

    Allowed: a URL starting with one of ``allowed_urls`` (its host compared exactly), or one whose host
    is one of ``allowed_hosts`` or a subdomain of one (for a certificate host the operator controls)."""
    if any(c in url for c in "@\\%") or any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in url):
        raise SignatureError("certificate URL has forbidden characters (userinfo, backslash, percent-encoding, "
                             "space, non-ASCII)", where="x-mns-signing-cert-url")
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
    if any(host == allowed or host.endswith("." + allowed) for allowed in allowed_hosts):
        return url
    if not parts.query and not parts.fragment and "?" not in url and "#" not in url and "/." not in parts.path:
        for prefix in allowed_urls:
            p = urlsplit(prefix)
            if host == p.hostname and parts.path.startswith(p.path or "/"):
                return url
    allowed = [*allowed_urls, *(f"https://{h}/ (and subdomains)" for h in allowed_hosts)]
    raise SignatureError(f"certificate URL on {host!r} is not where MNS serves its certificates (allowed: "
                         f"{', '.join(allowed)})", where="x-mns-signing-cert-url")


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
    """GET the certificate: no redirect followed, at most ``MAX_CERT_BYTES``, done within ``timeout``
    in all (a host trickling bytes cannot hold a fetch slot for longer)."""
    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None  # a redirect could leave the allow-listed host

    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(_NoRedirect)
    with opener.open(url, timeout=timeout) as resp:  # scheme and host were checked by check_cert_url
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_CERT_BYTES:
            if time.monotonic() > deadline:
                raise SignatureError("the certificate host is too slow", where="x-mns-signing-cert-url")
            chunk: bytes = resp.read1(16 * 1024)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    if size > MAX_CERT_BYTES:
        raise SignatureError("certificate is too large", where="x-mns-signing-cert-url")
    return b"".join(chunks)


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
    """Verify MNS push requests. Thread-safe; certificates are cached per URL for ``cache_ttl``.

    :meth:`averify` is the form for an event loop: everything but a certificate fetch runs inline
    (a cached key and an RSA check take well under a millisecond), and a fetch runs on this verifier's
    own small pool, so it never takes a thread that ``/healthz`` or the outbox needs."""

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
        #: host -> (not before, consecutive failures)
        self._host_backoff: dict[str, tuple[float, int]] = {}
        #: url -> the fetch in flight, which concurrent pushes naming the same URL wait for
        self._inflight: dict[str, Future[Any]] = {}
        self._lock = threading.Lock()
        self._fetching = threading.BoundedSemaphore(self.settings.max_fetches)
        self._pool: ThreadPoolExecutor | None = None

    def verify(self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes | None = None) -> None:
        """Raise SignatureError unless the request is a correctly signed MNS push. ``headers`` are the
        raw (name, value) pairs; ``body``, when given, is checked against ``Content-MD5`` as well (or
        call :meth:`verify_body` once it has been read)."""
        url, check = self._prepare(method, target, headers)
        check(self.public_key(url))
        if body is not None:
            self.verify_body(headers, body)

    async def averify(self, method: str, target: str, headers: Sequence[tuple[str, str]]) -> None:
        """:meth:`verify` (headers only) without blocking the event loop on a certificate fetch."""
        url, check = self._prepare(method, target, headers)
        key = self._cached(url)
        if key is None:
            # the fetch bounds itself, but not a hung name lookup: the push is answered in time anyway,
            # and the fetch (shielded: other pushes may wait for it) keeps its slot until it ends
            fetch = asyncio.shield(asyncio.wrap_future(self._fetch_future(url)))
            try:
                key = await asyncio.wait_for(fetch, 2 * self.settings.cert_timeout)
            except asyncio.TimeoutError:
                raise SignatureError("the signing certificate could not be fetched in time",
                                     where="x-mns-signing-cert-url") from None
        check(key)

    def _prepare(self, method: str, target: str,
                 headers: Sequence[tuple[str, str]]) -> tuple[str, Callable[[Any], None]]:
        """Every check that needs no certificate; the URL to get it from, and the signature check."""
        single, mns = _split(headers)
        signature_b64 = single.get("authorization", "").strip()
        if not signature_b64:
            raise SignatureError("MNS push without an Authorization signature", where="authorization")
        try:
            signature = base64.b64decode(signature_b64, validate=True)
            url = base64.b64decode(single.get("x-mns-signing-cert-url", ""), validate=True).decode("ascii")
        except (binascii.Error, UnicodeDecodeError):
            raise SignatureError("signature or certificate URL is not valid Base64", where="authorization") from None
        check_cert_url(url, self.settings.allowed_hosts, self.settings.allowed_cert_urls)
        self._check_date(single.get("date"))
        signed = string_to_sign(method, target, single, mns)

        def check(key: Any) -> None:
            from cryptography.exceptions import InvalidSignature
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.asymmetric import padding

            try:
                key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA1())
            except InvalidSignature:
                raise SignatureError("the MNS signature does not match the request", where="authorization") from None

        return url, check

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
            raise SignatureError(f"the request's Date is more than {self.settings.max_skew:g}s off "
                                 "(serve.mns.max_skew)", where="date")

    def _cached(self, url: str) -> Any:
        """The key for ``url`` when known; None when it must be fetched; SignatureError when its URL or
        its host failed recently."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(url)
            if hit and hit[0] > now:
                return hit[1]
            failed = self._failed.get(url)
            if failed and failed[0] > now:
                raise SignatureError(failed[1], where="x-mns-signing-cert-url")
            if self._store is None:
                backoff = self._host_backoff.get(_host(url))
                if backoff and backoff[0] > now:
                    raise SignatureError("the certificate host failed recently; not asked again yet",
                                         where="x-mns-signing-cert-url")
        return None

    def public_key(self, url: str) -> Any:
        key = self._cached(url)
        if key is not None:
            return key
        return self._fetch_future(url).result()

    def _fetch_future(self, url: str) -> Future[Any]:
        """The one fetch of ``url`` in flight (started here when there is none)."""
        if self._store is not None:  # offline: a file read, nothing to bound
            done: Future[Any] = Future()
            try:
                done.set_result(self._load_key(url))
            except SignatureError as exc:
                done.set_exception(exc)
            return done
        with self._lock:
            running = self._inflight.get(url)
            if running is not None:
                return running
            if not self._fetching.acquire(blocking=False):
                raise SignatureError("too many certificate fetches in progress; retry later",
                                     where="x-mns-signing-cert-url")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.settings.max_fetches, thread_name_prefix="batchbridge-mns-cert")
            future = self._inflight[url] = self._pool.submit(self._fetch_now, url)
        return future

    def _fetch_now(self, url: str) -> Any:
        try:
            return self._load_key(url)
        finally:
            with self._lock:
                self._inflight.pop(url, None)
            self._fetching.release()

    def _load_key(self, url: str) -> Any:
        now = time.monotonic()
        try:
            key = _public_key(self._load(url))
        except SignatureError as exc:
            with self._lock:
                self._trim(self._failed)
                self._failed[url] = (now + NEGATIVE_TTL, exc.reason)
            raise
        with self._lock:
            self._trim(self._cache)
            self._cache[url] = (now + self.settings.cache_ttl, key)
            self._failed.pop(url, None)
            self._host_backoff.pop(_host(url), None)
        return key

    @staticmethod
    def _trim(cache: dict[str, Any]) -> None:
        if len(cache) >= MAX_CACHED:
            cache.pop(next(iter(cache)))

    def _host_failed(self, url: str) -> None:
        host = _host(url)
        with self._lock:
            failures = self._host_backoff.get(host, (0.0, 0))[1] + 1
            delay = min(MAX_BACKOFF, self.settings.failure_backoff * 2 ** min(failures - 1, 16))
            self._trim(self._host_backoff)
            self._host_backoff[host] = (time.monotonic() + delay, failures)

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
        try:
            return self._fetch(url, self.settings.cert_timeout)
        except SignatureError:
            self._host_failed(url)
            raise
        except (OSError, urllib.error.URLError, ValueError) as exc:
            self._host_failed(url)
            log.warning("cannot fetch the MNS signing certificate from %s: %s", url, exc)
            raise SignatureError("the signing certificate could not be fetched",
                                 where="x-mns-signing-cert-url") from None

    def close(self) -> None:
        """Stop the fetch pool (a fetch in flight finishes on its own, within its time bound)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)


def _host(url: str) -> str:
    return urlsplit(url).hostname or ""
