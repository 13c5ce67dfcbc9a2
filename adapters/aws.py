"""``sqs://QUEUE`` and ``sns://TOPIC``: Amazon SQS and SNS through boto3 (extra ``[aws]``).

The drivers only move bytes; batching, lanes per ordering key, retries and per-message results are
the portable layer's (:mod:`batchbridge.core.publisher`). What is AWS-specific lives here:

* **Batches**: ``SendMessageBatch`` / ``PublishBatch`` (10 entries). Each entry's outcome becomes
  that message's result: ``Failed`` entries are errors (retryable for throttling and server-side
  codes, not for ``InvalidParameterValue`` and the like), and an entry the service answered for in
  neither list is a retryable error, never a success.
* **Sizes** are checked before sending, the way AWS counts them: the UTF-8 bytes of the body plus,
  for every message attribute, its name, its data type (``String``) and its value. SNS allows
  256 KiB per message and per ``PublishBatch``; SQS the queue's ``MaximumMessageSize`` (read with
  ``GetQueueAttributes``; 1 MiB by default since 2025) and 1 MiB per ``SendMessageBatch`` (256 KiB on
  a server that still reports the old 256 KiB default). The
  portable layer refuses what exceeds ``max_message_bytes`` (the service limit); the driver refuses,
  per message, the few bytes of attribute data types that ``Message.size`` leaves out.
* **Bodies** are Unicode text on SQS and SNS (the XML 1.0 character set). A body that is not UTF-8,
  or holds a character outside that set, is refused per message with :class:`InvalidBodyError`
  (not retryable) instead of letting the service fail the whole batch.
* **Attributes**: what the binding made (``core/binding.py``: ``ce-*`` and ``content-type``, fitted to
  the 10 SQS and SNS allow, ``max_attributes``), each as a ``String``. Empty values are left out (both
  services refuse them; the structured body still carries every field).
* **FIFO** (name ends in ``.fifo``): ``MessageDeduplicationId`` = the CloudEvent ``id``;
  ``MessageGroupId`` = the job id, else the environment id (``Message.ordering_key``); for an event
  with neither, the event's ``subject``, else its ``source``, else ``"batchbridge"`` -- so events
  about one subject stay in order. Ids AWS would refuse (over 128 characters, or characters other
  than ASCII letters, digits and punctuation) are replaced by ``h-`` + their SHA-256, which is
  stable, so a retried or republished event still de-duplicates. Order is guaranteed per job or
  environment id only: the portable layer spreads key-less events over its lanes.
* **Consuming** (``sqs://`` only; ``sns://`` has no subscriber): long polling (``wait_time_seconds``),
  an optional ``visibility_timeout``, ack = ``DeleteMessageBatch``, nack =
  ``ChangeMessageVisibilityBatch`` to 0. A queue subscribed to a topic *without* raw message delivery
  receives SNS's notification envelope (``{"Type": "Notification", "Message": ..., "MessageAttributes":
  {name: {"Type", "Value"}}}``); the subscriber detects it and unwraps body and attributes, so the
  event reads back the same with raw delivery on or off (``?raw=true`` turns detection off).
* **Errors**: a missing queue or topic raises :class:`EntityNotFoundError` (not retryable); access
  denied and invalid parameters are not retryable; throttling, 5xx, connection errors and timeouts
  are. Every message passes through :func:`batchbridge.core.secrets.redact`, and the credentials the
  driver holds (URI options, a profile's keys) are registered with ``remember``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from batchbridge.core.driver import Message, ReceivedMessage
from batchbridge.core.envelopes import unwrap_sns
from batchbridge.core.errors import (
    BackendError,
    BatchBridgeError,
    ClosedError,
    ConfigError,
    EntityNotFoundError,
    MessageTooLargeError,
    MissingDependencyError,
)
from batchbridge.core.registry import BackendURI, Option
from batchbridge.core.retry import ErrorCode, is_transient
from batchbridge.core.secrets import redact, remember

log = logging.getLogger("batchbridge.aws")

INSTALL_HINT = "pip install 'batchbridge[aws]'"

KIB = 1024
MIB = 1024 * KIB
#: SNS: one message, and one PublishBatch request, body and attributes included
SNS_MAX_BYTES = 256 * KIB
#: SQS: the largest MaximumMessageSize, and one SendMessageBatch request
SQS_MAX_BYTES = 1 * MIB
#: SQS and SNS: message attributes per message, and entries per batch request
MAX_ATTRIBUTES = 10
MAX_BATCH = 10
#: what ``Message.size`` does not count but AWS does, per batch: the data type of up to 10 attributes,
#: for each of 10 entries. The batch byte limit handed to the portable layer is lowered by this much,
#: so a full batch never exceeds the service's total.
_BATCH_RESERVE = MAX_BATCH * (MAX_ATTRIBUTES * len("String") + 128)

#: the characters SQS and SNS accept in a body or attribute value (XML 1.0's Char production)
_INVALID_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
#: MessageGroupId / MessageDeduplicationId: 1-128 ASCII letters, digits and punctuation
_AWS_ID = re.compile(r"[!-~]{1,128}")
_QUEUE_NAME = re.compile(r"[A-Za-z0-9_-]{1,80}")
_TOPIC_NAME = re.compile(r"[A-Za-z0-9_-]{1,256}")


class InvalidBodyError(BackendError):
    """The message cannot travel on SQS/SNS as it is: not UTF-8, or a character outside the set
    they accept. Refused before sending, per message, never retried."""

    code = "invalid_body"
    error_code = ErrorCode.INVALID_ARGUMENT

    def __init__(self, reason: str, *, where: str | None = None) -> None:
        super().__init__(reason, where=where)


# --- error classification ---------------------------------------------------------------------------

_NOT_FOUND = frozenset({
    "AWS.SimpleQueueService.NonExistentQueue", "NonExistentQueue", "QueueDoesNotExist",
    "NotFound", "NotFoundException", "ResourceNotFoundException",
})
_THROTTLING = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException", "TransactionInProgressException",
    "RequestLimitExceeded", "BandwidthLimitExceeded", "LimitExceededException", "RequestThrottled",
    "SlowDown", "PriorRequestNotComplete", "EC2ThrottledException", "KmsThrottled",
    "KMSThrottlingException", "ThrottlingException.KMS",
})
_TRANSIENT = frozenset({
    "InternalError", "InternalFailure", "InternalErrorException", "ServiceUnavailable",
    "ServiceUnavailableException", "RequestTimeout", "RequestTimeoutException", "RequestExpired",
    "KMSInternalException", "KmsUnavailable",
})
#: never retried, whatever ``SenderFault`` says (emulators report some of these as server faults)
_PERMANENT = frozenset({
    "InvalidParameterValue", "InvalidParameterValueException", "InvalidParameter", "InvalidParameterException",
    "InvalidMessageContents", "InvalidAttributeValue", "InvalidAttributeName", "MissingParameter",
    "UnsupportedOperation", "BatchRequestTooLong", "BatchEntryIdsNotDistinct", "TooManyEntriesInBatchRequest",
    "EmptyBatchRequest", "InvalidBatchEntryId", "ReceiptHandleIsInvalid", "InvalidIdFormat",
    "AccessDenied", "AccessDeniedException", "AuthorizationError", "AuthorizationErrorException",
    "InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException", "ExpiredToken",
    "InvalidSecurity", "KMSAccessDeniedException", "KmsAccessDenied", "KmsDisabled", "KmsNotFound",
    "KmsInvalidState", "KmsInvalidKeyUsage", "OptInRequired", "ValidationError", "ValidationException",
})
_CONFIG_ERRORS = ("NoCredentialsError", "PartialCredentialsError", "ProfileNotFound", "NoRegionError",
                  "CredentialRetrievalError", "UnknownCredentialError", "ParamValidationError")


def _strip(code: str) -> str:
    for prefix in ("AWS.SimpleQueueService.", "AWS.SimpleNotificationService."):
        if code.startswith(prefix):
            return code[len(prefix):]
    return code


def _codes(exc: BaseException) -> set[str]:
    """The error codes a botocore ``ClientError`` carries (SQS's JSON protocol has two)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, Mapping):
        return set()
    error = response.get("Error") or {}
    codes = {str(error[k]) for k in ("Code", "QueryErrorCode") if error.get(k)}
    return codes | {_strip(c) for c in codes}


def _status(exc: BaseException) -> int:
    response = getattr(exc, "response", None)
    if not isinstance(response, Mapping):
        return 0
    return int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)


