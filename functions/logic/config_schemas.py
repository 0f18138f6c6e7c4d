"""A job's config schema is data: checked once at registration, then used to validate configs at enqueue, and
neither ever opens a URL or a file, nor takes unbounded time.

Registration (:func:`check_schema`) refuses a schema that

- is not JSON Schema 2020-12 (``$schema``, when given, must be its meta-schema's URI; the schema must validate
  against that meta-schema);
- refers outside itself: every ``$ref`` and ``$dynamicRef`` is a fragment (``#/$defs/x``, ``#anchor``) that
  resolves within the document, and no subschema declares an ``$id`` (which would move what its references
  resolve against);
- has a ``pattern`` or ``patternProperties`` the linear-time engine cannot compile (backreferences, look-around);
- could take more than :data:`MAX_VALIDATION_UNITS` of work on some config of at most MAX_CONFIG_BYTES (the cost
  model is :func:`_worst_case_units`: ``$ref``/``allOf`` fan-out, ``anyOf`` over every array item...).

Validation (:func:`validate_config`) uses jsonschema-rs: offline (no retrieval of any kind, in case a reference
slipped past the checks), patterns on the Rust ``regex`` crate (linear time in the
string's length), ``format`` an annotation only (as 2020-12 says by default: no format check runs at all), and
only the first error is built. Schemas registered before these checks existed are checked at enqueue the same
way, so a schema that cannot be used gives a 409 naming the job, never a 500 and never a fetch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

import jsonschema_rs

from runly_core.contracts import MAX_CONFIG_BYTES
from runly_core.strict_json import MAX_JSON_DEPTH

DIALECT = "https://json-schema.org/draft/2020-12/schema"
_DIALECTS = {DIALECT, DIALECT + "#"}
# Keywords whose value is a schema, a list of schemas, or a map of names to schemas (2020-12; ``definitions`` as
# the references of older schemas still use it).
_ONE = ("additionalProperties", "propertyNames", "items", "contains", "not", "if", "then", "else",
        "unevaluatedItems", "unevaluatedProperties", "contentSchema")  # fmt: skip
_LIST = ("allOf", "anyOf", "oneOf", "prefixItems")
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
# Applied to the same value (in place), as opposed to a member or an item of it.
_IN_PLACE_ONE = ("not", "if", "then", "else")
_IN_PLACE_LIST = ("allOf", "anyOf", "oneOf")
_REFS = ("$ref", "$dynamicRef")

# The cost model's unit is one keyword evaluated on one value (10-25 ns in jsonschema-rs on this class of machine).
# A const or enum that fails costs about 30 (its error is built even where anyOf, not or if drop it); a branch of
# anyOf/oneOf a couple more.
_EXPENSIVE_KEYWORDS = {"const": 30, "enum": 30}
_BRANCH_UNITS = 2
_PATTERN_UNITS = 2  # one of patternProperties' patterns tried on one member's name
# At most this much work for any config: 2,000,000 units is at most about 45 ms at 22 ns a unit (the figures of
# the worst schemas it accepts: tests/unit/test_config_schemas.py).
MAX_VALIDATION_UNITS = 2_000_000
# Patterns run on one value, each over up to MAX_CONFIG_BYTES of text (the regex crate scans GB/s; this bounds the
# bytes scanned at 16 MiB).
MAX_PATTERNS_PER_VALUE = 256
# Values in a config of MAX_CONFIG_BYTES: each takes 2 bytes at least ("0,").
MAX_CONFIG_VALUES = MAX_CONFIG_BYTES // 2 + 1
_CAP = 10**15
# Parts of a subschema's pointer (a property's schema is two: properties/name).
_MAX_SCHEMA_POINTER = 4 * MAX_JSON_DEPTH
# Linear-time engine limits: a compiled pattern of at most 256 KiB, its lazy DFA's cache 1 MiB.
_REGEX = {"size_limit": 256 * 1024, "dfa_size_limit": 1024 * 1024}
# A validation error's message quotes the value and the schema (an enum of 1,000 names): keep the start.
_MAX_MESSAGE_CHARS = 300


class SchemaRefused(ValueError):
    """A config schema runly cannot use; ``location`` is the JSON pointer of the offending part."""

    def __init__(self, problem: str, location: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.location = location or "/"

    def describe(self, job: str) -> str:
        return f"the config_schema of job {job!r}, at {self.location}: {self.problem}"


class ConfigInvalid(ValueError):
    """A config that does not match its schema; ``path`` is where in the config."""

    def __init__(self, message: str, path: list[str | int]) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


def _pointer(parts: tuple[str | int, ...]) -> str:
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts) if parts else "/"


def _subschemas(node: dict[str, Any]) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    for keyword in _ONE:
        if keyword in node:
            yield (keyword,), node[keyword]
    for keyword in _LIST:
        value = node.get(keyword)
        if isinstance(value, list):
            for index, item in enumerate(value):
                yield (keyword, index), item
    for keyword in _MAP:
        value = node.get(keyword)
        if isinstance(value, dict):
            for name, item in value.items():
                yield (keyword, name), item


class _Document:
    """The schema's nodes by JSON pointer, its anchors, and every reference checked to stay inside it."""

    def __init__(self, root: Any) -> None:
        self.root = root
        self.anchors: dict[str, tuple[str | int, ...]] = {}
        self.refs: list[tuple[tuple[str | int, ...], str]] = []
        self._seen: set[tuple[str | int, ...]] = set()
        self._walk(root, ())
        # A pointer may name a part no keyword makes a schema ("#/x" with "x" unknown): it becomes one.
        checked = 0
        while checked < len(self.refs):
            where, ref = self.refs[checked]
            checked += 1
            target = self.target(ref, where)
            if target not in self._seen:
                self._walk(self.at(target), target)

    def _walk(self, node: Any, where: tuple[str | int, ...]) -> None:
        stack = [(node, where)]
        while stack:
            node, where = stack.pop()
            if where in self._seen:
                continue
            self._seen.add(where)
            if isinstance(node, bool):
                continue
            if not isinstance(node, dict):
                raise SchemaRefused("a schema must be an object or a boolean", _pointer(where))
            if len(where) > _MAX_SCHEMA_POINTER:
                raise SchemaRefused("the schema nests too deep", _pointer(where))
            self._check_identifiers(node, where)
            for keyword in _REFS:
                if keyword in node:
                    ref = node[keyword]
                    if not isinstance(ref, str) or not ref.startswith("#"):
                        raise SchemaRefused(
                            f"{keyword} {ref!r} leaves the schema: only references within it (starting with '#') "
                            "are allowed, a schema is never fetched",
                            _pointer((*where, keyword)),
                        )
                    self.refs.append(((*where, keyword), ref))
            for suffix, child in _subschemas(node):
                stack.append((child, (*where, *suffix)))

    def _check_identifiers(self, node: dict[str, Any], where: tuple[str | int, ...]) -> None:
        if "$schema" in node and node["$schema"] not in _DIALECTS:
            raise SchemaRefused(f"$schema must be {DIALECT!r} (JSON Schema 2020-12)", _pointer((*where, "$schema")))
        if "$id" in node and where:
            raise SchemaRefused(
                "$id is allowed at the root only: an embedded $id changes what the references under it resolve against",
                _pointer((*where, "$id")),
            )
        for keyword in ("$anchor", "$dynamicAnchor"):
            name = node.get(keyword)
            if isinstance(name, str):
                self.anchors.setdefault(name, where)

    def at(self, where: tuple[str | int, ...]) -> Any:
        node = self.root
        for part in where:
            node = node[part]
        return node

    def target(self, ref: str, where: tuple[str | int, ...]) -> tuple[str | int, ...]:
        fragment = ref[1:]
        if not fragment.startswith("/") and fragment:
            if fragment not in self.anchors:
                raise SchemaRefused(f"reference {ref!r}: no $anchor or $dynamicAnchor {fragment!r}", _pointer(where))
            return self.anchors[fragment]
        node: Any = self.root
        path: list[str | int] = []
        for token in fragment.split("/")[1:] if fragment else []:
            token = unquote(token).replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and token in node:
                path.append(token)
                node = node[token]
            elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
                path.append(int(token))
                node = node[int(token)]
            else:
                raise SchemaRefused(f"reference {ref!r} does not resolve within the schema", _pointer(where))
        return tuple(path)


