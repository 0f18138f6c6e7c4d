"""The use cases' collaborators, built once per cold start from the validated settings."""

from __future__ import annotations

from functools import cached_property, lru_cache

from functions.dal.feed import Feed
from functions.dal.keys import key_store_of
from functions.dal.nodes import NodeStore
from functions.dal.queue import RunQueue
from functions.dal.schedules import RunTimers, Scheduler, ScheduleStore
from functions.dal.store import Store
from functions.dal.values import ValueStore
from functions.logic.delays import Delays
from functions.settings import ApiSettings, get_settings
from runly_core.key_store import KeyStore


class Services:
    """The store, the run queues and the feed, each built on first use: a request pays only for the clients it
    uses (building a boto3 client or resource loads its service model, tens of milliseconds each on a cold
    start; ``GET /runs/{id}`` needs the table alone)."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings

    @cached_property
    def store(self) -> Store:
        return Store(self.settings.table_name)

    @cached_property
    def queue(self) -> RunQueue:
        return RunQueue(self.settings.queue_urls)

    @cached_property
    def feed(self) -> Feed:
        return Feed(self.settings.feed_bucket)


@lru_cache(maxsize=1)
def services() -> Services:
    return Services(get_settings())  # the settings are validated here, on the first request that needs them


@lru_cache(maxsize=1)
def key_store() -> KeyStore:
    return key_store_of(get_settings().table_name)


@lru_cache(maxsize=1)
def node_store() -> NodeStore:
    settings = get_settings()
    return NodeStore(settings.table_name, environments=sorted(settings.queue_urls))


@lru_cache(maxsize=1)
def schedule_store() -> ScheduleStore:
    return ScheduleStore(get_settings().table_name)


@lru_cache(maxsize=1)
def scheduler() -> Scheduler:
    settings = get_settings()
    return Scheduler(
        group=settings.scheduler_group,
        role_arn=settings.scheduler_role_arn,
        target_arn=settings.schedule_fire_function_arn,
    )


@lru_cache(maxsize=1)
def delays() -> Delays:
    """Delayed runs' timers: one-time schedules in the schedules' group, invoking the same fire function."""
    settings = get_settings()
    timers = RunTimers(
        group=settings.scheduler_group,
        role_arn=settings.scheduler_role_arn,
        target_arn=settings.schedule_fire_function_arn,
    )
    return Delays(timers=timers, sqs_seconds=settings.delay_sqs_seconds)


@lru_cache(maxsize=1)
def value_store() -> ValueStore:
    return ValueStore(get_settings().values_root)


def environments() -> frozenset[str]:
    """The deployment's environments: the ones with a run queue."""
    return frozenset(get_settings().queue_urls)