_DENIED = frozenset({
    "AccessDenied", "AccessDeniedException", "AuthorizationError", "AuthorizationErrorException",
    "InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException", "ExpiredToken",
    "InvalidSecurity", "KMSAccessDeniedException", "KmsAccessDenied", "OptInRequired",
})


def code_for(code: str, sender_fault: bool | None = None) -> ErrorCode:
    """The portable code of an AWS error code (of a call, or of one batch entry)."""
    codes = {code, _strip(code)}
    if codes & _THROTTLING:
        return ErrorCode.RESOURCE_EXHAUSTED
    if codes & _TRANSIENT:
        return ErrorCode.UNAVAILABLE
    if codes & _NOT_FOUND:
        return ErrorCode.NOT_FOUND
    if codes & _DENIED:
        return ErrorCode.PERMISSION_DENIED
    if codes & _PERMANENT:
        return ErrorCode.INVALID_ARGUMENT
    # an unknown code: AWS marks server-side failures with SenderFault=false
    return ErrorCode.INTERNAL if sender_fault is False else ErrorCode.UNKNOWN


def code_is_retryable(code: str, sender_fault: bool | None = None) -> bool:
    return is_transient(code_for(code, sender_fault))


def error_code(exc: BaseException) -> ErrorCode:
    """Throttling, 5xx, connection errors and timeouts are transient. Missing entities, access denied,
    invalid parameters, credentials and configuration are not."""
    if isinstance(exc, BatchBridgeError):
        return exc.error_code
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "ClientError" in names:
        found = {code_for(c) for c in _codes(exc)} - {ErrorCode.UNKNOWN}
        for code in (ErrorCode.RESOURCE_EXHAUSTED, ErrorCode.UNAVAILABLE, ErrorCode.NOT_FOUND,
                     ErrorCode.PERMISSION_DENIED, ErrorCode.INVALID_ARGUMENT):
            if code in found:
                return code
        status = _status(exc)
        return (ErrorCode.RESOURCE_EXHAUSTED if status == 429 else ErrorCode.INTERNAL if status >= 500
                else ErrorCode.UNKNOWN)
    if "SSLError" in names or names & set(_CONFIG_ERRORS):
        return ErrorCode.FAILED_PRECONDITION  # a certificate or credentials problem does not heal by itself
    if names & {"ReadTimeoutError", "ConnectTimeoutError"} or isinstance(exc, TimeoutError):
        return ErrorCode.DEADLINE_EXCEEDED
    if names & {"ConnectionError", "HTTPClientError"} or isinstance(exc, OSError):
        return ErrorCode.UNAVAILABLE  # botocore's connection errors (refused, reset, closed)
    return ErrorCode.UNKNOWN


