"""Fixtures for the model tests: loaded random-weight models (module scope: loading costs seconds) and
an environment where no weights can be found or downloaded."""

from __future__ import annotations

from typing import Iterator

import pytest

from modelkit import CLIP_ARCH


@pytest.fixture(scope="module")
def resnet18_random():  # noqa: ANN201
    from embedeval.models.registry import load_model

    return load_model("torchvision:resnet18:random")


@pytest.fixture(scope="module")
def clip_random():  # noqa: ANN201
    from embedeval.models.registry import load_model

    return load_model(f"open_clip:{CLIP_ARCH}:random")


@pytest.fixture
def no_downloads(monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[None]:  # noqa: ANN001
    """Empty torch-hub and Hugging Face caches and downloads switched off, so 'not cached' is certain and
    the test never touches the network even on a machine that has it."""
    import huggingface_hub.constants

    monkeypatch.setenv("EMBEDEVAL_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    yield
