"""The limits of the REST API (DESIGN.md, section 5), where the client commands can read them
without importing the server's modules (``navistore.node`` took 12 ms of a command's start)."""

MAX_KEY_BYTES = 1024
MAX_TTL = 31_536_000
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_BATCH_OPS = 128
MAX_BATCH_BYTES = 8 * 1024 * 1024
#: The value bytes a page read with ``values=true`` carries at most (its first value always goes,
#: whatever its size): base64 makes the answer about a third larger.
MAX_PAGE_VALUE_BYTES = 4 * 1024 * 1024
MAX_CONTENT_TYPE = 255
