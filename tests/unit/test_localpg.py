"""proxy.localpg helpers that need no PostgreSQL."""

from __future__ import annotations

from proxy.localpg import free_port


def test_free_port_never_gives_a_port_twice():
    """Two ports taken before either is bound (a proxy's listen and metrics ports) must
    differ: among 500 draws of the kernel's free ports some would repeat."""
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)
