"""Customer segments from the functional parameters: RFM scores with the usual named
segments, and k-means clusters (Spark MLlib) on standardised parameters.

Scores are quantile bins whose edges come from approxQuantile, so no job sorts all the
customers through one partition; ties fall into the same bin.

What a segmentation learns (the edges, the k-means centres) is fitted, saved and applied
apart: CRFM scores new and changed customers with the saved fit, and fits again when the
directive's `refit` says (after some days of as_of, or when a parameter's mean drifted).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

from pyspark.errors import AnalysisException, ParseException
from pyspark.ml import Pipeline
from pyspark.ml.clustering import KMeans
from pyspark.ml.feature import StandardScaler, VectorAssembler
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipelines.crfm.parameters import analysis_error
from pipelines.directives import Clustering, Refit, RfmScores, Segmentation
from pipelines.errors import CrmError
from pipelines.files import replace_atomically

QUANTILE_ERROR = 0.001

# (segment, condition on the r and f scores scaled to 1..5), first match wins: the usual RFM grid.
SEGMENTS = (
    ("champions", lambda r, f: (r >= 4) & (f >= 4)),
    ("loyal", lambda r, f: (r >= 3) & (f >= 4)),
    ("new", lambda r, f: (r >= 4) & (f <= 1)),
    ("promising", lambda r, f: r >= 4),
    ("at_risk", lambda r, f: (r <= 2) & (f >= 3)),
    ("hibernating", lambda r, f: r <= 2),
    ("needs_attention", lambda r, f: F.lit(True)),
)


def _edges(frame: DataFrame, column: str, bins: int) -> list[float]:
    """The quantile edges that split the non-null values into `bins` bins."""
    return frame.approxQuantile(column, [i / bins for i in range(1, bins)], QUANTILE_ERROR)


def _binned(column: str, edges: list[float], bins: int, higher_is_better: bool) -> Column:
    """1..bins by the edges; null where the value is null."""
    value = F.col(column)
    below = sum((value > F.lit(edge)).cast("int") for edge in edges) + 1 if edges else F.lit(1)
    score = below if higher_is_better else F.lit(bins + 1) - below
    return F.when(value.isNotNull(), score)


RFM_SCORES = ("r_score", "f_score", "m_score")


def rfm_edges(params: DataFrame, rfm: RfmScores) -> dict[str, list[float]]:
    """Each RFM score's quantile edges over these customers."""
    return {score: _edges(params, column, rfm.bins) for score, column in zip(RFM_SCORES, (rfm.recency, rfm.frequency, rfm.monetary))}


def rfm_scores(params: DataFrame, rfm: RfmScores, edges: dict[str, list[float]] | None = None) -> DataFrame:
    """params plus r_score, f_score, m_score and rfm_segment ('no_purchase' without recency),
    binned by `edges` (by default, those of these customers)."""
    edges = edges if edges is not None else rfm_edges(params, rfm)
    scored = params.select(
        "*",
        _binned(rfm.recency, edges["r_score"], rfm.bins, higher_is_better=False).alias("r_score"),
        _binned(rfm.frequency, edges["f_score"], rfm.bins, higher_is_better=True).alias("f_score"),
        _binned(rfm.monetary, edges["m_score"], rfm.bins, higher_is_better=True).alias("m_score"),
    )
    scale = 5.0 / rfm.bins  # the grid is written for five bins
    r, f = F.ceil(F.col("r_score") * scale), F.ceil(F.col("f_score") * scale)
    segment = F.when(F.col("r_score").isNull(), F.lit("no_purchase"))
    for name, condition in SEGMENTS:
        segment = segment.when(condition(r, f), F.lit(name))
    return scored.withColumn("rfm_segment", segment)


def _inputs(params: DataFrame, clustering: Clustering) -> tuple[DataFrame, list[str]]:
    """params with filled copies of the features (nulls as 0): the parameters stay as they are."""
    inputs = [f"_in_{name}" for name in clustering.features]
    return params.select("*", *[F.coalesce(F.col(name).cast("double"), F.lit(0.0)).alias(i) for name, i in zip(clustering.features, inputs)]), inputs


@dataclass(frozen=True)
class Centres:
    """A fitted k-means: the means and deviations it standardised the features with, and its centres."""

    mean: list[float]
    std: list[float]
    centres: list[list[float]]


def fit_clusters(params: DataFrame, clustering: Clustering) -> Centres | None:
    """k-means on the standardised features; None when the customers hold fewer than two
    distinct points (one cluster). With fewer distinct points than k, k is lowered to their
    number: MLlib's k-means fails when it cannot find k distinct centres."""
    filled, inputs = _inputs(params, clustering)
    distinct = filled.select(*inputs).distinct().limit(clustering.k).count()
    if distinct < 2:
        return None
    model = Pipeline(
        stages=[
            VectorAssembler(inputCols=inputs, outputCol="_features"),
            StandardScaler(inputCol="_features", outputCol="_scaled", withMean=True, withStd=True),
            KMeans(featuresCol="_scaled", predictionCol="cluster", k=min(clustering.k, distinct), seed=clustering.seed),
        ]
    ).fit(filled)
    scaler, kmeans = model.stages[1], model.stages[2]
    return Centres(scaler.mean.toArray().tolist(), scaler.std.toArray().tolist(), [c.tolist() for c in kmeans.clusterCenters()])


