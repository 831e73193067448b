"""Fixtures for the fault tests: a fault-injecting proxy in front of the session's S3 server."""

from __future__ import annotations

from typing import Iterator

import pytest

from s3_fault_proxy import S3FaultProxy


@pytest.fixture
def fault_proxy(s3_server) -> Iterator[S3FaultProxy]:  # noqa: ANN001
    """A proxy on its own loopback port in front of ``s3_server``, in clean mode; stopped after the test."""
    with S3FaultProxy(s3_server.endpoint_url, seed=20240613, slow_s=0.5) as proxy:
        yield proxy

