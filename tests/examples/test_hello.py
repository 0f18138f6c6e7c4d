from __future__ import annotations

import pytest
from hello.jobs import Hello

from runly.testing import run_job


def test_hello_greets_as_often_as_asked() -> None:
    run = run_job(Hello, {"name": "Ada", "times": 2})

    assert run.succeeded
    assert run.output["greetings"] == ["Hello, Ada!", "Hello, Ada!"]


def test_hello_has_a_default_config() -> None:
    assert Hello.default_config() == {"name": "world", "times": 1}
    assert run_job(Hello).output["greetings"] == ["Hello, world!"]


def test_hello_refuses_a_bad_config() -> None:
    with pytest.raises(ValueError, match="times"):
        run_job(Hello, {"times": 0})
