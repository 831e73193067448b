"""The prepare/embed stages ship uint8 pixels (or JPEG bytes for the device decoder) and embed the same vectors.

Stages run in this process, as Ray's actors would run them; the device decoder runs on the CPU here
(torchvision's decode_jpeg takes the same code path on "cpu" and "cuda" but for the decoder library).
"""

from __future__ import annotations

import io
import logging

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from embedeval.config import EmbedSettings
from embedeval.demo.broken import break_corpus
from embedeval.demo.corpus import write_demo_corpus
from embedeval.io.manifest import load_manifest
from embedeval.models.base import ModelInfo
from embedeval.pipeline.device_decode import decode_jpegs
from embedeval.pipeline.embed import partition_inputs
from embedeval.pipeline.embed_plan import (
    EmbedPlan,
    autocast_for,
    decode_workers,
    plan_embedding,
    resolve_precision,
    resolve_replicas,
)
from embedeval.pipeline.media import BadItem, MediaLimits, device_decodable_jpeg
from embedeval.pipeline.stages import Embedder, ImagePreparer

SPEC = "torchvision:resnet18:random"
LIMITS = MediaLimits(max_pixels=4_000_000)


@pytest.fixture(scope="module")
def broken_inputs(tmp_path_factory: pytest.TempPathFactory) -> pa.Table:
    corpus = write_demo_corpus(tmp_path_factory.mktemp("demo"), n_items=28, image_px=64)
    break_corpus(corpus.root, fraction=0.5, huge_side=2100,
                 kinds=["truncated_jpeg", "truncated_png", "zero_byte", "text_as_png", "jpeg_named_png", "huge",
                        "cmyk", "sixteen_bit", "alpha", "missing_file"])
    manifest = load_manifest(str(corpus.manifest))
    image = partition_inputs(manifest, "image")
    return image.append_column("modality", pa.array(["image"] * image.num_rows))


def _errors(table: pa.Table) -> list[tuple[str | None, str | None]]:
    return list(zip(table.column("error_stage").to_pylist(), table.column("error_reason").to_pylist()))


def _vectors(table: pa.Table) -> np.ndarray:
    dim = table.column("vector").type.list_size
    return np.stack([np.zeros(dim, np.float32) if v is None else np.asarray(v, np.float32)
                     for v in table.column("vector").to_pylist()])


@pytest.mark.slow
def test_uint8_rows_are_a_quarter_of_the_bytes_and_embed_the_same_vectors(broken_inputs: pa.Table) -> None:
    floats = ImagePreparer(SPEC, None, LIMITS, uint8=False)(broken_inputs)
    uint8s = ImagePreparer(SPEC, None, LIMITS)(broken_inputs)
    assert set(floats.column("pixel_format").drop_null().to_pylist()) == {"float32"}
    assert set(uint8s.column("pixel_format").drop_null().to_pylist()) == {"uint8"}
    assert _errors(uint8s) == _errors(floats)             # the same quarantine, row by row
    good = [i for i, (stage, _) in enumerate(_errors(floats)) if stage is None]
    assert 0 < len(good) < broken_inputs.num_rows
    for i in good:
        float_bytes = len(floats.column("pixels")[i].as_py())
        assert len(uint8s.column("pixels")[i].as_py()) * 4 == float_bytes == 3 * 224 * 224 * 4
    embedder = Embedder(SPEC, None, "cpu", 1, limits=LIMITS)
    want, got = embedder(floats), embedder(uint8s)
    assert _errors(got) == _errors(want)
    assert float(np.abs(_vectors(got) - _vectors(want)).max()) <= 1e-5


