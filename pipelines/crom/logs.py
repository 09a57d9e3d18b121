"""Datafication of log lines: template id, template, parameters and severity.

Templates are mined with drain3 (the Drain parser of He et al. 2017, in streaming form).
Its state can persist in a file, so a template keeps its id across runs and restarts; ids
are drain3's cluster ids, which never change once given (the template text may still
generalise as more lines arrive).

Masking is the same for every source: quoted strings, runs of identifiers, IP addresses,
paths, hex and numbers. Each mask has its own name rather than drain3's '<*>', because Drain
scores '<*>' tokens as mismatches: with one name for all, lines with many variables look
unlike their own template and a low threshold then merges short messages that differ.
A source may declare its line layout (Loghub's notation) so that only the message part is
mined; the layout's Level field, if any, gives the severity.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from drain3 import TemplateMiner
from drain3.persistence_handler import PersistenceHandler
from drain3.masking import MaskingInstruction
from drain3.template_miner_config import TemplateMinerConfig
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from pipelines.derived_fields import TEMPLATE_FIELDS
from pipelines.files import replace_atomically
from pipelines.line_layout import LineLayout

_LEFT = r"(?<![A-Za-z0-9_.])"  # a mask starts at a token boundary...
_RIGHT = r"(?![A-Za-z0-9_])"  # ...and ends at one, so 'u0' or 't761' stay words
_IDENTIFIER = r"[A-Za-z]+(?:_[A-Za-z0-9]+)*_-?\d+(?:_[A-Za-z0-9]+)*"  # attempt_14_0020_m_01, blk_-42

_DNS_LABEL = r"(?![A-Za-z0-9-]*[a-z][A-Z])[A-Za-z0-9-]+"  # a host name's label: any case, but not camelCase
_UNITS_OF_TIME = r"(?:ms|msecs?|millis(?:econds?)?|s|secs?|seconds?|mins?|minutes?|h|hrs?|hours?|days?)"
_UNITS_OF_SIZE = r"(?:[KMGTP]i?B|B|bytes?)"

# Applied in this order; names are what a template shows, e.g. 'Received block <ID> of size <NUM>'.
# Each is generic (nothing from one system's logs). In silver the line is a `scrub` field, so its
# e-mail addresses are already <email>; the EMAIL mask serves lines mined without that step.
GENERIC_MASKS: tuple[tuple[str, str], ...] = (
    ("STR", r'"[^"]*"'),
    ("URL", r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]+"),
    ("EMAIL", r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+" + _RIGHT),
    ("UUID", _LEFT + r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}" + _RIGHT),
    # A list of identifiers is one parameter, however long the list.
    ("ID", _LEFT + _IDENTIFIER + r"(?:\s+" + _IDENTIFIER + ")*" + _RIGHT),
    ("ID", r"\[[^\[\]\s]*\d[^\[\]\s]*\]"),  # a bracketed id: [task-17], [0x1f], [pool-2-thread-5]
    ("IP", r"/?(?<![\d.])\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?::\d+)?(?![\d.])"),
    # host:port, e.g. node-7.dc1:8020. Host names are not camelCase, so Class.method:42 (code and line) is no host.
    ("HOST", _LEFT + rf"(?:{_DNS_LABEL}\.)+(?=[A-Za-z]){_DNS_LABEL}:\d{{2,5}}" + _RIGHT),
    ("HOST", _LEFT + r"(?:[A-Za-z0-9-]+\.)+(?:com|org|net|edu|gov|io|local|localdomain|internal|lan)" + _RIGHT),
    ("DATE", _LEFT + r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?" + _RIGHT),
    ("TIME", _LEFT + r"\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?" + _RIGHT),
    ("DURATION", r"(?<![\w.])<?\s?\d+(?:\.\d+)?\s?" + _UNITS_OF_TIME + _RIGHT),  # 3 ms, <1 sec, 2.5s
    ("SIZE", _LEFT + r"\d+(?:\.\d+)?\s?" + _UNITS_OF_SIZE + _RIGHT),  # 4.5 KB, 512 bytes, 3MiB
    ("PATH", r"(?<![\w.:/-])(?:/[\w.$@-]+)+/?"),
    ("PATH", r"(?<![\w])(?:[A-Za-z]:|\\\\[\w.$-]+)(?:\\[\w.$@-]+)+\\?"),  # C:\Temp\x.log, \\server\share
    ("HEX", _LEFT + r"0[xX][0-9a-fA-F]+" + _RIGHT),
    # Bare hex ids (6+ characters mixing digits and a-f, or 8+ hex digits) are numbers too.
    ("NUM", _LEFT + r"(?:(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{6,}|[0-9a-f]{8,})" + _RIGHT),
    ("NUM", _LEFT + r"[-+]?\d+(?:\.\d+)?(?:[a-zA-Z%]{1,3})?" + _RIGHT),  # 42, -1.5, 10ms, 3.5MB, 100%
    # The value of key=value. (A value after "key: " is not masked: leaving each Loghub system
    # out, that mask lowered the accuracy; see docs/evaluation.md.)
    ("VALUE", r"(?<==)[^\s,;&<>=]+"),
)

MAX_CHILDREN = 100


@dataclass(frozen=True)
class MinerSettings:
    """What the miner is tuned by: Drain's similarity threshold and tree depth, and the masks."""

    similarity: float
    depth: int
    masks: tuple[tuple[str, str], ...] = GENERIC_MASKS


