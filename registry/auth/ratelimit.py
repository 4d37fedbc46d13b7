"""Failed logins, counted per user and client address: past the limit, every attempt is refused until the window
has passed since the first counted failure, right password or not (so a guesser learns nothing meanwhile)."""

from __future__ import annotations

import math
import time

_MAX_KEYS = 100_000
# One address guessing many user names is limited too, more loosely (several people may share a NAT).
ADDRESS_FACTOR = 5
_ANY_USER = "\x00any"


class FailedLogins:
    def __init__(self, failures: int, window: float) -> None:
        self.failures = failures
        self.window = window
        self._counts: dict[tuple[str, str], tuple[float, int]] = {}

    def _live(self, key: tuple[str, str], now: float) -> tuple[float, int]:
        started, count = self._counts.get(key, (now, 0))
        if now - started >= self.window:
            self._counts.pop(key, None)
            return now, 0
        return started, count

    def retry_after(self, user: str, address: str) -> int | None:
        """Seconds to wait when this user, or this address, is locked out; None when it may try."""
        now = time.monotonic()
        for key, limit in (((user, address), self.failures), ((_ANY_USER, address), self.failures * ADDRESS_FACTOR)):
            started, count = self._live(key, now)
            if count >= limit:
                return max(1, math.ceil(self.window - (now - started)))
        return None

    def failed(self, user: str, address: str) -> None:
        now = time.monotonic()
        if len(self._counts) >= _MAX_KEYS:
            self._counts = {k: v for k, v in self._counts.items() if now - v[0] < self.window}
        for key in ((user, address), (_ANY_USER, address)):
            started, count = self._live(key, now)
            self._counts[key] = (started, count + 1)

    def succeeded(self, user: str, address: str) -> None:
        self._counts.pop((user, address), None)
