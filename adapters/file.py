"""``file:///path/events.jsonl``: append-only JSON Lines, the CLI's embedded default.

Each line is one structured CloudEvent, so the file is directly usable with ``jq`` or any JSON Lines
reader. A batch is written with one ``write`` under an exclusive ``flock`` (concurrent writers never
interleave lines), then flushed and fsynced before the batch is confirmed. The publisher follows
rotation and deletion as log shippers do: when the path no longer names the file it has open
(``logrotate``'s rename, an ``rm``), it opens -- or creates -- the one it names now, and a batch is
confirmed only once it is in that file.

Read back as a subscription, a named cursor (``<file>.<subscription>.cursor``) holds the byte offset
up to which every line was acked; it is replaced atomically, so a consumer that dies resumes after
the last contiguous ack and redelivers the rest (at-least-once, like the brokers).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Sequence
from pathlib import Path

from batchbridge.core.driver import Message, ReceivedMessage
from batchbridge.core.errors import BatchBridgeError, ClosedError, ConfigError, EntityNotFoundError
from batchbridge.core.registry import BackendURI, Option
from batchbridge.core.retry import ErrorCode, code_of
from batchbridge.core.secrets import redact

#: a bad path (missing, not a directory, a directory) is the event's route, not an outage: it is
#: never retried; other OS errors (a full disk, a vanished mount) may heal
#: (EEXIST: a directory of the path is a file, as mkdir finds it)
_ERRNO_CODES = {errno.ENOENT: ErrorCode.INVALID_ARGUMENT, errno.ENOTDIR: ErrorCode.INVALID_ARGUMENT,
                errno.EEXIST: ErrorCode.INVALID_ARGUMENT,
                errno.EISDIR: ErrorCode.INVALID_ARGUMENT, errno.EACCES: ErrorCode.PERMISSION_DENIED,
                errno.EROFS: ErrorCode.PERMISSION_DENIED, errno.ENOSPC: ErrorCode.RESOURCE_EXHAUSTED}


def error_code(exc: BaseException) -> ErrorCode:
    """The portable code of an OS error on the file (and of anything else, the generic one)."""
    # a full disk or a vanished mount may come back; a bad path will not
    if isinstance(exc, OSError):
        return _ERRNO_CODES.get(exc.errno or 0, ErrorCode.UNAVAILABLE)
    return code_of(exc)


def _path(uri: BackendURI) -> Path:
    if uri.host not in ("", "localhost"):
        raise ConfigError("file:// URIs name a local path: file:///abs/path or file://localhost/abs/path",
                          where=uri.redacted)
    if not uri.path or uri.path.endswith("/"):
        raise ConfigError("file:// needs a file path, e.g. file:///var/lib/batchbridge/events.jsonl",
                          where=redact(uri.raw))
    if not uri.path.startswith("/"):
        # file:ev.jsonl would name a file relative to wherever the process runs, and reads back as
        # file:///ev.jsonl in every message: say which absolute URI was meant instead
        raise ConfigError(f"a file URI names an absolute path: write file://{Path(uri.path).absolute()} "
                          f"for {uri.path!r}", where=redact(uri.raw))
    return Path(uri.path)


def _sync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _publisher_path(uri: BackendURI) -> Path:
    if uri.options["mode"] == "binary":
        raise ConfigError("file:// stores structured CloudEvents only; drop ?mode=binary", where=uri.redacted)
    return _path(uri)


def _cut_torn_tail(fd: int) -> None:
    """Drop a partial last line left by a writer killed mid-batch.

    Writers hold the lock for a whole batch, so with the lock held a file that does not end in a
    newline can only end in a dead writer's fragment, from a batch it never confirmed (the sender
    resends it). Appending after the fragment would glue the next event onto it.
    """
    size = os.fstat(fd).st_size
    pos, keep = size, 0
    while pos > 0:
        step = min(65536, pos)
        chunk = os.pread(fd, step, pos - step)
        i = chunk.rfind(b"\n")
        if i >= 0:
            keep = pos - step + i + 1
            break
        pos -= step
    if keep != size:
        os.ftruncate(fd, keep)


class FilePublisher:
    attribute_prefix = "ce-"
    max_attributes = 64
    max_batch_count = 1000
    #: a line is the message body alone (no attributes, key or id kept): the outbox's stored bytes are
    #: already the line, so delivery sends them as they are (``Publisher.publish_stored``)
    stores_body = True

    def __init__(self, uri: BackendURI) -> None:
        self._path = _publisher_path(uri)
        self._where = uri.redacted
        self._fsync = bool(uri.options["fsync"])
        self.max_message_bytes = int(uri.options["max_bytes"])
        self.max_batch_bytes = max(self.max_message_bytes, 8 * 1024 * 1024)
        self._fd: int | None = None
        self._open()

    def _open(self) -> int:
        """Open (creating it when missing) the file the path names now, and drop a torn tail in it."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        created = not self._path.exists()
        fd = os.open(self._path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        if created and self._fsync:
            _sync_dir(self._path.parent)  # the new name must survive a power cut as the lines in it do
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            _cut_torn_tail(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = fd
        return fd

    def _named(self, fd: int) -> bool:
        """Whether the path still names the file ``fd`` is open on (not rotated away, not deleted)."""
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return False
        fst = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)

    def _locked(self) -> int:
        """The current file's descriptor, locked: reopened first when the path was rotated or deleted
        (as log shippers follow a file), and checked again under the lock, since a rotation can come
        between the check and the lock."""
        assert self._fd is not None
        fd = self._fd
        for _ in range(100):
            if not self._named(fd):
                fd = self._open()
            fcntl.flock(fd, fcntl.LOCK_EX)
            if self._named(fd):
                return fd
            fcntl.flock(fd, fcntl.LOCK_UN)
        raise BatchBridgeError("the file keeps being replaced while it is written", where=self._where)

    def _check(self, body: bytes) -> BatchBridgeError | None:
        if b"\n" in body or b"\r" in body or not body.startswith(b"{"):
            return BatchBridgeError("file:// stores one JSON object per line; this body is not one",
                                    where=self._where)
        # ASCII is UTF-8, and the test is far cheaper than decoding (orjson's output is nearly always ASCII)
        if not body.isascii():
            try:
                body.decode("utf-8")
            except UnicodeDecodeError:
                return BatchBridgeError("file:// stores UTF-8 JSON Lines; this body is not UTF-8",
                                        where=self._where)
        return None

    def send_batch(self, messages: Sequence[Message]) -> list[BaseException | None]:
        if self._fd is None:
            raise ClosedError("file publisher is closed", where=self._where)
        errors = [self._check(m.body) for m in messages]
        # one join of bodies and newlines: the batch is copied once, not once per line and again whole
        parts: list[bytes] = []
        for m, error in zip(messages, errors, strict=True):
            if error is None:
                parts += (m.body, b"\n")
        data = b"".join(parts)
        # confirmed only once the lines are in the file the path names: written into a file that was
        # deleted (or rotated away) meanwhile, they are written again into the one it names now
        while data:
            fd = self._locked()
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if self._fsync:
                    os.fsync(fd)
                if self._named(fd):
                    break
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        return list(errors)

    def error_code(self, exc: BaseException) -> ErrorCode:
        return error_code(exc)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class FileSubscriber:
    max_receive_count = 1000

    def __init__(self, uri: BackendURI) -> None:
        self._path = _path(uri)
        self._where = uri.redacted
        if not self._path.exists():
            if not uri.options["create"]:
                raise EntityNotFoundError(f"no such file: {self._path}", where=self._where)
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._path.touch()
        self._cursor = self._path.with_name(f"{self._path.name}.{uri.options['subscription']}.cursor")
        self._committed = self._load_cursor()
        self._read_pos = self._committed
        self._visibility = float(uri.options["visibility_timeout"])
        self._in_flight: dict[int, tuple[ReceivedMessage, float]] = {}
        self._acked: dict[int, int] = {}  # start -> end, waiting for the ranges before them
        self._redeliver: list[ReceivedMessage] = []
        self._deliveries: dict[int, int] = {}
        self._fh = open(self._path, "rb")  # noqa: SIM115 - held for the subscriber's life
        self._closed = False

    def _load_cursor(self) -> int:
        try:
            return int(self._cursor.read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError:
            raise ConfigError(f"cursor file {self._cursor} is corrupt", where=self._where) from None

    def _check(self) -> None:
        if self._closed:
            raise ClosedError("file subscriber is closed", where=self._where)

    def _read(self, n: int) -> list[ReceivedMessage]:
        out: list[ReceivedMessage] = []
        self._fh.seek(self._read_pos)
        while len(out) < n:
            line = self._fh.readline()
            if not line.endswith(b"\n"):
                break  # a writer is mid-line (or EOF): read it next time, whole
            start, self._read_pos = self._read_pos, self._read_pos + len(line)
            body = line.rstrip(b"\r\n")
            if body:
                out.append(ReceivedMessage(body, {}, (start, self._read_pos), None, 1, None, f"{start}"))
            else:
                self._acked[start] = self._read_pos
        return out

    def _expire(self) -> None:
        now = time.monotonic()
        for start, (msg, deadline) in list(self._in_flight.items()):
            if deadline <= now:
                del self._in_flight[start]
                self._redeliver.append(msg)

    def receive_batch(self, max_messages: int, timeout: float) -> list[ReceivedMessage]:
        self._check()
        end = time.monotonic() + timeout
        while True:
            self._expire()
            self._redeliver.sort(key=lambda m: m.ack_id[0])
            out, self._redeliver = self._redeliver[:max_messages], self._redeliver[max_messages:]
            out += self._read(max_messages - len(out))
            if out or time.monotonic() >= end:
                break
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))
        deadline = time.monotonic() + self._visibility
        for m in out:
            start = m.ack_id[0]
            self._deliveries[start] = m.delivery_count = self._deliveries.get(start, 0) + 1
            self._in_flight[start] = (m, deadline)
        return out

    def ack(self, messages: Sequence[ReceivedMessage]) -> None:
        self._check()
        for m in messages:
            start, end = m.ack_id
            if self._in_flight.pop(start, None) is not None:
                self._acked[start] = end
                self._deliveries.pop(start, None)
        self._commit()

    def _commit(self) -> None:
        pos = self._committed
        while pos in self._acked:
            pos = self._acked.pop(pos)
        if pos != self._committed:
            tmp = self._cursor.with_suffix(".tmp")
            tmp.write_text(str(pos))
            os.replace(tmp, self._cursor)
            self._committed = pos

    def nack(self, messages: Sequence[ReceivedMessage]) -> None:
        self._check()
        for m in messages:
            if self._in_flight.pop(m.ack_id[0], None) is not None:
                self._redeliver.append(m)

    def defer(self, messages: Sequence[ReceivedMessage], delay: float) -> None:
        self._check()
        deadline = time.monotonic() + delay
        for m in messages:
            if m.ack_id[0] in self._in_flight:
                self._in_flight[m.ack_id[0]] = (m, deadline)

    def error_code(self, exc: BaseException) -> ErrorCode:
        return code_of(exc)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(OSError):
                self._fh.close()


