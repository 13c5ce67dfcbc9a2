"""The bridge config: the minimal form, the vendors' own blocks, and errors that name the bad key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from batchbridge.core.config import BridgeConfig, config_from_dict, load_config
from batchbridge.core.errors import ConfigError

MINIMAL = """
[[routes]]
match = ["JobSucceed", "batch.task_instance.*"]
to = ["file:///var/lib/batchbridge/jobs.jsonl", "sqs://jobs?region=eu-west-1"]
vars = { team = "render" }
"""


def write(tmp_path: Path, text: str, name: str = "bridge.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def error_for(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value


def test_minimal_form_works_as_written(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    (route,) = cfg.routes
    assert route.types == {"batch.job.succeeded"}
    assert route.globs == ("batch.task_instance.*",)
    assert route.to == ("file:///var/lib/batchbridge/jobs.jsonl", "sqs://jobs?region=eu-west-1")
    assert route.vars == {"team": "render"}
    assert route.providers is None and route.kinds is None
    assert cfg.unrouted == "drop"
    assert cfg.outbox.synchronous == "full"
    assert cfg.serve.host == "127.0.0.1"
    assert cfg.destinations() == ["file:///var/lib/batchbridge/jobs.jsonl", "sqs://jobs?region=eu-west-1"]


@pytest.mark.parametrize(
    ("text", "where", "words"),
    [
        ('colour = "blue"\n', "bridge.toml:colour", "unknown key 'colour'"),
        ('[[routes]]\nmtach = ["JobFailed"]\nto = "memory://q"\n', "bridge.toml:routes[0].mtach", "unknown key"),
        ('[[routes]]\nmatch = ["JobFailed", "JobExploded"]\nto = "memory://q"\n', "bridge.toml:routes[0].match[1]",
         "unknown event name 'JobExploded'"),
        ('[[routes]]\nmatch = "OnJobFinnished"\nto = "memory://q"\n', "bridge.toml:routes[0].match",
         "unknown event name"),
        ('[[routes]]\nmatch = ["Job*"]\nto = "memory://q"\n', "bridge.toml:routes[0].match[0]", "canonical types"),
        ('[[routes]]\nmatch = ["batch.nodes.*"]\nto = "memory://q"\n', "bridge.toml:routes[0].match[0]",
         "matches no canonical type"),
        ('[[routes]]\nprovider = "oracle"\nto = "memory://q"\n', "bridge.toml:routes[0].provider", "one of tencent"),
        ('[[routes]]\nkind = ["job", "pod"]\nto = "memory://q"\n', "bridge.toml:routes[0].kind[1]", "'pod'"),
        ('[[routes]]\nmatch = ["JobFailed"]\n', "bridge.toml:routes[0].to", "needs 'to'"),
        ('[[routes]]\nto = []\n', "bridge.toml:routes[0].to", "at least one"),
        ('[[routes]]\nto = ["memory://q", "kafka://t"]\n', "bridge.toml:routes[0].to[1]", "no backend for scheme"),
        ('[[routes]]\nto = "memory://q?bogus=1"\n', "bridge.toml:routes[0].to", "unknown option 'bogus'"),
        ('[[routes]]\nto = "memory://q"\nvars = { a = { b = 1 } }\n', "bridge.toml:routes[0].vars.a", "a variable"),
        ('unrouted = "keep"\n', "bridge.toml:unrouted", '"drop", "deadletter" or a backend URI'),
        ('[outbox]\nsynchronous = "off"\n', "bridge.toml:outbox.synchronous", "full, normal"),
        ('[outbox]\nbatch_size = 0\n', "bridge.toml:outbox.batch_size", "at least 1"),
        ('[serve]\nport = "80"\n', "bridge.toml:serve.port", "an integer"),
        ('[serve.mns]\nallowed_hosts = ["aliyuncs.com/x"]\n', "bridge.toml:serve.mns.allowed_hosts[0]", "host name"),
        ('routes = "x"\n', "bridge.toml:routes", "[[routes]]"),
    ],
)
def test_errors_name_the_bad_key(tmp_path: Path, text: str, where: str, words: str) -> None:
    err = error_for(tmp_path, text)
    assert err.where is not None and err.where.startswith(str(tmp_path / where.split(":")[0]) + ":" +
                                                           where.split(":", 1)[1]), err.where
    assert words in str(err)


def test_toml_syntax_error_is_typed(tmp_path: Path) -> None:
    err = error_for(tmp_path, "[[routes]\nto = 1\n")
    assert "not valid TOML" in err.reason and "line 1" in err.reason


def test_missing_file_is_typed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.toml")


TENCENT_TOML = """
[topics]
job-message = "memory://jobs"
env-message = ["memory://envs", "file:///tmp/envs.jsonl"]