def is_retryable(exc: BaseException) -> bool:
    return is_transient(error_code(exc))


def translate(exc: BaseException, where: str, what: str = "entity") -> BatchBridgeError:
    """A typed error for any boto3/botocore exception, its text scrubbed of secrets."""
    if isinstance(exc, BatchBridgeError):
        return exc
    codes = _codes(exc)
    if codes & _NOT_FOUND:
        return EntityNotFoundError(f"{what} does not exist ({sorted(codes)[0]})", where=where, cause=exc)
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & set(_CONFIG_ERRORS):
        return ConfigError(redact(f"{type(exc).__name__}: {exc}"), where=where)
    return BackendError(redact(f"{type(exc).__name__}: {exc}"), where=where, error_code=error_code(exc),
                        cause=exc)


# --- connection ---------------------------------------------------------------------------------------


def _boto3() -> Any:
    try:
        import boto3
    except ImportError:
        raise MissingDependencyError(f"the sqs:// and sns:// backends need boto3: {INSTALL_HINT}") from None
    return boto3


#: one botocore data loader per data path, for the whole process (see _botocore_session)
_LOADERS: dict[Any, Any] = {}
_LOADERS_LOCK = threading.Lock()


def _botocore_session(profile: str | None) -> Any:
    """A new botocore session whose data loader (the parsed service models) is the process's one.

    Each session otherwise parses the service's JSON model and the endpoint rules again: ~100 ms of CPU
    per client here, against ~25 ms shared. Publishers are re-opened after every failed open, so during
    an outage that parsing took more than half of a ``serve`` process's CPU, and intake slowed with it.
    Only static model data is shared; credentials, region and hooks stay per session.
    """
    import botocore.session

    with _LOADERS_LOCK:
        core = botocore.session.Session(profile=profile)
        key = core.get_config_variable("data_path")
        loader = _LOADERS.get(key)
        if loader is None:
            loader = _LOADERS[key] = core.get_component("data_loader")
        else:
            core.register_component("data_loader", loader)
        # boto3 appends its own model folder to the loader's search path for every session it wraps
        loader.search_paths[:] = list(dict.fromkeys(loader.search_paths))
    return core


def _arn_parts(name: str) -> tuple[str, str, str, str] | None:
    """``arn:PARTITION:SERVICE:REGION:ACCOUNT:NAME`` -> (partition, region, account, name)."""
    if not name.startswith("arn:"):
        return None
    parts = name.split(":", 5)
    if len(parts) != 6 or not parts[5]:
        return None
    return parts[1], parts[3], parts[4], parts[5]


def _endpoint_in_env(service: str) -> bool:
    return bool(os.environ.get(f"AWS_ENDPOINT_URL_{service.upper()}") or os.environ.get("AWS_ENDPOINT_URL"))


