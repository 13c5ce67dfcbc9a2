"""The throwaway PostgreSQL server the store tests run on: it answers, each test gets its own
database, and a restart keeps the data on the same port."""

from __future__ import annotations

import psycopg
from pg_server import PgServer


def test_each_test_gets_a_fresh_database_that_survives_a_restart(pg_server: PgServer, pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
        conn.execute("CREATE TABLE kept (v text)")
        conn.execute("INSERT INTO kept VALUES ('before')")
    pg_server.restart()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT v FROM kept").fetchall() == [("before",)]
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
