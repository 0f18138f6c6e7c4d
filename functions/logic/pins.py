"""Use cases of version pins: which versions of a package an environment runs.

A pin is a PEP 440 specifier per (environment, package). A run that names no version gets the
newest registered version the pin allows (pre-releases only when the specifier names one); a
run that names a version outside the pin is refused: the pin is the operator's guard for the
environment, and an override is made by changing the pin (an admin operation), not per run.
"""

from __future__ import annotations

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from functions.dal.queue import RunQueue
from functions.dal.store import Store
from runly_core.contracts import Pin, PinRequest
from runly_core.records import PinRecord, iso, utcnow

from .errors import NotFound, Unprocessable


def parse_specifier(text: str) -> SpecifierSet:
    try:
        specifier = SpecifierSet(text)
    except InvalidSpecifier as exc:
        raise Unprocessable(
            f"{text!r} is not a PEP 440 version specifier (e.g. '>=1.2,<2')", field="specifier"
        ) from exc
    if not str(specifier):
        raise Unprocessable("the specifier is empty; delete the pin to allow every version", field="specifier")
    return specifier


def ensure_environment(environment: str, queue: RunQueue) -> None:
    if not queue.has_environment(environment):
        known = ", ".join(queue.environments)
        raise NotFound(f"unknown environment {environment!r} (environments: {known})", field="environment")


def list_pins(environment: str, *, store: Store, queue: RunQueue) -> list[Pin]:
    ensure_environment(environment, queue)
    return [record.view() for record in sorted(store.pins(environment), key=lambda r: r.package)]


def get_pin(environment: str, package: str, *, store: Store, queue: RunQueue) -> Pin:
    ensure_environment(environment, queue)
    record = store.get_pin(environment, package)
    if record is None:
        raise NotFound(f"package {package!r} is not pinned in environment {environment!r}", field="package")
    return record.view()


def set_pin(
    environment: str, package: str, request: PinRequest, *, updated_by: str, store: Store, queue: RunQueue
) -> Pin:
    """Create or replace the pin. The package need not be registered yet: an operator may pin first."""
    ensure_environment(environment, queue)
    specifier = parse_specifier(request.specifier.strip())
    record = PinRecord(
        environment=environment,
        package=package,
        specifier=str(specifier),
        updated_at=iso(utcnow()),
        updated_by=updated_by,
    )
    store.put_pin(record)
    return record.view()


def delete_pin(environment: str, package: str, *, store: Store, queue: RunQueue) -> None:
    ensure_environment(environment, queue)
    if not store.delete_pin(environment, package):
        raise NotFound(f"package {package!r} is not pinned in environment {environment!r}", field="package")
