"""The search language of `/api/v1/search?q=` and how matches are ranked.

`q` is a list of parts separated by spaces, every one of which must match:

    word                 a repository name containing it (or, ranked last, a description)
    label:KEY=VALUE      a label or annotation with that value (`label:KEY`: with any value)
    platform:OS/ARCH     an image for that platform (`linux/arm` also matches `linux/arm/v7`)
    type:MEDIA/TYPE      a manifest of that artifact type (`artifactType:` works too)
    tag:PATTERN          a tag matching the pattern (`*` and `?` as in a shell)

Ranking, best first: the name is the word, its last component is, a word of the name starts with it, the name
contains it, only the description does. Several words rank by the worst of them; ties go by name.
"""

from __future__ import annotations

from registry.errors import ErrorCode, RegistryError
from registry.index.base import SearchQuery

MAX_QUERY_LENGTH = 1024
MAX_PARTS = 16
RANK_DESCRIPTION_ONLY = 4
_WORD_BOUNDARIES = ("/", ".", "_", "-")
_PREFIXES = {
    "label": "labels",
    "platform": "platforms",
    "type": "artifact_types",
    "artifacttype": "artifact_types",
    "tag": "tags",
}


def invalid_query(reason: str, q: str) -> RegistryError:
    return RegistryError(
        ErrorCode.UNSUPPORTED, detail={"q": q, "reason": reason}, message="invalid search query", status=400
    )


def parse_query(q: str) -> SearchQuery:
    if len(q) > MAX_QUERY_LENGTH:
        raise invalid_query(f"longer than {MAX_QUERY_LENGTH} characters", q[:64] + "...")
    parts = q.split()
    if len(parts) > MAX_PARTS:
        raise invalid_query(f"more than {MAX_PARTS} parts", q)
    terms: list[str] = []
    labels: list[tuple[str, str | None]] = []
    platforms: list[str] = []
    found: dict[str, list[str]] = {"artifact_types": [], "tags": []}
    for part in parts:
        prefix, colon, value = part.partition(":")
        field = _PREFIXES.get(prefix.lower()) if colon else None
        if field is None:
            terms.append(part.lower())
        elif not value:
            raise invalid_query(f"{prefix}: needs a value", q)
        elif field == "labels":
            key, equals, label_value = value.partition("=")
            if not key:
                raise invalid_query("label: needs a key (label:KEY=VALUE or label:KEY)", q)
            labels.append((key, label_value if equals else None))
        elif field == "platforms":
            if value.count("/") not in (1, 2) or "" in value.split("/"):
                raise invalid_query("platform: is OS/ARCHITECTURE[/VARIANT], like linux/arm64", q)
            platforms.append(value.lower())
        else:
            found[field].append(value)
    return SearchQuery(
        terms=tuple(terms),
        labels=tuple(labels),
        platforms=tuple(platforms),
        artifact_types=tuple(found["artifact_types"]),
        tags=tuple(found["tags"]),
    )


def rank_sql(subject: str, terms: tuple[str, ...], dialect: str = "sqlite") -> tuple[str, list[str]]:
    """An SQL expression ranking the name `subject` (a column, or `?`) against `terms` from 0 (best) to
    RANK_DESCRIPTION_ONLY (see the module's docstring), and its parameters in order."""
    if not terms:
        return "0", []
    parts: list[str] = []
    parameters: list[str] = []
    # The last length(term) + 1 characters of the subject ("/term": its last component is the term).
    ending = f"right({subject}, length(?) + 1)" if dialect == "postgresql" else f"substr({subject}, -length(?) - 1)"
    for term in terms:
        boundaries = " OR ".join(f"instr({subject}, ?) > 0" for _ in _WORD_BOUNDARIES)
        parts.append(
            f"CASE WHEN {subject} = ? THEN 0 "
            f"WHEN {ending} = ? THEN 1 "
            f"WHEN instr({subject}, ?) = 1 OR {boundaries} THEN 2 "
            f"WHEN instr({subject}, ?) > 0 THEN 3 ELSE {RANK_DESCRIPTION_ONLY} END"
        )
        parameters += [term, term, "/" + term, term, *(c + term for c in _WORD_BOUNDARIES), term]
    if len(parts) == 1:
        return parts[0], parameters
    return f"max({', '.join(parts)})", parameters
