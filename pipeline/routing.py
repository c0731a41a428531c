"""Which model group scores a message (docs/groups.md): the user's rules, in order, on the sensor id.

A rule is a glob on the whole sensor id (`pump-*`, `fan-?`, `[ab]-*`; case-sensitive; a prefix is
`prefix*`) or `re:<regex>` (Python syntax; the whole id must match). The first rule that matches
wins; no match goes to the fallback group (the top-level model.path), or, with
`groups_fallback: none`, nowhere: the message is a dead letter, reason `no_group`.

The sensor id routed on is the message key (the contract asks key = sensor id). A keyless JSON
message is routed by its body's `sensor_id` (one orjson parse). A keyless message whose sensor id
cannot be read here goes to a group whose decoder dead-letters it for its real reason (JSON that
does not parse or names no sensor: `not_json`, `schema`), and a keyless binary frame or schema'd
record (its sensor id is inside the payload) goes to the fallback group, or is a `no_group` dead
letter without one. Decisions are cached per sensor id (bounded).
"""

from __future__ import annotations

import fnmatch
import re

import orjson
from latentwatch.pipeline.decode.batch import MAX_SENSOR_ID_BYTES

__all__ = ["MALFORMED", "NO_GROUP", "ROUTE_CACHE", "Router", "compile_rule"]

NO_GROUP = -1  # route_message: a dead letter (no_group)
MALFORMED = -2  # route_message: no sensor id to route on; any group's decoder dead-letters it
ROUTE_CACHE = 65_536  # sensor ids whose group is remembered; the cache starts over past it
_FRAME_MAGIC = b"\xff\xff\xff\xff"


def compile_rule(rule: str):
    """`rule` as a compiled regex matching whole sensor ids; ValueError (one line) when it is not one."""
    if not isinstance(rule, str) or not rule:
        raise ValueError("a group's match must be a non-empty glob (pump-*) or re:<regex>")
    if rule.startswith("re:"):
        try:
            return re.compile(rule[3:])
        except re.error as exc:
            raise ValueError(f"match {rule!r} is not a valid regular expression: {exc}") from None
    return re.compile(fnmatch.translate(rule))


class Router:
    """`rules`: the match of each group, in order (group index = position); `fallback`: the index
    of the fallback group, or None (unmatched sensors are dead letters)."""

    def __init__(self, rules: list[str], fallback: int | None):
        self._rules = [compile_rule(r) for r in rules]
        self.fallback = fallback
        self._cache: dict[str, int] = {}

    def route(self, sensor_id: str) -> int:
        """The group index of `sensor_id`, or NO_GROUP."""
        got = self._cache.get(sensor_id)
        if got is not None:
            return got
        got = next((i for i, r in enumerate(self._rules) if r.fullmatch(sensor_id)), None)
        if got is None:
            got = NO_GROUP if self.fallback is None else self.fallback
        if len(sensor_id) <= MAX_SENSOR_ID_BYTES:  # a longer one is a dead letter (bad_sensor_id): not kept
            if len(self._cache) >= ROUTE_CACHE:
                self._cache.clear()
            self._cache[sensor_id] = got
        return got

    def route_message(self, value: bytes | None, key: bytes | None) -> int:
        """The group index of one message, NO_GROUP or MALFORMED (see the module docstring)."""
        if key:
            try:
                return self.route(key.decode("utf-8"))
            except UnicodeDecodeError:
                pass  # not a sensor id: the body's, as the decoder reads it
        if value and (value[:4] == _FRAME_MAGIC or value[0] == 0):  # a frame, a schema'd record
            return NO_GROUP if self.fallback is None else self.fallback
        try:
            sensor_id = orjson.loads(value).get("sensor_id") if value else None
        except (orjson.JSONDecodeError, AttributeError):
            sensor_id = None
        if isinstance(sensor_id, str) and sensor_id:
            return self.route(sensor_id)
        return MALFORMED
