"""Resources, chosen in one place."""

from __future__ import annotations

from contextlib import contextmanager

import dagster as dg
import duckdb


class Warehouse(dg.ConfigurableResource):
    """The DuckDB warehouse file shared by ingestion, dbt and the feature checks."""

    path: str

    @contextmanager
    def connect(self, read_only: bool = False):
        con = duckdb.connect(self.path, read_only=read_only)
        try:
            yield con
        finally:
            con.close()
