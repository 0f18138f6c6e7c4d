"""runly's API clients, for applications: :class:`RunlyClient` and, for asyncio, :class:`AsyncRunlyClient`."""

from runly_client.client import (
    ApiConnectionError,
    ApiError,
    AsyncRunlyClient,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RetryPolicy,
    RunlyClient,
    RunlyClientError,
    ServerError,
    Unauthorized,
)

__all__ = [
    "ApiConnectionError",
    "ApiError",
    "AsyncRunlyClient",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RetryPolicy",
    "RunlyClient",
    "RunlyClientError",
    "ServerError",
    "Unauthorized",
]
