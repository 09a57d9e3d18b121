"""The trained sentiment model (Spark MLlib) and `crm train sentiment`, on real Spark.

Training is the slow part, so the module trains once, through the CLI, and every test
uses that model."""

from __future__ import annotations

import csv

import pytest

from pipelines.cli import main
from pipelines.crom.sentiment_model import load_model, predict_sentiment, read_labelled, train_sentiment
from pipelines.crom.text import datafy_text
from pipelines.derived_fields import TEXT_FIELDS
from pipelines.directives import TextMining
from pipelines.errors import CrmError
from pipelines.generator import COMPLAINTS, NEUTRAL, POSITIVE, PRODUCTS

FEW = 15  # optimiser iterations: enough for these separable texts, and quick
QUOTED = 'Broken again, "really"\nawful'
LABELLED = [(t.format(p=p[1]), label) for label, group in (("negative", COMPLAINTS), ("neutral", NEUTRAL), ("positive", POSITIVE)) for t in group for p in PRODUCTS]  # fmt: skip


def _write_csv(path, rows, header=("comment", "mood")):
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def trained(spark, tmp_path_factory):
    """`crm train sentiment` on a CSV whose quoted texts hold commas, quotes and a line break."""
    folder = tmp_path_factory.mktemp("sentiment")
    rows = LABELLED + [(QUOTED, "NEGATIVE ")]
    labels = _write_csv(folder / "labels.csv", rows)
    out = folder / "model"
    argv = ["train", "sentiment", "--labels", str(labels), "--text-column", "comment", "--label-column", "mood"]
    code = main([*argv, "--output", str(out), "--iterations", str(FEW)])
    assert code == 0
    return load_model(out)


def test_trained_model_learns_the_labels_and_keeps_the_rows(spark, trained):
    model = trained
    rows = spark.createDataFrame([(i, text) for i, (text, _) in enumerate(LABELLED)], "id int, body string")
    predicted = predict_sentiment(model, rows, "body").orderBy("id").collect()
    assert predicted[0].asDict().keys() == {"id", "body", "sentiment_label", "sentiment_score"}
    correct = sum(r["sentiment_label"] == label for r, (_, label) in zip(predicted, LABELLED))
    assert correct / len(LABELLED) > 0.95  # separable training texts: any working fit gets them
    negative = [r["sentiment_score"] for r, (_, label) in zip(predicted, LABELLED) if label == "negative"]
    positive = [r["sentiment_score"] for r, (_, label) in zip(predicted, LABELLED) if label == "positive"]
    assert max(negative) < 0 < min(positive)


def test_datafy_text_with_the_trained_model(spark, trained):
    model = trained
    mining = TextMining(model="trained", brands={"Brand": ["@brand"]})
    rows = spark.createDataFrame([(i, text) for i, (text, _) in enumerate(LABELLED)], "id int, text string")
    out = datafy_text(predict_sentiment(model, rows, mining.field), mining, b"k" * 32, predicted=True).orderBy("id").collect()
    assert [f.name for f in TEXT_FIELDS] == list(out[0].asDict())[2:]
    correct = 0
    for row, (_, label) in zip(out, LABELLED):
        correct += row["sentiment_label"] == label
        assert row["complaint"] == (row["sentiment_label"] == "negative")
        assert (row["complaint_reason"] is not None) == row["complaint"]
        assert row["brands"] == (["Brand"] if "@brand" in row["text"] else [])
    assert correct / len(LABELLED) > 0.95


@pytest.mark.parametrize(
    "rows, message",
    [
        ([("good", "positive"), ("bad", "negative"), ("meh", "mixed")], "labels must be negative, neutral, positive; found mixed"),
        ([("good", "positive"), ("bad", "negative")], "every label needs examples; none for neutral"),
    ],
)
def test_bad_labels_are_refused_before_training(spark, rows, message):
    with pytest.raises(CrmError, match=message):
        train_sentiment(spark.createDataFrame(rows, "text string, label string"), FEW)


def test_labelled_csv_is_read_whole_and_its_columns_checked(spark, tmp_path):
    path = _write_csv(tmp_path / "labels.csv", LABELLED + [(QUOTED, "NEGATIVE ")])
    with pytest.raises(CrmError, match=r"no column 'text'; it has comment, mood"):
        read_labelled(spark, path, "text", "mood")
    rows = read_labelled(spark, path, "comment", "mood").collect()
    assert len(rows) == len(LABELLED) + 1
    assert (QUOTED, "negative") in {(r["text"], r["label"]) for r in rows}


def test_a_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(CrmError, match="no trained sentiment model at .*crm train sentiment"):
        load_model(tmp_path / "nothing")
