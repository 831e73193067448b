"""torchvision models: head removal, preprocessing, weights from hub cache / local file / s3, safe loading."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from embedeval.io.storage import Storage
from embedeval.models.base import ModelError
from embedeval.models.registry import load_model
from modelkit import solid_image


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _reference_features(module: nn.Module, batch: np.ndarray) -> np.ndarray:
    """The oracle: the same torchvision module with its fc layer replaced, run directly."""
    module.fc = nn.Identity()
    module.eval()
    with torch.inference_mode():
        return module(torch.from_numpy(batch)).numpy()


@pytest.fixture(scope="module")
def saved_resnet18(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    torch.manual_seed(1234)
    module = torchvision.models.resnet18()
    path = tmp_path_factory.mktemp("weights") / "resnet18-finetuned.pt"
    torch.save(module.state_dict(), path)
    return path, module


def test_random_resnet18_embeds_images(resnet18_random) -> None:  # noqa: ANN001
    info = resnet18_random.info
    assert (info.family, info.architecture, info.dim) == ("torchvision", "resnet18", 512)
    assert info.weights_random and info.weights_source == "random" and info.weights_sha256 is None
    assert info.modalities == ("image", "sketch")
    assert "ImageClassification" in info.preprocessing and "0x" not in info.preprocessing
    x = resnet18_random.preprocess_image(solid_image((200, 30, 30)))
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    out = resnet18_random.embed_images(np.stack([x, x]))
    assert out.shape == (2, 512) and out.dtype == np.float32
    assert resnet18_random.embed_images(np.zeros((0, 3, 224, 224), np.float32)).shape == (0, 512)


def test_random_weights_are_the_same_in_every_replica(resnet18_random) -> None:  # noqa: ANN001
    again = load_model("torchvision:resnet18:random")
    batch = np.stack([resnet18_random.preprocess_image(solid_image((10, 200, 90)))])
    np.testing.assert_array_equal(again.embed_images(batch), resnet18_random.embed_images(batch))


def test_image_only_model_refuses_text(resnet18_random) -> None:  # noqa: ANN001
    with pytest.raises(ModelError, match="image-only"):
        resnet18_random.embed_texts(["a red chair"])


def test_local_checkpoint_gives_the_saved_models_outputs(saved_resnet18, resnet18_random) -> None:  # noqa: ANN001
    path, module = saved_resnet18
    model = load_model(f"torchvision:resnet18:{path}")
    assert model.info.weights_source == f"file:{path.resolve()}"
    assert model.info.weights_sha256 == _sha256(path)
    assert not model.info.weights_random
    batch = np.stack([model.preprocess_image(solid_image((250, 200, 10))),
                      model.preprocess_image(solid_image((0, 0, 250)))])
    np.testing.assert_allclose(model.embed_images(batch), _reference_features(module, batch), rtol=1e-5, atol=1e-5)


def test_s3_checkpoint_is_copied_checksummed_and_loaded(saved_resnet18, s3_options, tmp_path) -> None:  # noqa: ANN001
    path, module = saved_resnet18
    store = Storage(f"s3://test/{tmp_path.name}", s3_options)
    store.write_bytes("models/resnet18.pt", path.read_bytes())
    uri = store.uri("models/resnet18.pt")
    cache = tmp_path / "cache"
    model = load_model(f"torchvision:resnet18:{uri}", storage=store, cache_dir=str(cache))
    assert model.info.weights_source == uri
    assert model.info.weights_sha256 == _sha256(path)
    cached = list(cache.rglob("resnet18.pt"))
    assert len(cached) == 1 and _sha256(cached[0]) == _sha256(path)
    batch = np.stack([model.preprocess_image(solid_image((40, 160, 40)))])
    np.testing.assert_allclose(model.embed_images(batch), _reference_features(module, batch), rtol=1e-5, atol=1e-5)
    # a second load reuses the local copy (same size and mtime) instead of fetching again
    before = os.stat(cached[0]).st_mtime_ns
    load_model(f"torchvision:resnet18:{uri}", storage=store, cache_dir=str(cache))
    assert os.stat(cached[0]).st_mtime_ns == before


def test_missing_s3_object_is_a_model_error(s3_options, tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ModelError, match="does not exist"):
        load_model(f"torchvision:resnet18:s3://test/{tmp_path.name}/none.pt", storage=Storage(f"s3://test/{tmp_path.name}", s3_options),
                   cache_dir=str(tmp_path))


def test_wrapped_and_prefixed_checkpoints_load(saved_resnet18, tmp_path) -> None:  # noqa: ANN001
    path, module = saved_resnet18
    state = torch.load(path, weights_only=True)
    wrapped = tmp_path / "train-checkpoint.pth"
    torch.save({"epoch": 7, "model": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    model = load_model(f"torchvision:resnet18:{wrapped}")
    batch = np.stack([model.preprocess_image(solid_image((90, 90, 90)))])
    np.testing.assert_allclose(model.embed_images(batch), _reference_features(module, batch), rtol=1e-5, atol=1e-5)
    as_state_dict = tmp_path / "sd.pt"
    torch.save({"state_dict": state, "optimizer_lr": 0.1}, as_state_dict)
    assert load_model(f"torchvision:resnet18:{as_state_dict}").info.weights_sha256 == _sha256(as_state_dict)


def test_headless_checkpoint_loads(saved_resnet18, tmp_path) -> None:  # noqa: ANN001
    path, _ = saved_resnet18
    state = {k: v for k, v in torch.load(path, weights_only=True).items() if not k.startswith("fc.")}
    headless = tmp_path / "headless.pt"
    torch.save(state, headless)
    assert load_model(f"torchvision:resnet18:{headless}").info.dim == 512


def test_checkpoint_of_another_architecture_names_the_keys(saved_resnet18) -> None:  # noqa: ANN001
    path, _ = saved_resnet18
    with pytest.raises(ModelError) as info:
        load_model(f"torchvision:resnet34:{path}")
    msg = str(info.value)
    assert "missing keys" in msg and "layer1.2." in msg and str(path) in msg


class Payload:
    """Not a tensor: weights_only=True must refuse it, and its __reduce__ must never run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.marker, "w"))