def _own_units(node: dict[str, Any]) -> int:
    branches = len(node.get("anyOf") or ()) + len(node.get("oneOf") or ())
    heavy = sum(units - 1 for keyword, units in _EXPENSIVE_KEYWORDS.items() if keyword in node)
    return len(node) + heavy + _BRANCH_UNITS * branches


def _own_patterns(node: dict[str, Any]) -> int:
    return 1 if "pattern" in node else 0


def _worst_case_units(document: _Document, own: Callable[[dict[str, Any]], int] = _own_units) -> int:
    """An upper bound of the keyword evaluations validating any config of at most MAX_CONFIG_VALUES values, at most
    MAX_JSON_DEPTH deep, can take.

    ``cost(node, j)`` bounds the work on one value ``j`` levels below a value ``node`` is applied to: the keywords
    of the node itself (j = 0) and of everything it applies in place (allOf, anyOf, oneOf, not, if/then/else,
    dependentSchemas, $ref), and below (j > 0) what it applies to one member or item (the heaviest single property,
    every pattern, additionalProperties...; the heaviest prefix item, items, contains). The config's root is one
    value; the others, at most MAX_CONFIG_VALUES, are bounded by the heaviest level. A reference cycle that never
    goes down a level is refused (it would never end)."""
    memo: dict[tuple[tuple[str | int, ...], int], int] = {}
    active: set[tuple[tuple[str | int, ...], int]] = set()

    def children_in_place(node: dict[str, Any], where: tuple[str | int, ...]) -> Iterator[tuple[str | int, ...]]:
        for keyword in _IN_PLACE_ONE:
            if keyword in node:
                yield (*where, keyword)
        for keyword in _IN_PLACE_LIST:
            for index in range(len(node.get(keyword) or ())):
                yield (*where, keyword, index)
        for name in node.get("dependentSchemas") or {}:
            yield (*where, "dependentSchemas", name)
        for keyword in _REFS:
            if keyword in node:
                yield document.target(node[keyword], where)

    def cost(where: tuple[str | int, ...], level: int) -> int:
        node = document.at(where)
        if isinstance(node, bool):
            return 1 if level == 0 else 0
        key = (where, level)
        if key in memo:
            return memo[key]
        if key in active:
            raise SchemaRefused("a $ref cycle that never descends into the config: it would never end", _pointer(where))
        active.add(key)
        in_place = sum(cost(child, level) for child in children_in_place(node, where))
        if "unevaluatedProperties" in node or "unevaluatedItems" in node:
            in_place *= 2  # what was evaluated is worked out by evaluating it again
        total = in_place
        if level == 0:
            total += own(node)
        else:
            below = level - 1
            properties = node.get("properties") or {}
            patterns = node.get("patternProperties") or {}
            member = max((cost((*where, "properties", name), below) for name in properties), default=0)
            member += sum(cost((*where, "patternProperties", name), below) for name in patterns)
            member += _PATTERN_UNITS * len(patterns) if below == 0 and own is _own_units else 0
            for keyword in ("additionalProperties", "unevaluatedProperties", "propertyNames"):
                if keyword in node:
                    member += cost((*where, keyword), below)
            item = max((cost((*where, "prefixItems", i), below) for i in range(len(node.get("prefixItems") or ()))),
                       default=0)  # fmt: skip
            for keyword in ("items", "contains", "unevaluatedItems"):
                if keyword in node:
                    item += cost((*where, keyword), below)
            total += max(member, item)
        active.discard(key)
        memo[key] = min(total, _CAP)
        return memo[key]

    root_value = cost((), 0)
    deepest = max(cost((), level) for level in range(1, MAX_JSON_DEPTH + 1))
    if own is not _own_units:  # a count per value, not a total
        return max(root_value, deepest)
    return min(root_value + (MAX_CONFIG_VALUES - 1) * deepest, _CAP)


