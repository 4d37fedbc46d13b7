"""Text from a registry on the user's terminal: control characters shown, never obeyed.

A registry's error messages, tag and repository names, search descriptions and labels are its own words. Printed as
they are, an escape sequence among them could rewrite what the terminal shows (move the cursor, hide a line, set the
window's title, or, on some terminals, answer back as typed input), and bidirectional overrides could make a name
read as another. Every line the client prints passes through `printable`: such characters become their escapes.
"""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional embeddings, overrides and isolates.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
