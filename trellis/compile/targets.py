"""dbt targets: the engines ``trellis compile --target`` writes a dbt project for.

The default target's project is ``dbt_project/``: hand-edited ``dbt_project.yml``, ``profiles.yml``, macros and
generic tests, plus the generated models, checked in. Every other target gets its own folder,
``dbt_project_<target>/``, written whole by the compiler: its models (SQL in the engine's dialect, contracts in its
type names), its profile, and copies of ``dbt_project/``'s project file, macros and generic tests, so the one set
a user edits is ``dbt_project/``'s and a target's folder can be built, shipped or deleted on its own. One folder per
target, rather than target-selected files inside ``dbt_project/``, keeps the default project byte for byte what it
was, lets two targets be built side by side, and leaves plain ``dbt build`` in each folder working without flags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

TARGET_ENV = "TRELLIS_TARGET"  # the default target of `trellis compile`, e.g. set once per deployment
DEFAULT_TARGET = "duckdb"


@dataclass(frozen=True)
class Target:
    name: str
    dialect: str  # offline.DIALECTS key of the compiled SQL
    dbt_dir: str  # project-relative folder of the target's dbt project

    @property
    def generated_dirs(self) -> tuple[str, ...]:
        """Folders whose files carrying the marker are all the compiler's (orphans there are removed)."""
        return (f"{self.dbt_dir}/models",) if self.name == DEFAULT_TARGET else (self.dbt_dir,)


TARGETS = {
    "duckdb": Target("duckdb", "duckdb", "dbt_project"),
    "postgres": Target("postgres", "postgres", "dbt_project_postgres"),
    "spark": Target("spark", "spark", "dbt_project_spark"),
}


def target(name: str | None = None) -> Target:
    """The target named, else ``$TRELLIS_TARGET``, else DuckDB. Raises ValueError naming an unknown one."""
    name = name or os.environ.get(TARGET_ENV) or DEFAULT_TARGET
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; expected one of {', '.join(TARGETS)}")
    return TARGETS[name]


# The PostgreSQL connection of the postgres target, from the environment (dbt's profile and
# trellis.warehouse_postgres read the same variables, with the same defaults).
POSTGRES_ENV = {
    "host": ("TRELLIS_PG_HOST", "127.0.0.1"),
    "port": ("TRELLIS_PG_PORT", "5432"),
    "user": ("TRELLIS_PG_USER", "postgres"),
    "password": ("TRELLIS_PG_PASSWORD", ""),
    "dbname": ("TRELLIS_PG_DATABASE", "trellis"),
    "schema": ("TRELLIS_PG_SCHEMA", "public"),
}


def postgres_profile() -> str:
    """profiles.yml of the postgres target: every connection setting from ``POSTGRES_ENV``."""
    lines = ["trellis:", "  target: postgres", "  outputs:", "    postgres:", "      type: postgres"]
    for key, (env, default) in POSTGRES_ENV.items():
        value = f"{{{{ env_var('{env}', '{default}') }}}}"
        if key == "port":
            value = f"{{{{ env_var('{env}', '{default}') | as_number }}}}"
        lines.append(f'      {key}: "{value}"')
    lines.append("      threads: 2")
    return "\n".join(lines) + "\n"


# The Spark session of the spark target (dbt-spark's session method: Spark runs inside the dbt process, local mode by
# default). Tables persist in a warehouse folder and a Derby metastore, both under the project's data/ by default, so
# the session `python -m trellis.warehouse_spark` loads the validated tables in and dbt's later one see the same
# catalog. (setting, variable, default relative to the project folder or None for a literal default)
SPARK_ENV = {
    "spark.master": ("TRELLIS_SPARK_MASTER", "local[2]"),
    "spark.sql.warehouse.dir": ("TRELLIS_SPARK_WAREHOUSE", "data/spark-warehouse"),
    "spark.hadoop.javax.jdo.option.ConnectionURL": ("TRELLIS_SPARK_METASTORE", "data/spark-metastore"),
    "spark.sql.session.timeZone": ("TRELLIS_SPARK_TIMEZONE", "UTC"),
}
_SPARK_FIXED = {
    "spark.sql.ansi.enabled": "true",
    "spark.ui.enabled": "false",
    "spark.sql.shuffle.partitions": "4",
}
_PATHS = ("spark.sql.warehouse.dir", "spark.hadoop.javax.jdo.option.ConnectionURL")


def _derby(folder: str) -> str:
    return f"jdbc:derby:;databaseName={folder};create=true"


def spark_parameters(root: str) -> dict[str, str]:
    """The session's settings from ``SPARK_ENV`` (relative folders resolved against the project folder ``root``)."""
    settings = dict(_SPARK_FIXED)
    for key, (env, default) in SPARK_ENV.items():
        value = os.environ.get(env) or (os.path.join(root, default) if key in _PATHS else default)
        if key.endswith("ConnectionURL"):
            settings[key] = _derby(os.path.abspath(value))
            # Derby's log beside the metastore (metastore folder + .log), not in the working folder.
            settings["spark.driver.extraJavaOptions"] = (
                f"-Dderby.stream.error.file={os.path.abspath(value)}.log"
            )
        else:
            settings[key] = value
    return settings


def spark_profile() -> str:
    """profiles.yml of the spark target: the session's settings from ``SPARK_ENV`` (dbt runs from the target's
    folder, so the default folders are one level up)."""
    lines = [
        "trellis:",
        "  target: spark",
        "  outputs:",
        "    spark:",
        "      type: spark",
        "      method: session",
        "      host: NA",
        "      schema: default",
        "      threads: 1",
        "      server_side_parameters:",
    ]
    for key, value in _SPARK_FIXED.items():
        lines.append(f'        "{key}": "{value}"')
    for key, (env, default) in SPARK_ENV.items():
        value = f"env_var('{env}', '{'../' + default if key in _PATHS else default}')"
        if key.endswith("ConnectionURL"):
            log = f"'-Dderby.stream.error.file=' ~ {value} ~ '.log'"
            lines.append(f'        "spark.driver.extraJavaOptions": "{{{{ {log} }}}}"')
            value = f"'{_derby('')[: -len(';create=true')]}' ~ {value} ~ ';create=true'"
        lines.append(f'        "{key}": "{{{{ {value} }}}}"')
    return "\n".join(lines) + "\n"
