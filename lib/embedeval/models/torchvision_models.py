"""``torchvision:<arch>[:<weights>]`` — torchvision classifiers with the classification head removed.

The head is removed generically: the LAST ``nn.Linear`` in module order becomes ``nn.Identity``, which
leaves the penultimate features for resnet, vit, convnext, efficientnet, vgg, densenet, mobilenet,
regnet and swin alike, so ``dim`` is that layer's ``in_features``.

Weights: a weights-enum name (``IMAGENET1K_V1``; none means ``DEFAULT``) resolved to a file in the torch
hub cache, ``random``, or a local path / ``s3://`` URI of a state_dict. The architecture is always built
with ``weights=None`` and the file loaded with ``weights_only=True``; it is built with the constructor
arguments torchvision uses for the *reference* weights (the named enum, or DEFAULT for random/file
weights), and preprocessing is that enum's ``transforms()``, which needs no download.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from embedeval.models.base import IMAGE_MODALITIES, ModelError, ModelInfo
from embedeval.models.family import ModelFamily, register_family
from embedeval.models.inference import (
    SplitPreprocess,
    embed_uint8,
    image_batch_tensor,
    run_batch,
    split_transform,
    transform_to_chw,
    uint8_chw,
)
from embedeval.models.spec import (
    WEIGHTS_DEFAULT,
    WEIGHTS_RANDOM,
    LoadOptions,
    ParsedSpec,
    did_you_mean,
    looks_like_path,
    random_seed_for,
    short_list,
)
from embedeval.models.weights import (
    WeightsFile,
    fetch_hub_file,
    fetch_weights_file,
    key_mismatch,
    load_into_module,
    load_state_dict_file,
    sha256_file,
)

FAMILY = "torchvision"
FORMS = (
    "torchvision:<arch>  (DEFAULT pretrained weights)",
    "torchvision:<arch>:<WEIGHTS_ENUM_NAME>  (e.g. torchvision:vit_b_16:IMAGENET1K_V1)",
    "torchvision:<arch>:random",
    "torchvision:<arch>:</local/path.pt | s3://bucket/key.pt>",
)

# Old densenet checkpoints name layers 'norm.1'; torchvision renames them the same way on load.
_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def known_architectures() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def parse(spec: str, rest: str) -> ParsedSpec:
    """Validate ``<arch>[:<weights>]`` against torchvision's classification models and weights enums."""
    import torchvision

    arch, _, weights = rest.partition(":")
    if not arch:
        raise ModelError(f"model spec {spec!r} names no architecture; valid forms: {'; '.join(FORMS)}")
    archs = known_architectures()
    if arch not in archs:
        raise ModelError(f"model spec {spec!r}: unknown torchvision architecture {arch!r}"
                         f"{did_you_mean(arch, archs)}. Known: {short_list(archs, 40)}")
    weights = weights or WEIGHTS_DEFAULT
    if weights != WEIGHTS_RANDOM and not looks_like_path(weights):
        members = torchvision.models.get_model_weights(arch).__members__
        by_upper = {name.upper(): name for name in members}
        name = by_upper.get(weights.upper())
        if name is None:
            raise ModelError(
                f"model spec {spec!r}: {arch} has no weights {weights!r}{did_you_mean(weights, members)}. "
                f"Valid: {', '.join(members)}, 'random', or a local path / s3:// URI of a state_dict")
        weights = members[name].name  # DEFAULT -> the concrete name, so outputs say which weights ran
    return ParsedSpec(spec=spec, family=FAMILY, architecture=arch, weights=weights)


def load_preprocessor(parsed: ParsedSpec) -> Callable[[Image.Image], np.ndarray]:
    """The weights enum's transforms as PIL -> float32 CHW; builds no model and reads no weights file."""
    transform = _reference_weights(parsed).transforms()
    return lambda image: transform_to_chw(transform, image)


