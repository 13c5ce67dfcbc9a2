"""Routing: every event-name spelling, globs, filters, vars, fan-out, both vendor blocks, unrouted."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from batchbridge.core.config import config_from_dict
from batchbridge.core.normalizing import normalize
from batchbridge.core.routing import Router
from vendor_payloads import (
    ALIBABA_SUFFIXES,
    TENCENT_NAMES,
    alibaba_cluster,
    alibaba_job,
    aws_event,
    camel,
    gcp_message,
    pubsub_push,
    tencent_element,
    tencent_message,
)


def one(payload: Any) -> dict[str, Any]:
    (event,) = normalize(payload)
    return event


def router(routes: list[dict[str, Any]], **top: Any) -> Router:
    return Router.from_config(config_from_dict({"routes": routes, **top}))


def destinations(r: Router, event: dict[str, Any]) -> list[str]:
    return [d.destination for d in r.route(event).deliveries]


TENCENT_EVENTS = {name: one(tencent_message(tencent_element(name))) for name in TENCENT_NAMES}


@pytest.mark.parametrize("name", sorted(TENCENT_NAMES))
def test_tencent_every_spelling(name: str) -> None:
    event = TENCENT_EVENTS[name]
    kind, state = TENCENT_NAMES[name]
    canonical = f"batch.{kind}.{state}"
    assert event["type"] == canonical
    for spelling in (name, camel(name), canonical, name.lower()):
        r = router([{"match": [spelling], "to": "memory://hit"}])
        assert destinations(r, event) == ["memory://hit"], spelling
    # and no other Tencent event is caught by it
    r = router([{"match": camel(name), "to": "memory://hit"}])
    others = [n for n, e in TENCENT_EVENTS.items() if destinations(r, e) and n != name]
    assert others == []


@pytest.mark.parametrize("prefix", ["OnJob", "OnTask", "OnInstance"])
@pytest.mark.parametrize("suffix", sorted(ALIBABA_SUFFIXES))
def test_alibaba_every_spelling(prefix: str, suffix: str) -> None:
    event = one(alibaba_job(prefix + suffix))
    kind = {"OnJob": "job", "OnTask": "task", "OnInstance": "task_instance"}[prefix]
    canonical = f"batch.{kind}.{ALIBABA_SUFFIXES[suffix]}"
    assert event["type"] == canonical
    for spelling in (prefix + suffix, canonical):
        assert destinations(router([{"match": spelling, "to": "memory://hit"}]), event) == ["memory://hit"]


def test_spellings_are_one_event_across_vendors() -> None:
    """``JobFailed`` names batch.job.failed whichever vendor emitted it (no provider filter given)."""
    r = router([{"match": ["JobFailed"], "to": "memory://failed"}])
    assert destinations(r, TENCENT_EVENTS["JOB_FAILED"]) == ["memory://failed"]
    assert destinations(r, one(alibaba_job("OnJobFailed"))) == ["memory://failed"]
    assert destinations(r, one(aws_event("FAILED"))) == ["memory://failed"]
    assert destinations(r, TENCENT_EVENTS["JOB_SUCCEED"]) == []


def test_globs_on_canonical_types() -> None:
    r = router([{"match": "batch.node.*", "to": "memory://nodes"},
                {"match": "batch.*.failed", "to": "memory://failures"}])
    assert destinations(r, TENCENT_EVENTS["COMPUTE_NODE_ABNORMAL"]) == ["memory://nodes"]
    assert destinations(r, one(alibaba_cluster("OnInstanceActive"))) == ["memory://nodes"]
    assert destinations(r, TENCENT_EVENTS["TASK_INSTANCE_FAILED"]) == ["memory://failures"]
    assert destinations(r, TENCENT_EVENTS["COMPUTE_NODE_CREATION_FAILED"]) == ["memory://nodes"]
    assert destinations(r, TENCENT_EVENTS["COMPUTE_ENV_CREATED"]) == []


def test_provider_and_kind_filters() -> None:
    r = router([{"provider": "gcp", "kind": ["task_instance"], "to": "memory://gcp-tasks"},
                {"provider": ["aws", "alibaba"], "to": "memory://aws-ali"}])
    assert destinations(r, one(pubsub_push(gcp_message("task", "FAILED")))) == ["memory://gcp-tasks"]
    assert destinations(r, one(pubsub_push(gcp_message("job", "FAILED")))) == []
    assert destinations(r, one(aws_event("RUNNING"))) == ["memory://aws-ali"]
    assert destinations(r, one(alibaba_job("OnTaskRunning"))) == ["memory://aws-ali"]
    assert destinations(r, TENCENT_EVENTS["JOB_RUNNING"]) == []


def test_vars_merge_without_changing_the_id_or_the_input() -> None:
    element = tencent_element("JOB_SUCCEED")
    element["EventVars"] = [{"name": "native", "value": "kept"}, {"name": "team", "value": "old"}]
    event = one(tencent_message(element))
    before = copy.deepcopy(event)
    r = router([{"match": "JobSucceed", "to": "memory://a", "vars": {"team": "render", "prio": 2}}])
    (delivery,) = r.route(event).deliveries
    assert delivery.event["data"]["vars"] == {"native": "kept", "team": "render", "prio": 2}
    assert delivery.event["id"] == event["id"]
    assert event == before  # the router copies; the caller's event is untouched


def test_fan_out_and_dedup_per_destination() -> None:
    r = router([
        {"match": "batch.job.*", "to": ["memory://a", "memory://b"], "vars": {"x": "1", "y": "1"}},
        {"match": "JobFailed", "to": ["memory://b", "memory://c"], "vars": {"y": "2"}},
    ])
    out = {d.destination: d.event["data"]["vars"] for d in r.route(TENCENT_EVENTS["JOB_FAILED"]).deliveries}
    assert out == {"memory://a": {"x": "1", "y": "1"}, "memory://b": {"x": "1", "y": "2"}, "memory://c": {"y": "2"}}
    assert [d.destination for d in r.route(TENCENT_EVENTS["JOB_RUNNING"]).deliveries] == ["memory://a", "memory://b"]


def test_tencent_block_scoped_to_tencent_with_vars_per_event_config() -> None:
    r = Router.from_config(config_from_dict({
        "topics": {"job-message": "memory://jobs"},
        "notifications": [{"topic_name": "job-message", "event_configs": [
            {"event_name": "JobFailed"},
            {"event_name": "JobSucceed", "event_vars": [{"name": "jobSucceed", "value": "Success"}]},
        ]}],
    }))
    (failed,) = r.route(TENCENT_EVENTS["JOB_FAILED"]).deliveries
    assert failed.destination == "memory://jobs" and failed.event["data"]["vars"] == {}
    (succeeded,) = r.route(TENCENT_EVENTS["JOB_SUCCEED"]).deliveries
    assert succeeded.event["data"]["vars"] == {"jobSucceed": "Success"}
    # the same canonical types from another vendor are not Tencent's notifications
    assert r.route(one(alibaba_job("OnJobFailed"))).deliveries == []
    assert r.route(one(aws_event("SUCCEEDED"))).deliveries == []
    assert r.route(TENCENT_EVENTS["JOB_RUNNING"]).deliveries == []


def test_alibaba_block_scoped_to_alibaba() -> None:
    r = Router.from_config(config_from_dict({
        "topics": {"test-topic": "memory://ali"},
        "Notification": {"Topic": {"Name": "test-topic", "Endpoint": "http://x.mns.cn-hangzhou.aliyuncs.com/",
                                   "Events": ["OnJobFailed", "OnInstanceCreated", "OnClusterDeleted"]}},
    }))
    assert destinations(r, one(alibaba_job("OnJobFailed"))) == ["memory://ali"]
    assert destinations(r, one(alibaba_cluster("OnInstanceCreated"))) == ["memory://ali"]
    assert destinations(r, one(alibaba_cluster("OnClusterDeleted"))) == ["memory://ali"]
    assert destinations(r, one(alibaba_job("OnJobRunning"))) == []
    assert destinations(r, TENCENT_EVENTS["JOB_FAILED"]) == []


def test_unrouted_policies() -> None:
    event = TENCENT_EVENTS["JOB_RUNNING"]
    routes = [{"match": "JobFailed", "to": "memory://failed"}]
    dropped = router(routes).route(event)
    assert dropped.unrouted and not dropped.dead_letter and dropped.deliveries == []
    dead = router(routes, unrouted="deadletter").route(event)
    assert dead.unrouted and dead.dead_letter and dead.deliveries == []
    elsewhere = router(routes, unrouted="memory://rest").route(event)
    assert elsewhere.unrouted and [d.destination for d in elsewhere.deliveries] == ["memory://rest"]
    assert not router(routes, unrouted="memory://rest").route(TENCENT_EVENTS["JOB_FAILED"]).unrouted


def test_catch_all_route() -> None:
    r = router([{"to": "memory://all"}])
    assert all(destinations(r, e) == ["memory://all"] for e in TENCENT_EVENTS.values())