[[notifications]]
topic_name = "job-message"
event_configs = [
  { event_name = "JobFailed" },
  { event_name = "JobSucceed", event_vars = [{ name = "jobSucceed", value = "Success" }] },
]

[[notifications]]
topic_name = "env-message"
[[notifications.event_configs]]
event_name = "COMPUTE_NODE_CREATED"
"""


def test_tencent_notifications_block_as_written(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, TENCENT_TOML))
    failed, succeeded, node = cfg.routes
    assert failed.types == {"batch.job.failed"} and failed.vars == {} and failed.to == ("memory://jobs",)
    assert succeeded.types == {"batch.job.succeeded"} and succeeded.vars == {"jobSucceed": "Success"}
    assert node.types == {"batch.node.created"} and node.to == ("memory://envs", "file:///tmp/envs.jsonl")
    assert all(r.providers == {"tencent"} for r in cfg.routes)
    assert succeeded.where.endswith("notifications[0].event_configs[1]")


def test_tencent_api_spelling(tmp_path: Path) -> None:
    cfg = config_from_dict({
        "topics": {"job-message": "memory://jobs"},
        "Notifications": [{"TopicName": "job-message", "EventConfigs": [
            {"EventName": "JOB_FAILED_INTERRUPTED", "EventVars": [{"Name": "k", "Value": "v"}]}]}],
    })
    (route,) = cfg.routes
    assert route.types == {"batch.job.interrupted"} and route.vars == {"k": "v"}


def test_unmapped_topic_names_the_topic(tmp_path: Path) -> None:
    err = error_for(tmp_path, TENCENT_TOML.replace('job-message = "memory://jobs"\n', ""))
    assert err.where == f"{tmp_path / 'bridge.toml'}:notifications[0].topic_name"
    assert "topic 'job-message' has no destination" in err.reason and "[topics]" in err.reason


def test_tencent_event_config_errors(tmp_path: Path) -> None:
    err = error_for(tmp_path, TENCENT_TOML.replace('event_name = "JobFailed"', 'event_name = "JobFialed"'))
    assert err.where is not None and err.where.endswith("notifications[0].event_configs[0].event_name")
    err = error_for(tmp_path, TENCENT_TOML.replace('{ name = "jobSucceed", value = "Success" }', '{ value = "x" }'))
    assert err.where is not None and err.where.endswith("notifications[0].event_configs[1].event_vars[0].name")


ALIBABA_TOML = """
[topics]
test-topic = "memory://ali"

[Notification.Topic]
Name = "test-topic"
Endpoint = "http://123.mns.cn-hangzhou.aliyuncs.com/"
Events = ["OnJobWaiting", "OnJobFailed", "OnInstanceFinished", "OnPriorityChange"]
"""


def test_alibaba_notification_block_as_written(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ALIBABA_TOML))
    (route,) = cfg.routes
    assert route.types == {"batch.job.pending", "batch.job.failed", "batch.task_instance.succeeded",
                           "batch.job.priority_changed"}
    assert route.providers == {"alibaba"} and route.to == ("memory://ali",)


def test_alibaba_several_topics(tmp_path: Path) -> None:
    cfg = config_from_dict({
        "topics": {"jobs": "memory://a", "clusters": "memory://b"},
        "Notification": [{"Topic": {"Name": "jobs", "Events": ["OnJobFailed"]}},
                         {"Topic": {"Name": "clusters", "Events": ["OnClusterDeleted", "OnInstanceActive"]}}],
    })
    assert [r.to for r in cfg.routes] == [("memory://a",), ("memory://b",)]
    assert cfg.routes[1].types == {"batch.environment.deleted", "batch.node.running"}


def test_alibaba_block_errors(tmp_path: Path) -> None:
    err = error_for(tmp_path, ALIBABA_TOML.replace('Name = "test-topic"\n', ""))
    assert err.where is not None and err.where.endswith("Notification.Topic.Name")
    err = error_for(tmp_path, ALIBABA_TOML.replace('"OnJobFailed"', '"OnJobFailled"'))
    assert err.where is not None and err.where.endswith("Notification.Topic.Events[1]")


def test_vendor_json_files_are_read_where_they_sit(tmp_path: Path) -> None:
    # a whole Tencent SubmitJob request and an Alibaba job description, as the teams keep them
    (tmp_path / "submit-job.json").write_text(json.dumps({
        "Job": {"JobName": "render", "Tasks": [{"TaskName": "t"}]},
        "Notifications": [{"TopicName": "job-message", "EventConfigs": [{"EventName": "JOB_SUCCEED"}]}],
        "notifications": [{"topic_name": "job-message", "event_configs": [
            {"event_name": "JobFailed", "event_vars": [{"name": "n", "value": "v"}]}]}],
    }))
    (tmp_path / "alibaba-job.json").write_text(json.dumps({
        "Name": "job", "DAG": {"Tasks": {}},
        "Notification": {"Topic": {"Name": "test-topic", "Endpoint": "http://x/", "Events": ["OnJobFinished"]}},
    }))
    cfg = load_config(write(tmp_path, """
