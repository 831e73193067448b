"""Model families are declared: a family from outside the library registers itself and embeds, and the
pipeline learns modalities, embedding and a model's facts from the declaration, not from family names."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from embedeval.models.base import ALL_MODALITIES, IMAGE_MODALITIES, EmbeddingModel, ModelError
from embedeval.models.family import ModelFamily, family_names, register_family
from embedeval.models.registry import describe_model, describe_spec, load_model, load_preprocessor, spec_forms
from embedeval.pipeline.model_facts import model_embeds, model_modalities
from embedeval.pipeline.stages import Embedder


def test_a_family_from_the_test_package_registers_itself_and_embeds() -> None:
    import toy_family

    assert "toy" in family_names() and "toy:<dim>" in spec_forms()
    assert describe_spec("toy:4").family == "toy"
    model = load_model("toy:4")
    assert isinstance(model, EmbeddingModel) and model.info.dim == 4
    pixels = np.stack([load_preprocessor("toy:4")(Image.new("RGB", (20, 10), (255, 0, 0)))])
    np.testing.assert_allclose(model.embed_images(pixels), [[1.001, 0.001, 0.001, 1.001]], rtol=1e-6)
    np.testing.assert_array_equal(model.embed_texts(["banana"]), [[6, 3, 6, 3]])
    assert model_modalities("toy:4") == ALL_MODALITIES and model_embeds("toy:4")
    # the pipeline's embed stage (what each Ray actor runs) embeds with it too
    embedder = Embedder("toy:3", None, "cpu", None)
    out = embedder(pa.table({"id": ["a", "b"], "sub": pa.array([0, 1], pa.int16()), "modality": ["text", "text"],
                             "source": ["kiwi", "fig"], "content_sha256": pa.nulls(2, pa.string())}))
    assert out.column("error_stage").null_count == 2
    np.testing.assert_array_equal(np.asarray(out.column("vector").to_pylist()), [[4, 2, 4], [3, 1, 3]])
    with pytest.raises(ModelError, match="positive integer"):
        describe_spec("toy:zero")
    del toy_family


def test_describing_a_model_does_not_load_it_where_the_family_can_tell() -> None:
    import toy_family

    before = len(toy_family.loads)
    assert describe_model("toy:5").dim == 5
    assert len(toy_family.loads) == before


def test_torchvision_is_described_without_loading_and_says_what_loading_says() -> None:
    spec = "torchvision:resnet18:random"
    assert describe_model(spec) == load_model(spec).info
    assert model_modalities(spec) == IMAGE_MODALITIES and model_embeds(spec)


@pytest.mark.slow
def test_open_clip_is_described_on_the_meta_device_and_says_what_loading_says() -> None:
    from embedeval.models import open_clip_models
    from embedeval.models.spec import LoadOptions

    spec = "open_clip:ViT-B-32:random"
    described = open_clip_models.describe(describe_spec(spec), LoadOptions(device="cpu"))
    assert described is not None and described == load_model(spec).info


def test_declared_attributes_replace_family_names() -> None:
    assert not model_embeds("precomputed:/nowhere/v.parquet")      # imported, not embedded: no cache either
    assert model_modalities("precomputed:/nowhere/v.parquet") == ALL_MODALITIES
    assert model_modalities("builtin:pixelstats") == IMAGE_MODALITIES
    assert describe_spec("precomputed:/nowhere/v.parquet").weights_kind == "data"


def test_a_second_family_cannot_take_a_registered_name() -> None:
    class Impostor(ModelFamily):
        name = "builtin"
        forms = ("builtin:x",)

        def parse(self, spec, rest):  # noqa: ANN001, ANN201
            raise AssertionError

        def load(self, parsed, opts):  # noqa: ANN001, ANN201
            raise AssertionError

    describe_spec("builtin:pixelstats")           # the real one is registered first
    with pytest.raises(ModelError, match="already registered"):
        register_family(Impostor())
