"""Spec parsing and the factory's error messages: every failure names the spec and says what is valid."""

from __future__ import annotations

import pytest
import torch

from embedeval.models.base import EmbeddingModel, ModelError
from embedeval.models.family import family_names
from embedeval.models.registry import describe_spec, load_model, spec_forms


@pytest.mark.parametrize(
    ("spec", "family", "arch", "weights"),
    [
        ("torchvision:resnet50", "torchvision", "resnet50", "IMAGENET1K_V2"),  # DEFAULT resolved to its name
        ("torchvision:vit_b_16:IMAGENET1K_V1", "torchvision", "vit_b_16", "IMAGENET1K_V1"),
        ("torchvision:resnet18:imagenet1k_v1", "torchvision", "resnet18", "IMAGENET1K_V1"),
        ("torchvision:resnet18:random", "torchvision", "resnet18", "random"),
        ("torchvision:resnet18:/w/resnet.pt", "torchvision", "resnet18", "/w/resnet.pt"),
        ("torchvision:resnet18:s3://bucket/k/w.pth", "torchvision", "resnet18", "s3://bucket/k/w.pth"),
        ("open_clip:ViT-B-32:laion2b_s34b_b79k", "open_clip", "ViT-B-32", "laion2b_s34b_b79k"),
        ("open_clip:ViT-B-32:LAION2B-S34B-B79K", "open_clip", "ViT-B-32", "laion2b_s34b_b79k"),
        ("open_clip:ViT-B-32:s3://b/weights.pt", "open_clip", "ViT-B-32", "s3://b/weights.pt"),
        ("open_clip:RN50:random", "open_clip", "RN50", "random"),
        ("precomputed:s3://b/vectors/", "precomputed", "precomputed", "s3://b/vectors/"),
        ("builtin:pixelstats", "builtin", "pixelstats", "builtin"),
    ],
)
def test_valid_specs_parse(spec: str, family: str, arch: str, weights: str) -> None:
    parsed = describe_spec(spec)
    assert (parsed.family, parsed.architecture, parsed.weights) == (family, arch, weights)
    assert parsed.spec == spec


def test_weights_kinds() -> None:
    assert describe_spec("torchvision:resnet18").weights_kind == "hub"
    assert describe_spec("torchvision:resnet18:random").weights_kind == "random"
    assert describe_spec("torchvision:resnet18:./w.pt").weights_kind == "file"
    assert describe_spec("open_clip:ViT-B-32:s3://b/w.pt").weights_kind == "s3"
    assert describe_spec("precomputed:/data/v.parquet").weights_kind == "data"


def test_precomputed_options() -> None:
    parsed = describe_spec("precomputed:s3://b/v.parquet?dim=512&arch=my-model")
    assert parsed.weights == "s3://b/v.parquet"
    assert parsed.options == {"dim": "512", "arch": "my-model"}
    assert parsed.architecture == "my-model"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", ["empty model spec", "torchvision:<arch>"]),
        ("resnet50", ["unknown model family 'resnet50'", "torchvision:<arch>"]),
        ("tochvision:resnet50", ["did you mean 'torchvision'"]),
        ("torchvision", ["incomplete", "torchvision:<arch>:random"]),
        ("torchvision:resnet05", ["'torchvision:resnet05'", "unknown torchvision architecture", "'resnet50'"]),
        ("torchvision:resnet18:IMAGENET1K_V9", ["no weights 'IMAGENET1K_V9'", "IMAGENET1K_V1", "random"]),
        ("open_clip:ViT-B-23:random", ["unknown open_clip architecture 'ViT-B-23'", "'ViT-B-32'"]),
        ("open_clip:ViT-B-32", ["names no weights", "laion2b_s34b_b79k", ":random"]),
        ("open_clip:ViT-B-32:laion2b_s43b_b79k", ["unknown pretrained tag", "'laion2b_s34b_b79k'"]),
        ("open_clip:ViT-S-32:openai", ["unknown pretrained tag", "has no pretrained tags"]),
        ("builtin:pixelstat", ["unknown builtin", "'pixelstats'"]),
        ("precomputed:", ["incomplete"]),
        ("precomputed:/x.parquet?dimm=3", ["unknown option 'dimm'", "'dim'"]),
        ("precomputed:/x.parquet?dim=abc", ["dim must be a positive integer"]),
    ],
)
def test_malformed_specs_raise_helpful_errors(spec: str, expected: list[str]) -> None:
    with pytest.raises(ModelError) as info:
        describe_spec(spec)
    for fragment in expected:
        assert fragment in str(info.value)


def test_every_family_documents_its_forms() -> None:
    forms = spec_forms()
    for family in family_names():
        assert any(f.startswith(family + ":") for f in forms)


def test_load_model_returns_a_protocol_object_with_filled_info() -> None:
    model = load_model("builtin:pixelstats", device="auto")
    assert isinstance(model, EmbeddingModel)
    assert model.info.spec == "builtin:pixelstats"
    assert model.info.as_metadata()["embedeval.model.dim"] == str(model.info.dim)


def test_dim_hint_mismatch_is_an_error() -> None:
    with pytest.raises(ModelError, match="expected"):
        load_model("builtin:pixelstats", dim_hint=3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_cuda_without_a_gpu_is_an_error_not_a_silent_cpu_run() -> None:
    with pytest.raises(ModelError, match="device='auto'"):
        load_model("builtin:pixelstats", device="cuda")
    with pytest.raises(ModelError, match="unknown device"):
        load_model("builtin:pixelstats", device="tpu")
