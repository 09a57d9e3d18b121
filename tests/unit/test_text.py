"""Social text datafication (pipelines.crom.text), without Spark."""

from __future__ import annotations

import pytest

from pipelines.crom.text import MAX_TEXT_CHARS, Catalogue, describe_texts, language, score_texts, vader_sums


def label(text: str) -> str:
    return score_texts([text])[0].label


@pytest.mark.parametrize(
    "text, expected",
    [
        ("My order arrived broken, I want a refund. Very disappointed.", "negative"),
        ("Third week waiting for my parcel, delivery is late again!", "negative"),
        ("On hold for 2 hours and nobody answers. Unacceptable.", "negative"),
        ("Loving my new speaker, the sound is amazing!", "positive"),
        ("Thanks for the quick help today, great job", "positive"),
        ("Does the watch work with older phones?", "neutral"),
        ("Saw the lamp in a store today.", "neutral"),
    ],
)  # fmt: skip
def test_labels(text, expected):
    assert label(text) == expected


def test_vader_rules_hold_in_the_vectorised_scorer():
    good, not_good, very_good = vader_sums(["The service was good", "The service was not good", "The service was very good"])
    assert not_good < 0 < good < very_good  # negation flips, a booster strengthens
    shouted, calm = vader_sums(["The service was GOOD today", "The service was good today"])
    assert shouted > calm  # capitals in mixed-case text emphasise
    assert vader_sums(["The food was great but the service was terrible"])[0] < 0  # after "but" weighs more


def test_a_text_scores_the_same_alone_or_in_any_batch():
    texts = ["not good at all", "very bad", "GREAT flight", "no", "", "Kudos to the crew, but never again", None] * 3
    alone = [score_texts([t])[0] for t in texts]
    assert score_texts(texts) == alone
    assert score_texts(texts[::-1]) == alone[::-1]


def test_long_texts_are_scored_on_their_capped_start():
    start = "Worst delivery ever, the parcel never arrived. " * 30
    assert len(start) > MAX_TEXT_CHARS
    assert score_texts([start + "love love love " * 10_000]) == score_texts([start[:MAX_TEXT_CHARS]])


@pytest.mark.parametrize(
    "text, reason",
    [
        ("Where is my package? It never arrived, terrible", "lost_item"),
        ("My suitcase arrived damaged, awful", "damaged_item"),
        ("You cancelled my flight and I am stranded. Awful.", "cancellation"),
        ("Delayed 3 hours again, this is ridiculous", "delay"),
        ("Charged twice for one ticket, unacceptable", "billing"),
        ("The agent was rude and unprofessional, horrible", "staff"),
        ("On hold forever and nobody answers, useless customer service", "customer_service"),
    ],
)  # fmt: skip
def test_complaints_get_a_reason(text, reason):
    sentiment = score_texts([text])[0]
    assert sentiment.complaint and sentiment.reason == reason


def test_praise_is_not_a_complaint():
    sentiment = score_texts(["Great service, thank you so much!"])[0]
    assert not sentiment.complaint and sentiment.reason is None


CATALOGUE = Catalogue({"Acme": ["acme", "@acmehelp"]}, {"Aurora headphones": ["aurora headphones"], "Desk lamp": ["desk lamp"]})


def test_facts_name_brands_products_tags_and_mentions():
    row = describe_texts(["@AcmeHelp my Aurora  Headphones died #Fail #fail, cc @Bob"], CATALOGUE).iloc[0]
    assert row["brands"] == ["Acme"] and row["products"] == ["Aurora headphones"]
    assert row["hashtags"] == ["fail"] and row["mentions_hmac"] == ["@acmehelp", "@bob"]  # pseudonymised in Spark


def test_brands_match_whole_words_only():
    row = describe_texts(["acmecorp sells a desk lamps kit"], CATALOGUE).iloc[0]
    assert row["brands"] == [] and row["products"] == []


@pytest.mark.parametrize(
    "text, code",
    [
        ("The flight was delayed again and nobody told us anything", "en"),
        ("Das Essen war kalt und der Service war sehr langsam", "de"),
        ("Le colis est arrivé cassé et personne ne répond", "fr"),
        ("👍👍", "und"),
        ("", "und"),
    ],
)  # fmt: skip
def test_language(text, code):
    assert language(text) == code
