"""open_clip models: image and text towers, long captions, weights from a local file, tag resolution."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from embedeval.models.base import ModelError
from embedeval.models.registry import load_model
from modelkit import CLIP_ARCH, solid_image


def test_random_clip_embeds_images_and_texts(clip_random) -> None:  # noqa: ANN001
    info = clip_random.info
    assert (info.family, info.architecture, info.dim) == ("open_clip", CLIP_ARCH, 384)
    assert info.modalities == ("image", "sketch", "text")
    assert info.weights_random and info.weights_sha256 is None
    assert "context_length=77" in info.preprocessing and "0x" not in info.preprocessing
    x = clip_random.preprocess_image(solid_image((255, 0, 0), size=(300, 120)))
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert clip_random.embed_images(np.stack([x, x])).shape == (2, 384)
    texts = clip_random.embed_texts(["a red chair", "a blue sofa", ""])
    assert texts.shape == (3, 384) and texts.dtype == np.float32 and np.isfinite(texts).all()
    assert clip_random.embed_texts([]).shape == (0, 384)


def test_ten_thousand_character_caption_is_truncated_not_rejected(clip_random) -> None:  # noqa: ANN001
    long_caption = ("a very long caption about a red velvet armchair " * 250)[:10_000]
    assert len(long_caption) == 10_000
    out = clip_random.embed_texts([long_caption, "short"])
    assert out.shape == (2, 384) and np.isfinite(out).all()


def test_non_rgb_images_are_converted(clip_random) -> None:  # noqa: ANN001
    grey = solid_image((128, 128, 128)).convert("L")
    assert clip_random.preprocess_image(grey).shape == (3, 224, 224)


def test_local_checkpoint_gives_the_saved_models_outputs(tmp_path: Path) -> None:
    torch.manual_seed(99)
    reference, _, _ = open_clip.create_model_and_transforms(CLIP_ARCH, pretrained=None)
    reference.eval()
    path = tmp_path / "clip-finetuned.pt"
    # a training checkpoint: wrapped, with DDP prefixes and non-tensor bookkeeping
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)
    model = load_model(f"open_clip:{CLIP_ARCH}:{path}")
    assert model.info.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not model.info.weights_random
    batch = np.stack([model.preprocess_image(solid_image((10, 200, 10)))])
    texts = ["a green lamp", "x" * 5000]
    tokens = open_clip.get_tokenizer(CLIP_ARCH)(texts)
    with torch.inference_mode():
        want_images = reference.encode_image(torch.from_numpy(batch)).numpy()
        want_texts = reference.encode_text(tokens).numpy()
    np.testing.assert_allclose(model.embed_images(batch), want_images, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.embed_texts(texts), want_texts, rtol=1e-4, atol=1e-5)


def test_uncached_tag_explains_how_to_provide_the_weights(no_downloads) -> None:  # noqa: ANN001
    with pytest.raises(ModelError) as info:
        load_model("open_clip:ViT-B-32:laion2b_s34b_b79k")
    msg = str(info.value)
    assert "open_clip:ViT-B-32:laion2b_s34b_b79k" in msg
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in msg
    assert "s3://" in msg and "open_clip:ViT-B-32:random" in msg


def test_tag_resolves_from_the_hugging_face_cache_offline(no_downloads) -> None:  # noqa: ANN001
    """The offline-first lookup finds a file laid out the way huggingface_hub caches it."""
    import huggingface_hub.constants

    from embedeval.models.open_clip_models import _hf_file

    repo = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    root = Path(huggingface_hub.constants.HF_HUB_CACHE) / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text("abc123")
    snapshot = root / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    found = _hf_file(repo, ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"], spec="s", remedy="r")
    assert Path(found) == snapshot / "open_clip_pytorch_model.bin"
