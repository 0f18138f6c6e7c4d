"""The job SDK: what a job author subclasses."""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Generic, TypeVar, get_args, get_origin

from pydantic import BaseModel, ValidationError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


class JobContext(BaseModel):
    """Facts about the run that a job may want (ids for logs and idempotency)."""

    run_id: str
    attempt: int


class Job(Generic[ConfigT]):
    """A job with a typed config and one action.

    Subclass as ``class Hello(Job[HelloConfig])`` and implement :meth:`run`;
    what ``run`` returns (JSON-serialisable) is the run's output.
    """

    config_model: ClassVar[type[BaseModel]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            origin = get_origin(base)
            if isinstance(origin, type) and issubclass(origin, Job):
                (model,) = get_args(base)[:1]
                if isinstance(model, type) and issubclass(model, BaseModel):
                    cls.config_model = model

    def __init__(self, config: ConfigT, context: JobContext | None = None) -> None:
        self.config = config
        self.context = context or JobContext(run_id="local", attempt=1)
        self.log = logging.getLogger(type(self).__module__)

    @classmethod
    def parse_config(cls, raw: dict[str, Any]) -> ConfigT:
        if not hasattr(cls, "config_model"):
            raise TypeError(f"{cls.__qualname__} must subclass Job[SomeConfigModel]")
        return cls.config_model.model_validate(raw)  # type: ignore[return-value]

    @classmethod
    def config_schema(cls) -> dict[str, Any]:
        return cls.config_model.model_json_schema()

    @classmethod
    def default_config(cls) -> dict[str, Any] | None:
        """The config with every default filled in, or None when a field has no default."""
        try:
            return cls.config_model().model_dump(mode="json")
        except ValidationError:
            return None

    def run(self) -> Any:
        raise NotImplementedError