class _Connection:
    """A boto3 session and client built from the URI options; credentials registered as secrets."""

    def __init__(self, service: str, uri: BackendURI, *, region_hint: str | None = None,
                 read_timeout: float | None = None) -> None:
        self.where = uri.redacted
        opts = uri.options
        boto3 = _boto3()
        from botocore.config import Config

        for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            remember(os.environ.get(name))
        try:
            self.session = boto3.session.Session(
                botocore_session=_botocore_session(opts.get("profile") or None),
                aws_access_key_id=opts.get("aws_access_key_id") or None,
                aws_secret_access_key=opts.get("aws_secret_access_key") or None,
                aws_session_token=opts.get("aws_session_token") or None,
                region_name=opts.get("region") or None,
            )
            if opts.get("profile"):
                # the profile's keys must never reach a message either
                credentials = self.session.get_credentials()
                if credentials is not None:
                    frozen = credentials.get_frozen_credentials()
                    remember(frozen.secret_key, frozen.token)
        except Exception as exc:
            raise translate(exc, self.where) from None
        endpoint = opts.get("endpoint_url") or None
        # an explicit ?region= wins, then the region an ARN names, then the profile's or the environment's
        region = opts.get("region") or region_hint or self.session.region_name or os.environ.get("AWS_REGION")
        if not region and (endpoint or _endpoint_in_env(service)):
            region = "us-east-1"  # a local endpoint (LocalStack, moto) accepts any region
        if not region:
            raise ConfigError("no AWS region: add ?region=... to the URI, or set AWS_REGION / a profile's region",
                              where=self.where)
        self.region: str = region
        concurrency = int(opts.get("concurrency") or 4)
        # botocore makes exactly one attempt per call: the one retry policy (core/retry.py, the URI's
        # ``retries``) decides whether and when to try again, from the code ``error_code`` maps the
        # failure to. Two layers of retries would multiply (3 x 5 attempts, each up to connect_timeout).
        # ``total_max_attempts`` counts the first try (``max_attempts`` in the retries dict would not).
        self.config = Config(
            region_name=region,
            connect_timeout=float(opts.get("connect_timeout") or 5.0),
            read_timeout=float(read_timeout or opts.get("read_timeout") or 30.0),
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=max(10, 2 * concurrency),
            user_agent_extra="batchbridge",
        )
        try:
            self.client: Any = self.session.client(service, endpoint_url=endpoint, config=self.config)
        except Exception as exc:
            raise translate(exc, self.where) from None

    def partition(self) -> str:
        try:
            return str(self.session.get_partition_for_region(self.region))
        except Exception:
            return "aws"

    def call(self, op: str, what: str, **kwargs: Any) -> Any:
        """Call one API operation; any failure comes out typed and scrubbed."""
        try:
            return getattr(self.client, op)(**kwargs)
        except Exception as exc:
            raise translate(exc, self.where, what) from None


# --- outgoing messages --------------------------------------------------------------------------------


def _check_text(text: str, what: str, where: str) -> None:
    bad = _INVALID_CHAR.search(text)
    if bad:
        raise InvalidBodyError(
            f"{what} holds the character U+{ord(bad.group()):04X} at position {bad.start()}; SQS and SNS carry "
            "only Unicode text (#x9, #xA, #xD, #x20-#xD7FF, #xE000-#xFFFD, #x10000-#x10FFFF)",
            where=where,
        )


def _body_text(body: bytes, where: str) -> str:
    if not body:
        raise InvalidBodyError("empty body; SQS and SNS need at least one character", where=where)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidBodyError(
            f"body is not UTF-8 text (byte {exc.start}); SQS and SNS carry only Unicode text", where=where
        ) from None
    _check_text(text, "body", where)
    return text


def _attributes(msg: Message, where: str) -> dict[str, dict[str, str]]:
    attrs: dict[str, dict[str, str]] = {}
    for name, value in msg.attributes.items():
        if not value:
            continue  # SQS/SNS refuse empty attribute values
        _check_text(value, f"attribute {name!r}", where)
        attrs[name] = {"DataType": "String", "StringValue": value}
    if len(attrs) > MAX_ATTRIBUTES:
        raise BackendError(f"{len(attrs)} message attributes; SQS and SNS carry at most {MAX_ATTRIBUTES}",
                           where=where, retryable=False)
    return attrs


def wire_size(body: str, attrs: Mapping[str, Mapping[str, str]]) -> int:
    """Bytes one message counts against an SQS/SNS limit: the UTF-8 body, and each attribute's name,
    data type and value."""
    size = len(body.encode("utf-8"))
    for name, attr in attrs.items():
        size += len(name.encode()) + len(attr["DataType"].encode()) + len(attr["StringValue"].encode())
    return size


def aws_id(value: str) -> str:
    """``value`` if AWS accepts it as a MessageGroupId / MessageDeduplicationId, else a stable hash."""
    if _AWS_ID.fullmatch(value):
        return value
    return "h-" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def group_id(msg: Message, prefix: str = "ce-") -> str:
    """FIFO MessageGroupId: job id, else environment id, else subject, else source, else "batchbridge"."""
    key = (msg.ordering_key or msg.attributes.get(f"{prefix}subject") or msg.attributes.get(f"{prefix}source")
           or "batchbridge")
    return aws_id(key)


