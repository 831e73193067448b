"""``open_clip:<arch>:<tag | path | s3 uri | random>`` — CLIP-style models with image and text towers.

The architecture is built by open_clip with ``pretrained=None`` (no download, no unsafe load inside the
library); weights are then resolved here and loaded with ``weights_only=True`` (or safetensors). A
pretrained tag is looked up offline first in the Hugging Face cache (or, for URL-only tags, open_clip's
``~/.cache/clip``); only when it is absent is a download tried. Embeddings are ``encode_image`` /
``encode_text`` outputs, not normalised.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch import nn

from embedeval.models.base import ALL_MODALITIES, ModelError, ModelInfo
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
    downloads_disabled,
    fetch_hub_file,
    fetch_weights_file,
    load_into_module,
    load_state_dict_file,
    sha256_file,
)

FAMILY = "open_clip"
FORMS = (
    "open_clip:<arch>:<pretrained tag>  (e.g. open_clip:ViT-B-32:laion2b_s34b_b79k)",
    "open_clip:<arch>:</local/path.pt | s3://bucket/key.pt>",
    "open_clip:<arch>:random",
)
_HF_WEIGHTS = "open_clip_pytorch_model.bin"
log = logging.getLogger(__name__)


def parse(spec: str, rest: str) -> ParsedSpec:
    """Validate ``<arch>:<weights>`` against open_clip's model configs and pretrained tags."""
    import open_clip

    arch, sep, weights = rest.partition(":")
    archs = open_clip.list_models()
    if not arch:
        raise ModelError(f"model spec {spec!r} names no architecture; valid forms: {'; '.join(FORMS)}")
    if arch not in archs:
        raise ModelError(f"model spec {spec!r}: unknown open_clip architecture {arch!r}"
                         f"{did_you_mean(arch, archs)}. Known: {short_list(archs, 40)}")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    tag_hint = (f"pretrained tags for {arch}: {', '.join(tags)}" if tags
                else f"{arch} has no pretrained tags in open_clip {open_clip.__version__}")
    if not sep or not weights:
        raise ModelError(f"model spec {spec!r} names no weights; add ':<tag>', ':<path or s3:// URI>' or "
                         f"':random' ({tag_hint})")
    if weights != WEIGHTS_RANDOM and not looks_like_path(weights):
        if not open_clip.is_pretrained_cfg(arch, weights):
            raise ModelError(f"model spec {spec!r}: unknown pretrained tag {weights!r}"
                             f"{did_you_mean(weights, tags)}; {tag_hint}")
        weights = weights.lower().replace("-", "_")  # open_clip's own tag normalisation
    return ParsedSpec(spec=spec, family=FAMILY, architecture=arch, weights=weights)


