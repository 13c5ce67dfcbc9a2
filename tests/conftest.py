"""Shared fixtures. Backend servers (moto, LocalStack, Pub/Sub emulator, Service Bus stand-in) are
started by fixtures in their own modules under ``tests/`` on free ports and stopped at the end."""

from __future__ import annotations

import sys
from pathlib import Path

# the conformance suite and the test servers are plain modules beside the tests
sys.path.insert(0, str(Path(__file__).parent))

# backend servers, each started once per session on a free port, on first use
pytest_plugins = ["aws_servers", "pubsub_servers", "pg_server"]