def dedup_id(msg: Message) -> str:
    """FIFO MessageDeduplicationId: the CloudEvent id, else a hash of the body."""
    return aws_id(msg.dedup_id) if msg.dedup_id else "h-" + hashlib.sha256(msg.body).hexdigest()


class _AwsPublisher:
    """What the SQS and SNS publishers share: entries, per-entry results, size checks."""

    service = ""
    attribute_prefix = "ce-"
    max_attributes = MAX_ATTRIBUTES
    #: SQS and SNS messages have no content-type field: the binding sends it as an attribute
    content_type_attribute = True
    max_batch_count = MAX_BATCH
    body_field = "MessageBody"

    def __init__(self, uri: BackendURI) -> None:
        self.where = uri.redacted
        self.fifo = False
        self.max_message_bytes = SNS_MAX_BYTES
        self.max_batch_bytes = SNS_MAX_BYTES - _BATCH_RESERVE
        self._closed = False
        self._conn: _Connection

    @property
    def client(self) -> Any:
        """The boto3 client (e.g. to register botocore event hooks)."""
        return self._conn.client

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.where!r})"

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"{self.service} publisher is closed", where=self.where)

    def _entry(self, index: int, msg: Message) -> dict[str, Any]:
        where = f"{self.where} entry {index}" + (f" (event {msg.dedup_id})" if msg.dedup_id else "")
        body = _body_text(msg.body, where)
        attrs = _attributes(msg, where)
        size = wire_size(body, attrs)
        if size > self.max_message_bytes:
            raise MessageTooLargeError(
                f"message is {size} bytes as {self.service} counts it (UTF-8 body plus attribute names, "
                f"types and values); the limit is {self.max_message_bytes}",
                where=where,
            )
        entry: dict[str, Any] = {"Id": str(index), self.body_field: body}
        if attrs:
            entry["MessageAttributes"] = attrs
        if self.fifo:
            entry["MessageGroupId"] = group_id(msg, self.attribute_prefix)
            entry["MessageDeduplicationId"] = dedup_id(msg)
        return entry

    def _call_batch(self, entries: list[dict[str, Any]]) -> Mapping[str, Any]:
        raise NotImplementedError

    def send_batch(self, messages: Sequence[Message]) -> list[BaseException | None]:
        self._check_open()
        results: list[BaseException | None] = [None] * len(messages)
        entries: list[dict[str, Any]] = []
        for i, msg in enumerate(messages):
            try:
                entries.append(self._entry(i, msg))
            except BatchBridgeError as exc:
                results[i] = exc
        if not entries:
            return results
        response = self._call_batch(entries)
        done = {str(s.get("Id")) for s in response.get("Successful") or []}
        failed = {str(f.get("Id")): f for f in response.get("Failed") or []}
        for entry in entries:
            i = int(entry["Id"])
            if entry["Id"] in failed:
                f = failed[entry["Id"]]
                code = str(f.get("Code") or "Unknown")
                results[i] = BackendError(
                    redact(f"{self.service} refused the entry: {code}: {f.get('Message') or ''}".rstrip(": ")),
                    where=f"{self.where} entry {i}",
                    error_code=code_for(code, f.get("SenderFault")),
                )
            elif entry["Id"] not in done:
                results[i] = BackendError(f"{self.service} reported no outcome for this entry",
                                          where=f"{self.where} entry {i}", retryable=True)
        return results

    def error_code(self, exc: BaseException) -> ErrorCode:
        return error_code(exc)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._conn.client.close()
        except Exception:  # closing the connection pool is best effort
            log.debug("closing the %s client failed", self.service, exc_info=True)


# --- SQS ----------------------------------------------------------------------------------------------


class _Queue:
    def __init__(self, url: str, fifo: bool, max_bytes: int) -> None:
        self.url = url
        self.fifo = fifo
        self.max_bytes = max_bytes


def _queue_name(uri: BackendURI) -> tuple[str, str | None, str | None]:
    """(queue name, owner account, region) from ``sqs://NAME`` or ``sqs://arn:aws:sqs:REGION:ACCOUNT:NAME``."""
    name = uri.name
    arn = _arn_parts(name)
    account = uri.options.get("account") or None
    region = None
    if arn:
        _, region, arn_account, name = arn
        account = account or arn_account or None
    if not _QUEUE_NAME.fullmatch(name.removesuffix(".fifo")):
        raise ConfigError(f"{name!r} is not an SQS queue name (1-80 letters, digits, '-' and '_', "
                          "optionally ending in .fifo)", where=uri.redacted)
    return name, account, region or None


