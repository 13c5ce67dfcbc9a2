"""Deployment: the Dockerfile's install step (deploy/install.sh) run for real into a fresh virtual
environment, and the Dockerfile and Kubernetes manifests checked for what docs/deployment.md
promises. Building the image itself needs a Docker engine, which the test machine does not have."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml
from batchbridge.core.speedups import can_compile
from batchbridge.core.store_postgres import parse_url

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _manifest(name: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / name).read_text()))


def _kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind)


def test_install_script_installs_a_working_serve_into_a_new_venv(tmp_path: Path) -> None:
    # the image copies these paths only: install from exactly them
    src = tmp_path / "src"
    for sources, dest in re.findall(r"^COPY (.+) /src/(\S*)$", DOCKERFILE, re.M):
        for s in sources.split():
            target = src / dest / Path(s).name if dest.endswith("/") or not dest else src / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if (ROOT / s).is_dir() else shutil.copy2)(ROOT / s, target)
    prefix = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(prefix)], check=True, timeout=120)
    # offline and quick: pip, setuptools and the dependencies come from this test run's environment
    # (a .pth file), so pip finds them installed and only builds and installs batchbridge itself, as
    # a real wheel, into the new environment
    site = subprocess.run([str(prefix / "bin" / "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "deps-from-tests.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0"}
    done = subprocess.run(["sh", str(src / "deploy" / "install.sh"), str(prefix), str(src), "all"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    where = subprocess.run([str(prefix / "bin" / "python"), "-c", "import batchbridge.core as c; print(c.__file__)"],
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(site), f"batchbridge was not installed into the new venv: {where}"
    assert (prefix / "bin" / "batchbridge").exists()
    # the wheel carries the normalising path compiled (setup.py), and the installed package uses it
    version = subprocess.run([str(prefix / "bin" / "batchbridge"), "--version"], capture_output=True, text=True,
                             check=True, timeout=60).stdout
    if can_compile():
        assert "normalising path: compiled with mypyc" in version, version + done.stderr[-3000:]


def test_the_image_copies_every_package_the_project_ships() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = set(re.findall(r"^COPY (\S+) /src/\1$", DOCKERFILE, re.M))
    assert set(pyproject["tool"]["setuptools"]["package-dir"].values()) <= copied


def test_dockerfile_runs_serve_as_a_non_root_user_with_a_volume_for_the_outbox() -> None:
    assert re.search(r"^RUN sh /src/deploy/install\.sh /opt/batchbridge /src ", DOCKERFILE, re.M)
    user = re.search(r"^USER (\S+)$", DOCKERFILE, re.M)
    assert user is not None and user.group(1).split(":")[0] not in ("0", "root")
    assert re.search(r'^ENTRYPOINT \["batchbridge", "serve"\]$', DOCKERFILE, re.M)
    assert re.search(r'^VOLUME \["/var/lib/batchbridge"\]$', DOCKERFILE, re.M)
    assert '"--outbox", "/var/lib/batchbridge/outbox.db"' in DOCKERFILE


@pytest.mark.parametrize("name", ["single-node.yaml", "replicas-postgres.yaml"])
def test_manifests_probe_readiness_and_run_unprivileged(name: str) -> None:
    docs = _manifest(name)
    pod = _kind(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/run/secrets/batchbridge" in mounts and "/etc/batchbridge" in mounts


def test_single_node_keeps_its_outbox_on_a_persistent_volume() -> None:
    docs = _manifest("single-node.yaml")
    deployment = _kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    claim = next(v for v in pod["volumes"] if "persistentVolumeClaim" in v)
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == claim["name"])
    assert mount["mountPath"] == "/var/lib/batchbridge"
    assert 'path = "/var/lib/batchbridge/outbox.db"' in _kind(docs, "ConfigMap")["data"]["bridge.toml"]


def test_replicas_take_the_postgresql_password_from_the_secret_not_the_url() -> None:
    docs = _manifest("replicas-postgres.yaml")
    toml = tomllib.loads(_kind(docs, "ConfigMap")["data"]["bridge.toml"])
    url = toml["outbox"]["url"]
    secret_key = "pg-password"
    assert f"password_file=/run/secrets/batchbridge/{secret_key}" in url
    assert secret_key in _kind(docs, "Secret")["stringData"]
    with pytest.raises(Exception, match="password file"):
        parse_url(url)  # the file is only there in the pod; the URL itself is well-formed up to it
    assert ":" not in url.split("//", 1)[1].split("@", 1)[0], "a password written into the URL"
    assert _kind(docs, "Deployment")["spec"]["replicas"] >= 2