def load_split_preprocess(parsed: ParsedSpec) -> SplitPreprocess | None:
    """The same transforms as :func:`load_preprocessor`, split for the uint8 path; builds no model."""
    import torchvision

    enum_cls = torchvision.models.get_model_weights(parsed.architecture)
    reference = enum_cls[parsed.weights] if parsed.weights_kind == "hub" else enum_cls.DEFAULT
    return split_transform(reference.transforms())


def load(parsed: ParsedSpec, opts: LoadOptions) -> "TorchvisionModel":
    """Build the architecture, load its weights (hub/file/s3/random), remove the head, move to device."""
    import torchvision

    reference = _reference_weights(parsed)
    seed = random_seed_for(parsed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.get_model(parsed.architecture, weights=None,
                                             **_build_kwargs(parsed.architecture, reference))
    weights = _weights_file(parsed, opts, reference)
    head_name = _last_linear_name(model, parsed.spec)
    info = _info(parsed, reference, weights, model, head_name)   # before the head goes: dim is its input width
    if weights is not None:
        state = _rename_legacy_keys(load_state_dict_file(weights.path, spec=parsed.spec))
        missing, unexpected = key_mismatch(model, state)
        headless = bool(missing) and not unexpected and set(missing) <= {f"{head_name}.weight", f"{head_name}.bias"}
        if headless:  # a checkpoint saved after the head was removed (e.g. by this module) loads too
            _replace_module(model, head_name, nn.Identity())
        load_into_module(model, state, spec=parsed.spec, path=weights.path)
    _replace_module(model, head_name, nn.Identity())
    model.eval().to(opts.device)
    return TorchvisionModel(info, model, reference.transforms(), opts.device)


def describe(parsed: ParsedSpec, opts: LoadOptions) -> ModelInfo:
    """What :func:`load` reports, without loading weights: the architecture is built on torch's ``meta``
    device (shapes only, no memory) for its dimension, and the weights file is only checksummed."""
    import torchvision

    reference = _reference_weights(parsed)
    with torch.device("meta"):
        model = torchvision.models.get_model(parsed.architecture, weights=None,
                                             **_build_kwargs(parsed.architecture, reference))
    weights = _weights_file(parsed, opts, reference)
    return _info(parsed, reference, weights, model, _last_linear_name(model, parsed.spec))


def _reference_weights(parsed: ParsedSpec) -> Any:
    """The weights enum member whose constructor arguments and transforms a model uses (DEFAULT unless named)."""
    import torchvision

    enum_cls = torchvision.models.get_model_weights(parsed.architecture)
    return enum_cls[parsed.weights] if parsed.weights_kind == "hub" else enum_cls.DEFAULT


def _weights_file(parsed: ParsedSpec, opts: LoadOptions, reference: Any) -> WeightsFile | None:
    """The local weights file of a spec and its checksum (None for random weights)."""
    kind = parsed.weights_kind
    if kind == WEIGHTS_RANDOM:
        return None
    if kind == "hub":
        return _hub_weights(parsed, reference)
    return fetch_weights_file(parsed.weights, spec=parsed.spec, storage=opts.storage, cache_dir=opts.cache_dir)


def _info(parsed: ParsedSpec, reference: Any, weights: WeightsFile | None, model: nn.Module,
          head_name: str) -> ModelInfo:
    import torchvision

    extra = {"torchvision_version": torchvision.__version__, "reference_weights": reference.name}
    if weights is None:
        extra["random_seed"] = str(random_seed_for(parsed))
    extra["removed_head"] = head_name
    return ModelInfo(
        spec=parsed.spec,
        family=FAMILY,
        architecture=parsed.architecture,
        weights_source=weights.source if weights else WEIGHTS_RANDOM,
        weights_sha256=weights.sha256 if weights else None,
        weights_random=weights is None,
        preprocessing=f"torchvision {reference}.transforms(): {_describe_transform(reference.transforms())}",
        dim=int(model.get_submodule(head_name).in_features),
        modalities=IMAGE_MODALITIES,
        extra=extra,
    )


class TorchvisionModel:
    """An image-only model: embeds images and sketches, refuses text."""

    def __init__(self, info: ModelInfo, module: nn.Module, transform: Callable[[Image.Image], torch.Tensor],
                 device: str) -> None:
        self.info = info
        self.module = module
        self.transform = transform
        self.split_preprocess: SplitPreprocess | None = split_transform(transform)
        self.device = device

    def preprocess_image(self, image: Image.Image) -> np.ndarray:
        return transform_to_chw(self.transform, image)

    def preprocess_image_uint8(self, image: Image.Image) -> np.ndarray:
        """The geometric half of the preprocessing: uint8 (3, H, W), normalised later by embed_uint8_images."""
        if self.split_preprocess is None:
            raise ModelError(f"{self.info.spec}: its preprocessing does not split into a uint8 part")
        return uint8_chw(self.split_preprocess, image)

    def embed_uint8_images(self, batch: np.ndarray) -> np.ndarray:
        """(n, 3, H, W) uint8 from preprocess_image_uint8 (numpy, or a tensor on any device) -> (n, dim)."""
        return embed_uint8(self.module, self.split_preprocess, batch, device=self.device, dim=self.info.dim,
                           spec=self.info.spec)

    def embed_images(self, batch: np.ndarray) -> np.ndarray:
        return run_batch(self.module, image_batch_tensor(batch, spec=self.info.spec), device=self.device,
                         dim=self.info.dim, spec=self.info.spec)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        raise ModelError(f"{self.info.spec} is an image-only model: it cannot embed text. "
                         "Use an open_clip model for captions.")


def _hub_weights(parsed: ParsedSpec, enum_value: Any) -> WeightsFile:
    url = enum_value.url
    basename = os.path.basename(url)
    cache_path = os.path.join(torch.hub.get_dir(), "checkpoints", basename)
    remedy = (f"To provide them: put the file at {cache_path} (download {url} on a machine with internet "
              f"access), or give a local path or s3:// URI in the spec "
              f"(torchvision:{parsed.architecture}:/path/to/{basename}), or use "
              f"torchvision:{parsed.architecture}:random for a smoke test.")
    path = fetch_hub_file(url, cache_path, spec=parsed.spec, remedy=remedy)
    return WeightsFile(path=path, source=f"hub:{enum_value.name}", sha256=sha256_file(path))


def _build_kwargs(arch: str, weights: Any) -> dict[str, Any]:
    """The constructor arguments torchvision itself passes when building ``arch`` for ``weights``, so a
    weights=None build has the same shapes and input handling as the pretrained one."""
    meta = weights.meta
    kwargs: dict[str, Any] = {"num_classes": len(meta["categories"])}
    if arch.startswith("vit_"):
        kwargs["image_size"] = meta["min_size"][0]
    if arch == "maxvit_t":
        kwargs["input_size"] = meta["min_size"]
    if arch in ("inception_v3", "googlenet"):
        kwargs.update(transform_input=True, aux_logits=True, init_weights=False)
    return kwargs


def _rename_legacy_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        m = _DENSENET_KEY.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


def _last_linear_name(model: nn.Module, spec: str) -> str:
    names = [name for name, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    if not names:
        raise ModelError(f"{spec}: the architecture has no nn.Linear classification head to remove "
                         "(e.g. squeezenet); choose another architecture")
    return names[-1]


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _describe_transform(transform: Any) -> str:
    # repr spans lines; one line keeps the metadata value readable and the cache key stable.
    return " ".join(repr(transform).split())


class TorchvisionFamily(ModelFamily):
    """The functions above, declared as a family."""

    name = FAMILY
    imports = ("torchvision",)
    forms = FORMS
    modalities = IMAGE_MODALITIES
    parse = staticmethod(parse)
    load = staticmethod(load)
    describe = staticmethod(describe)

    def preprocessor(self, parsed: ParsedSpec, opts: LoadOptions) -> Callable[[Image.Image], np.ndarray]:
        return load_preprocessor(parsed)

    def split_preprocess(self, parsed: ParsedSpec, opts: LoadOptions) -> SplitPreprocess | None:
        return load_split_preprocess(parsed)


register_family(TorchvisionFamily())
