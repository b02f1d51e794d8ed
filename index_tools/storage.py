"""Where dataset files live: a local path, or an object in S3 (``s3://BUCKET/KEY``) or GCS (``gs://BUCKET/KEY``).

Every file access of the Python side (listing, index headers, the writer's uploads) goes through
these few functions. Local paths stay ``pathlib.Path`` and use the OS directly; URLs stay ``str``
and go through fsspec (s3fs, gcsfs: the ``cloud`` extra), set up from the environment the native
reader (DALI's FileStream) reads, so both see the same store with the same credentials:
``AWS_ENDPOINT_URL``, ``AWS_REGION`` and the AWS credential chain (``AWS_ACCESS_KEY_ID``, ...,
``AWS_PROFILE``) for ``s3://``; ``DALI_GCS_ENDPOINT_URL`` and ``DALI_GCS_ANONYMOUS`` (else Google's
default credentials) for ``gs://``.

An object is written whole or not at all: written to a local temp file, then one upload (S3 and
GCS show an object only once its upload completes), as a local file is renamed into place.
Any other scheme (``http://``, ``hdfs://``, ``s3:bucket``) is refused, never taken for a local path.
Errors name the URL; credentials never appear in them.
"""
from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import tempfile
from pathlib import Path

SCHEMES = ("s3", "gs")
_ALIASES = {"gcs": "gs:", "s3a": "s3:", "s3n": "s3:"}  # Hadoop's, fsspec's and others' names for them
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")
_URL_RE = re.compile(r"^(s3|gs)://([a-z0-9][a-z0-9._-]*[a-z0-9])(/.*)?$")
_SECRETS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class StorageError(OSError):
    """An object store refused or failed a request; the message names the URL, never a credential."""


def check_path(path) -> Path | str:
    """``path`` as this module takes it: a local path as ``Path``, an ``s3://``/``gs://`` URL as ``str``
    (without a trailing ``/``). Anything else that looks like a URL raises ValueError."""
    text = os.fspath(path)
    m = _SCHEME_RE.match(text)
    if m is None:
        return Path(path)
    scheme = m[1].lower()
    url = _URL_RE.match(text)
    if url and scheme == m[1]:
        return text.rstrip("/") if url[3] and url[3] != "/" else f"{scheme}://{url[2]}"
    if scheme in SCHEMES:
        raise ValueError(f"{text!r} is not a valid {scheme}:// URL: write {scheme}://BUCKET/PREFIX "
                         f"(a bucket name of lower-case letters, digits, '.', '-' and '_')")
    refused = f"{text!r}: dali-video reads local paths, s3://BUCKET/PREFIX and gs://BUCKET/PREFIX, not {m[1]}: URLs"
    if alias := _ALIASES.get(scheme):  # another tool's name for a store this one reads
        raise ValueError(f"{refused}; write {alias}{text[len(m[0]):]}")
    if text[len(m[0]):].startswith("//"):  # a URL of a store this one does not read
        raise ValueError(refused)
    raise ValueError(f"{refused}; for a local file whose name holds ':', write ./{text}")


def is_url(path) -> bool:
    return isinstance(path, str) and _URL_RE.match(path) is not None


def join(folder, name: str) -> Path | str:
    folder = check_path(folder)
    return f"{folder}/{name}" if is_url(folder) else folder / name


def name(path) -> str:
    """The last part of a path or URL (``train-00000-of-00001.tfrecord``)."""
    return os.fspath(path).rstrip("/").rsplit("/", 1)[-1]


def _clean(text: str) -> str:
    for var in _SECRETS:
        secret = os.environ.get(var)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _filesystem(url: str):
    """The fsspec filesystem of ``url``'s scheme, configured from the environment DALI reads.

    fsspec caches instances by their arguments, so the credentials are passed explicitly: a change
    of them (a test, a refreshed token) gives a new client, not a stale one.
    """
    try:
        import fsspec
    except ModuleNotFoundError:
        raise StorageError(f"{url}: reading s3:// and gs:// needs fsspec with s3fs and gcsfs: "
                           f"pip install 'dali-video[cloud]'") from None
    env = os.environ.get
    if url.startswith("s3://"):
        options = {"endpoint_url": env("AWS_ENDPOINT_URL"), "key": env("AWS_ACCESS_KEY_ID"),
                   "secret": env("AWS_SECRET_ACCESS_KEY"), "token": env("AWS_SESSION_TOKEN"),
                   "client_kwargs": {"region_name": env("AWS_REGION") or env("AWS_DEFAULT_REGION")}}
        protocol = "s3"
    else:
        anonymous = env("DALI_GCS_ANONYMOUS", "").lower() in ("1", "true", "yes", "on")
        options = {"endpoint_url": env("DALI_GCS_ENDPOINT_URL"), "token": "anon" if anonymous else None}
        protocol = "gcs"
    try:
        if protocol == "gcs":
            # gcsfs' default class probes each bucket's type over gRPC (its experimental zonal-bucket
            # support), which emulators and proxies do not speak; the JSON API's class reads any bucket.
            from gcsfs.core import GCSFileSystem
            return GCSFileSystem(**options)
        return fsspec.filesystem(protocol, **options)
    except ImportError:
        raise StorageError(f"{url}: {'s3fs' if protocol == 's3' else 'gcsfs'} is not installed: "
                           f"pip install 'dali-video[cloud]'") from None


