"""Every knob of the score job in one validated model, so a config typo fails before any work starts.

Defaults are chosen to run on the bundled demo corpus in seconds and to follow the papers where a paper
fixes a choice (CorrEmbed's 1,000 seeded anchors, scipy's Spearman ties, the ZS-SBIR @K convention as an
option rather than the default).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from embedeval.models.base import ALL_MODALITIES as MODALITIES
from embedeval.scoring import registry

#: The built-in tasks (every one runs by default); plugins add more (``score.plugins``).
ALL_TASKS: tuple[str, ...] = tuple(registry.BUILTIN_TASKS)


# Settings that change how the work is run, never a number: excluded from the inputs fingerprint, so
# changing them keeps committed score units (and proves the results do not depend on them).
EXECUTION_SETTINGS = {"use_ray", "block_size", "block_rows", "keep_blocks", "device", "allow_tf32", "common_panel"}


def check_modalities(v: list[str] | None) -> list[str] | None:
    """A settings list of modality names (shared by the score settings and task options)."""
    bad = [m for m in v or [] if m not in MODALITIES]
    if bad:
        raise ValueError(f"unknown modalities {bad}; use {MODALITIES}")
    return v


def check_directions(v: list[str], setting: str) -> list[str]:
    """A settings list of ``'a->b'`` modality directions (``label_pairs``, a task's ``bridge_pairs``)."""
    for p in v:
        a, sep, b = p.partition("->")
        if not sep or a not in MODALITIES or b not in MODALITIES:
            raise ValueError(f"{setting} entry {p!r} must look like 'sketch->image' (modalities: {MODALITIES})")
    return v


class ScoreSettings(BaseModel):
    """The score job's configuration (``score:`` section of a run config)."""

    model_config = ConfigDict(extra="forbid")

    # --- general -------------------------------------------------------------------------------------
    plugins: list[str] = Field(default_factory=list,
                               description="modules that declare score tasks of your own (SCORE_TASK); "
                                           "see embedeval.scoring.registry")
    tasks: list[str] = Field(default_factory=lambda: list(ALL_TASKS),
                             description="which analyses to run: built-in or plugin task names")
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-task options, validated by the task's own options model")
    seed: int = Field(0, description="one seed for every random choice (anchors, draws, samples, bootstrap)")
    block_size: int = Field(4096, ge=1, description="query rows per tile of the engine; task memory is "
                                                     "O(B * (block_rows + d))")
    block_rows: int = Field(32768, ge=1, description="rows per block file of the prepared unit vectors (a tile's "
                                                     "gallery side); 32768 x 512 float32 = 64 MiB")
    use_ray: bool = Field(True, description="run engine tiles as Ray tasks when Ray is initialised")
    device: Literal["auto", "cpu", "cuda", "torch"] = Field(
        "auto", description="where tile GEMMs run: auto (cuda when the cluster has GPUs, else cpu), cpu (numpy), "
                            "cuda (torch on one GPU per task), torch (torch on CPU); results are identical")
    allow_tf32: bool = Field(False, description="let CUDA tiles use TF32 (faster; the exactness recheck widens to "
                                                "TF32's error bound, so results stay identical)")
    keep_blocks: bool = Field(False, description="keep the prepared unit-vector blocks under scores/blocks after "
                                                 "the stage (they are a copy of the embeddings' size)")
    common_panel: bool = Field(False, description="also score this run's and the previous run's vectors on the items "
                                                  "both share, so the diff and --fail-on-regression compare like "
                                                  "for like (see embedeval.scoring.panel)")
    bootstrap_resamples: int = Field(200, ge=0, description="bootstrap resamples per score; 0 = no interval")
    confidence: float = Field(0.95, gt=0.0, lt=1.0, description="bootstrap interval coverage")
    bootstrap_max_units: int = Field(
        10_000, ge=3, description="rank statistics over more units (rankability's test items) get an m-out-of-n "
                                  "bootstrap interval with m = this; the score's note says so")

    # --- corrembed -----------------------------------------------------------------------------------
    corr_modalities: list[str] = Field(default_factory=lambda: ["image"],
                                       description="modalities whose embeddings are correlated with tags")
    corr_anchors: int | Literal["all"] = Field(1000, description="seeded random anchors (paper: 1000) or 'all'")
    corr_ks: list[int] = Field(default_factory=lambda: [10, 50, 100], description="k of corr_knn")
    corr_random_control: bool = Field(True, description="also report corr_random: k random items per anchor")
    tag_weighting: Literal["entropy", "idf"] = Field(
        "entropy", description="tag weight without a category-weight table: binary entropy of presence or IDF")
    spearman_max_pairs: int | None = Field(
        200_000, ge=1, description="Spearman over at most this many seeded random pairs; None = all pairs")

    # --- rankability ---------------------------------------------------------------------------------
    rank_modalities: list[str] = Field(default_factory=lambda: ["image"])
    ridge_alpha: float = Field(1.0, gt=0.0, description="L2 penalty of the regression fit (sklearn's alpha)")
    fewshot_ns: list[int] = Field(default_factory=lambda: [2, 5, 10, 20], description="labelled items per draw")
    fewshot_repeats: int = Field(10, ge=1, description="seeded draws averaged per few-shot n")

    # --- retrieval -----------------------------------------------------------------------------------
    recall_ks: list[int] = Field(default_factory=lambda: [1, 5, 10], description="K of R@K (rsum uses these)")
    label_pairs: list[str] = Field(default_factory=lambda: ["sketch->image"],
                                   description="'a->b' label-relevance retrieval directions")
    caption_max_queries: int | None = Field(
        None, ge=1, description="image<->text retrieval: rank a seeded sample of this many queries per direction "
                                "against the whole gallery (exact on the sample, O(sample x N)); None = every query")
    label_max_queries: int | None = Field(
        None, ge=1, description="labelled retrieval (sketch->image): score a seeded sample of this many queries "
                                "against the whole gallery; None = every query")
    map_cutoffs: list[int] = Field(default_factory=lambda: [200], description="mAP@K besides mAP@all")
    precision_ks: list[int] = Field(default_factory=lambda: [100, 200], description="P@K")
    ap_convention: Literal["standard", "zs-sbir"] = Field(
        "standard", description="standard AP/P@K, or the ZS-SBIR code's min(K, R) divisor and interpolation")

    # --- prototypes ----------------------------------------------------------------------------------
    prototype_modalities: list[str] | None = Field(None, description="None = every modality with labels")
    kmeans_k: int | None = Field(None, ge=1, description="None = number of distinct labels")
    kmeans_iters: int = Field(50, ge=1)
    kmeans_init: Literal["k-means++", "k-means||"] = "k-means++"
    kmeans_fit_sample: int | None = Field(
        None, ge=2, description="fit the centroids on a seeded sample of this many items, then assign every item "
                                "to them in one exact pass (O(sample x k x d) per Lloyd pass instead of O(N x k x "
                                "d)); None = fit on every item")
    ambiguity_neighbours: int = Field(10, ge=1, description="neighbours looked at per item for ambiguity")
    ambiguity_max_items: int | None = Field(
        None, ge=1, description="ambiguity neighbours for a seeded sample of this many items, searched among all "
                                "items (exact on the sample, O(sample x N)); None = every item, O(N^2)")
    ambiguity_top: int = Field(50, ge=1, description="rows per kind kept in ambiguity.parquet")
    prototype_examples: int = Field(6, ge=1, description="items nearest each centroid kept for thumbnails")

    @field_validator("corr_ks", "fewshot_ns", "recall_ks", "map_cutoffs", "precision_ks")
    @classmethod
    def _positive_sorted(cls, v: list[int]) -> list[int]:
        if any(x < 1 for x in v):
            raise ValueError(f"every value must be >= 1, got {v}")
        return sorted(set(v))

    @field_validator("corr_anchors")
    @classmethod
    def _anchors(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("corr_anchors must be >= 1 or 'all'")
        return v

    @field_validator("label_pairs")
    @classmethod
    def _pairs(cls, v: list[str]) -> list[str]:
        return check_directions(v, "label_pairs")

    @model_validator(mode="after")
    def _known_tasks(self) -> "ScoreSettings":
        registry.load_plugins(self.plugins)
        known = registry.task_names()
        unknown = [t for t in self.tasks if t not in known]
        if unknown:
            raise ValueError(f"unknown score tasks {unknown}; known: {known} (tasks of your own go in plugins)")
        for name, values in self.options.items():
            if name not in known:
                raise ValueError(f"options for unknown score task {name!r}")
            model = registry.get_task(name).options
            if model is None:
                raise ValueError(f"score task {name!r} takes no options")
            self.options[name] = model.model_validate(values).model_dump(mode="json")
        return self

    def options_for(self, task: str) -> Any:
        """The validated options model of ``task`` (defaults where the config gives none), or None."""
        model = registry.get_task(task).options
        return None if model is None else model.model_validate(self.options.get(task, {}))

    @field_validator("corr_modalities", "rank_modalities", "prototype_modalities")
    @classmethod
    def _modalities(cls, v: list[str] | None) -> list[str] | None:
        return check_modalities(v)