def _open_queue(conn: _Connection, name: str, account: str | None, create: bool) -> _Queue:
    kwargs: dict[str, Any] = {"QueueName": name}
    if account:
        kwargs["QueueOwnerAWSAccountId"] = account
    try:
        url = conn.call("get_queue_url", f"SQS queue {name!r}", **kwargs)["QueueUrl"]
    except EntityNotFoundError:
        if not create:
            raise
        attributes = {"FifoQueue": "true"} if name.endswith(".fifo") else {}
        url = conn.call("create_queue", f"SQS queue {name!r}", QueueName=name, Attributes=attributes)["QueueUrl"]
        log.info("created SQS queue %s", name)
    try:
        attrs = conn.call("get_queue_attributes", f"SQS queue {name!r}", QueueUrl=url,
                          AttributeNames=["MaximumMessageSize", "FifoQueue"])["Attributes"]
    except EntityNotFoundError:
        raise
    except BackendError as exc:
        if exc.retryable:
            raise
        # e.g. no sqs:GetQueueAttributes permission: fall back to what the name and AWS's defaults say
        log.info("cannot read the attributes of SQS queue %s (%s); assuming the defaults", name, exc.reason)
        attrs = {}
    fifo = str(attrs.get("FifoQueue", "")).lower() == "true" or name.endswith(".fifo")
    max_bytes = int(attrs.get("MaximumMessageSize") or SQS_MAX_BYTES)
    return _Queue(url, fifo, min(max_bytes, SQS_MAX_BYTES))


class SqsPublisher(_AwsPublisher):
    service = "SQS"
    body_field = "MessageBody"

    def __init__(self, uri: BackendURI) -> None:
        super().__init__(uri)
        name, account, region = _queue_name(uri)
        self._conn = _Connection("sqs", uri, region_hint=region)
        try:
            queue = _open_queue(self._conn, name, account, bool(uri.options.get("create")))
        except BaseException:
            self._conn.client.close()
            raise
        self.queue_url = queue.url
        self.fifo = queue.fifo
        self.max_message_bytes = queue.max_bytes
        # 1 MiB per SendMessageBatch on AWS since the 2025 increase; a server still on the old limits
        # (256 KiB per message and per batch; it reports MaximumMessageSize=262144) gets 256 KiB batches
        self.max_batch_bytes = min(SQS_MAX_BYTES, max(queue.max_bytes, SNS_MAX_BYTES)) - _BATCH_RESERVE

    def _call_batch(self, entries: list[dict[str, Any]]) -> Mapping[str, Any]:
        result: Mapping[str, Any] = self._conn.call("send_message_batch", "SQS queue", QueueUrl=self.queue_url,
                                                    Entries=entries)
        return result


