"""tenantgate: a PostgreSQL wire-protocol proxy that enforces multi-tenant isolation."""

__version__ = "0.1.0"
