"""Text from a registry on the user's terminal: control characters shown, never obeyed.

A registry's error messages, tag and repository names, search descriptions and labels are its own words. Printed as
they are, an escape sequence among them could rewrite what the terminal shows (move the cursor, hide a line, set the
window's title, or, on some terminals, answer back as typed input), and bidirectional overrides could make a name
read as another. Every line the client prints passes through `printable`: such characters become their escapes.
"""

from __future__ import annotations

# Look-alike fillers that Unicode counts as letters: names printed with them look like others.
_FILLERS = frozenset("\u115f\u1160\u3164\uffa0\u034f\u2800")


def _unsafe(char: str) -> bool:
    """Anything but a printable character or a tab, by Unicode category: controls (C0, C1), formats (bidi marks,
    overrides and isolates, zero-width characters, word joiners, the byte order mark, tag characters), lone
    surrogates, private use and unassigned code points, line and paragraph separators and spaces other than the
    space (newlines too: a name holding one would print as a line of its own); the fillers; and the backslash, so
    that an escape shown is one."""
    return char == "\\" or char in _FILLERS or not (char.isprintable() or char == "\t")


def printable(text: str) -> str:
    """One line of output, whatever `text` holds."""
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text
    return "".join(char.encode("unicode_escape").decode("ascii") if _unsafe(char) else char for char in text)


def printable_lines(lines: list[str]) -> str:
    """Lines of output, one per item, whatever each holds."""
    return "\n".join(printable(line) for line in lines)