@pytest.mark.slow
def test_device_jpeg_path_ships_bytes_keeps_the_quarantine_and_close_vectors(broken_inputs: pa.Table) -> None:
    uint8s = ImagePreparer(SPEC, None, LIMITS)(broken_inputs)
    jpegs = ImagePreparer(SPEC, None, LIMITS, device_jpeg=True)(broken_inputs)
    formats = jpegs.column("pixel_format").to_pylist()
    assert "jpeg" in formats and "uint8" in formats       # PNG, CMYK, alpha... stay on the CPU path
    assert _errors(jpegs) == _errors(uint8s)               # truncated / huge JPEGs are never shipped as bytes
    embedder = Embedder(SPEC, None, "cpu", 1, limits=LIMITS)
    want, got = embedder(uint8s), embedder(jpegs)
    assert _errors(got) == _errors(want)
    rows = [i for i, f in enumerate(formats) if f == "jpeg"]
    a, b = _vectors(got)[rows], _vectors(want)[rows]
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.99                              # tensor resize vs PIL resize: close, not equal


@pytest.mark.slow
def test_task_path_prepares_with_its_cached_replica_s_split_and_embeds_like_the_two_stages(
        broken_inputs: pa.Table) -> None:
    """``embed.replicas: tasks`` (prepare_and_embed) reuses the replica's own uint8 split, not a copy: the same
    rows out as the actor path's ImagePreparer then Embedder, CPU-decoded and device-decoded alike."""
    from embedeval.pipeline import stages

    embedder = Embedder(SPEC, None, "cpu", 1, limits=LIMITS)
    for device_jpeg in (False, True):
        want = embedder(ImagePreparer(SPEC, None, LIMITS, device_jpeg=device_jpeg)(broken_inputs))
        got = stages.prepare_and_embed(broken_inputs, SPEC, None, LIMITS, "cpu", 1, device_jpeg=device_jpeg)
        assert _errors(got) == _errors(want) and got.column("error_stage").null_count > 0
        np.testing.assert_allclose(_vectors(got), _vectors(want), atol=1e-6)
    replica = next(reversed(stages._task_replicas.values())).model
    prepared = ImagePreparer(SPEC, None, LIMITS, model=replica)(broken_inputs)
    assert set(prepared.column("pixel_format").drop_null().to_pylist()) == {"uint8"}
    assert prepared.equals(ImagePreparer(SPEC, None, LIMITS)(broken_inputs))


@pytest.mark.parametrize("keep", [1, 2])
def test_task_worker_keeps_its_most_recent_replicas(broken_inputs: pa.Table, keep: int) -> None:
    """embed.models_at_once: a worker keeps that many replicas, so two models embedded at the same time do
    not rebuild each other's; with one kept, switching models rebuilds (and frees the previous one)."""
    from embedeval.pipeline import stages

    stages._task_replicas.clear()
    other = "builtin:pixelstats"
    for spec in (SPEC, other, SPEC):
        stages.prepare_and_embed(broken_inputs.slice(0, 4), spec, None, LIMITS, "cpu", 1, keep=keep)
        if spec == SPEC and len(stages._task_replicas) == 1 and keep == 2:
            first = stages._task_replicas[(SPEC, "cpu", 1)]
    replicas = stages._task_replicas
    assert len(replicas) == keep and list(replicas)[-1] == (SPEC, "cpu", 1)
    if keep == 2:
        assert replicas[(SPEC, "cpu", 1)] is first          # not rebuilt after the other model's batch
    stages._task_replicas.clear()


def _jpeg(mode: str = "RGB", size: tuple[int, int] = (80, 60)) -> bytes:
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (size[1], size[0], 4 if mode == "CMYK" else 3), dtype=np.uint8)
    image = Image.fromarray(arr[..., :3]).convert(mode) if mode != "CMYK" else Image.fromarray(arr, "CMYK")
    buf = io.BytesIO()
    image.save(buf, "JPEG")
    return buf.getvalue()


def test_only_complete_rgb_or_grey_jpegs_within_the_limit_go_to_the_device() -> None:
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    assert device_decodable_jpeg(_jpeg(), 10_000)
    assert device_decodable_jpeg(_jpeg("L"), 10_000)
    assert not device_decodable_jpeg(_jpeg("CMYK"), 10_000)
    assert not device_decodable_jpeg(_jpeg()[:-200], 10_000)      # truncated
    assert not device_decodable_jpeg(_jpeg(), 80 * 60 - 1)         # over max_pixels
    assert not device_decodable_jpeg(png.getvalue(), 10_000)
    assert not device_decodable_jpeg(b"", 10_000)


