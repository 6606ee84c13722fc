"""Protocol-level prepared statements that survive transaction pooling.

A client names its statements; the server connection it lands on changes with every
transaction. The proxy keeps each client's statements (already analysed, so they
belong to that client's tenant) and prepares them lazily, under a name derived from
their text, on whichever server connection the client holds. Server connections are
reset (`DISCARD ALL`) before another tenant uses them, which also drops every
statement, so a statement never crosses tenants.
"""

from __future__ import annotations

import collections
import hashlib
import struct

from proxy.protocol import messages as m

SERVER_CACHE_SIZE = 256  # statements kept prepared per server connection


class Statement:
    """A client's statement: what to send to prepare it, and under which server name."""

    __slots__ = ("server_name", "parse_message", "settings")

    def __init__(self, server_name: str, parse_message: bytes, settings: tuple = ()) -> None:
        self.server_name = server_name
        self.parse_message = parse_message
        self.settings = settings  # SET/transaction events each Execute of it applies


def make_statement(query: str, param_oids: tuple[int, ...], settings: tuple = ()) -> Statement:
    """A Statement whose server-side name is derived from its text and parameter types."""
    digest = hashlib.blake2b(query.encode(), digest_size=10)
    digest.update(struct.pack(f"!{len(param_oids)}I", *param_oids))
    server_name = "tg_" + digest.hexdigest()
    return Statement(server_name, m.parse(server_name, query, param_oids), settings)


class ServerStatements:
    """The statements prepared on one server connection, least recently used first."""

    def __init__(self) -> None:
        self.names: collections.OrderedDict[str, None] = collections.OrderedDict()

    def has(self, server_name: str) -> bool:
        if server_name in self.names:
            self.names.move_to_end(server_name)
            return True
        return False

    def add(self, server_name: str) -> list[str]:
        """Record a statement as its Parse is sent; returns the names to Close to keep the
        cache in bounds (usually none, one when the cache is full)."""
        names = self.names
        names[server_name] = None
        evicted = []
        while len(names) > SERVER_CACHE_SIZE:
            evicted.append(names.popitem(last=False)[0])
        return evicted

    def forget(self, server_name: str) -> None:
        """The Parse sent for `server_name` failed or was skipped: nothing is prepared."""
        self.names.pop(server_name, None)

    def restore(self, server_name: str) -> None:
        """The Close sent for `server_name` was skipped: it is still prepared. Kept as the
        least recently used, so it is the next to be closed."""
        self.names[server_name] = None
        self.names.move_to_end(server_name, last=False)

    def clear(self) -> None:
        self.names.clear()

