"""Text from a registry on the user's terminal: control characters shown, never obeyed.

A registry's error messages, tag and repository names, search descriptions and labels are its own words. Printed as
they are, an escape sequence among them could rewrite what the terminal shows (move the cursor, hide a line, set the
window's title, or, on some terminals, answer back as typed input), and bidirectional overrides could make a name
read as another. Every line the client prints passes through `printable`: such characters become their escapes.
"""

from __future__ import annotations

import re

# C0 controls but tab (newlines too: a name holding one would print as a line of its own), DEL, C1 controls, the
# bidirectional marks, embeddings, overrides and isolates, the Unicode line and paragraph separators, invisible
# characters (soft hyphen, zero-width ones, word joiners, the byte order mark, tag characters: names that look the
# same), lone surrogates (which no terminal encoding takes), and the backslash (so that an escape shown is one).
_UNSAFE = re.compile(
    "[\\\\\x00-\x08\x0a-\x1f\x7f-\x9f\xad\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff"
    "\ud800-\udfff\U000e0000-\U000e007f]"
)


def printable(text: str) -> str:
    """One line of output, whatever `text` holds."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def printable_lines(lines: list[str]) -> str:
    """Lines of output, one per item, whatever each holds."""
    return "\n".join(printable(line) for line in lines)
