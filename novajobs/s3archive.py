"""Archives in S3: a stream of PostgreSQL ``COPY`` text, gzip-compressed into one object,
described by a ``Digest`` (rows, bytes, SHA-256 of the uncompressed data); and reading
an object back to check it against its digest. Used by archive-partitions,
restore-partition and archive-audit-logs.

A big stream goes up as a multipart upload whose parts are uploaded by one background
thread while the next part is filled, so memory holds about three parts whatever the
size. Each part is kept until its upload succeeded, so a transient S3 error retries
that part (the shared policy) instead of the whole stream — which is why this uses the
MinIO SDK's multipart calls directly: its ``put_object`` cannot retry a part of a
stream it has already consumed.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from novajobs.errors import ConfigError, JobFailed

if TYPE_CHECKING:
    from novajobs.context import JobContext

Chunk = bytes | bytearray | memoryview  # what COPY hands out
GZIP = 31  # zlib wbits for a gzip container: `gunzip`, `zcat` and S3 tools read it
READ_CHUNK = 1 << 20
MIN_PART = 5 << 20  # S3's smallest part (but the last)


@dataclass(frozen=True)
class Digest:
    """What an archive holds: rows (lines of COPY text), uncompressed bytes and their
    SHA-256, and the size of the compressed object."""

    rows: int
    raw_bytes: int
    sha256: str
    object_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def same_data(self, other: Digest) -> bool:
        return (self.rows, self.raw_bytes, self.sha256) == (
            other.rows, other.raw_bytes, other.sha256)


class Compressor:
    """Feeds COPY text through gzip while hashing and counting it."""

    def __init__(self, level: int) -> None:
        self._zip = zlib.compressobj(level, zlib.DEFLATED, GZIP)
        self._hash = hashlib.sha256()
        self.rows = 0
        self.raw_bytes = 0

    def feed(self, data: bytes | bytearray) -> bytes:
        self._hash.update(data)
        self.rows += data.count(b"\n")
        self.raw_bytes += len(data)
        return self._zip.compress(data)

    def finish(self, object_bytes: int) -> Digest:
        return Digest(self.rows, self.raw_bytes, self._hash.hexdigest(), object_bytes)

    def flush(self) -> bytes:
        return self._zip.flush()


def compress(data: bytes, level: int) -> tuple[bytes, Digest]:
    """A small archive in memory (one keyset batch)."""
    comp = Compressor(level)
    body = comp.feed(data) + comp.flush()
    return body, comp.finish(len(body))


def in_blocks(chunks: Iterable[Chunk]) -> Iterable[bytearray]:
    """COPY rows gathered into blocks of about a MiB: one hash/zlib call per block."""
    pending = bytearray()
    for chunk in chunks:
        pending += chunk
        if len(pending) >= READ_CHUNK:
            yield pending
            pending = bytearray()
    yield pending


def digest_of(chunks: Iterable[Chunk]) -> Digest:
    """The digest of uncompressed COPY text (e.g. a table read again), object size 0."""
    hasher, rows, size = hashlib.sha256(), 0, 0
    for block in in_blocks(chunks):
        hasher.update(block)
        rows += block.count(b"\n")
        size += len(block)
    return Digest(rows, size, hasher.hexdigest(), 0)


class MultipartWriter:
    """One object written part by part; ``write`` takes compressed bytes."""

    def __init__(self, ctx: JobContext, bucket: str, key: str, part_size: int,
                 metadata: dict[str, str] | None = None) -> None:
        self.ctx, self.bucket, self.key = ctx, bucket, key
        self.part_size = max(part_size, MIN_PART)
        self.client = ctx.s3
        headers = {"Content-Type": "application/gzip"}
        headers.update({f"x-amz-meta-{k}": v for k, v in (metadata or {}).items()})
        self.upload_id: str = ctx.retry(
            lambda: self.client._create_multipart_upload(bucket, key, headers),
            f"start the upload of s3://{bucket}/{key}")
        self._buffer = bytearray()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3-part")
        self._pending: Future[Any] | None = None
        self._parts: list[Any] = []
        self.object_bytes = 0

    def write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= self.part_size:
            part, self._buffer = self._buffer, bytearray()  # handed over, not copied
            self._send(part)

    def _send(self, part: bytearray) -> None:
        self._wait_pending()  # at most one part in flight: memory stays flat
        number = len(self._parts) + 1
        self._pending = self._pool.submit(self._upload, number, part)
        self.object_bytes += len(part)

    def _upload(self, number: int, part: bytearray) -> None:
        from minio.datatypes import Part

        etag = self.ctx.retry(
            lambda: self.client._upload_part(self.bucket, self.key, part, None, self.upload_id,
                                             number),
            f"upload part {number} of s3://{self.bucket}/{self.key}")
        self._parts.append(Part(number, etag))

    def _wait_pending(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def complete(self) -> int:
        if self._buffer or not self._parts:
            part, self._buffer = self._buffer, bytearray()
            self._send(part)
        self._wait_pending()
        self._pool.shutdown()
        parts = sorted(self._parts, key=lambda p: p.part_number)
        self.ctx.retry(
            lambda: self.client._complete_multipart_upload(self.bucket, self.key,
                                                           self.upload_id, parts),
            f"complete the upload of s3://{self.bucket}/{self.key}")
        return self.object_bytes

    def abort(self) -> None:
        """Drop the parts (best effort: a bucket lifecycle rule for incomplete multipart
        uploads is the backstop for a process killed before it gets here)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        try:
            self.client._abort_multipart_upload(self.bucket, self.key, self.upload_id)
        except Exception as exc:
            self.ctx.log.warning("could not abort a multipart upload", bucket=self.bucket,
                                 key=self.key, error=str(exc))