class SqsSubscriber:
    max_receive_count = MAX_BATCH

    def __init__(self, uri: BackendURI) -> None:
        self.where = uri.redacted
        opts = uri.options
        wait = opts.get("wait_time_seconds")
        self._wait = int(wait) if wait is not None else 20
        if not 0 <= self._wait <= 20:
            raise ConfigError(f"wait_time_seconds must be 0-20, got {self._wait}", where=self.where)
        vis = opts.get("visibility_timeout")
        self._visibility: int | None = None if vis is None else int(vis)
        if self._visibility is not None and not 0 <= self._visibility <= 43200:
            raise ConfigError(f"visibility_timeout must be 0-43200 seconds, got {self._visibility}",
                              where=self.where)
        self._raw = bool(opts.get("raw"))
        name, account, region = _queue_name(uri)
        # a long poll must end before the read timeout does
        read_timeout = max(float(opts.get("read_timeout") or 30.0), self._wait + 10.0)
        self._conn = _Connection("sqs", uri, region_hint=region, read_timeout=read_timeout)
        try:
            queue = _open_queue(self._conn, name, account, bool(opts.get("create")))
        except BaseException:
            self._conn.client.close()
            raise
        self.queue_url = queue.url
        self.fifo = queue.fifo
        self._closed = False
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        return self._conn.client

    def __repr__(self) -> str:
        return f"SqsSubscriber({self.where!r})"

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("SQS subscriber is closed", where=self.where)

    def receive_batch(self, max_messages: int, timeout: float) -> list[ReceivedMessage]:
        self._check_open()
        end = time.monotonic() + max(0.0, timeout)
        while True:
            remaining = end - time.monotonic()
            wait = min(self._wait, max(0, math.ceil(remaining)))
            kwargs: dict[str, Any] = {
                "QueueUrl": self.queue_url,
                "MaxNumberOfMessages": max(1, min(MAX_BATCH, max_messages)),
                "WaitTimeSeconds": wait,
                "MessageAttributeNames": ["All"],
                "MessageSystemAttributeNames": ["ApproximateReceiveCount", "MessageGroupId", "SentTimestamp"],
            }
            if self._visibility is not None:
                kwargs["VisibilityTimeout"] = self._visibility
            response = self._conn.call("receive_message", "SQS queue", **kwargs)
            messages = response.get("Messages") or []
            if messages or time.monotonic() >= end:
                return [self._received(m) for m in messages]
            if wait == 0:  # short polling was asked for: do not spin
                time.sleep(min(0.2, max(0.0, end - time.monotonic())))

    def _received(self, m: Mapping[str, Any]) -> ReceivedMessage:
        body = str(m.get("Body") or "")
        attrs: dict[str, str] = {}
        for name, attr in (m.get("MessageAttributes") or {}).items():
            if "StringValue" in attr:
                attrs[name] = attr["StringValue"]
        extra: dict[str, Any] = {}
        unwrapped = None if self._raw else unwrap_sns(body, attrs)
        if unwrapped is not None:
            body, attrs, meta = unwrapped
            extra["sns"] = meta
        system = m.get("Attributes") or {}
        count = system.get("ApproximateReceiveCount")
        return ReceivedMessage(
            body=body.encode("utf-8"),
            attributes=attrs,
            ack_id=m["ReceiptHandle"],
            delivery_count=int(count) if count else None,
            ordering_key=system.get("MessageGroupId"),
            message_id=m.get("MessageId"),
            extra=extra,
        )

    def _settle(self, op: str, messages: Sequence[ReceivedMessage],
                entry: Callable[[str, ReceivedMessage], dict[str, Any]]) -> None:
        self._check_open()
        failures: list[tuple[str, ErrorCode]] = []
        for start in range(0, len(messages), MAX_BATCH):
            chunk = messages[start:start + MAX_BATCH]
            entries = [entry(str(i), m) for i, m in enumerate(chunk)]
            response = self._conn.call(op, "SQS queue", QueueUrl=self.queue_url, Entries=entries)
            for f in response.get("Failed") or []:
                code = str(f.get("Code") or "Unknown")
                failures.append((f"{code}: {f.get('Message') or ''}", code_for(code, f.get("SenderFault"))))
        if failures:
            raise BackendError(
                redact(f"{len(failures)} of {len(messages)} entries failed: {failures[0][0]}"),
                where=self.where,
                error_code=next((c for _, c in failures if not is_transient(c)), failures[0][1]),
            )

    def ack(self, messages: Sequence[ReceivedMessage]) -> None:
        self._settle("delete_message_batch", messages, lambda i, m: {"Id": i, "ReceiptHandle": m.ack_id})

    def nack(self, messages: Sequence[ReceivedMessage]) -> None:
        self._settle("change_message_visibility_batch", messages,
                     lambda i, m: {"Id": i, "ReceiptHandle": m.ack_id, "VisibilityTimeout": 0})

    def defer(self, messages: Sequence[ReceivedMessage], delay: float) -> None:
        # SQS counts visibility in whole seconds, at most 12 hours
        seconds = max(1, min(43200, math.ceil(delay)))
        self._settle("change_message_visibility_batch", messages,
                     lambda i, m: {"Id": i, "ReceiptHandle": m.ack_id, "VisibilityTimeout": seconds})

    def error_code(self, exc: BaseException) -> ErrorCode:
        return error_code(exc)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._conn.client.close()
        except Exception:
            log.debug("closing the SQS client failed", exc_info=True)


# --- SNS ----------------------------------------------------------------------------------------------


def _check_topic_name(uri: BackendURI) -> None:
    name = uri.name
    if not _arn_parts(name) and not _TOPIC_NAME.fullmatch(name.removesuffix(".fifo")):
        raise ConfigError(f"{name!r} is not an SNS topic name or ARN", where=uri.redacted)


class SnsPublisher(_AwsPublisher):
    service = "SNS"
    body_field = "Message"

    def __init__(self, uri: BackendURI) -> None:
        super().__init__(uri)
        name = uri.name
        arn = _arn_parts(name)
        self._conn = _Connection("sns", uri, region_hint=arn[1] if arn else None)
        try:
            self.topic_arn = self._resolve(uri, name, arn)
            self._check_topic()
        except BaseException:
            self._conn.client.close()
            raise
        self.max_message_bytes = SNS_MAX_BYTES
        self.max_batch_bytes = SNS_MAX_BYTES - _BATCH_RESERVE

    def _resolve(self, uri: BackendURI, name: str, arn: tuple[str, str, str, str] | None) -> str:
        if arn:
            self.fifo = arn[3].endswith(".fifo")
            return name
        _check_topic_name(uri)
        self.fifo = name.endswith(".fifo")
        what = f"SNS topic {name!r}"
        if uri.options.get("create"):
            attributes = {"FifoTopic": "true"} if self.fifo else {}
            created: str = self._conn.call("create_topic", what, Name=name, Attributes=attributes)["TopicArn"]
            return created
        account = uri.options.get("account")
        if account:
            return f"arn:{self._conn.partition()}:sns:{self._conn.region}:{account}:{name}"
        token = None
        while True:  # ListTopics pages 100 at a time; pass ?account=... to skip this
            page = self._conn.call("list_topics", what, **({"NextToken": token} if token else {}))
            for topic in page.get("Topics") or []:
                topic_arn = str(topic.get("TopicArn", ""))
                if topic_arn.rsplit(":", 1)[-1] == name:
                    return topic_arn
            token = page.get("NextToken")
            if not token:
                raise EntityNotFoundError(f"{what} does not exist in {self._conn.region}", where=self.where)

    def _check_topic(self) -> None:
        what = f"SNS topic {self.topic_arn!r}"
        try:
            attrs = self._conn.call("get_topic_attributes", what, TopicArn=self.topic_arn)["Attributes"]
        except EntityNotFoundError:
            raise
        except BackendError as exc:
            if exc.retryable:
                raise
            log.info("cannot read the attributes of %s (%s); assuming it exists", what, exc.reason)
            return
        if str(attrs.get("FifoTopic", "")).lower() == "true":
            self.fifo = True

    def _call_batch(self, entries: list[dict[str, Any]]) -> Mapping[str, Any]:
        result: Mapping[str, Any] = self._conn.call("publish_batch", "SNS topic", TopicArn=self.topic_arn,
                                                    PublishBatchRequestEntries=entries)
        return result


