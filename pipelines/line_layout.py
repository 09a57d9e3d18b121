"""Log line layouts in Loghub's notation, checked when the directives load and used to split lines."""

from __future__ import annotations

import re


class LineLayout:
    """A line layout in Loghub's notation, e.g. '<Date> <Time> <Level> <Component>: <Content>'.

    Fields are `<Name>`; other text must match literally (regex escapes allowed, as in
    Loghub's settings), and runs of spaces match any whitespace. `Content` is the message.
    """

    def __init__(self, layout: str):
        parts = re.split(r"(<[^<>]+>)", layout)
        names = [p[1:-1] for p in parts[1::2]]
        if "Content" not in names:
            raise ValueError(f"line layout {layout!r} has no <Content> field")
        if len(set(names)) != len(names):
            raise ValueError(f"line layout {layout!r} names a field twice")
        pattern = "".join(
            re.sub(" +", r"\\s+", part) if i % 2 == 0 else f"(?P<{part[1:-1]}>.*?)" for i, part in enumerate(parts)
        )
        try:
            self.regex = re.compile(f"^{pattern}$")
        except re.error as exc:
            raise ValueError(f"line layout {layout!r} is not a valid pattern: {exc}") from None
        self.layout = layout
        self.fields = names

    def split(self, line: str) -> dict[str, str] | None:
        """The layout's fields of one line, or None when the line does not follow it."""
        match = self.regex.match(line.strip())
        return match.groupdict() if match else None
