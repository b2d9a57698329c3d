"""The quarantine of orphan objects: gc-orphans moves objects there instead of deleting
them; `novajobs quarantine list|restore|purge` look at them, put them back or delete
them for good.

An object ``key`` of bucket ``B`` is quarantined as ``<quarantine_prefix><B>/<key>`` in
``quarantine_bucket`` (or in ``B`` itself when that is empty). The copy's LastModified
is the time it was quarantined: restore by time and purge by age read it, so nothing
else needs to be kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from novajobs.context import JobContext
    from novajobs.settings import Settings

S3_MAX_KEYS_PER_DELETE = 1000


@dataclass(frozen=True)
class Quarantined:
    bucket: str  # where the object was
    key: str
    qbucket: str  # where it is now
    qkey: str
    size: int
    at: datetime  # when it was quarantined

    def as_dict(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "key": self.key, "size": self.size,
                "quarantined_at": self.at.isoformat(timespec="seconds"),
                "quarantine": f"s3://{self.qbucket}/{self.qkey}"}


def area(settings: Settings, bucket: str) -> tuple[str, str]:
    """(bucket, key prefix) holding the quarantined objects of ``bucket``."""
    return settings.quarantine_bucket or bucket, f"{settings.quarantine_prefix}{bucket}/"


def is_quarantine_key(settings: Settings, bucket: str, key: str) -> bool:
    """Objects gc-orphans must never look at: the quarantine inside the bucket itself."""
    return not settings.quarantine_bucket and key.startswith(settings.quarantine_prefix)


def move_in(ctx: JobContext, bucket: str, key: str, etag: str | None) -> bool:
    """Move the object into the quarantine if it is still the one listed (same ETag):
    copy (conditional on the ETag), look again, delete the original. If it changed
    meanwhile (an upload wrote it again) the copy is dropped and the original kept.
    False if it changed or vanished. A write between the last look and the delete is
    the window left: S3 has no conditional delete."""
    from minio.commonconfig import CopySource
    from minio.error import S3Error

    client = ctx.s3
    qbucket, prefix = area(ctx.settings, bucket)
    try:
        ctx.retry(lambda: client.copy_object(qbucket, prefix + key,
                                             CopySource(bucket, key, match_etag=etag or None)),
                  f"quarantine s3://{bucket}/{key}")
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "PreconditionFailed"):
            return False
        raise
    if etag and etag_of(ctx, bucket, key) != etag:
        ctx.retry(lambda: client.remove_object(qbucket, prefix + key),
                  f"drop the quarantined copy of s3://{bucket}/{key}")
        return False
    ctx.retry(lambda: client.remove_object(bucket, key), f"remove s3://{bucket}/{key}")
    return True


def etag_of(ctx: JobContext, bucket: str, key: str) -> str | None:
    """The object's ETag now, or None if there is none."""
    from minio.error import S3Error

    try:
        stat = ctx.retry(lambda: ctx.s3.stat_object(bucket, key),
                         f"look up s3://{bucket}/{key}")
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NotFound"):
            return None
        raise
    return str(stat.etag) if stat.etag else None


def remove_all(ctx: JobContext, bucket: str, keys: list[str]) -> list[str]:
    """Multi-object deletes, 1000 keys a request; returns the keys that failed."""
    from minio.deleteobjects import DeleteObject

    failed: list[str] = []
    for start in range(0, len(keys), S3_MAX_KEYS_PER_DELETE):
        chunk = [DeleteObject(k) for k in keys[start:start + S3_MAX_KEYS_PER_DELETE]]

        def call(objects: list[Any] = chunk) -> list[str]:
            return [e.name for e in ctx.s3.remove_objects(bucket, objects)
                    if e.name and e.code != "NoSuchKey"]

        failed += ctx.retry(call, f"delete {len(chunk)} objects in S3 bucket {bucket}")
    return failed


def listing(ctx: JobContext, buckets: Iterable[str], prefix: str = "",
            since: datetime | None = None, until: datetime | None = None,
            ) -> Iterator[Quarantined]:
    """Quarantined objects of ``buckets`` whose original key starts with ``prefix`` and
    that were quarantined in [since, until), in key order, a page at a time."""
    for bucket in buckets:
        qbucket, qprefix = area(ctx.settings, bucket)
        pages = ctx.s3.list_objects(qbucket, prefix=qprefix + prefix, recursive=True)
        for obj in pages:
            at = obj.last_modified
            if at is None or (since and at < since) or (until and at >= until):
                continue
            yield Quarantined(bucket, obj.object_name[len(qprefix):], qbucket,
                              obj.object_name, obj.size or 0, at)


def move_out(ctx: JobContext, item: Quarantined) -> str:
    """Put a quarantined object back: ``restored``, or ``exists`` (an object is at the
    original key again: it is not overwritten, and the quarantined copy is kept)."""
    from minio.commonconfig import CopySource

    if etag_of(ctx, item.bucket, item.key) is not None:
        return "exists"
    source = CopySource(item.qbucket, item.qkey)
    ctx.retry(lambda: ctx.s3.copy_object(item.bucket, item.key, source),
              f"restore s3://{item.bucket}/{item.key}")
    ctx.retry(lambda: ctx.s3.remove_object(item.qbucket, item.qkey),
              f"remove s3://{item.qbucket}/{item.qkey}")
    return "restored"


def purge(ctx: JobContext, items: Iterable[Quarantined]) -> tuple[int, int]:
    """Delete quarantined objects for good, in batches; (deleted, failed)."""
    deleted = failed = 0
    batch: dict[str, list[str]] = {}

    def flush(qbucket: str) -> None:
        nonlocal deleted, failed
        keys = batch.pop(qbucket, [])
        ctx.checkpoint()
        bad = remove_all(ctx, qbucket, keys)
        deleted += len(keys) - len(bad)
        failed += len(bad)

    for item in items:
        batch.setdefault(item.qbucket, []).append(item.qkey)
        if len(batch[item.qbucket]) >= S3_MAX_KEYS_PER_DELETE:
            flush(item.qbucket)
    for qbucket in list(batch):
        flush(qbucket)
    return deleted, failed
