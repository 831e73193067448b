"""Fixtures for the engine tests: both runners and small synthetic unit-row embeddings."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

from embedeval.engine.runner import LocalRunner, RayRunner, TileRunner


@pytest.fixture(params=["local", "ray"])
def runner(request: pytest.FixtureRequest) -> TileRunner:
    """Each test using it runs once in-process and once on the shared local Ray."""
    if request.param == "local":
        return LocalRunner()
    request.getfixturevalue("ray_local")
    return RayRunner()


@pytest.fixture
def ray_runner(ray_local: None) -> TileRunner:
    return RayRunner()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture
def unit() -> Callable[..., np.ndarray]:
    """unit(rng, n, d, sparse=False): float32 rows of norm 1 (sparse: non-negative, tag-like)."""

    def make(rng: np.random.Generator, n: int, d: int, sparse: bool = False) -> np.ndarray:
        x = rng.standard_normal((n, d))
        if sparse:
            x = np.abs(x) * (rng.random((n, d)) < 0.5) + 1e-3
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return make