# One setting for every source, evaluated leaving each Loghub system out (`make eval`).
SHIPPED = MinerSettings(similarity=0.75, depth=5)

SEVERITIES = ("fatal", "error", "warn", "info", "debug", "trace")
_LEVEL_NAMES = {
    "fatal": ("F", "FATAL", "CRIT", "CRITICAL", "EMERG", "EMERGENCY", "ALERT", "PANIC", "A"),
    "error": ("E", "ERR", "ERROR", "SEVERE"),
    "warn": ("W", "WARN", "WARNING"),
    "info": ("I", "INFO", "NOTICE", "INFORMATION"),
    "debug": ("D", "DEBUG", "V", "VERBOSE", "FINE", "CONFIG"),
    "trace": ("T", "TRACE", "FINER", "FINEST"),
}
_LEVELS = {name: severity for severity, names in _LEVEL_NAMES.items() for name in names}
# Without a Level field: a level word in the message, else words that signal a failure.
_LEVEL_WORD = re.compile(r"\b(FATAL|CRITICAL|ERROR|SEVERE|WARNING|WARN)\b", re.IGNORECASE)
_FAILURE_WORD = re.compile(
    r"\b(error|errors|exception|fail|failed|failure|failures|denied|refused|invalid|timeout|timed out|unable|cannot|can't)\b",
    re.IGNORECASE,
)


def severity(level: str | None, message: str) -> str:
    """One of SEVERITIES: the declared level if the layout has one, else read from the message."""
    if level:
        known = _LEVELS.get(level.strip().strip("[]").upper())
        if known:
            return known
    word = _LEVEL_WORD.search(message)
    if word:
        return _LEVELS[word.group(1).upper()]
    return "error" if _FAILURE_WORD.search(message) else "info"


@dataclass(frozen=True)
class MinedLine:
    template_id: int
    template: str
    parameters: list[str]
    severity: str
    fields: dict[str, str]  # the layout's other fields (empty without a layout)


class AtomicFilePersistence(PersistenceHandler):
    """drain3's state in a file, replaced atomically: a job killed while saving leaves the
    previous state, never a truncated file (drain3's FilePersistence writes in place)."""

    def __init__(self, path: Path):
        self.path = path

    def save_state(self, state: bytes) -> None:
        replace_atomically(self.path, state)

    def load_state(self) -> bytes | None:
        return self.path.read_bytes() if self.path.exists() else None


def miner_config(settings: MinerSettings = SHIPPED) -> TemplateMinerConfig:
    config = TemplateMinerConfig()
    config.drain_sim_th = settings.similarity
    config.drain_depth = settings.depth
    config.drain_max_children = MAX_CHILDREN
    config.drain_max_clusters = None  # a bounded tree would evict templates and reuse no ids
    config.drain_extra_delimiters = []
    config.parametrize_numeric_tokens = True
    config.masking_instructions = [MaskingInstruction(pattern, name) for name, pattern in settings.masks]
    config.mask_prefix, config.mask_suffix = "<", ">"
    config.profiling_enabled = False
    config.snapshot_interval_minutes = 10**9  # saved explicitly (see LogTemplates.save)
    return config


