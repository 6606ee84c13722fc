"""The benchmark harness: direct PostgreSQL vs PgBouncer vs tenantgate in one run (run.py)."""