@contextlib.contextmanager
def _request(url: str, what: str):
    """Turn a store's failure into FileNotFoundError or StorageError naming ``url``, without secrets."""
    try:
        yield
    except FileNotFoundError as e:
        raise FileNotFoundError(_clean(f"{url}: not found ({_reason(e)})")) from None
    except StorageError:
        raise
    except Exception as e:  # noqa: BLE001 - botocore, aiohttp and google clients raise their own types
        hint = ("check the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE, ...), AWS_ENDPOINT_URL and AWS_REGION"
                if url.startswith("s3://") else
                "check the credentials (GOOGLE_APPLICATION_CREDENTIALS, DALI_GCS_ANONYMOUS) and DALI_GCS_ENDPOINT_URL")
        raise StorageError(_clean(f"{url}: cannot {what}: {_reason(e)}; {hint}")) from None


def _reason(e: Exception) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) < 300 else text[:300] + "..."


def check_bucket(url: str) -> None:
    """Raise naming ``url`` when its bucket does not exist or these credentials may not list it."""
    fs, bucket = _filesystem(url), url.split("/")[2]
    try:
        with _request(url, "reach its bucket"):
            fs.info(bucket)
    except FileNotFoundError:
        raise FileNotFoundError(f"{url}: bucket {bucket!r} does not exist (or is not visible to these "
                                f"credentials); create it or correct the URL") from None


def exists(path) -> bool:
    if not is_url(path):
        return Path(path).exists()
    with _request(path, "look up"):
        return _filesystem(path).exists(path)


def isdir(path) -> bool:
    if not is_url(path):
        return Path(path).is_dir()
    with _request(path, "look up"):
        return _filesystem(path).isdir(path)


def size(path) -> int:
    if not is_url(path):
        return os.path.getsize(path)
    with _request(path, "look up"):
        return int(_filesystem(path).size(path))


def glob(folder, pattern: str) -> list:
    """The entries of ``folder`` whose names match ``pattern`` (``*.tfrecord``), sorted; none when
    ``folder`` is a file or missing. One listing request for a URL."""
    folder = check_path(folder)
    if not is_url(folder):
        return sorted(folder.glob(pattern))
    try:
        with _request(folder, "list"):
            names = _filesystem(folder).ls(folder, detail=False, refresh=True)
    except FileNotFoundError:
        return []
    inside = folder.split("://", 1)[1]  # a file lists as itself: not an entry of a folder
    return sorted(join(folder, name(n)) for n in names
                  if n.rstrip("/").rpartition("/")[0] == inside and fnmatch.fnmatchcase(name(n), pattern))


def glob_paths(pattern: str) -> list:
    """Paths that match a glob with wildcards in its last part (``s3://b/ds/train-*.tfrecord``)."""
    folder, _, last = os.fspath(pattern).rstrip("/").rpartition("/")
    return glob(folder, last)


def read(path, start: int = 0, length: int | None = None) -> bytes:
    """``length`` bytes (default: to the end) from byte ``start``: one read, one ranged GET for a URL."""
    if not is_url(path):
        with open(path, "rb") as f:
            f.seek(start)
            return f.read() if length is None else f.read(length)
    with _request(path, "read"):
        end = None if length is None else start + length
        return _filesystem(path).cat_file(path, start=start, end=end)


def open_read(path):
    """A binary file object for reading ``path`` front to back (buffered ranged GETs for a URL)."""
    if not is_url(path):
        return open(path, "rb")
    with _request(path, "open"):
        return _filesystem(path).open(path, "rb", block_size=16 << 20, cache_type="readahead")


@contextlib.contextmanager
def writing(path):
    """A binary file to write ``path`` with; on success it appears whole at ``path`` (renamed into
    place, or uploaded in one request), on failure nothing does."""
    path = check_path(path)
    url = is_url(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name(path)}.", suffix=".tmp", dir=None if url else path.parent)
    try:
        os.chmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if not url:
                os.fsync(f.fileno())
        if url:
            with _request(path, "upload"):
                _filesystem(path).put_file(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write(path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that it appears only complete."""
    with writing(path) as f:
        f.write(data)


def remove(path) -> None:
    """Delete a file or object."""
    if not is_url(path):
        Path(path).unlink()
        return
    with _request(path, "delete"):
        _filesystem(path).rm_file(path)
