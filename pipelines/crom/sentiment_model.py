"""The trained sentiment model: a Spark MLlib pipeline fitted on labelled conversed data.

Word 1-2-grams and character 2-5-grams, hashed together and IDF-weighted, feed a multinomial
logistic regression with class-balanced weights (macro-F1 counts every class equally).
Character n-grams catch the misspellings and elongations of social text that words miss.
The label-free model's judgement joins them as a few pseudo-words (its score in ninths, its
complaint flag and reason), so that the lexicon's knowledge of negation and intensity, which
n-grams learn only from many examples, is one feature the regression can weigh.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.feature import (
    IDF,
    HashingTF,
    IndexToString,
    NGram,
    RegexTokenizer,
    SQLTransformer,
    StringIndexer,
)
from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.crom.text import LABELS, MAX_TEXT_CHARS, clean_pattern, score_texts
from pipelines.errors import CrmError

log = logging.getLogger(__name__)

INPUT = "_sentiment_input"
LEXICON = "_sentiment_lexicon"
LABEL = "_sentiment_label"
WEIGHT = "_sentiment_weight"
PREDICTED = "_sentiment_predicted"
PROBABILITY = "_sentiment_probability"
HASH_BITS = 18  # 262,144 hashed features, shared by word and character n-grams
REGULARISATION = 0.005
MAX_ITERATIONS = 100


def model_input(text: Column) -> Column:
    """The text the model reads: capped, lower-case, without URLs or @mentions (as the label-free model)."""
    return F.lower(F.regexp_replace(F.substring(text, 1, MAX_TEXT_CHARS), clean_pattern(), " "))


def _lexicon_words(texts: pd.Series) -> pd.Series:
    words = []
    for s in score_texts(texts.tolist()):
        judged = [f"__lexicon_{round(s.score * 4):+d}", f"__lexicon_{s.label}"]
        words.append(judged + (["__complaint", f"__reason_{s.reason}"] if s.complaint else []))
    return pd.Series(words)


def model_inputs(rows: DataFrame, field: str) -> DataFrame:
    """Rows plus what the pipeline reads: the cleaned text and the label-free model's pseudo-words."""
    lexicon = F.pandas_udf(_lexicon_words, T.ArrayType(T.StringType()))
    return rows.withColumn(INPUT, model_input(F.col(field))).withColumn(LEXICON, lexicon(F.col(field)))


def _ngrams(tokens: str, sizes: range) -> tuple[list[NGram], list[str]]:
    stages = [NGram(n=n, inputCol=tokens, outputCol=f"{tokens}_{n}") for n in sizes if n > 1]
    return stages, [tokens if n == 1 else f"{tokens}_{n}" for n in sizes]


def sentiment_pipeline(iterations: int = MAX_ITERATIONS) -> Pipeline:
    words = RegexTokenizer(inputCol=INPUT, outputCol="_words", pattern=r"[^\w'#!?]+", toLowercase=False)
    chars = RegexTokenizer(inputCol=INPUT, outputCol="_chars", pattern="", toLowercase=False, minTokenLength=1)
    word_stages, word_grams = _ngrams("_words", range(1, 3))
    char_stages, char_grams = _ngrams("_chars", range(2, 6))
    # One hashed space for every n-gram. Not VectorAssembler: it would attach a metadata
    # entry per feature to the column, which every task then deserialises (minutes a fit).
    grams = SQLTransformer(statement=f"SELECT *, concat({', '.join(word_grams + char_grams + [LEXICON])}) AS _grams FROM __THIS__")
    hashed = HashingTF(inputCol="_grams", outputCol="_tf", numFeatures=1 << HASH_BITS, binary=True)
    idf = IDF(inputCol="_tf", outputCol="_features", minDocFreq=2)
    labels = StringIndexer(inputCol="label", outputCol=LABEL, stringOrderType="alphabetAsc")
    regression = LogisticRegression(
        featuresCol="_features", labelCol=LABEL, weightCol=WEIGHT, predictionCol="_prediction",
        probabilityCol=PROBABILITY, rawPredictionCol="_raw", family="multinomial",
        regParam=REGULARISATION, elasticNetParam=0.0, maxIter=iterations, standardization=False,
    )  # fmt: skip
    to_label = IndexToString(inputCol="_prediction", outputCol=PREDICTED, labels=sorted(LABELS))
    stages = [words, chars, *word_stages, *char_stages, grams, hashed, idf, labels, regression, to_label]
    return Pipeline(stages=stages)


def train_sentiment(labelled: DataFrame, iterations: int = MAX_ITERATIONS) -> PipelineModel:
    """Fit on rows of (text, label); labels must be among LABELS, each class weighted by 1/share."""
    counts = {r["label"]: r["count"] for r in labelled.groupBy("label").count().collect()}
    unknown = set(counts) - set(LABELS)
    if unknown:
        raise CrmError(f"labels must be {', '.join(LABELS)}; found {', '.join(sorted(map(str, unknown)))}")
    missing = set(LABELS) - set(counts)
    if missing:
        raise CrmError(f"every label needs examples; none for {', '.join(sorted(missing))}")
    total = sum(counts.values())
    weight = F.create_map(*[x for label, n in counts.items() for x in (F.lit(label), F.lit(total / (len(counts) * n)))])
    rows = model_inputs(labelled.select("text", "label", weight[F.col("label")].alias(WEIGHT)), "text")
    return sentiment_pipeline(iterations).fit(rows)


def predict_sentiment(model: PipelineModel, rows: DataFrame, field: str) -> DataFrame:
    """Rows plus sentiment_label and sentiment_score (P(positive) - P(negative))."""
    probability = vector_to_array(F.col(PROBABILITY))
    index = {label: i for i, label in enumerate(sorted(LABELS))}  # StringIndexer's alphabetical order
    scored = model.transform(model_inputs(rows, field))
    return scored.select(
        *rows.columns,
        F.col(PREDICTED).alias("sentiment_label"),
        (probability[index["positive"]] - probability[index["negative"]]).alias("sentiment_score"),
    )


def read_labelled(spark: SparkSession, path: Path, text_column: str, label_column: str) -> DataFrame:
    """A labelled CSV (header, quoted multi-line fields) as rows of (text, label)."""
    if not path.is_file():
        raise CrmError(f"no labelled file at {path}")
    raw = spark.read.csv(str(path), header=True, multiLine=True, escape='"')
    for column in (text_column, label_column):
        if column not in raw.columns:
            raise CrmError(f"{path}: no column {column!r}; it has {', '.join(raw.columns)}")
    return raw.select(F.col(text_column).alias("text"), F.lower(F.trim(F.col(label_column))).alias("label")).where(
        F.col("text").isNotNull() & F.col("label").isNotNull()
    )


def load_model(path: Path) -> PipelineModel:
    if not (path / "metadata").is_dir():
        raise CrmError(f"no trained sentiment model at {path}: train one with `crm train sentiment --labels FILE.csv`")
    return PipelineModel.load(str(path))
