"""How one model is embedded on this cluster: device, precision, where JPEGs are decoded, how many decoders.

Decided once on the driver from ``embed.*`` and ``ray.cluster_resources()``, then handed to the stages.
Whatever changes the vectors beyond rounding (a lower precision, decoding on the GPU) is stamped into the
model's ``preprocessing`` (:meth:`EmbedPlan.stamp`), so it is in every file's metadata and in the
embedding cache key: a bf16 vector never answers for an fp32 one. The default plan (fp32, JPEGs decoded
by Pillow on CPU workers) stamps nothing, so existing caches stay valid.
"""

from __future__ import annotations

import dataclasses
import logging
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Mapping

from embedeval.config import EmbedSettings
from embedeval.io.storage import Storage
from embedeval.models.base import ModelInfo

log = logging.getLogger(__name__)

# CPUs a GPU embed actor holds (stages.build: num_cpus=1), and CPUs left for the writer tasks and the driver.
EMBED_ACTOR_CPUS = 1.0
RESERVED_CPUS = 1.0


@dataclass(frozen=True)
class EmbedPlan:
    device: str              # "cpu" | "cuda"
    precision: str           # the precision that runs: "fp32" on CPU whatever was asked
    gpu_jpeg_decode: bool    # JPEG bytes go to the embed actor and are decoded on its device
    decode_workers: int      # size of the prepare (read, decode, geometric preprocess) actor pool

    def stamp(self, info: ModelInfo) -> ModelInfo:
        """``info`` with what this plan changes about the vectors appended to its preprocessing."""
        notes = []
        if self.precision != "fp32":
            notes.append(f"{self.precision} autocast")
        if self.gpu_jpeg_decode:
            notes.append("JPEG decoded and resized on the GPU (torchvision.io.decode_jpeg)")
        if not notes:
            return info
        return dataclasses.replace(info, preprocessing=f"{info.preprocessing}; inference: {', '.join(notes)}")


def resolve_device(settings: EmbedSettings, gpus: float) -> str:
    return settings.device if settings.device != "auto" else ("cuda" if gpus > 0 else "cpu")


def resolve_replicas(settings: EmbedSettings, resources: Mapping[str, float], nodes: int) -> str:
    """``embed.replicas`` as it runs: ``auto`` is ``tasks`` on one node without GPUs, else ``actors``.

    On one CPU node an actor pool per model costs a process start and the model libraries' imports for
    every model of every run (about 13 s for a weight-free model on 2 cores, against under 1 s once the
    pooled task workers are warm); on a cluster or with GPUs the pools place replicas on nodes and GPUs.
    """
    if settings.replicas != "auto":
        return settings.replicas
    return "tasks" if nodes <= 1 and float(resources.get("GPU", 0.0)) <= 0 else "actors"


def replicas_on_this_cluster(settings: EmbedSettings) -> str:
    """:func:`resolve_replicas` on the connected Ray cluster (its alive nodes and resources)."""
    import ray

    if settings.replicas != "auto":
        return settings.replicas
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return resolve_replicas(settings, ray.cluster_resources(), nodes)


def resolve_precision(requested: str, device: str) -> str:
    """The precision that runs: bf16/fp16 on CUDA (bf16 where the GPU supports it), fp32 on CPU."""
    if requested == "fp32":
        return "fp32"
    if device != "cuda":
        # CPU autocast is possible in torch but slow without AMX and changes vectors for no gain here.
        log.info("embed.precision %s applies to GPU inference only; embedding in fp32 on the CPU", requested)
        return "fp32"
    if requested == "bf16":
        import torch

        if not torch.cuda.is_bf16_supported():
            log.warning("embed.precision bf16: this GPU has no bf16 support; embedding in fp32")
            return "fp32"
    return requested


def autocast_for(precision: str, device: str) -> AbstractContextManager:
    """The autocast context for a resolved precision (a no-op for fp32 or off CUDA)."""
    if precision == "fp32" or device != "cuda":
        return nullcontext()
    import torch

    return torch.autocast(device_type="cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def decode_workers(settings: EmbedSettings, resources: Mapping[str, float], device: str) -> int:
    """Prepare actors: ``decode_workers_per_gpu`` x GPUs on a GPU cluster, else ``decode_concurrency``.

    ``auto`` per GPU is the cluster's CPUs less those the embed actors hold and one for the writer tasks
    and the driver, shared between the GPUs (at least 1): every spare core decodes.
    """
    gpus = float(resources.get("GPU", 0.0))
    if device != "cuda" or gpus <= 0:
        return settings.decode_concurrency
    per_gpu = settings.decode_workers_per_gpu
    if per_gpu == "auto":
        spare = float(resources.get("CPU", 0.0)) - settings.concurrency * EMBED_ACTOR_CPUS - RESERVED_CPUS
        per_gpu = max(1, int(spare // gpus))
    return max(1, int(per_gpu * gpus))


def gpu_jpeg_available() -> bool:
    """torchvision can decode JPEGs on CUDA here (a CUDA build and a visible GPU)."""
    try:
        import torch
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def plan_embedding(settings: EmbedSettings, resources: Mapping[str, float], *, splits: bool) -> EmbedPlan:
    """The plan for a model whose preprocessing splits into a uint8 part (``splits``) or does not.

    GPU JPEG decoding needs the uint8 path (it resizes decoded tensors with the model's geometric
    half), a CUDA device and torchvision's CUDA decoder; ``auto`` turns it on where all three hold.
    """
    device = resolve_device(settings, float(resources.get("GPU", 0.0)))
    gpu_jpeg = settings.gpu_jpeg_decode == "auto" and device == "cuda" and splits and gpu_jpeg_available()
    return EmbedPlan(device=device, precision=resolve_precision(settings.precision, device),
                     gpu_jpeg_decode=gpu_jpeg, decode_workers=decode_workers(settings, resources, device))


def plan_for_model(settings: EmbedSettings, spec: str, storage: Storage | None) -> EmbedPlan:
    """:func:`plan_embedding` on the connected Ray cluster; the default plan for imported vectors."""
    import ray

    from embedeval.pipeline.model_facts import load_split, model_embeds

    if not model_embeds(spec):  # imported vectors: nothing is decoded or inferred
        return EmbedPlan(device="cpu", precision="fp32", gpu_jpeg_decode=False,
                         decode_workers=settings.decode_concurrency)
    splits = load_split(spec, storage) is not None
    return plan_embedding(settings, ray.cluster_resources(), splits=splits)
