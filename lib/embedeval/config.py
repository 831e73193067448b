"""The run configuration: one YAML file drives embed, score and report.

Validation errors name the key at fault (``embed.batch_size: Input should be greater than 0``). Secrets
(S3 credentials) may come from the config or the environment; :func:`redacted_yaml` writes the resolved
config without them, and nothing else in the library prints a config.
"""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from embedeval.errors import EXIT_USAGE, EmbedevalError
from embedeval.io.lease import LeaseSettings
from embedeval.io.storage import S3Options
from embedeval.report.settings import ReportSettings
from embedeval.scoring.settings import ScoreSettings

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class ConfigError(EmbedevalError, ValueError):
    """The config cannot be used; the message names the key (or file) at fault and what is expected."""

    exit_code = EXIT_USAGE


class ModelEntry(BaseModel):
    """One model to evaluate. ``spec`` is a registry name (see ``embedeval.models.registry``)."""

    model_config = ConfigDict(extra="forbid")

    spec: str
    name: str | None = None                 # folder/report name; default: a slug of the spec
    batch_size: int | None = Field(default=None, gt=0)
    columns: dict[str, float] = Field(default_factory=dict)  # per-model facts for plots, e.g. imagenet_top1

    def slug(self) -> str:
        from embedeval.models.base import model_slug

        return model_slug(self.name or self.spec)


class EmbedSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    modalities: list[Literal["image", "sketch", "text"]] = Field(default_factory=lambda: ["image", "sketch", "text"])
    batch_size: int = Field(default=32, gt=0)
    concurrency: int = Field(default=1, gt=0, description="model replicas (actors) per model")
    decode_concurrency: int = Field(default=1, gt=0, description="parallel read/decode/preprocess tasks")
    replicas: Literal["auto", "actors", "tasks"] = Field(
        default="auto", description="actors: model replicas in an actor pool per model (clusters, GPUs); tasks: "
                                    "read, decode and embed in plain Ray tasks whose worker processes serve every "
                                    "model in turn (no process start per model; small CPU-only machines); auto: "
                                    "tasks on a Ray of one node without GPUs (in-process Ray, a workstation), "
                                    "actors on several nodes or with GPUs")
    models_at_once: int = Field(
        default=1, gt=0, description="with replicas: tasks, embed this many models at the same time, so their fixed "
                                     "costs (pipeline start, model build) overlap; each worker process then keeps up "
                                     "to this many model replicas")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpus_per_actor: float = Field(default=1.0, ge=0, description="used only when the cluster has GPUs")
    torch_threads: int | None = Field(default=None, gt=0, description="threads per model replica on CPU")
    rows_per_file: int = Field(default=4096, gt=0)
    max_image_pixels: int = Field(default=40_000_000, gt=0, description="larger images are quarantined")
    max_image_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    use_cache: bool = True
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32", description="GPU inference under autocast; on CPU always fp32 (a log line says so)")
    gpu_jpeg_decode: Literal["auto", "off"] = Field(
        default="auto", description="auto: decode JPEGs in the embed actor on its GPU (CPU path per image otherwise)")
    decode_workers_per_gpu: Literal["auto"] | int = Field(
        default="auto", description="prepare (decode) actors per GPU; auto: the cluster's spare CPUs per GPU. "
                                    "On a cluster without GPUs decode_concurrency applies")

    @model_validator(mode="after")
    def _models_at_once_needs_tasks(self) -> "EmbedSettings":
        if self.models_at_once > 1 and self.replicas != "tasks":
            raise ValueError("embed.models_at_once above 1 needs embed.replicas: tasks (each model's actor pool "
                             "would hold its own CPUs or GPUs while the others wait for them)")
        return self

    @field_validator("decode_workers_per_gpu", mode="before")
    @classmethod
    def _positive_workers(cls, value: Any) -> Any:
        if isinstance(value, bool) or (isinstance(value, int) and value < 1):
            raise ValueError("use 'auto' or a whole number of at least 1")
        return value


class RayOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str | None = None     # None: join the cluster this job runs on, or start one in-process
    num_cpus: int | None = Field(default=None, gt=0)
    # Echo the workers' stdout/stderr on the driver's console (and in `ray job logs`). None: only with
    # `embedeval -v`; the lines are always in the Ray session's log files.
    log_to_driver: bool | None = None


class RunConfig(BaseModel):
    """The whole job. Only ``manifest`` and ``models`` are required."""

    model_config = ConfigDict(extra="forbid")

    root: str = "./embedeval-output"
    run_id: str | None = None
    manifest: str
    tag_categories: str | None = None
    category_weights: dict[str, float] | None = None
    allowed_roots: list[str] = Field(default_factory=list)
    models: list[ModelEntry]
    s3: S3Options = Field(default_factory=S3Options)
    embed: EmbedSettings = Field(default_factory=EmbedSettings)
    score: ScoreSettings = Field(default_factory=ScoreSettings)
    report: ReportSettings = Field(default_factory=ReportSettings)
    ray: RayOptions = Field(default_factory=RayOptions)
    lease: LeaseSettings = Field(default_factory=LeaseSettings)
    previous_run_id: str | None = None

    @field_validator("models", mode="before")
    @classmethod
    def _models_from_strings(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"spec": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("run_id")
    @classmethod
    def _valid_run_id(cls, value: str | None) -> str | None:
        if value is not None and not RUN_ID_PATTERN.match(value):
            raise ValueError("use letters, digits, '.', '_' and '-' (at most 100), starting with a letter or digit")
        return value

    @model_validator(mode="after")
    def _unique_model_names(self) -> "RunConfig":
        if not self.models:
            raise ValueError("models: list at least one model")
        slugs = [m.slug() for m in self.models]
        dups = sorted({s for s in slugs if slugs.count(s) > 1})
        if dups:
            raise ValueError(f"models: two entries have the same name {dups}; give them distinct 'name's")
        return self

    def resolved_run_id(self) -> str:
        if self.run_id is None:
            self.run_id = _dt.datetime.now(_dt.timezone.utc).strftime("run-%Y%m%d-%H%M%S")
        return self.run_id


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see README 'Configuration')"
        elif err["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "<dict>", base_dir: Path | None = None) -> RunConfig:
    """Validate a config mapping. Relative local paths are taken relative to ``base_dir`` (the YAML's folder)."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {source}: the top level must be a mapping of keys to values")
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None
    if base_dir is not None:
        for key in ("manifest", "tag_categories", "root"):
            value = getattr(config, key)
            if value and "://" not in value and not Path(value).expanduser().is_absolute():
                setattr(config, key, str((base_dir / value).resolve()))
    return config


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML config; ``overrides`` (dotted keys, e.g. {"run_id": "x", "embed.batch_size": 8}) win."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return parse_config(data, str(p), p.parent.resolve())


def redacted_yaml(config: RunConfig) -> str:
    """The resolved config as YAML with every secret removed (safe to write next to the outputs)."""
    data = config.model_dump(mode="json")
    s3 = data.get("s3", {})
    for key in ("access_key_id", "secret_access_key", "session_token"):
        if s3.get(key) is not None:
            s3[key] = "<redacted: from config>"
    return yaml.safe_dump(data, sort_keys=False)
