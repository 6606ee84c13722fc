"""Typed reading of composed YAML nodes: every failure is a ConfigError at the node's line.

`${VAR}` in string values expands from the environment (`$${` is a literal `${`);
unknown and duplicate keys are errors, with a "did you mean" suggestion.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from proxy.errors import ConfigError

Address = tuple[str, int]
NAME_MAX_BYTES = 63  # NAMEDATALEN - 1: longer names are truncated by PostgreSQL
_VAR_RE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_VAR_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PORT_RE = re.compile(r"[0-9]{1,5}")


def parse_address(text: str) -> Address:
    """`host:port` (IPv6 as `[::1]:port`) → (host, port); ValueError says what is wrong."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError('an IPv6 host needs brackets, as in "[::1]:6432"')
    if not sep or not host or any(c.isspace() for c in host):
        raise ValueError('expected "host:port"')
    if not _PORT_RE.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise ValueError("the port must be a number from 1 to 65535")
    return host, int(port)


def _describe(value: Any) -> str:
    if value is None:
        return "null (no value)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    return {list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _at(where: str) -> str:
    return f"{where}: " if where else ""


class YamlReader:
    """Typed access to composed YAML nodes; every failure is a ConfigError at the node's line."""

    def __init__(self, path: str, env: Mapping[str, str]) -> None:
        self.path = path
        self.env = env
        self._constructor = SafeConstructor()
        self._resolver = yaml.resolver.Resolver()

    def error(self, message: str, node: Node | None) -> ConfigError:
        line = node.start_mark.line + 1 if node is not None else None
        return ConfigError(message, path=self.path, line=line)

    def yaml_error(self, exc: yaml.MarkedYAMLError) -> ConfigError:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        return ConfigError(f"invalid YAML: {exc.problem or exc.context}", path=self.path, line=line)

    def mapping(self, node: Node, where: str, allowed: tuple[str, ...] | None
                ) -> dict[str, tuple[Node, Node]]:
        """key → (key node, value node); unknown and duplicate keys are errors."""
        if not isinstance(node, MappingNode):
            got = _describe(self.value(node))
            raise self.error(f"{_at(where)}expected a mapping, got {got}", node)
        items: dict[str, tuple[Node, Node]] = {}
        for key, value in node.value:
            name = self.key(key, where)
            if allowed is not None and name not in allowed:
                raise self.error(f"{_at(where)}unknown key '{name}'{suggest(name, allowed)}", key)
            if name in items:
                first = items[name][0].start_mark.line + 1
                raise self.error(f"{_at(where)}duplicate key '{name}' "
                                 f"(first given on line {first})", key)
            items[name] = (key, value)
        return items

    def key(self, node: Node, where: str) -> str:
        if node.tag == "tag:yaml.org,2002:merge":
            raise self.error(f"{_at(where)}YAML merge keys (<<) are not supported", node)
        if not isinstance(node, ScalarNode) or not node.value:
            raise self.error(f"{_at(where)}keys must be non-empty strings", node)
        return node.value

    def require(self, items: dict, keys: tuple[str, ...], where: str, owner: Node,
                why: str = "") -> None:
        for key in keys:
            if key not in items:
                raise self.error(f"{where}: missing required key '{key}'{why}", owner)

    def value(self, node: Node) -> Any:
        """A scalar's value with ${VAR} expanded in strings; lists and mappings as empty ones."""
        if isinstance(node, SequenceNode):
            return []
        if isinstance(node, MappingNode):
            return {}
        try:
            value = self._constructor.construct_object(node)
        except yaml.MarkedYAMLError as exc:
            raise self.yaml_error(exc) from None
        return self.expand(value, node) if isinstance(value, str) else value

    def typed(self, node: Node) -> Any:
        """Like value(), but a plain `${VAR}` scalar is typed after expansion, as YAML would."""
        value = self.value(node)
        if isinstance(value, str) and node.style is None and "${" in node.value:
            tag = self._resolver.resolve(ScalarNode, value, (True, False))
            value = self._constructor.construct_object(
                ScalarNode(tag, value, node.start_mark, node.end_mark))
        return value

    def expand(self, text: str, node: Node) -> str:
        def substitute(match: re.Match) -> str:
            if match[0] == "$${":
                return "${"
            name = match[1]
            if name is None:
                raise self.error("unterminated ${ (write $${ for a literal ${)", node)
            if not _VAR_NAME_RE.fullmatch(name):
                raise self.error(f"bad environment variable name {name!r} in ${{...}}", node)
            if name not in self.env:
                raise self.error(f"environment variable {name} is not set", node)
            return self.env[name]
        return _VAR_RE.sub(substitute, text) if "$" in text else text

    def string(self, node: Node, where: str) -> str:
        value = self.value(node)
        if not isinstance(value, str):
            raise self.error(f"{where}: expected a string, got {_describe(value)}", node)
        if not value:
            raise self.error(f"{where}: must not be empty", node)
        if "\x00" in value:
            raise self.error(f"{where}: must not contain NUL", node)
        return value

    def name(self, node: Node, where: str) -> str:
        """A database, schema, role, tenant or user name: stored as given (catalog form)."""
        return self.check_name(self.string(node, where), where, node)

    def check_name(self, name: str, where: str, node: Node) -> str:
        if not name or "\x00" in name:
            raise self.error(f"{where}: a name must be non-empty and contain no NUL", node)
        if len(name.encode("utf-8")) > NAME_MAX_BYTES:
            raise self.error(f"{where}: name {name[:20]!r}... is longer than "
                             f"{NAME_MAX_BYTES} bytes", node)
        return name

    def secret(self, node: Node, where: str) -> str | None:
        return None if self.value(node) is None else self.string(node, where)

    def integer(self, node: Node, where: str) -> int:
        value = self.typed(node)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"{where}: expected an integer, got {_describe(value)}", node)
        if value < 1:
            raise self.error(f"{where}: must be at least 1, got {value}", node)
        return value

    def seconds(self, node: Node, where: str, *, zero_ok: bool = False) -> float:
        value = self.typed(node)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value):
            raise self.error(f"{where}: expected a number of seconds, got {_describe(value)}", node)
        if value < 0 or (value == 0 and not zero_ok):
            raise self.error(f"{where}: must be {'at least' if zero_ok else 'more than'} 0", node)
        return float(value)

    def boolean(self, node: Node, where: str) -> bool:
        value = self.typed(node)
        if not isinstance(value, bool):
            raise self.error(f"{where}: expected true or false, got {_describe(value)}", node)
        return value

    def choice(self, node: Node, where: str, choices: tuple[str, ...]) -> str:
        value = self.value(node)
        if not isinstance(value, str) or value not in choices:
            hint = suggest(value, choices) if isinstance(value, str) else ""
            raise self.error(f"{where}: expected one of {' | '.join(choices)}, "
                             f"got {_describe(value)}{hint}", node)
        return value

    def address(self, node: Node, where: str) -> Address:
        text = self.string(node, where)
        try:
            return parse_address(text)
        except ValueError as exc:
            raise self.error(f"{where}: {exc}, got {text!r}", node) from None

    def sequence(self, node: Node, where: str) -> list[Node]:
        if not isinstance(node, SequenceNode):
            raise self.error(f"{where}: expected a list, got {_describe(self.value(node))}", node)
        return node.value

    def names(self, node: Node, where: str) -> tuple[str, ...]:
        return tuple(self.name(item, where) for item in self.sequence(node, where))