def _compile(schema: Any) -> jsonschema_rs.Validator:
    return jsonschema_rs.Draft202012Validator(
        schema,
        validate_formats=False,
        offline=True,  # no retriever at all: neither http(s) nor file URIs are ever opened
        pattern_options=jsonschema_rs.RegexOptions(**_REGEX),
    )


def _shorten(message: str) -> str:
    return message if len(message) <= _MAX_MESSAGE_CHARS else message[: _MAX_MESSAGE_CHARS - 3] + "..."


def check_schema(schema: Any) -> None:
    """Raise :class:`SchemaRefused` unless runly can validate configs against ``schema`` safely (module doc)."""
    _checked(_canonical(schema))


def _canonical(schema: Any) -> str:
    try:
        return json.dumps(schema, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise SchemaRefused(f"the schema is not JSON: {exc}") from exc


@lru_cache(maxsize=256)
def _checked(text: str) -> jsonschema_rs.Validator:
    """The compiled validator of a schema (as canonical JSON) that passed every check; cached: enqueues of one job
    check and compile its schema once per function container."""
    schema = json.loads(text)
    try:
        document = _Document(schema)
    except RecursionError as exc:
        raise SchemaRefused(f"the schema nests deeper than {MAX_JSON_DEPTH} levels") from exc
    try:
        jsonschema_rs.meta.validate(schema)  # $schema is 2020-12 or absent (checked above): nothing is fetched
    except jsonschema_rs.ValidationError as exc:
        raise SchemaRefused(
            f"not a valid JSON Schema 2020-12: {_shorten(exc.message)}", _pointer(tuple(exc.instance_path))
        ) from exc
    try:
        validator = _compile(schema)
    except jsonschema_rs.ValidationError as exc:
        location = _pointer(tuple(exc.instance_path))
        if location.endswith("/pattern") or "/patternProperties/" in location:
            raise SchemaRefused(
                f"{_shorten(exc.message)}: patterns are run by a linear-time engine (no backreferences or "
                "look-around, at most 256 KiB compiled)",
                location,
            ) from exc
        raise SchemaRefused(_shorten(exc.message), location) from exc
    except (jsonschema_rs.ReferencingError, SchemaRefused, ValueError) as exc:
        raise SchemaRefused(_shorten(str(exc))) from exc
    try:
        units = _worst_case_units(document)
        patterns = _worst_case_units(document, _own_patterns)
    except RecursionError as exc:
        raise SchemaRefused("its $ref chains are too long to bound the work of validating a config") from exc
    if patterns > MAX_PATTERNS_PER_VALUE:
        raise SchemaRefused(
            f"up to {patterns} patterns apply to one value, over the limit of {MAX_PATTERNS_PER_VALUE} (each may scan "
            "the whole config)"
        )
    if units > MAX_VALIDATION_UNITS:
        raise SchemaRefused(
            f"validating a config against it could take about {units:,} steps, over the limit of "
            f"{MAX_VALIDATION_UNITS:,}: reduce what applies to every item (anyOf/oneOf branches, repeated $ref, "
            "allOf fan-out)"
        )
    return validator


def validate_config(config: Any, schema: Any) -> None:
    """Raise :class:`SchemaRefused` if ``schema`` cannot be used, :class:`ConfigInvalid` if ``config`` fails it."""
    validator = _checked(_canonical(schema))
    try:
        validator.validate(config)
    except jsonschema_rs.ValidationError as exc:
        raise ConfigInvalid(_shorten(exc.message), list(exc.instance_path)) from exc
    except (jsonschema_rs.ReferencingError, SchemaRefused) as exc:
        raise SchemaRefused(_shorten(str(exc))) from exc