def upload_stream(ctx: JobContext, bucket: str, key: str, chunks: Iterable[Chunk],
                  *, level: int, part_size: int, metadata: dict[str, str] | None = None,
                  on_block: Callable[[int], None] | None = None) -> Digest:
    """Compress ``chunks`` (COPY text) into s3://bucket/key; returns its digest.
    ``on_block(rows)`` is called after each block is handed on (progress, safe points).

    Three stages run at once: this thread reads the rows (Python work, holding the GIL),
    one thread hashes and compresses blocks (zlib and hashlib release the GIL), and the
    writer's thread uploads parts. Queues of one or two items keep memory flat."""
    comp = Compressor(level)
    writer = MultipartWriter(ctx, bucket, key, part_size, metadata)
    stage = CompressStage(comp, writer)
    try:
        for block in in_blocks(chunks):
            stage.put(block)
            if on_block is not None:
                on_block(block.count(b"\n"))
        stage.finish()
        size = writer.complete()
    except BaseException:
        stage.cancel()
        writer.abort()
        raise
    return comp.finish(size)


class CompressStage:
    """Blocks of COPY text in, compressed bytes handed to the writer, in one thread."""

    def __init__(self, comp: Compressor, writer: MultipartWriter) -> None:
        import queue
        import threading

        self.comp, self.writer = comp, writer
        self.blocks: queue.Queue[bytearray | None] = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.cancelled = threading.Event()
        self.thread = threading.Thread(target=self._run, name="archive-gzip", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while (block := self.blocks.get()) is not None:
                if self.cancelled.is_set():
                    return
                self.writer.write(self.comp.feed(block))
            self.writer.write(self.comp.flush())
        except BaseException as exc:
            self.error = exc

    def put(self, block: bytearray | None) -> None:
        import queue

        while True:
            if self.error is not None:
                raise self.error
            if not self.thread.is_alive():
                raise RuntimeError("the compression thread stopped")
            try:
                self.blocks.put(block, timeout=0.2)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        self.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def cancel(self) -> None:
        import queue

        self.cancelled.set()
        while self.thread.is_alive():
            with suppress(queue.Full):  # wake it if it waits for a block: it stops there
                self.blocks.put_nowait(None)
            self.thread.join(timeout=0.2)


def put_small(ctx: JobContext, bucket: str, key: str, body: bytes,
              metadata: dict[str, str] | None = None, content_type: str = "application/gzip",
              ) -> None:
    import io

    ctx.retry(lambda: ctx.s3.put_object(bucket, key, io.BytesIO(body), len(body),
                                                 content_type=content_type, metadata=metadata),
              f"write s3://{bucket}/{key}")


def get_small(ctx: JobContext, bucket: str, key: str) -> bytes | None:
    """The whole object, or None if there is none."""
    def read() -> bytes | None:
        from minio.error import S3Error

        try:
            response = ctx.s3.get_object(bucket, key)
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                return None
            raise
        try:
            return bytes(response.read())
        finally:
            response.close()
            response.release_conn()

    return ctx.retry(read, f"read s3://{bucket}/{key}")


def read_digest(ctx: JobContext, bucket: str, key: str) -> Digest:
    """Read the object back, uncompress it and digest what it holds (memory: one chunk)."""
    def read() -> Digest:
        unzip = zlib.decompressobj(GZIP)
        hasher, rows, raw, size = hashlib.sha256(), 0, 0, 0
        response = ctx.s3.get_object(bucket, key)
        try:
            for chunk in response.stream(READ_CHUNK):
                size += len(chunk)
                data = unzip.decompress(chunk)
                hasher.update(data)
                rows += data.count(b"\n")
                raw += len(data)
        finally:
            response.close()
            response.release_conn()
        if not unzip.eof:
            raise JobFailed(f"s3://{bucket}/{key} is truncated (no end of gzip stream)")
        return Digest(rows, raw, hasher.hexdigest(), size)

    return ctx.retry(read, f"read back s3://{bucket}/{key}")


def stream_object(ctx: JobContext, bucket: str, key: str) -> Iterable[bytes]:
    """The uncompressed data of an archive, chunk by chunk (restore's COPY FROM)."""
    unzip = zlib.decompressobj(GZIP)
    response = ctx.retry(lambda: ctx.s3.get_object(bucket, key),
                         f"read s3://{bucket}/{key}")
    try:
        for chunk in response.stream(READ_CHUNK):
            data = unzip.decompress(chunk)
            if data:
                yield data
        tail = unzip.flush()
        if tail:
            yield tail
    finally:
        response.close()
        response.release_conn()


def require_bucket(ctx: JobContext, bucket: str, setting: str = "archive_bucket") -> None:
    """One clear line (exit 78) when the bucket a setting names is missing."""
    if not ctx.retry(lambda: ctx.s3.bucket_exists(bucket),
                     f"check S3 bucket {bucket}"):
        raise ConfigError(f"S3 bucket {bucket} ({setting}) does not exist: create it, "
                          f"or point {setting} at the bucket to use")
