"""TLS options for each driver, from one CA setting; verification is always on.

``tls_ca_file`` (PEM) verifies every store spoken to over TLS except PostgreSQL, whose
URL carries libpq's own ``sslmode``/``sslrootcert``; empty means the driver's default
bundle. A certificate that does not verify, or names another host, stops the run with
exit 78 and one line (diagnose.py); nothing here can turn verification off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from novajobs.settings import Settings


def redis_options(settings: Settings) -> dict[str, Any]:
    """For ``rediss://``: the CA, the host name checked, and the client certificate if set."""
    if urlsplit(settings.redis_url).scheme != "rediss":
        return {}
    return {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": settings.tls_ca_file or None,
        "ssl_certfile": settings.redis_tls_cert_file or None,
        "ssl_keyfile": settings.redis_tls_key_file or None,
    }


def minio_pool_options(settings: Settings) -> dict[str, Any]:
    """For the urllib3 pool under the MinIO client (it uses certifi when it builds its own)."""
    if not settings.minio_secure:
        return {}
    import certifi

    return {"cert_reqs": "CERT_REQUIRED", "ca_certs": settings.tls_ca_file or certifi.where()}


def elasticsearch_options(settings: Settings) -> dict[str, Any]:
    if urlsplit(settings.elasticsearch_url).scheme != "https":
        return {}
    return {"verify_certs": True, "ca_certs": settings.tls_ca_file or None}


def clickhouse_options(settings: Settings) -> dict[str, Any]:
    if urlsplit(settings.clickhouse_url).scheme != "https":
        return {}
    return {"verify": True, "ca_cert": settings.tls_ca_file or None}