def test_checkpoint_with_pickled_objects_is_refused(tmp_path) -> None:  # noqa: ANN001
    marker = tmp_path / "code-was-executed"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}, "payload": Payload(str(marker))}, evil)
    marker.unlink(missing_ok=True)  # saving does not run it; make sure anyway
    with pytest.raises(ModelError) as info:
        load_model(f"torchvision:resnet18:{evil}")
    assert "refused" in str(info.value) and "weights_only" in str(info.value)
    assert not marker.exists()


def test_missing_local_file_is_a_model_error(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ModelError, match="does not exist"):
        load_model(f"torchvision:resnet18:{tmp_path / 'nope.pt'}")


def test_uncached_hub_weights_explain_how_to_provide_them(no_downloads) -> None:  # noqa: ANN001
    with pytest.raises(ModelError) as info:
        load_model("torchvision:resnet18:IMAGENET1K_V1")
    msg = str(info.value)
    cache_path = os.path.join(torch.hub.get_dir(), "checkpoints", "resnet18-f37072fd.pth")
    assert "torchvision:resnet18:IMAGENET1K_V1" in msg
    assert cache_path in msg and "s3://" in msg and "torchvision:resnet18:random" in msg


def test_hub_weights_found_in_the_torch_hub_cache(no_downloads, saved_resnet18) -> None:  # noqa: ANN001
    path, module = saved_resnet18
    target = Path(torch.hub.get_dir()) / "checkpoints" / "resnet18-f37072fd.pth"
    target.parent.mkdir(parents=True)
    # like torchvision's real file: older than BatchNorm's num_batches_tracked counters
    state = torch.load(path, weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, target)
    model = load_model("torchvision:resnet18")
    assert model.info.weights_source == "hub:IMAGENET1K_V1"
    assert model.info.weights_sha256 == _sha256(target) and not model.info.weights_random
    batch = np.stack([model.preprocess_image(solid_image((1, 2, 3)))])
    np.testing.assert_allclose(model.embed_images(batch), _reference_features(module, batch), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("arch", "dim"), [("mobilenet_v3_small", 1024), ("efficientnet_b0", 1280)])
def test_head_removal_is_generic(arch: str, dim: int) -> None:
    model = load_model(f"torchvision:{arch}:random")
    assert model.info.dim == dim
    out = model.embed_images(np.stack([model.preprocess_image(solid_image((5, 50, 200)))]))
    assert out.shape == (1, dim)


def test_weight_free_preprocessor_matches_the_models_own() -> None:
    """The prepare stage's preprocessing (no weights loaded) is exactly the loaded model's."""
    import numpy as np
    from PIL import Image

    from embedeval.models.registry import load_model, load_preprocessor

    image = Image.fromarray(np.random.default_rng(3).integers(0, 255, (70, 90, 3), dtype=np.uint8), "RGB")
    for spec in ("torchvision:resnet18:random", "builtin:pixelstats"):
        np.testing.assert_array_equal(load_preprocessor(spec)(image), load_model(spec).preprocess_image(image))
