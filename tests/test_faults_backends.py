"""Backend faults with the bridge running: a :class:`Bridge` takes events in at a steady rate and
publishes them through its outbox to a real test backend while that backend fails, then recovers.

Per backend and fault the experiment records events sent, delivered, lost (must be 0), duplicates
(allowed only as the same event with the same id) and the time to recover (from the end of the fault
until everything sent before it had arrived); see ``fault_tools.record`` for where the figures go.

* SQS and SNS: moto's HTTP server stopped mid-stream and started again (same state, new listener);
* Pub/Sub: the in-repo gRPC fake stopped and started again on the same port, and answering
  ``Publish`` with UNAVAILABLE, then RESOURCE_EXHAUSTED, for a stretch;
* Service Bus: the stand-in broker dropping every connection again and again, and answering
  ``com.microsoft:server-busy``.

The consumer that counts arrivals is paused around each fault, so every duplicate it sees was
published twice by the bridge, not redelivered because the counting consumer itself failed.
The bounded form (a few hundred events, a 2-3 s fault) runs by default; ``-m faults`` or
``BATCHBRIDGE_FAULTS_FULL=1`` sends more for longer.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import orjson
import pytest
from batchbridge.core.bridge import Bridge
from batchbridge.core.config import config_from_dict
from fault_tools import Arrivals, Figures, record, scale, tencent_payloads, wait_until
from servicebus_broker import ServiceBusEnv, servicebus_broker  # noqa: F401  (the session fixture)

if TYPE_CHECKING:
    from aws_servers import AwsServer, Queue, RestartableMoto

# bounded by default; `pytest -m faults` (or BATCHBRIDGE_FAULTS_FULL=1) runs the full-size experiments
pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]


class Consumer(threading.Thread):
    """Drains the destination into an :class:`Arrivals` ledger; :meth:`pause` waits until the step in
    progress (a receive and its acknowledgement) is over, so a fault never hits the counting side."""

    def __init__(self, step: Callable[[Arrivals], None], arrivals: Arrivals) -> None:
        super().__init__(name="fault-consumer", daemon=True)
        self.step = step
        self.arrivals = arrivals
        self._run = threading.Event()
        self._run.set()
        self._idle = threading.Event()
        self._halt = threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        while not self._halt.is_set():
            if not self._run.is_set():
                self._idle.set()
                self._run.wait(0.1)
                continue
            self._idle.clear()
            try:
                self.step(self.arrivals)
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                time.sleep(0.1)

    def pause(self) -> None:
        self._run.clear()
        self._idle.clear()
        assert self._idle.wait(60), "the consumer did not come to rest"

    def resume(self) -> None:
        self._run.set()

    def stop(self) -> None:
        self._halt.set()
        self._run.set()
        self.join(60)


@dataclass
class Fault:
    name: str
    start: Callable[[], None]
    end: Callable[[], None]
    #: seconds the fault lasts (start, wait, end)
    duration: float


def bridge_for(tmp_path: Path, uri: str | list[tuple[str, str]]) -> Bridge:
    routes = [{"to": uri}] if isinstance(uri, str) else [{"match": m, "to": u} for m, u in uri]
    return Bridge(config_from_dict({
        "routes": routes,
        "outbox": {"path": str(tmp_path / "outbox.db"), "backoff_initial": 0.1, "backoff_max": 2.0},
    }))


def run_outage(request: pytest.FixtureRequest, tmp_path: Path, *, backend: str, uri: str | list[tuple[str, str]],
               step: Callable[[Arrivals], None] | list[Callable[[Arrivals], None]], fault: Fault, n: int,
               rate: float, consumers: int = 1, extra: Callable[[], dict[str, Any]] | None = None) -> Figures:
    """Feed ``n`` events at ``rate``/s; a third of the way in, ``fault`` strikes for its duration.
    ``uri`` is one destination, or (event name, destination) routes; ``step`` one consumer step (run by
    ``consumers`` threads) or one per destination."""
    items = tencent_payloads(n, tag=f"{backend[:2]}{int(time.time() * 1000) % 100000}-")
    arrivals = Arrivals()
    steps = step if isinstance(step, list) else [step] * consumers
    workers = [Consumer(s, arrivals) for s in steps]
    bridge = bridge_for(tmp_path, uri).start()
    for w in workers:
        w.start()
    sent: list[str] = []
    sent_at: list[float] = []
    fault_end = 0.0
    published_s = -1.0
    ender: threading.Thread | None = None
    try:
        start = time.monotonic()
        struck = False
        for i, (body, eid) in enumerate(items):
            if not struck and i >= n // 3:
                struck = True
                for w in workers:
                    w.pause()
                fault.start()
                ends_at = time.monotonic() + fault.duration

                def finish(ends_at: float = ends_at) -> None:
                    nonlocal fault_end, published_s
                    time.sleep(max(0.0, ends_at - time.monotonic()))
                    fault.end()
                    fault_end = time.monotonic()
                    for w in workers:
                        w.resume()
                    # the bridge's own part of the recovery: until the backend has confirmed every row that
                    # was in the outbox when the fault ended (the rest is the consumer reading them back)
                    last = bridge.outbox._read("SELECT max(seq) FROM outbox")[0][0] or 0
                    while bridge.outbox._read("SELECT count(*) FROM outbox WHERE seq <= ?", (last,))[0][0]:
                        time.sleep(0.02)
                    published_s = time.monotonic() - fault_end

                ender = threading.Thread(target=finish, daemon=True)
                ender.start()
            result = bridge.handle(body, source="fault-test")
            assert result.ok and result.deliveries == 1, result
            sent.append(eid)
            sent_at.append(time.monotonic())
            delay = start + (i + 1) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        assert ender is not None
        ender.join(300)
        arrived = arrivals.wait_for(sent, timeout=180)
        delivered, lost, dups = arrivals.figures(sent)
        # the backlog of the fault: everything handed to the bridge before the backend came back
        recovery = arrivals.recovery([e for e, t in zip(sent, sent_at, strict=True) if t <= fault_end], fault_end)
        fig = record(Figures(
            experiment="bridge outage", backend=backend, fault=fault.name, sent=len(sent), delivered=delivered,
            lost=lost, duplicates=dups, recovery_s=recovery,
            extra={"rate": f"{rate:g}/s", "fault_s": f"{fault.duration:g}", "outbox_backlog_published_s":
                   f"{published_s:.2f}",
                   "publish_failures": sum(bridge.stats.snapshot()["failed"].values()),
                   "dead_lettered": bridge.outbox.dead_letter_count(), **(extra() if extra else {})}),
            request.config)
        assert arrived, f"{lost} of {len(sent)} events never arrived; consumer errors: {workers[0].errors[-3:]}"
        assert fig.lost == 0
        assert arrivals.inconsistent_duplicates() == [], "a duplicate differs from the first copy"
        assert bridge.outbox.dead_letter_count() == 0
        wait_until(lambda: bridge.outbox.depth() == 0, 30, what="an empty outbox")
        return fig
    finally:
        for w in workers:
            w.stop()
        bridge.stop()


# --- SQS and SNS on moto ------------------------------------------------------------------------------


def sqs_step(aws: AwsServer, queue: Queue) -> Callable[[Arrivals], None]:
    sqs = aws.client("sqs")

    def step(arrivals: Arrivals) -> None:
        msgs = sqs.receive_message(QueueUrl=queue.url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                   VisibilityTimeout=30).get("Messages", [])
        if msgs:
            sqs.delete_message_batch(QueueUrl=queue.url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)])
        for m in msgs:
            arrivals.add(m["Body"].encode())

    return step


def moto_fault(moto: RestartableMoto, seconds: float) -> Fault:
    return Fault(f"moto server stopped for {seconds:g}s, then restarted", moto.stop, moto.start, seconds)


# one destination per event type: moto's SQS is linear per operation in queue depth, so a 2,000-event
# backlog in one queue would measure moto, not the bridge (as tests/test_durability.py does)
TYPES = ("JobRunning", "JobSucceed", "JobFailed", "TaskRunning", "TaskSucceed", "TaskFailed",
         "TaskInstanceSucceed", "TaskInstanceFailed")


def test_sqs_moto_restart(request: pytest.FixtureRequest, tmp_path: Path,
                          moto_restartable: RestartableMoto) -> None:
    aws = moto_restartable.server
    queues = [aws.queue() for _ in TYPES]
    run_outage(request, tmp_path, backend="sqs (moto)",
               uri=[(t, aws.uri("sqs", q.name)) for t, q in zip(TYPES, queues, strict=True)],
               step=[sqs_step(aws, q) for q in queues],
               fault=moto_fault(moto_restartable, scale(request.config, 3, 10)),
               n=scale(request.config, 450, 3000), rate=scale(request.config, 150, 200))


def test_sns_moto_restart(request: pytest.FixtureRequest, tmp_path: Path,
                          moto_restartable: RestartableMoto) -> None:
    aws = moto_restartable.server
    topics = [aws.topic() for _ in TYPES]
    queues = [aws.queue() for _ in TYPES]
    for topic, queue in zip(topics, queues, strict=True):
        aws.subscribe(topic, queue, raw=True)
    run_outage(request, tmp_path, backend="sns (moto)",
               uri=[(t, aws.uri("sns", topic.arn)) for t, topic in zip(TYPES, topics, strict=True)],
               step=[sqs_step(aws, q) for q in queues],
               fault=moto_fault(moto_restartable, scale(request.config, 3, 10)),
               n=scale(request.config, 450, 3000), rate=scale(request.config, 150, 200))


# --- Pub/Sub on the in-repo fake ---------------------------------------------------------------------


class RestartableFake:
    """The gRPC fake on a fixed port; :meth:`stop` closes the server (clients see UNAVAILABLE),
    :meth:`start` serves the same state again on the same port."""

    def __init__(self) -> None:
        from pubsub_fake import serve

        self._serve = serve
        self.server, self.fake, self.host = serve()
        self.port = int(self.host.rsplit(":", 1)[1])

    def stop(self) -> None:
        self.server.stop(None).wait(10)

    def start(self) -> None:
        end = time.monotonic() + 10
        while True:
            try:
                self.server, _, _ = self._serve(port=self.port, fake=self.fake)
                return
            except RuntimeError:  # the port is not free yet
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        self.fake.stop()
        self.server.stop(None)


@pytest.fixture
def pubsub_fake() -> Iterator[RestartableFake]:
    fake = RestartableFake()
    try:
        yield fake
    finally:
        fake.close()


def pubsub_setup(fake: RestartableFake) -> tuple[str, Callable[[Arrivals], None]]:
    from pubsub_servers import admin

    adm = admin(fake.host, "faults")
    name = f"t-{time.monotonic_ns()}"
    adm.create_topic(name)
    adm.create_subscription(name, name, ack_deadline_seconds=60)
    sub = adm.subscription(name)

    def step(arrivals: Arrivals) -> None:
        try:
            response = adm.subscriber.pull(request={"subscription": sub, "max_messages": 100}, retry=None,
                                           timeout=2.0)
        except Exception as exc:
            if type(exc).__name__ == "DeadlineExceeded":
                return
            raise
        batch = list(response.received_messages)
        if batch:
            adm.subscriber.acknowledge(subscription=sub, ack_ids=[r.ack_id for r in batch], retry=None,
                                       timeout=10)
        for r in batch:
            arrivals.add(bytes(r.message.data))

    return f"pubsub://faults/{name}?emulator_host={fake.host}&timeout=5", step


def test_pubsub_fake_restart(request: pytest.FixtureRequest, tmp_path: Path, pubsub_fake: RestartableFake) -> None:
    uri, step = pubsub_setup(pubsub_fake)
    seconds = scale(request.config, 3, 10)
    run_outage(request, tmp_path, backend="pubsub (fake)", uri=uri, step=step,
               fault=Fault(f"server stopped for {seconds:g}s, then restarted on the same port", pubsub_fake.stop,
                           pubsub_fake.start, seconds),
               n=scale(request.config, 600, 4000), rate=scale(request.config, 200, 300))


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_pubsub_fake_refuses_publish(request: pytest.FixtureRequest, tmp_path: Path, pubsub_fake: RestartableFake,
                                     code: grpc.StatusCode) -> None:
    uri, step = pubsub_setup(pubsub_fake)
    seconds = scale(request.config, 2, 10)
    faults = pubsub_fake.fake.faults
    run_outage(
        request, tmp_path, backend="pubsub (fake)", uri=uri, step=step,
        fault=Fault(f"Publish answered {code.name} for {seconds:g}s",
                    lambda: faults.fail(code, methods=("Publish",)), faults.clear, seconds),
        n=scale(request.config, 600, 4000), rate=scale(request.config, 200, 300),
        extra=lambda: {"refused_calls": faults.hits})
    assert faults.hits > 0  # the fault did hit the bridge (its publisher retried, then the outbox kept the rows)


# --- Service Bus on the stand-in broker --------------------------------------------------------------


def servicebus_step(sb: ServiceBusEnv, queue: str) -> tuple[Callable[[Arrivals], None], Callable[[], None]]:
    from azure.servicebus import ServiceBusClient

    state: dict[str, Any] = {}

    def receiver() -> Any:
        if "r" not in state:
            state["c"] = ServiceBusClient.from_connection_string(sb.connection_string)
            state["r"] = state["c"].get_queue_receiver(queue, max_wait_time=1)
            state["r"].__enter__()
        return state["r"]

    def reset() -> None:
        for key in ("r", "c"):
            obj = state.pop(key, None)
            if obj is not None:
                with contextlib.suppress(Exception):  # a receiver on a dropped connection may fail to close
                    obj.close()

    def step(arrivals: Arrivals) -> None:
        try:
            r = receiver()
            msgs = r.receive_messages(max_message_count=50, max_wait_time=1)
            for m in msgs:
                r.complete_message(m)
                arrivals.add(b"".join(bytes(b) for b in m.body))
        except Exception:
            reset()  # a new connection after a dropped one
            raise

    return step, reset


@pytest.fixture
def sbenv(servicebus_broker: ServiceBusEnv) -> ServiceBusEnv:  # noqa: F811
    if servicebus_broker.broker is None:
        pytest.skip("fault hooks need the stand-in broker")
    return servicebus_broker


def test_servicebus_dropped_connections(request: pytest.FixtureRequest, tmp_path: Path, sbenv: ServiceBusEnv) -> None:
    broker = sbenv.broker
    assert broker is not None
    queue = sbenv.queue()
    step, reset = servicebus_step(sbenv, queue)
    seconds = scale(request.config, 3, 10)
    stop = threading.Event()

    def dropping() -> None:
        while not stop.wait(0.4):
            broker.drop_connections()

    dropper = threading.Thread(target=dropping, daemon=True)

    def start() -> None:
        stop.clear()
        dropper.start()

    def end() -> None:
        stop.set()
        dropper.join(30)
        reset()

    try:
        run_outage(request, tmp_path, backend="servicebus (stand-in)", uri=sbenv.uri(queue), step=step,
                   fault=Fault(f"every connection dropped every 0.4s for {seconds:g}s", start, end, seconds),
                   n=scale(request.config, 450, 3000), rate=scale(request.config, 150, 200))
    finally:
        reset()


def test_servicebus_server_busy(request: pytest.FixtureRequest, tmp_path: Path, sbenv: ServiceBusEnv) -> None:
    broker = sbenv.broker
    assert broker is not None
    queue = sbenv.queue()
    step, reset = servicebus_step(sbenv, queue)
    refusals = scale(request.config, 15, 60)
    try:
        run_outage(
            request, tmp_path, backend="servicebus (stand-in)", uri=sbenv.uri(queue), step=step,
            fault=Fault(f"the next {refusals} sends answered com.microsoft:server-busy",
                        lambda: broker.server_busy(refusals), lambda: None, 2.0),
            n=scale(request.config, 450, 3000), rate=scale(request.config, 150, 200),
            extra=lambda: {"busy_refusals_left": broker._busy})
        assert broker._busy == 0  # every refusal was used up on the bridge's sends
    finally:
        reset()


# --- ordering under a transient fault ---------------------------------------------------------------------


def test_a_failed_batch_holds_back_later_events_of_its_key(pubsub_fake: RestartableFake) -> None:
    """Regression: when a batch failed retryably (retries spent), the publisher went on with the next
    batch of the same lane, so later events of the same job were delivered before the failed ones
    (which the outbox sent again afterwards): per-job order broke under a transient fault. Now a
    retryable failure holds back every later event with the same ordering key in that publish call
    (reported "not sent", retryable), and the next attempt sends them all in order."""
    from batchbridge.core.backends import open_publisher
    from batchbridge.core.normalizing import normalize
    from pubsub_servers import admin
    from vendor_payloads import compact, tencent_element, tencent_message

    adm = admin(pubsub_fake.host, "order")
    adm.create_topic("ordered")
    adm.create_subscription("ordered", "ordered")
    names = ["JOB_RUNNING", "TASK_RUNNING", "TASK_SUCCEED", "JOB_SUCCEED"] * 5
    events = [normalize(compact(tencent_message(tencent_element(n, JobId="job-order", TaskInstanceIndex=i))))[0]
              for i, n in enumerate(names)]
    other = normalize(compact(tencent_message(tencent_element("JOB_RUNNING", JobId="job-other"))))[0]
    uri = f"pubsub://order/ordered?emulator_host={pubsub_fake.host}&ordering=true"
    with open_publisher(uri, batch_size=5, retries=2, retry_max_wait=0.1, concurrency=1) as pub:
        pubsub_fake.fake.faults.fail(grpc.StatusCode.UNAVAILABLE, calls=2, methods=("Publish",))
        first = pub.publish([*events, other])
        assert not first[0].ok  # the first batch of job-order spent its retries
        assert all(not r.ok and r.error is not None and r.error.retryable for r in first[:len(events)])
        assert first[-1].ok  # another job's event is not held back
        again = [e for e, r in zip(events, first, strict=False) if not r.ok]
        assert all(r.ok for r in pub.publish(again))
    got = adm.pull("ordered", len(events) + 1)
    order = [orjson.loads(m.message.data)["id"] for m in got
             if orjson.loads(m.message.data)["data"]["job"]["id"] == "job-order"]
    assert order == [e["id"] for e in events]
