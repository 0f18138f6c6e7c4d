"""On-premises nodes: AWS credentials come from the node key over HTTP and refresh before they expire."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from functions.nodes.credentials import CREDENTIALS_SECONDS
from node_agent.credentials import ADVISORY_REFRESH_SECONDS, MANDATORY_REFRESH_SECONDS, node_key_session
from node_agent.settings import AgentSettings


class CredentialsApi:
    """Plays POST /nodes/credentials: each call issues new keys valid for ``lifetime``."""

    def __init__(self, lifetime: timedelta) -> None:
        self.lifetime = lifetime
        self.calls: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                api.calls.append(self.headers.get("Authorization", ""))
                if self.path != "/nodes/credentials" or self.headers.get("Authorization") != "Bearer rly_node_secret":
                    self.send_response(403)
                    self.end_headers()
                    return
                number = len(api.calls)
                body = json.dumps(
                    {
                        "environment": "default",
                        "access_key_id": f"ASIA{number:016d}",
                        "secret_access_key": f"secret-{number}",
                        "session_token": f"token-{number}",
                        "expiration": (datetime.now(UTC) + api.lifetime).isoformat(),
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> CredentialsApi:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


@pytest.fixture
def long_lived() -> Iterator[CredentialsApi]:
    with CredentialsApi(timedelta(hours=1)) as api:
        yield api


def test_the_node_key_buys_credentials_and_they_are_reused_while_fresh(long_lived: CredentialsApi) -> None:
    session = node_key_session(long_lived.url, "rly_node_secret", "us-east-1")
    first = session.get_credentials().get_frozen_credentials()  # type: ignore[union-attr]
    again = session.get_credentials().get_frozen_credentials()  # type: ignore[union-attr]
    assert first.access_key == again.access_key == "ASIA0000000000000001"
    assert first.token == "token-1"
    assert long_lived.calls == ["Bearer rly_node_secret"]


def test_fifteen_minute_sessions_are_reused_not_refreshed_on_every_call() -> None:
    # The API issues 15-minute sessions (STS's least, functions.nodes.credentials.CREDENTIALS_SECONDS): botocore's
    # default windows (refresh from 15 minutes before expiry) would call the API on every AWS request.
    with CredentialsApi(timedelta(seconds=CREDENTIALS_SECONDS)) as api:
        session = node_key_session(api.url, "rly_node_secret", "us-east-1")
        for _ in range(5):
            frozen = session.get_credentials().get_frozen_credentials()  # type: ignore[union-attr]
    assert frozen.access_key == "ASIA0000000000000001"
    assert len(api.calls) == 1


def test_a_session_is_refreshed_before_it_expires() -> None:
    # Five minutes before expiry is inside the agent's advisory window: the next use refreshes, well before
    # the session ends (and before the mandatory window, where a failed refresh would stop the node).
    assert MANDATORY_REFRESH_SECONDS < ADVISORY_REFRESH_SECONDS < CREDENTIALS_SECONDS
    with CredentialsApi(timedelta(seconds=ADVISORY_REFRESH_SECONDS - 10)) as api:
        session = node_key_session(api.url, "rly_node_secret", "us-east-1")
        session.get_credentials().get_frozen_credentials()  # type: ignore[union-attr]
        refreshed = session.get_credentials().get_frozen_credentials()  # type: ignore[union-attr]
    assert refreshed.access_key != "ASIA0000000000000001"
    assert len(api.calls) >= 2


def test_credentials_close_to_expiry_are_refreshed_through_the_api() -> None:
    # Issued for 1 minute: inside the mandatory refresh window, so every use refreshes them.
    with CredentialsApi(timedelta(minutes=1)) as api:
        session = node_key_session(api.url, "rly_node_secret", "us-east-1")
        session.get_credentials().get_frozen_credentials()  # type: ignore[union-attr]
        refreshed = session.get_credentials().get_frozen_credentials()  # type: ignore[union-attr]
    assert refreshed.access_key != "ASIA0000000000000001"
    assert len(api.calls) >= 2


def test_a_refused_key_fails_the_start_loudly(long_lived: CredentialsApi) -> None:
    with pytest.raises(Exception, match="403"):
        node_key_session(long_lived.url, "rly_wrong", "us-east-1")


def test_a_node_key_without_an_api_url_is_a_settings_error() -> None:
    with pytest.raises(ValueError, match="node_key needs api_url"):
        AgentSettings(queue_url="q", table_name="t", feed_bucket="b", node_key="rly_node_secret")  # type: ignore[arg-type]