def apply_clusters(params: DataFrame, clustering: Clustering, centres: Centres | None) -> DataFrame:
    """params plus `cluster`, the nearest centre to the standardised features (0 for all
    without centres), as expressions: applying a fit loads no model (pure)."""
    if centres is None:
        return params.withColumn("cluster", F.lit(0))
    filled = [F.coalesce(F.col(name).cast("double"), F.lit(0.0)) for name in clustering.features]
    # As MLlib's StandardScaler: a feature without spread is 0.
    scaled = [(x - F.lit(m)) / F.lit(s) if s else F.lit(0.0) for x, m, s in zip(filled, centres.mean, centres.std)]
    distances = F.array(*[sum((x - F.lit(c)) ** 2 for x, c in zip(scaled, centre)) for centre in centres.centres])
    return params.withColumn("cluster", (F.array_position(distances, F.array_min(distances)) - 1).cast("int"))


def clusters(params: DataFrame, clustering: Clustering) -> DataFrame:
    """params plus `cluster`, from k-means fitted on these customers."""
    return apply_clusters(params, clustering, fit_clusters(params, clustering))


def check_scores(params: DataFrame, segmentation: Segmentation, where: str, field: str = "segmentation.scores") -> None:
    """Analyse each score expression on the (empty) parameters frame; no job runs."""
    rfm = [F.lit(1).alias(c) for c in ("r_score", "f_score", "m_score")] if segmentation.rfm else []
    scored = params.select("*", *rfm)
    for score in segmentation.scores:
        try:
            _ = scored.select(F.expr(score.expression)).schema  # analysis only
        except (AnalysisException, ParseException) as exc:
            raise CrmError(f"{where}: {field} ({score.name}): {analysis_error(exc)}") from exc


def scores(scored: DataFrame, segmentation: Segmentation) -> DataFrame:
    """scored (parameters, with RFM scores if asked) plus the directive's score expressions."""
    return scored.select("*", *[F.expr(s.expression).alias(s.name) for s in segmentation.scores])


@dataclass(frozen=True)
class Fitted:
    """What a segmentation learns from the customers: the RFM scores' edges and the k-means
    centres (None: one cluster)."""

    edges: dict[str, list[float]]
    clusters: Centres | None


def fit(params: DataFrame, segmentation: Segmentation) -> Fitted:
    edges = rfm_edges(params, segmentation.rfm) if segmentation.rfm else {}
    return Fitted(edges, fit_clusters(params, segmentation.clustering) if segmentation.clustering else None)


def apply(params: DataFrame, segmentation: Segmentation, fitted: Fitted, grain: str) -> DataFrame:
    """One row per customer: the RFM scores and segment, the cluster and the scores the directive
    asks for, from a fitted segmentation (pure)."""
    out = params
    if segmentation.rfm:
        out = rfm_scores(out, segmentation.rfm, fitted.edges)
    if segmentation.clustering:
        out = apply_clusters(out, segmentation.clustering, fitted.clusters)
    out = scores(out, segmentation)
    added = [c for c in (*RFM_SCORES, "rfm_segment", "cluster") if c in out.columns]
    return out.select(grain, *dict.fromkeys(segmentation.parameters()), *added, *[s.name for s in segmentation.scores])


def segments(params: DataFrame, segmentation: Segmentation, grain: str) -> DataFrame:
    """The segmentation fitted on these customers, applied to them."""
    return apply(params, segmentation, fit(params, segmentation), grain)


def feature_stats(params: DataFrame, segmentation: Segmentation) -> dict[str, list[float | None]]:
    """Each segmentation parameter's mean and standard deviation over these customers (one job)."""
    names = list(dict.fromkeys(segmentation.parameters()))
    aggs = [agg(F.col(n).cast("double")).alias(f"{n}.{i}") for n in names for i, agg in enumerate((F.mean, F.stddev_pop))]
    row = params.agg(*aggs).first() if aggs else None
    return {n: [row[f"{n}.0"], row[f"{n}.1"]] for n in names} if row else {}


def refit_reason(refit: Refit, fitted_as_of: date, fitted_stats: dict, as_of: date, means: dict[str, float | None]) -> str | None:
    """Why a saved fit is due again, or None: as_of moved `every_days` since the fit, or a
    parameter's mean moved more than `drift` of its standard deviation at the fit."""
    if (as_of - fitted_as_of).days >= refit.every_days:
        return f"fitted {(as_of - fitted_as_of).days} days of as_of ago"
    for name, mean in means.items():
        then, spread = fitted_stats.get(name, [None, None])
        if (mean is None) != (then is None):
            return f"{name} has values only on one side of the fit"
        if mean is not None and abs(mean - then) > refit.drift * (spread or 0.0) + 1e-9:
            return f"the mean of {name} moved from {then:.4g} to {mean:.4g}"
    return None


@dataclass(frozen=True)
class SavedFit:
    """A fitted segmentation kept between runs in `folder`/fit.json: the edges and centres, the
    as_of it was fitted on, the parameters' means and deviations then, and the directive's
    fingerprint."""

    folder: Path
    fingerprint: str

    def load(self) -> tuple[Fitted, date, dict] | None:
        try:
            saved = json.loads((self.folder / "fit.json").read_text())
            if saved["fingerprint"] != self.fingerprint:
                return None
            centres = Centres(**saved["clusters"]) if saved["clusters"] else None
            return Fitted(saved["edges"], centres), date.fromisoformat(saved["as_of"]), saved["stats"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # none yet, or unreadable: the next run fits again

    def save(self, fitted: Fitted, as_of: date, stats: dict) -> None:
        """Never half-written (replace_atomically)."""
        clusters = asdict(fitted.clusters) if fitted.clusters else None
        saved = {"fingerprint": self.fingerprint, "as_of": as_of.isoformat(), "edges": fitted.edges, "clusters": clusters, "stats": stats}
        replace_atomically(self.folder / "fit.json", json.dumps(saved, indent=1).encode())