vendor_configs = ["submit-job.json", "alibaba-job.json"]
[topics]
job-message = "memory://tencent"
test-topic = "memory://alibaba"
"""))
    got = {(r.to, tuple(sorted(r.providers or ())), tuple(sorted(r.types))): dict(r.vars) for r in cfg.routes}
    assert got == {
        (("memory://tencent",), ("tencent",), ("batch.job.succeeded",)): {},
        (("memory://tencent",), ("tencent",), ("batch.job.failed",)): {"n": "v"},
        (("memory://alibaba",), ("alibaba",), ("batch.job.succeeded",)): {},
    }
    tencent_where = [r.where for r in cfg.routes if r.vars]
    assert tencent_where == [f"{tmp_path / 'submit-job.json'}:notifications[0].event_configs[0]"]


def test_vendor_json_without_a_block(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"Name": "job"}')
    err = error_for(tmp_path, 'vendor_configs = "x.json"\n')
    assert err.where == f"{tmp_path / 'bridge.toml'}:vendor_configs" and "no Tencent" in err.reason


def test_json_config_and_relative_paths(tmp_path: Path) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    (sub / "certs").mkdir()
    p = sub / "bridge.json"
    p.write_text(json.dumps({"routes": [{"to": "memory://q", "provider": ["aws", "GCP"], "kind": "job"}],
                             "outbox": {"path": "state/outbox.db"}, "unrouted": "deadletter",
                             "serve": {"mns": {"trust_store": "certs"}}}))
    cfg = load_config(p)
    assert cfg.outbox.path == sub / "state" / "outbox.db"
    assert cfg.serve.mns.trust_store == sub / "certs"
    assert cfg.routes[0].providers == {"aws", "gcp"} and cfg.routes[0].kinds == {"job"}
    assert cfg.unrouted == "deadletter"


def test_token_sources_and_secrecy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cr3t-token-value-0123456789"
    monkeypatch.setenv("BB_TEST_TOKEN", secret)
    cfg = load_config(write(tmp_path, '[serve]\ntoken_env = "BB_TEST_TOKEN"\n'))
    assert cfg.serve.token == secret
    assert secret not in repr(cfg)
    (tmp_path / "tok").write_text(secret + "\n")
    assert load_config(write(tmp_path, '[serve]\ntoken_file = "tok"\n')).serve.token == secret
    err = error_for(tmp_path, '[serve]\ntoken = "short"\n')
    assert err.where is not None and err.where.endswith("serve.token") and "short" not in str(err)
    err = error_for(tmp_path, '[serve]\ntoken_env = "BB_TEST_UNSET_VARIABLE"\n')
    assert "not set" in err.reason
    err = error_for(tmp_path, f'[serve]\ntoken = "{secret}"\ntoken_env = "BB_TEST_TOKEN"\n')
    assert "only one" in err.reason and secret not in str(err)


def test_uri_errors_do_not_leak_secrets(tmp_path: Path) -> None:
    err = error_for(tmp_path, '[[routes]]\nto = "sqs://q?region=x&aws_secret_access_key=hunter2hunter2&nope=1"\n')
    assert "hunter2hunter2" not in str(err) and "unknown option 'nope'" in str(err)


def test_defaults() -> None:
    cfg = BridgeConfig()
    assert cfg.routes == () and cfg.unrouted == "drop" and cfg.destinations() == []
    assert cfg.with_outbox("/x/o.db").outbox.path == Path("/x/o.db")