class LogTemplates:
    """Mines log lines into templates; with `state`, the miner's state lives in that file.

    The state holds the templates and the next id, not the settings: those are this
    module's SHIPPED constants, which is why they are not per-source options (other
    `settings` are for evaluating them).
    """

    def __init__(self, layout: str | None = None, state: Path | None = None, settings: MinerSettings = SHIPPED):
        self.layout = LineLayout(layout) if layout else None
        persistence = None
        if state is not None:
            state.parent.mkdir(parents=True, exist_ok=True)
            persistence = AtomicFilePersistence(state)
        self.miner = TemplateMiner(persistence, config=miner_config(settings))

    def mine(self, line: str) -> MinedLine:
        fields = self.layout.split(line) if self.layout else None
        if fields is None:  # no layout, or a line that does not follow it: mine the whole line
            fields = {"Content": line.strip()}
        message = fields.pop("Content")
        result = self.miner.add_log_message(message)
        template = result["template_mined"]
        extracted = self.miner.extract_parameters(template, message, exact_matching=False) or []
        return MinedLine(
            template_id=result["cluster_id"],
            template=template,
            parameters=[p.value for p in extracted],
            severity=severity(fields.get("Level"), message),
            fields=fields,
        )

    def save(self) -> None:
        """Write the state now; new templates are written as they appear, counts only here."""
        if self.miner.persistence_handler is not None:
            self.miner.save_state("saved")

    def forget(self, words: set[str]) -> int:
        """Replace `words` (erased customers' ids) by the wildcard wherever the miner kept them:
        in templates, and as keys of its search tree. Returns how many templates changed."""
        drain = self.miner.drain
        wildcard = drain.param_str
        changed = 0
        for cluster in drain.clusters:
            tokens = [wildcard if token in words else token for token in cluster.log_template_tokens]
            if tokens != list(cluster.log_template_tokens):
                cluster.log_template_tokens = tuple(tokens)
                changed += 1
        nodes = [drain.root_node]
        while nodes:
            node = nodes.pop()
            for key in [k for k in node.key_to_child_node if k in words]:
                child = node.key_to_child_node.pop(key)
                if wildcard in node.key_to_child_node:
                    _merge(node.key_to_child_node[wildcard], child)
                else:
                    node.key_to_child_node[wildcard] = child
            nodes.extend(node.key_to_child_node.values())
        return changed


def _merge(into, other) -> None:
    """Merge one branch of drain3's search tree into another, so no template becomes unreachable."""
    into.cluster_ids = list(dict.fromkeys([*into.cluster_ids, *other.cluster_ids]))
    for key, child in other.key_to_child_node.items():
        if key in into.key_to_child_node:
            _merge(into.key_to_child_node[key], child)
        else:
            into.key_to_child_node[key] = child


def forget_in_templates(state: Path, words: set[str]) -> int:
    """Erase `words` from a source's template state file (`crm forget`); templates changed."""
    if not state.exists():
        return 0
    templates = LogTemplates(state=state)
    changed = templates.forget(words)
    templates.save()
    return changed


def mine_templates(rows: DataFrame, field: str, layout: str | None, state: Path) -> DataFrame:
    """Rows plus TEMPLATE_FIELDS mined from the string column `field`.

    The miner is stateful and order-dependent, so one task mines the rows in Kafka order,
    reading and updating the state file; ids then do not depend on partitioning, and a
    replayed batch finds its templates already there and gets the same ids. The file must
    be reachable from the executors (local disk in local mode, a shared mount on a cluster).
    """
    schema = T.StructType([*rows.schema.fields, *TEMPLATE_FIELDS])
    path = str(state)

    def mine(frames):
        templates = LogTemplates(layout, state=Path(path))
        for frame in frames:
            mined = [templates.mine(line) for line in frame[field]]
            frame["template_id"] = [m.template_id for m in mined]
            frame["template"] = [m.template for m in mined]
            frame["parameters"] = [m.parameters for m in mined]
            frame["severity"] = [m.severity for m in mined]
            yield frame
        templates.save()

    ordered = rows.repartition(1).sortWithinPartitions("kafka_topic", "kafka_partition", "kafka_offset")
    return ordered.mapInPandas(mine, schema)
