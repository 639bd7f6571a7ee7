"""The data lake: a local folder by default, an ``s3a://`` bucket in production.

Zones under the root: ``raw/`` (landed as-is), ``processed/`` (ETL output), ``features/``.
Files are written atomically (temporary name, fsync, rename) so a reader or a crash never
sees half a file; on object stores a single PUT is already atomic.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

READ_THREADS = 8  # files read at once by Lake.read_table


class Lake:
    """Paths and atomic reads/writes under the lake root.

    Args:
        root: a local path (relative paths are taken as given) or ``s3a://bucket/prefix``
            (``s3://`` also accepted; credentials come from the usual AWS variables).
    """

    def __init__(self, root: str | Path) -> None:
        root = str(root)
        parsed = urlparse(root)
        if parsed.scheme in {"s3a", "s3"}:
            self.fs: pafs.FileSystem = pafs.S3FileSystem()
            self.base = f"{parsed.netloc}{parsed.path}".rstrip("/")
            self.local = False
            self.uri = f"s3a://{self.base}"  # what Spark reads
        elif parsed.scheme in {"", "file"}:
            path = Path(parsed.path if parsed.scheme == "file" else root).absolute()
            self.fs = pafs.LocalFileSystem()
            self.base = str(path)
            self.local = True
            self.uri = self.base
        else:
            raise ValueError(f"unsupported lake root {root!r}: use a local path or s3a://")

    def path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def exists(self, rel: str) -> bool:
        return bool(self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound)

    def delete(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.delete_file(self.path(rel))

    def delete_dir(self, rel: str) -> None:
        """Delete a folder and everything under it (nothing if it does not exist)."""
        if self.exists(rel):
            self.fs.delete_dir(self.path(rel))

    def replace_dir(self, rel: str, files: list[str]) -> None:
        """Make folder ``rel`` hold exactly ``files`` (moved in under their own names): its
        old content is deleted first, so no files means an emptied folder."""
        self.delete_dir(rel)
        for f in files:
            self.move(f, f"{rel}/{f.rsplit('/', 1)[-1]}")

    def move(self, rel: str, to: str) -> None:
        """Move a file within the lake (a rename on a local disk, copy + delete on S3)."""
        final = self.path(to)
        if self.local:
            Path(final).parent.mkdir(parents=True, exist_ok=True)
        self.fs.move(self.path(rel), final)
        if self.local:
            self._sync_dir(Path(final).parent)

    @staticmethod
    def _sync_dir(folder: Path) -> None:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _atomic_bytes(self, rel: str, write: Any) -> None:
        final = self.path(rel)
        if not self.local:
            with self.fs.open_output_stream(final) as out:
                write(out)
            return
        Path(final).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{final}.tmp-{os.getpid()}"
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        self._sync_dir(Path(final).parent)

    def write_parquet(self, table: pa.Table, rel: str) -> None:
        """Write ``table`` at ``rel`` atomically (microsecond timestamps, Spark-readable)."""
        self._atomic_bytes(
            rel,
            lambda out: pq.write_table(
                table,
                out,
                coerce_timestamps="us",
                allow_truncated_timestamps=True,
                compression="zstd",
            ),
        )

    def write_json(self, obj: Any, rel: str) -> None:
        data = json.dumps(obj, indent=2, default=str).encode()
        self._atomic_bytes(rel, lambda out: out.write(data))

    def read_json(self, rel: str) -> Any:
        with self.fs.open_input_stream(self.path(rel)) as fh:
            return json.loads(fh.read())

    def files(self, rel: str, suffix: str = ".parquet") -> list[str]:
        """Relative paths of files under ``rel`` (recursive), sorted."""
        sel = pafs.FileSelector(self.path(rel), recursive=True, allow_not_found=True)
        out = [
            info.path[len(self.base) + 1 :]
            for info in self.fs.get_file_info(sel)
            if info.type == pafs.FileType.File and info.path.endswith(suffix)
        ]
        return sorted(out)

    def read_table(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        """One Parquet file, or all Parquet files under a folder, as one table.

        Partition folders (``date=…/hour=…``) are not added as columns: every zone keeps
        its timestamps inside the files.
        """
        info = self.fs.get_file_info(self.path(rel))
        files = [rel] if info.type == pafs.FileType.File else self.files(rel)
        if not files:
            return pa.table({})

        def read(f: str) -> pa.Table:
            return pq.read_table(self.path(f), filesystem=self.fs, columns=columns)

        if len(files) == 1:
            return read(files[0])
        # Many small files (one per hour and task): opening and decoding them one after
        # another leaves cores idle; the reader releases the GIL. Order is kept.
        with ThreadPoolExecutor(min(READ_THREADS, len(files))) as pool:
            tables = list(pool.map(read, files))
        return pa.concat_tables(tables, promote_options="default")
