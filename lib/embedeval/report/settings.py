"""What a report shows: headline metrics, the corr_knn k, extra per-model columns, thumbnail limits."""

from __future__ import annotations

from pydantic import AliasChoices, BaseModel, ConfigDict, Field


class HeadlineMetric(BaseModel):
    """One leaderboard column family, matched against the scores table.

    A field left ``None`` is a wildcard: the spec expands to one column per distinct value present (one
    column per rankability attribute, per prototype modality...). ``split`` is instead a preference list:
    the first split present for any model is used for every model, so a column never mixes splits.
    ``label`` may use ``{target}``, ``{k}``, ``{split}``, ``{protocol}``. ``protocol`` picks one definition
    of a score (``regression`` of rankability's fits); older configs may call it ``variant``.
    """

    model_config = ConfigDict(extra="forbid")

    label: str
    task: str
    metric: str
    target: str | None = None
    k: int | None = None
    split: list[str] | None = None
    protocol: str | None = Field(None, validation_alias=AliasChoices("protocol", "variant"))
    higher_is_better: bool = True


def default_headline(corr_knn_k: int) -> list[HeadlineMetric]:
    """The headline set: the columns each registered score task declares (design §7: one or two numbers
    per task, the ones people compare models on), in registry order. ``k_setting`` in a declaration names
    the report setting that gives k (``corr_knn_k``)."""
    from embedeval.scoring import registry

    settings = {"corr_knn_k": corr_knn_k}
    out: list[HeadlineMetric] = []
    for task in registry.all_tasks():
        for spec in task.headline:
            fields = dict(spec)
            k_setting = fields.pop("k_setting", None)
            if k_setting is not None:
                fields["k"] = settings[k_setting]
            out.append(HeadlineMetric(task=task.name, **fields))
    return out


class ReportSettings(BaseModel):
    """Settings of ``embedeval report`` (config key ``report:``). Every field has a working default."""

    model_config = ConfigDict(extra="forbid")

    title: str = "embedeval report"
    #: Leaderboard columns; None = :func:`default_headline` with ``corr_knn_k``.
    headline: list[HeadlineMetric] | None = None
    #: k of the corr_knn leaderboard column; if the run lacks it, the nearest k present is used (and said).
    corr_knn_k: int = Field(default=10, ge=1)
    #: CorrEmbed target (tag category) the CorrEmbed plots use.
    corrembed_target: str = "all"
    #: Extra per-model numbers to plot CorrEmbed against, e.g. {"imagenet_top1": {"resnet50": 80.9}}.
    model_columns: dict[str, dict[str, float]] = Field(default_factory=dict)
    #: Prototype plots: prototypes (rows) per model and modality, and items (thumbnails) per prototype.
    max_prototypes: int = Field(default=6, ge=1)
    max_thumbnails: int = Field(default=8, ge=1)
    #: Ambiguity plots: pairs or items shown per model, modality and kind.
    max_ambiguity: int = Field(default=8, ge=1)
    #: Longest side of a thumbnail in pixels before it is drawn.
    thumbnail_px: int = Field(default=128, ge=16)
    dpi: int = Field(default=110, ge=50, le=300)
    #: Show the full tidy scores table in report.html.
    include_tidy_table: bool = True

    def headline_metrics(self) -> list[HeadlineMetric]:
        return self.headline if self.headline is not None else default_headline(self.corr_knn_k)
