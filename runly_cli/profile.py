"""CLI settings: where the API is and which key to use.

Each setting comes from, first found: a command-line flag, an environment variable
(``RUNLY_API_URL``, ``RUNLY_API_KEY``, ``RUNLY_ENVIRONMENT``), the profile file. The profile file
is ``$RUNLY_PROFILE`` if set, else ``$XDG_CONFIG_HOME/runly/profile.toml`` (``~/.config/...``)::

    api_url = "https://abc123.execute-api.eu-west-1.amazonaws.com"
    api_key = "rly_..."
    environment = "staging"
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

PROFILE_ENV = "RUNLY_PROFILE"


class ProfileError(Exception):
    pass


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_url: str | None = None
    api_key: str | None = None
    environment: str | None = None


SETTINGS = tuple(Profile.model_fields)


def profile_path() -> Path:
    if configured := os.environ.get(PROFILE_ENV):
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "runly" / "profile.toml"


def load_profile(path: Path | None = None) -> Profile:
    path = path or profile_path()
    if not path.is_file():
        return Profile()
    try:
        return Profile.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"profile {path} is not valid TOML: {exc}") from exc
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        raise ProfileError(f"profile {path}: {where}: {problem['msg']} (settings: {', '.join(SETTINGS)})") from exc


def save_profile(profile: Profile, path: Path | None = None) -> Path:
    path = path or profile_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # A JSON string is a valid TOML basic string for everything a URL or a key holds.
    lines = [f"{name} = {json.dumps(value)}\n" for name, value in profile.model_dump().items() if value is not None]
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(lines), encoding="utf-8")
    os.chmod(partial, 0o600)  # it may hold an API key
    os.replace(partial, path)
    return path
