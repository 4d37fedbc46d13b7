"""What the OpenID Connect sign-in (registry/auth/oidc.py) shares with the UI's pages: its error and the state the
browser keeps between the redirect and the callback. Apart from the client, so that the pages load without httpx (and
the rich, click and pygments it imports: ~0.1 s of every server's start), which only a configured provider needs."""

from __future__ import annotations

import json
from dataclasses import dataclass


class OidcError(Exception):
    """The sign-in failed; the message is safe to show."""


@dataclass(frozen=True, slots=True)
class Pending:
    """What the browser keeps between the redirect to the provider and the callback."""

    state: str
    nonce: str
    verifier: str
    next: str
    issued: float = 0.0  # time.time() when the sign-in began

    def to_json(self) -> str:
        return json.dumps([self.state, self.nonce, self.verifier, self.next, self.issued])

    @classmethod
    def from_json(cls, text: str) -> Pending:
        state, nonce, verifier, target, issued = json.loads(text)
        return cls(str(state), str(nonce), str(verifier), str(target), float(issued))
