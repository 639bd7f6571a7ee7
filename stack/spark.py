"""The Spark session, configured once for every stage that needs it.

Local mode by default (``spark.master: local[*]``); a cluster URL in production. Workers
run this interpreter (``PYSPARK_PYTHON``), timestamps are UTC, Arrow moves data between
the JVM and pandas, and the UI stays off unless asked for.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from stack.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def spark_session(settings: Settings, app: str = "vigil") -> SparkSession:
    """The process's Spark session (created on first use, then reused)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    cfg = settings.spark
    spark = (
        SparkSession.builder.master(cfg.master)
        .appName(app)
        .config("spark.driver.memory", cfg.driver_memory)
        .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        # Scans split into at least as many tasks as shuffles do: by default a 320 MB lake
        # of many small files became 5 tasks on 2 cores, and the fifth ran alone.
        .config("spark.sql.files.minPartitionNum", str(cfg.shuffle_partitions))
        # Reading a list of files (the ETL's 200 staged ones) lists them in the driver, not
        # in a Spark job of one task per file (1.3 s for 200).
        .config("spark.sql.sources.parallelPartitionDiscovery.threshold", "1024")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "100000")
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.ui.enabled", "true" if cfg.ui else "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.warehouse.dir", str(settings.run_path / "spark-warehouse"))
        .config("spark.local.dir", str(settings.run_path / "spark-tmp"))
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    return spark