def test_decode_falls_back_to_pillow_per_image_with_the_same_reasons() -> None:
    from embedeval.models.registry import load_split_preprocess
    from embedeval.pipeline.media import decode_image

    split = load_split_preprocess(SPEC)
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(png, "PNG")
    garbage = b"\xff\xd8" + b"not a jpeg at all" + b"\xff\xd9"
    good, from_png, bad = decode_jpegs([_jpeg(), png.getvalue(), garbage], split, "cpu", 1_000_000)
    assert tuple(good.shape) == (3, 224, 224) and str(good.dtype) == "torch.uint8"
    from embedeval.models.inference import uint8_chw

    np.testing.assert_array_equal(from_png.numpy(), uint8_chw(split, decode_image(png.getvalue(), 1_000_000)))
    assert isinstance(bad, BadItem) and bad.stage == "decode"
    with pytest.raises(BadItem) as cpu_reason:
        decode_image(garbage, 1_000_000)
    assert bad.reason == cpu_reason.value.reason


def test_decode_workers_follow_the_cluster() -> None:
    auto = EmbedSettings(concurrency=2)
    assert decode_workers(auto, {"CPU": 32, "GPU": 2}, "cuda") == 2 * 14   # (32 - 2 embed - 1) // 2 per GPU
    assert decode_workers(auto, {"CPU": 4, "GPU": 4}, "cuda") == 4         # at least one per GPU
    assert decode_workers(EmbedSettings(decode_workers_per_gpu=3), {"CPU": 64, "GPU": 2}, "cuda") == 6
    assert decode_workers(EmbedSettings(decode_concurrency=5), {"CPU": 64}, "cpu") == 5
    with pytest.raises(ValueError):
        EmbedSettings(decode_workers_per_gpu=0)


def test_replicas_auto_are_tasks_on_one_cpu_node_and_actor_pools_on_clusters_and_gpus() -> None:
    auto = EmbedSettings()
    assert auto.replicas == "auto"
    assert resolve_replicas(auto, {"CPU": 2}, nodes=1) == "tasks"            # in-process Ray, a workstation
    assert resolve_replicas(auto, {"CPU": 64}, nodes=3) == "actors"          # a cluster
    assert resolve_replicas(auto, {"CPU": 16, "GPU": 1}, nodes=1) == "actors"   # a GPU takes an actor
    for chosen in ("actors", "tasks"):                                        # a named choice is kept
        assert resolve_replicas(EmbedSettings(replicas=chosen), {"CPU": 64, "GPU": 8}, nodes=9) == chosen
        assert resolve_replicas(EmbedSettings(replicas=chosen), {"CPU": 2}, nodes=1) == chosen


def test_reduced_precision_is_gpu_only_and_stamped(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="embedeval.pipeline.embed_plan"):
        assert resolve_precision("bf16", "cpu") == "fp32"
    assert "GPU inference only" in caplog.text
    assert resolve_precision("fp32", "cuda") == "fp32"
    plan = plan_embedding(EmbedSettings(precision="fp16"), {"CPU": 2}, splits=True)
    assert plan == EmbedPlan(device="cpu", precision="fp32", gpu_jpeg_decode=False, decode_workers=1)
    info = ModelInfo("s", "torchvision", "a", "random", None, True, "resize 256", 8, ("image",))
    assert plan.stamp(info) == info                         # the default plan keeps cache keys as they were
    bf16 = EmbedPlan(device="cuda", precision="bf16", gpu_jpeg_decode=True, decode_workers=4).stamp(info)
    assert bf16.preprocessing.startswith("resize 256; inference: bf16 autocast, JPEG decoded")
    with autocast_for("bf16", "cpu"):                       # a no-op off CUDA
        pass
