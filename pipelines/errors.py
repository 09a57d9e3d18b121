"""One error type for everything a user can fix; the CLI prints it as a single line."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError


class CrmError(Exception):
    """A failure with a one-line, user-facing reason."""


def describe_validation_error(path: Path | str, exc: ValidationError, prefix: str = "", name_of=None) -> str:
    """Name the file and the key of the first problem pydantic found, in one line.

    `name_of(loc)` may give a name for the item the location points into (a rule's name).
    """
    err = exc.errors()[0]
    loc = ".".join(str(part) for part in (prefix, *err["loc"]) if part != "")
    name = name_of(err["loc"]) if name_of else None
    if name:
        loc = f"{loc} ({name})"
    kind = err["type"]
    if kind == "extra_forbidden":
        reason = "unknown key"
    elif kind == "missing":
        reason = "missing required key"
    else:
        reason = err["msg"].removeprefix("Value error, ")  # our validators' own words
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{path}: {loc or '<top>'}: {reason}{more}"
