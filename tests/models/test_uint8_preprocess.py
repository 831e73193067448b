"""The uint8 transport: the geometric half on the CPU, the normalise half on the device, the same vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from embedeval.models.base import ModelError
from embedeval.models.inference import normalise_uint8, split_transform


def _noise_images() -> list[Image.Image]:
    rng = np.random.default_rng(7)
    sizes = [(300, 200), (97, 131), (224, 224), (640, 480)]  # wider, taller, exact, large
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes] + [
        Image.fromarray(rng.integers(0, 256, (150, 120), dtype=np.uint8), "L")]  # greyscale: converted to RGB


@pytest.mark.parametrize("fixture", ["resnet18_random", "clip_random"])
def test_uint8_path_gives_the_float_paths_inputs_and_vectors(fixture: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(fixture)
    images = _noise_images()
    floats = np.stack([model.preprocess_image(im) for im in images])
    uint8s = np.stack([model.preprocess_image_uint8(im) for im in images])
    assert uint8s.dtype == np.uint8 and uint8s.shape == floats.shape
    assert uint8s.nbytes * 4 == floats.nbytes
    # The model input rebuilt from uint8 is the float path's input, bit for bit.
    rebuilt = normalise_uint8(model.split_preprocess, torch.from_numpy(uint8s)).numpy()
    np.testing.assert_array_equal(rebuilt, floats)
    want = model.embed_images(floats)
    got = model.embed_uint8_images(uint8s)
    assert got.shape == want.shape and got.dtype == np.float32
    assert float(np.abs(got - want).max()) <= 1e-5


def test_split_of_the_torchvision_preset_needs_no_model(resnet18_random) -> None:  # noqa: ANN001
    from embedeval.models.inference import uint8_chw
    from embedeval.models.registry import load_split_preprocess

    split = load_split_preprocess("torchvision:resnet18:random")
    image = _noise_images()[0]

    np.testing.assert_array_equal(uint8_chw(split, image), resnet18_random.preprocess_image_uint8(image))
    assert load_split_preprocess("builtin:pixelstats") is None


def test_geometric_half_runs_on_a_uint8_tensor_too(resnet18_random) -> None:  # noqa: ANN001
    # The GPU JPEG path resizes decoded tensors: same output size and close pixels (tensor and PIL
    # antialiasing differ slightly, which is why that path is stamped in the model info).
    image = _noise_images()[0].filter(ImageFilter.GaussianBlur(3))  # smooth: resampling differences stay small
    split = resnet18_random.split_preprocess
    from_pil = resnet18_random.preprocess_image_uint8(image)
    tensor = torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())
    from_tensor = split.geometric(tensor).numpy()
    assert from_tensor.dtype == np.uint8 and from_tensor.shape == from_pil.shape
    assert np.abs(from_tensor.astype(int) - from_pil.astype(int)).mean() < 2.0


def test_unsplittable_transforms_keep_the_float_path() -> None:
    from torchvision import transforms as T

    assert split_transform(lambda im: im) is None
    assert split_transform(T.Compose([T.ToTensor(), T.Resize(10), T.Normalize([0.5] * 3, [0.5] * 3)])) is None
    split = split_transform(T.Compose([T.Resize(8), T.CenterCrop(8), T.ToTensor(), T.Normalize([0.5] * 3, [0.25] * 3)]))
    assert split is not None
    with pytest.raises(ModelError, match="uint8"):
        normalise_uint8(split, torch.zeros((1, 3, 8, 8), dtype=torch.float32))
