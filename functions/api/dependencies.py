"""The use cases' collaborators, built once per cold start from the validated settings."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from functions.dal.feed import Feed
from functions.dal.keys import key_store_of
from functions.dal.nodes import NodeStore
from functions.dal.queue import RunQueue
from functions.dal.schedules import Scheduler, ScheduleStore
from functions.dal.store import Store
from functions.settings import get_settings
from runly_core.key_store import KeyStore


@dataclass(frozen=True)
class Services:
    store: Store
    queue: RunQueue
    feed: Feed


@lru_cache(maxsize=1)
def services() -> Services:
    settings = get_settings()
    return Services(
        store=Store(settings.table_name), queue=RunQueue(settings.queue_urls), feed=Feed(settings.feed_bucket)
    )


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


def environments() -> frozenset[str]:
    """The deployment's environments: the ones with a run queue."""
    return frozenset(get_settings().queue_urls)
