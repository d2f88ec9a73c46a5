"""Settings of the query service: the store, the write token, CORS and the limits."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from storage import DEFAULT_STORE

# Environment variables the service reads (the CLI sets them for uvicorn's workers).
ENV_STORE = "STRATALENS_STORE"
ENV_TOKEN = "STRATALENS_TOKEN"
ENV_CORS_ORIGINS = "STRATALENS_CORS_ORIGINS"  # comma-separated; unset: no CORS headers

# Rows a JSON answer may hold: JSON spells every float out, so large answers go as Arrow.
JSON_MAX_EMBEDDING_ROWS = 1_000
JSON_MAX_TABLE_ROWS = 100_000  # metrics, pairs
JSON_MAX_CLUSTERING_ROWS = 100  # each row holds a whole clustering's labels
# Request bodies (neighbour queries, tags) larger than this are refused with 413: a
# 4,096-dimensional query vector spelt in JSON takes about 100 KiB.
MAX_BODY_BYTES = 1 << 20
# sample_index values one query may list: 1,000 six-digit indices make an 8 KiB query
# string (commas percent-encoded), within what HTTP servers and clients accept (h11: 16 KiB).
MAX_SAMPLE_INDICES = 1_000
# Seconds uvicorn keeps an idle connection open: longer than HTTP clients keep idle
# connections in their pools (httpx: 5 s, uvicorn's own default), so that a client does not
# sends a request on a connection the server is closing at that moment (a ReadError
# in 3 of about 147,000 load-test requests with both at 5 s, none in 60,000 since).
KEEP_ALIVE_S = 75
# Rendered dashboard pages kept, keyed by experiment and the versions of the tables drawn.
DASHBOARD_CACHE_ENTRIES = 8


@dataclass(frozen=True)
class ServiceSettings:
    """What one instance of the query service serves, and who may write.

    Parameters
    ----------
    store : str
        The store root (a local path or ``s3://bucket/prefix``).
    token : str or None
        Bearer token that write requests must carry; None turns writes off (403).
    cors_origins : tuple of str
        Origins allowed to call the API from a browser; empty: no CORS headers.
    storage_options : dict or None
        Lance storage options for object stores (else taken from the environment).
    """

    store: str = DEFAULT_STORE
    token: str | None = None
    cors_origins: tuple[str, ...] = ()
    storage_options: dict[str, str] | None = field(default=None, repr=False)

    def __repr__(self) -> str:  # never print the token
        writes = "on" if self.token else "off"
        return f"ServiceSettings(store={self.store!r}, writes={writes}, cors={self.cors_origins})"

    @classmethod
    def from_env(cls, **overrides) -> ServiceSettings:
        """Settings from ``STRATALENS_STORE``, ``STRATALENS_TOKEN`` and
        ``STRATALENS_CORS_ORIGINS``; keyword arguments win."""
        origins = os.environ.get(ENV_CORS_ORIGINS, "")
        values = {
            "store": os.environ.get(ENV_STORE, DEFAULT_STORE),
            "token": os.environ.get(ENV_TOKEN) or None,
            "cors_origins": tuple(o.strip() for o in origins.split(",") if o.strip()),
        }
        values |= {key: value for key, value in overrides.items() if value is not None}
        return cls(**values)