def load(parsed: ParsedSpec, opts: LoadOptions) -> "OpenClipModel":
    """Build the model, load its weights (tag/file/s3/random), return it in eval mode on the device."""
    tag_cfg = _tag_config(parsed)
    weights = _weights_file(parsed, opts, tag_cfg)
    seed = random_seed_for(parsed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, transform, tokenizer = _build(parsed, tag_cfg)
    if weights is not None:
        state = _adapt_state_dict(model, load_state_dict_file(weights.path, spec=parsed.spec))
        load_into_module(model, state, spec=parsed.spec, path=weights.path)
    model.eval().to(opts.device)
    return OpenClipModel(_info(parsed, tag_cfg, weights, transform, tokenizer), model, transform, tokenizer,
                         opts.device)


def describe(parsed: ParsedSpec, opts: LoadOptions) -> ModelInfo | None:
    """What :func:`load` reports, without loading weights: the model is built on torch's ``meta`` device
    (its transforms and tokenizer are real, its tensors hold no memory) and the weights file is only
    checksummed. None when the architecture cannot be built on ``meta`` (then the registry loads it)."""
    tag_cfg = _tag_config(parsed)
    try:
        with torch.device("meta"):
            _, transform, tokenizer = _build(parsed, tag_cfg, device="meta")
    except Exception as exc:  # noqa: BLE001 - some towers need real tensors at build time: load instead
        log.info("%s: cannot be described without loading (%s: %s)", parsed.spec, type(exc).__name__, exc)
        return None
    return _info(parsed, tag_cfg, _weights_file(parsed, opts, tag_cfg), transform, tokenizer)


def _tag_config(parsed: ParsedSpec) -> dict[str, Any]:
    import open_clip

    return open_clip.get_pretrained_cfg(parsed.architecture, parsed.weights) if parsed.weights_kind == "hub" else {}


def _weights_file(parsed: ParsedSpec, opts: LoadOptions, tag_cfg: dict[str, Any]) -> WeightsFile | None:
    """The local weights file and its checksum (None for random weights)."""
    if parsed.weights_kind == "hub":
        return _tag_weights(parsed, tag_cfg)
    if parsed.weights_kind == WEIGHTS_RANDOM:
        return None
    return fetch_weights_file(parsed.weights, spec=parsed.spec, storage=opts.storage, cache_dir=opts.cache_dir)


def _build(parsed: ParsedSpec, tag_cfg: dict[str, Any], device: str = "cpu") -> tuple[nn.Module, Any, Any]:
    """(model, eval transform, tokenizer) as open_clip builds them, with no weights (``pretrained=None``)."""
    import open_clip

    arch = parsed.architecture
    try:
        with _quiet_random_init_warning():
            model, _, transform = open_clip.create_model_and_transforms(
                arch,
                pretrained=None,
                pretrained_text=False,  # never fetch tower weights behind the user's back
                device=device,
                force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                image_mean=tag_cfg.get("mean"),
                image_std=tag_cfg.get("std"),
                image_interpolation=tag_cfg.get("interpolation"),
                image_resize_mode=tag_cfg.get("resize_mode"),
            )
        tokenizer = open_clip.get_tokenizer(arch)
    except ModelError:
        raise
    except Exception as exc:  # e.g. HF text towers whose config cannot be fetched offline
        raise ModelError(f"{parsed.spec}: open_clip could not build {arch}: {type(exc).__name__}: {exc}") from exc
    return model, transform, tokenizer


def _info(parsed: ParsedSpec, tag_cfg: dict[str, Any], weights: WeightsFile | None, transform: Any,
          tokenizer: Any) -> ModelInfo:
    import open_clip

    arch = parsed.architecture
    extra = {"open_clip_version": open_clip.__version__}
    if weights is None:
        extra["random_seed"] = str(random_seed_for(parsed))
    if tag_cfg.get("quick_gelu"):
        extra["quick_gelu"] = "true"
    return ModelInfo(
        spec=parsed.spec,
        family=FAMILY,
        architecture=arch,
        weights_source=weights.source if weights else WEIGHTS_RANDOM,
        weights_sha256=weights.sha256 if weights else None,
        weights_random=weights is None,
        preprocessing=(f"open_clip {arch} image: {' '.join(repr(transform).split())}; "
                       f"text: {type(tokenizer).__name__}(context_length={tokenizer.context_length})"),
        dim=int(open_clip.get_model_config(arch)["embed_dim"]),
        modalities=ALL_MODALITIES,
        extra=extra,
    )


class OpenClipModel:
    """Embeds images, sketches and texts into the shared CLIP space."""

    def __init__(self, info: ModelInfo, module: nn.Module, transform: Callable[[Image.Image], torch.Tensor],
                 tokenizer: Callable[[list[str]], torch.Tensor], device: str) -> None:
        self.info = info
        self.module = module
        self.transform = transform
        self.split_preprocess: SplitPreprocess | None = split_transform(transform)
        self.tokenizer = tokenizer
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
        return embed_uint8(self.module.encode_image, self.split_preprocess, batch, device=self.device,
                           dim=self.info.dim, spec=self.info.spec)

    def embed_images(self, batch: np.ndarray) -> np.ndarray:
        return run_batch(self.module.encode_image, image_batch_tensor(batch, spec=self.info.spec),
                         device=self.device, dim=self.info.dim, spec=self.info.spec)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Tokenised to the model's context length: longer captions are truncated, not rejected."""
        if not texts:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        tokens = self.tokenizer([str(t) for t in texts])
        return run_batch(self.module.encode_text, tokens, device=self.device, dim=self.info.dim,
                         spec=self.info.spec)


def _tag_weights(parsed: ParsedSpec, cfg: dict[str, Any]) -> WeightsFile:
    """The local file for a pretrained tag: HF cache, then open_clip's URL cache, then a download."""
    arch, tag = parsed.architecture, parsed.weights
    hf_hub = cfg.get("hf_hub", "")
    url = cfg.get("url", "")
    if hf_hub:
        repo_id, filename = os.path.split(hf_hub)  # "org/repo/" means the default file name
        filename = filename or _HF_WEIGHTS
        remedy = (f"To provide them: on a machine with internet run `hf download {repo_id} {filename}` and "
                  f"copy the Hugging Face cache ({_hf_cache_dir()}) here, or give a local path or s3:// URI "
                  f"in the spec (open_clip:{arch}:/path/to/{filename}), or use open_clip:{arch}:random "
                  "for a smoke test.")
        path = _hf_file(repo_id, _safe_alternatives(filename) + [filename], spec=parsed.spec, remedy=remedy)
    elif url:
        basename = os.path.basename(url)
        cache_path = os.path.join(os.path.expanduser("~/.cache/clip"), basename)
        remedy = (f"To provide them: put the file at {cache_path} (download {url}), or give a local path or "
                  f"s3:// URI in the spec (open_clip:{arch}:/path/to/{basename}), or use "
                  f"open_clip:{arch}:random for a smoke test.")
        path = fetch_hub_file(url, cache_path, spec=parsed.spec, remedy=remedy)
    else:
        raise ModelError(f"{parsed.spec}: open_clip's config for tag {tag!r} names no download location; "
                         "give a local path or s3:// URI of the weights instead")
    return WeightsFile(path=path, source=f"hub:{tag}", sha256=sha256_file(path))


def _hf_file(repo_id: str, filenames: list[str], *, spec: str, remedy: str) -> str:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError

    for name in filenames:
        cached = try_to_load_from_cache(repo_id, name)
        if isinstance(cached, str) and os.path.isfile(cached):
            return cached
    if downloads_disabled():
        raise ModelError(f"{spec}: weights {repo_id}/{filenames[-1]} are not in the Hugging Face cache and "
                         f"downloads are disabled (EMBEDEVAL_OFFLINE/HF_HUB_OFFLINE). {remedy}")
    errors = []
    for name in filenames:
        try:
            return str(hf_hub_download(repo_id, name))
        except LocalEntryNotFoundError as exc:  # the hub is unreachable: other names would fail the same way
            errors.append(f"{name}: {exc}")
            break
        except Exception as exc:  # this file name is not in the repo: try the next
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    raise ModelError(f"{spec}: the weights could not be downloaded from the Hugging Face hub "
                     f"({repo_id}; {' | '.join(e.splitlines()[0] for e in errors)}). {remedy}")


def _safe_alternatives(filename: str) -> list[str]:
    # open_clip prefers a safetensors twin when the repo has one; so do we (and it needs no unpickling).
    if filename == _HF_WEIGHTS:
        return ["open_clip_model.safetensors"]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors"]
    return []


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _adapt_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The format conversions open_clip applies to a checkpoint before loading it (third-party layouts,
    old text-tower names, scalar logit_scale, other image/context sizes), without its unsafe loading."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    state = convert_state_dict(model, state)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for name in ("logit_scale", "logit_bias"):
        own = getattr(model, name, None)
        if name in state and isinstance(own, torch.Tensor) and own.ndim != state[name].ndim:
            state[name] = state[name].reshape(own.shape)
    if "logit_bias" not in state and getattr(model, "logit_bias", None) is not None and "logit_scale" in state:
        state["logit_bias"] = torch.zeros_like(state["logit_scale"])
    state.pop("text.transformer.embeddings.position_ids", None)
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    return state


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")


@contextmanager
def _quiet_random_init_warning() -> Iterator[None]:
    # open_clip warns "initialized randomly" because we pass pretrained=None; the weights come next.
    root = logging.getLogger()
    flt = _DropRandomInitWarning()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


class OpenClipFamily(ModelFamily):
    """The functions above, declared as a family."""

    name = FAMILY
    imports = ("open_clip",)
    forms = FORMS
    modalities = ALL_MODALITIES
    parse = staticmethod(parse)
    load = staticmethod(load)
    describe = staticmethod(describe)


register_family(OpenClipFamily())
