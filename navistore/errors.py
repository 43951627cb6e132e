"""Every error Navistore raises on purpose, in one tree.

Nothing here knows about HTTP: ``navistore.app`` turns these into responses, in one place.

    NavistoreError
    ├── InvalidRequest            400  the request itself is malformed
    │   └── InvalidKey            400  a key breaks the key rules
    ├── KeyNotFound               404  no live record under that key
    ├── PreconditionFailed        412  If-Match / If-None-Match did not hold
    ├── ValueTooLarge             413  a value or body over its limit
    ├── ChangesGone               410  the change feed no longer reaches back that far
    ├── TooManyWatchers           429  every watcher slot is taken
    ├── StoreError                     the storage backend failed
    │   ├── StoreBusy             503  busy or locked, retry (carries ``retry_after``)
    │   ├── StoreFull             507  out of disk
    │   └── StaleStamp                 commit refused: the stamp is not newer than the stored one
    ├── SettingsError                  a setting has a bad value (the program stops)
    └── PluginError                    a plugin failed to load, or two plugins clash
"""

from __future__ import annotations

from typing import Any


class NavistoreError(Exception):
    """The base of every error Navistore raises on purpose."""

    title = "Navistore error"
    #: Seconds a client should wait before retrying, for errors worth retrying (Retry-After).
    retry_after: int | None = None

    #: The position of the failing operation in a batch, when there is one.
    index: int | None = None

    def __init__(
        self, description: str = "", *, retry_after: int | None = None, index: int | None = None
    ) -> None:
        super().__init__(description)
        self.description = description
        if retry_after is not None:
            self.retry_after = retry_after
        if index is not None:
            self.index = index


class InvalidRequest(NavistoreError):
    title = "Invalid request"


class InvalidKey(InvalidRequest):
    title = "Invalid key"


class KeyNotFound(NavistoreError):
    title = "Key not found"


class PreconditionFailed(NavistoreError):
    """A precondition did not hold; nothing was written.

    ``current`` is the live record the check saw (None when there was none), and ``index`` the
    position of the failing operation in a batch.
    """

    title = "Precondition failed"

    def __init__(
        self, description: str = "", *, current: Any = None, index: int | None = None
    ) -> None:
        super().__init__(description, index=index)
        self.current = current


class ValueTooLarge(NavistoreError):
    title = "Payload too large"


class ChangesGone(NavistoreError):
    title = "Changes purged"


class TooManyWatchers(NavistoreError):
    title = "Too many watchers"
    retry_after = 1


class StoreError(NavistoreError):
    title = "Storage error"


class StoreBusy(StoreError):
    title = "Storage busy"
    retry_after = 1


class StoreFull(StoreError):
    title = "Insufficient storage"


class StaleStamp(StoreError):
    """``commit`` refused a stamp that is not greater than the stored one (``stored``)."""

    title = "Stale stamp"
    retry_after = 1

    def __init__(self, description: str = "", *, stored: str = "") -> None:
        super().__init__(description)
        self.stored = stored


class SettingsError(NavistoreError):
    title = "Bad setting"


class PluginError(NavistoreError):
    title = "Plugin error"
