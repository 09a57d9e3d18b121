"""Customer segments from the functional parameters: RFM scores with the usual named
segments, and k-means clusters (Spark MLlib) on standardised parameters.

Scores are quantile bins whose edges come from approxQuantile, so no job sorts all the
customers through one partition; ties fall into the same bin.
"""

from __future__ import annotations

from pyspark.errors import AnalysisException, ParseException
from pyspark.ml import Pipeline
from pyspark.ml.clustering import KMeans
from pyspark.ml.feature import StandardScaler, VectorAssembler
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipelines.crfm.parameters import analysis_error
from pipelines.directives import Clustering, RfmScores, Segmentation
from pipelines.errors import CrmError

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


def _score(frame: DataFrame, column: str, bins: int, higher_is_better: bool) -> Column:
    """1..bins by quantile of the non-null values; null where the value is null."""
    edges = frame.approxQuantile(column, [i / bins for i in range(1, bins)], QUANTILE_ERROR)
    value = F.col(column)
    below = sum((value > F.lit(edge)).cast("int") for edge in edges) + 1 if edges else F.lit(1)
    score = below if higher_is_better else F.lit(bins + 1) - below
    return F.when(value.isNotNull(), score)


def rfm_scores(params: DataFrame, rfm: RfmScores) -> DataFrame:
    """params plus r_score, f_score, m_score and rfm_segment ('no_purchase' without recency)."""
    scored = params.select(
        "*",
        _score(params, rfm.recency, rfm.bins, higher_is_better=False).alias("r_score"),
        _score(params, rfm.frequency, rfm.bins, higher_is_better=True).alias("f_score"),
        _score(params, rfm.monetary, rfm.bins, higher_is_better=True).alias("m_score"),
    )
    scale = 5.0 / rfm.bins  # the grid is written for five bins
    r, f = F.ceil(F.col("r_score") * scale), F.ceil(F.col("f_score") * scale)
    segment = F.when(F.col("r_score").isNull(), F.lit("no_purchase"))
    for name, condition in SEGMENTS:
        segment = segment.when(condition(r, f), F.lit(name))
    return scored.withColumn("rfm_segment", segment)


def clusters(params: DataFrame, clustering: Clustering) -> DataFrame:
    """params plus `cluster`, from k-means on the standardised features (nulls as 0).

    With fewer distinct customers than k, k is lowered to their number: MLlib's k-means fails
    when it cannot find k distinct centres.
    """
    inputs = [f"_in_{name}" for name in clustering.features]  # filled copies: the parameters stay as they are
    filled = params.select("*", *[F.coalesce(F.col(name).cast("double"), F.lit(0.0)).alias(i) for name, i in zip(clustering.features, inputs)])
    distinct = filled.select(*inputs).distinct().limit(clustering.k).count()
    if distinct < 2:
        return params.withColumn("cluster", F.lit(0))
    model = Pipeline(
        stages=[
            VectorAssembler(inputCols=inputs, outputCol="_features"),
            StandardScaler(inputCol="_features", outputCol="_scaled", withMean=True, withStd=True),
            KMeans(featuresCol="_scaled", predictionCol="cluster", k=min(clustering.k, distinct), seed=clustering.seed),
        ]
    ).fit(filled)
    return model.transform(filled).drop("_features", "_scaled").select(*params.columns, "cluster")


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


def segments(params: DataFrame, segmentation: Segmentation, grain: str) -> DataFrame:
    """One row per customer: the RFM scores and segment, the cluster and the scores the directive asks for."""
    out = params
    if segmentation.rfm:
        out = rfm_scores(out, segmentation.rfm)
    if segmentation.clustering:
        out = clusters(out, segmentation.clustering)
    out = scores(out, segmentation)
    added = [c for c in ("r_score", "f_score", "m_score", "rfm_segment", "cluster") if c in out.columns]
    return out.select(grain, *dict.fromkeys(segmentation.parameters()), *added, *[s.name for s in segmentation.scores])
