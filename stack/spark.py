"""The Spark session, configured once for every stage that needs it.

Local mode by default (``spark.master: local[*]``); a cluster URL in production
(``make spark-cluster`` starts one on loopback: ``stack.sparkcluster``). Workers run this
interpreter (``PYSPARK_PYTHON``; ``spark.executor_python`` on other hosts), timestamps are
UTC, Arrow moves data between the JVM and pandas, and the UI stays off unless asked for.

Across hosts: ``spark.driver_host`` is the address executors call the driver back at (and
``driver_bind_address`` the interface it listens on; ``driver_port`` and
``block_manager_port`` fix its ports for a firewall); ``spark.ship_code`` sends Vigil's
packages to the executors as a zip with each session, for workers where Vigil is not
installed. The lake must be one every worker reaches (``s3a://``, or a shared mount).
"""

from __future__ import annotations

import hashlib
import os
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from stack.settings import REPO_ROOT, Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


# The driver JVM's log4j2 configuration (Vigil's own): warnings and errors only, on
# stdout. Spark's default writes INFO start-up lines to stderr, which Airflow 3 files
# under ERROR in a task's log; two start-up warnings that say nothing actionable here
# (a loopback host name, Hadoop's native library) are kept to errors.
LOG4J2 = """\
rootLogger.level = warn
rootLogger.appenderRef.out.ref = out
appender.out.type = Console
appender.out.name = out
appender.out.target = SYSTEM_OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = %d{yyyy-MM-dd HH:mm:ss} %p spark %c{1}: %m%n
logger.hostname.name = org.apache.spark.util.Utils
logger.hostname.level = error
logger.native.name = org.apache.hadoop.util.NativeCodeLoader
logger.native.level = error
"""


def _log4j2(settings: Settings) -> Path:
    path = settings.run_path / "spark-log4j2.properties"
    if not path.exists() or path.read_text() != LOG4J2:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(LOG4J2)
    return path


def spark_session(settings: Settings, app: str = "vigil") -> SparkSession:
    """The process's Spark session (created on first use, then reused)."""
    cfg = settings.spark
    os.environ.setdefault("PYSPARK_PYTHON", cfg.executor_python or sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if cfg.driver_bind_address not in ("0.0.0.0", "::"):
        os.environ.setdefault("SPARK_LOCAL_IP", cfg.driver_bind_address)
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master(cfg.master)
        .appName(app)
        .config("spark.driver.memory", cfg.driver_memory)
        .config(
            "spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile=file:{_log4j2(settings)}"
        )
        .config("spark.executor.memory", cfg.executor_memory)
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
        .config("spark.driver.host", cfg.driver_host)
        .config("spark.driver.bindAddress", cfg.driver_bind_address)
        .config("spark.driver.port", str(cfg.driver_port))
        .config("spark.driver.blockManager.port", str(cfg.block_manager_port))
        .config("spark.sql.warehouse.dir", str(settings.run_path / "spark-warehouse"))
        .config("spark.local.dir", str(settings.run_path / "spark-tmp"))
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    if cfg.ship_code:
        _ship_code(spark, settings)
    return spark


# Vigil's own packages: what a task running on an executor may import.
PACKAGES = ("stack", "pipelines", "features", "training", "serving", "monitoring", "ops")


def code_zip(settings: Settings) -> Path:
    """Vigil's packages as one zip under ``<run_dir>/spark-code`` (named by its content,
    so a changed checkout ships a new one and executors never run a stale copy)."""
    files = sorted(
        p
        for pkg in PACKAGES
        for p in (REPO_ROOT / pkg).rglob("*.py")
        if "__pycache__" not in p.parts
    )
    digest = hashlib.sha256()
    for p in files:
        digest.update(str(p.relative_to(REPO_ROOT)).encode())
        digest.update(p.read_bytes())
    out = settings.run_path / "spark-code" / f"vigil-{digest.hexdigest()[:16]}.zip"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for p in files:
                z.write(p, str(p.relative_to(REPO_ROOT)))
        tmp.replace(out)
    return out


def _ship_code(spark: SparkSession, settings: Settings) -> None:
    """Send Vigil's packages to the executors, once per session."""
    zipped = code_zip(settings)
    sc = spark.sparkContext
    if zipped.name not in getattr(sc, "_python_includes", []):
        sc.addPyFile(str(zipped))
