"""Every knob of the score job in one validated model, so a config typo fails before any work starts.

Defaults are chosen to run on the bundled demo corpus in seconds and to follow the papers where a paper
fixes a choice (CorrEmbed's 1,000 seeded anchors, scipy's Spearman ties, the ZS-SBIR @K convention as an
option rather than the default).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from embedeval.models.base import ALL_MODALITIES as MODALITIES

TaskName = Literal["corrembed", "rankability", "retrieval", "prototypes", "modality_gap"]
ALL_TASKS: tuple[TaskName, ...] = ("corrembed", "rankability", "retrieval", "prototypes", "modality_gap")


class ScoreSettings(BaseModel):
    """The score job's configuration (``score:`` section of a run config)."""

    model_config = ConfigDict(extra="forbid")

    # --- general -------------------------------------------------------------------------------------
    tasks: list[TaskName] = Field(default_factory=lambda: list(ALL_TASKS),
                                  description="which analyses to run")
    seed: int = Field(0, description="one seed for every random choice (anchors, draws, samples, bootstrap)")
    block_size: int = Field(1024, ge=1, description="tile edge B of the engine; memory is O(B*B + B*d)")
    use_ray: bool = Field(True, description="run engine tiles as Ray tasks when Ray is initialised")
    bootstrap_resamples: int = Field(200, ge=0, description="bootstrap resamples per score; 0 = no interval")
    confidence: float = Field(0.95, gt=0.0, lt=1.0, description="bootstrap interval coverage")

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
    ambiguity_neighbours: int = Field(10, ge=1, description="neighbours looked at per item for ambiguity")
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
        for p in v:
            a, sep, b = p.partition("->")
            if not sep or a not in MODALITIES or b not in MODALITIES:
                raise ValueError(f"label_pairs entry {p!r} must look like 'sketch->image' (modalities: {MODALITIES})")
        return v

    @field_validator("corr_modalities", "rank_modalities", "prototype_modalities")
    @classmethod
    def _modalities(cls, v: list[str] | None) -> list[str] | None:
        bad = [m for m in v or [] if m not in MODALITIES]
        if bad:
            raise ValueError(f"unknown modalities {bad}; use {MODALITIES}")
        return v