# --- backends -----------------------------------------------------------------------------------------

_CONNECTION_OPTIONS = (
    Option("region", str, None, "AWS region; default: the profile's, AWS_REGION or AWS_DEFAULT_REGION "
                                "(us-east-1 with a local endpoint_url; an ARN's own region)"),
    Option("endpoint_url", str, None, "e.g. http://localhost:4566 for LocalStack; default: "
                                      "AWS_ENDPOINT_URL_SQS/_SNS or AWS_ENDPOINT_URL, else AWS"),
    Option("profile", str, None, "named profile from ~/.aws/config; its keys are never shown"),
    Option("aws_access_key_id", str, None, "access key id (prefer a profile, the environment or a role)",
           secret=True),
    Option("aws_secret_access_key", str, None, "secret access key (prefer a profile or the environment); "
                                               "never shown", secret=True),
    Option("aws_session_token", str, None, "session token for temporary credentials; never shown", secret=True),
    Option("account", str, None, "owner account id: another account's queue, or a topic ARN built without "
                                 "ListTopics"),
    Option("create", bool, False, "create the queue/topic when missing (FIFO if the name ends in .fifo); "
                                  "default: fail with entity_not_found"),
    Option("connect_timeout", float, 5.0, "seconds to open a connection"),
    Option("read_timeout", float, 30.0, "seconds to wait for a response (raised above wait_time_seconds)"),
    Option("max_attempts", int, 1, "accepted for old URIs and ignored: botocore makes one attempt per call; "
                                   "`retries` (the one retry policy) decides"),
)


class _SqsBackend:
    schemes = ("sqs",)
    extra = "aws"
    forms = ("sqs://QUEUE", "sqs://QUEUE.fifo", "sqs://arn:aws:sqs:REGION:ACCOUNT:QUEUE")
    options = (
        *_CONNECTION_OPTIONS,
        Option("wait_time_seconds", int, 20, "subscriber: longest long poll per ReceiveMessage, 0-20 "
                                             "(never longer than the receive timeout)"),
        Option("visibility_timeout", int, None, "subscriber: seconds a received message stays hidden; "
                                                "default: the queue's"),
        Option("raw", bool, False, "subscriber: take bodies as they are; default: detect and unwrap SNS "
                                   "notification envelopes (subscriptions without raw delivery)"),
    )

    def check_publisher(self, uri: BackendURI) -> None:
        _queue_name(uri)

    check_subscriber = check_publisher

    def open_publisher(self, uri: BackendURI) -> SqsPublisher:
        return SqsPublisher(uri)

    def open_subscriber(self, uri: BackendURI) -> SqsSubscriber:
        return SqsSubscriber(uri)


class _SnsBackend:
    schemes = ("sns",)
    extra = "aws"
    forms = ("sns://TOPIC", "sns://TOPIC.fifo", "sns://arn:aws:sns:REGION:ACCOUNT:TOPIC")
    options = _CONNECTION_OPTIONS

    def check_publisher(self, uri: BackendURI) -> None:
        _check_topic_name(uri)

    def open_publisher(self, uri: BackendURI) -> SnsPublisher:
        return SnsPublisher(uri)

    def check_subscriber(self, uri: BackendURI) -> NoReturn:
        raise ConfigError(
            "sns:// has no subscriber: subscribe an SQS queue to the topic (raw message delivery on or off) "
            "and read it with sqs://QUEUE",
            where=uri.redacted,
        )

    def open_subscriber(self, uri: BackendURI) -> SqsSubscriber:
        self.check_subscriber(uri)


SQS_BACKEND = _SqsBackend()
SNS_BACKEND = _SnsBackend()
