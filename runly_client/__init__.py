"""runly's API clients, for applications: :class:`RunlyClient` and, for asyncio, :class:`AsyncRunlyClient`."""

from runly_client.client import *  # noqa: F403  (its __all__ is the package's public API)
from runly_client.client import __all__ as __all__
