"""Where the analysis runs: DuckDB in this process (the default), or Spark when a session is given.

The datasets are registered as relations with fixed names (``manifest``, ``ledger``, ``catalog``), so the
analysis's SQL is written once for both engines; the few things their dialects spell differently are methods
here (``literal``, ``quantile``, ``struct``). ``frame`` is the only way out, and the analysis only asks it for
aggregates: no dataset's rows reach pandas, and ``header_json`` is never selected.

DuckDB reads local Parquet with its own reader (projection pushdown: the columns a query does not name are
never read) and S3 through a pyarrow dataset, so it needs no extension; it spills to a private temporary
folder, so its memory stays within ``memory_limit`` on a manifest of any size.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..io import arrow_io
from ..io import uris as io_uris

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


class Engine:
    """The SQL engine the analysis's queries run on: registration, the dialect, and aggregated frames out."""

    name = ""

    def frame(self, sql: str) -> pd.DataFrame:
        """The result of ``sql`` as pandas; the caller keeps it an aggregate."""
        raise NotImplementedError

    def columns(self, relation: str) -> list[str]:
        """The column names of a registered relation."""
        raise NotImplementedError

    def view(self, name: str, sql: str) -> None:
        """Register ``sql`` as the relation ``name`` (evaluated by each query that names it)."""
        raise NotImplementedError

    def materialize(self, name: str, sql: str) -> None:
        """Register the result of ``sql`` as ``name``, computed once (for small relations used by every query)."""
        raise NotImplementedError

    def register_parquet(self, name: str, uri: str, files: Sequence[str]) -> None:
        """Register the Parquet ``files`` (all under ``uri``) as the relation ``name``, without reading them."""
        raise NotImplementedError

    def register_catalog(self, name: str, uri: str) -> None:
        """Register the catalogue at ``uri`` as ``name``: its newest row per instance."""
        raise NotImplementedError

    def literal(self, text: str) -> str:
        """``text`` as a SQL string literal."""
        raise NotImplementedError

    def quantile(self, expr: str, q: float, exact: bool = True) -> str:
        """The ``q`` quantile of ``expr``, linearly interpolated (pandas' default) or approximate."""
        raise NotImplementedError

    def struct(self, *exprs: str) -> str:
        """A struct of ``exprs`` with fields ``f0``, ``f1``, ...; structs order field by field."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the engine holds."""


class DuckDBEngine(Engine):
    """DuckDB in process, in memory, spilling to a private temporary folder."""

    name = "duckdb"

    def __init__(self, memory_limit: str | None = None, threads: int | None = None) -> None:
        import duckdb

        self._tmp = tempfile.mkdtemp(prefix="dicom-reassembly-duckdb-")
        config: dict[str, Any] = {"temp_directory": self._tmp}
        if memory_limit:
            config["memory_limit"] = memory_limit
        if threads:
            config["threads"] = threads
        self.con = duckdb.connect(":memory:", config=config)

    def frame(self, sql: str) -> pd.DataFrame:
        return self.con.execute(sql).df()

    def columns(self, relation: str) -> list[str]:
        return [row[0] for row in self.con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()]

    def view(self, name: str, sql: str) -> None:
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {sql}")

    def materialize(self, name: str, sql: str) -> None:
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {sql}")

    def register_parquet(self, name: str, uri: str, files: Sequence[str]) -> None:
        if io_uris.is_s3(uri):
            import pyarrow.dataset as pads

            filesystem, _ = arrow_io.arrow_filesystem(uri)
            self.con.register(name, pads.dataset(list(files), filesystem=filesystem, format="parquet"))
            return
        paths = ", ".join(self.literal(f) for f in files)
        # Hive partitions are not read: the folders above the dataset may hold '=' too, and no query needs them.
        self.view(name, f"SELECT * FROM read_parquet([{paths}], union_by_name = true, hive_partitioning = false)")

    def register_catalog(self, name: str, uri: str) -> None:
        from ..records import catalog

        catalog.create_current_view(self.con, uri, name=name)

    def literal(self, text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    def quantile(self, expr: str, q: float, exact: bool = True) -> str:
        return f"quantile_cont({expr}, {q!r})" if exact else f"approx_quantile({expr}, {q!r})"

    def struct(self, *exprs: str) -> str:
        return "struct_pack(" + ", ".join(f"f{i} := {e}" for i, e in enumerate(exprs)) + ")"

    def close(self) -> None:
        self.con.close()
        shutil.rmtree(self._tmp, ignore_errors=True)


class SparkEngine(Engine):
    """A SparkSession: relations are temporary views of the session (one analysis per session at a time)."""

    name = "spark"

    def __init__(self, spark: Any) -> None:
        self.spark = spark
        self._cached: list[Any] = []

    def frame(self, sql: str) -> pd.DataFrame:
        return self.spark.sql(sql).toPandas()

    def columns(self, relation: str) -> list[str]:
        return list(self.spark.table(relation).columns)

    def view(self, name: str, sql: str) -> None:
        self.spark.sql(sql).createOrReplaceTempView(name)

    def materialize(self, name: str, sql: str) -> None:
        df = self.spark.sql(sql).cache()
        self._cached.append(df)
        df.createOrReplaceTempView(name)

    def register_parquet(self, name: str, uri: str, files: Sequence[str]) -> None:
        self.spark.read.parquet(*[self._spark_path(uri, f) for f in files]).createOrReplaceTempView(name)

    def register_catalog(self, name: str, uri: str) -> None:
        # The catalogue's own reader: the same current rows as DuckDB's view (records.catalog.current_rows_sql).
        from ..records.catalog_spark import read_catalog

        read_catalog(self.spark, uri).createOrReplaceTempView(name)

    @staticmethod
    def _spark_path(uri: str, file: str) -> str:
        """A file of ``uri`` as Spark names it: pyarrow lists S3 files without their scheme."""
        return f"{io_uris.S3_PREFIX}{file}" if io_uris.is_s3(uri) and not io_uris.is_s3(file) else file

    def literal(self, text: str) -> str:
        # Spark SQL string literals take backslash escapes.
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"

    def quantile(self, expr: str, q: float, exact: bool = True) -> str:
        return f"percentile({expr}, {q!r})" if exact else f"percentile_approx({expr}, {q!r})"

    def struct(self, *exprs: str) -> str:
        return "named_struct(" + ", ".join(f"'f{i}', {e}" for i, e in enumerate(exprs)) + ")"

    def close(self) -> None:
        for df in self._cached:
            df.unpersist()
        self._cached.clear()