class _FileBackend:
    schemes = ("file",)
    extra = ""
    forms = ("file:///ABS/PATH/events.jsonl",)
    #: structured CloudEvents only (one JSON object per line): ``mode=binary`` is refused
    refuses = ("mode",)
    options = (
        Option("concurrency", int, 1, "batches in flight at once: one, since every batch appends to the same "
               "locked file"),
        Option("fsync", bool, True, "fsync after every batch before confirming it"),
        Option("max_bytes", int, 1024 * 1024, "largest event accepted, bytes"),
        Option("subscription", str, "default", "subscriber: name of the cursor kept beside the file"),
        Option("visibility_timeout", float, 30.0, "subscriber: seconds before an unacked line is redelivered"),
        Option("create", bool, False, "subscriber: create an empty file if none exists"),
    )

    def check_publisher(self, uri: BackendURI) -> None:
        _publisher_path(uri)

    def check_subscriber(self, uri: BackendURI) -> None:
        _path(uri)

    def open_publisher(self, uri: BackendURI) -> FilePublisher:
        return FilePublisher(uri)

    def error_code(self, exc: BaseException) -> ErrorCode:
        """What an exception opening a driver stands for (``batchbridge check`` reports it)."""
        return error_code(exc)

    def open_subscriber(self, uri: BackendURI) -> FileSubscriber:
        return FileSubscriber(uri)


BACKEND = _FileBackend()
