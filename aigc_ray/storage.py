"""One storage layer for every byte: a local path or ``s3://bucket/prefix``, behind the same calls.

Reads and listings go through pyarrow's filesystem layer (the same object Ray Data reads with);
writes to S3 go through boto3 so an object only appears once it is complete: a single PUT, or a
multipart upload that is completed only on success and aborted otherwise. Local writes go to a
hidden temporary file beside the target and are renamed over it (atomic on POSIX).

Credentials always come from the standard AWS chain (environment, ~/.aws, instance profile);
the endpoint and region may come from the spec or the standard AWS environment variables.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO, Any

import pyarrow.fs as pafs

PARTIAL_PREFIX = ".aigc-partial-"  # temp files of in-flight local writes; never listed


def _file_mode() -> int:
    """Mode for new files under the process umask (mkstemp would leave them 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI and the likely cause."""


@dataclass(frozen=True)
class Location:
    """A parsed URI: ``scheme`` is 's3' or 'file'; ``path`` is 'bucket/key' for S3, absolute for files."""

    scheme: str
    path: str

    @property
    def uri(self) -> str:
        return f"s3://{self.path}" if self.scheme == "s3" else self.path

    @property
    def bucket(self) -> str:
        return self.path.split("/", 1)[0]

    @property
    def key(self) -> str:
        return self.path.split("/", 1)[1] if "/" in self.path else ""


def parse_uri(uri: str) -> Location:
    """Parse a local path, ``file://`` URI or ``s3://bucket/key``; raises StorageError for other schemes."""
    if uri.startswith("s3://"):
        path = uri[len("s3://") :].strip("/")
        if not path:
            raise StorageError(f"{uri!r}: an S3 URI needs a bucket, e.g. s3://my-bucket/prefix")
        return Location("s3", path)
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        raise StorageError(f"{uri!r}: unsupported URI scheme; use a local path or s3://bucket/prefix")
    return Location("file", str(Path(uri).expanduser().absolute()))


def join(uri: str, *parts: str) -> str:
    """Join URI parts with '/' (works for local paths and S3 URIs)."""
    out = uri.rstrip("/")
    for part in parts:
        out += "/" + part.strip("/")
    return out


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class S3Settings:
    """Endpoint and region for S3; picklable so Ray workers rebuild the same filesystem."""

    endpoint_url: str | None = None
    region: str | None = None

    @classmethod
    def resolve(cls, endpoint_url: str | None = None, region: str | None = None) -> S3Settings:
        """Spec values first, then the standard AWS environment variables."""
        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        return cls(endpoint or None, region)


_LIVE: weakref.WeakSet = weakref.WeakSet()  # every Storage, so a process can drop its S3 filesystems at exit


def release_s3() -> None:
    """Drop every S3 filesystem this process made and finalize pyarrow's S3 (the AWS C++ SDK)
    while the interpreter is still whole. Left to interpreter teardown, the SDK's threads can abort
    an otherwise finished process ("terminate called without an active exception", exit -6; seen
    about 1 run in 25 of `aigc data validate`; apache/arrow#41087, #34314). For a command's last
    step only: S3 cannot be used in this process afterwards."""
    import gc

    for storage in list(_LIVE):
        storage.__dict__.pop("_s3fs", None)
    gc.collect()
    pafs.ensure_s3_finalized()


def _glob_regex(pattern: str) -> re.Pattern:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


class Storage:
    """Atomic reads and writes of whole objects at URIs; see the module docstring."""

    def __init__(self, s3: S3Settings | None = None):
        self.s3 = s3 or S3Settings.resolve()
        self._checked_buckets: set[str] = set()
        _LIVE.add(self)

    @classmethod
    def from_spec(cls, storage_spec: Any) -> Storage:
        """Build from the spec's ``storage`` section (endpoint/region only; never credentials)."""
        return cls(S3Settings.resolve(storage_spec.endpoint_url, storage_spec.region))

    # -- filesystems -------------------------------------------------------------------------

    @cached_property
    def _s3fs(self) -> pafs.S3FileSystem:
        kwargs: dict[str, Any] = {"region": self.s3.region}
        if self.s3.endpoint_url:
            scheme, _, host = self.s3.endpoint_url.partition("://")
            kwargs.update(endpoint_override=host.rstrip("/"), scheme=scheme)
        return pafs.S3FileSystem(**kwargs)

    @cached_property
    def _client(self):
        import boto3  # deferred: boto3 import costs ~0.3 s and local-only runs never need it

        # A session of our own: boto3's default session caches the credentials it first resolved.
        session = boto3.session.Session()
        return session.client("s3", endpoint_url=self.s3.endpoint_url, region_name=self.s3.region)

    def filesystem(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """The pyarrow filesystem and in-filesystem path for ``uri`` (what Ray Data reads with)."""
        loc = parse_uri(uri)
        if loc.scheme == "s3":
            self.check_bucket(loc.bucket)
            return self._s3fs, loc.path
        return pafs.LocalFileSystem(), loc.path

    def ray_storage(self, uri: str) -> tuple[str, pafs.FileSystem | None]:
        """``(storage_path, storage_filesystem)`` for Ray Train/Tune's RunConfig: the S3
        filesystem (our endpoint, region) for S3, none for a local path."""
        fs, path = self.filesystem(uri)
        return path, fs if parse_uri(uri).scheme == "s3" else None

    def check_bucket(self, bucket: str) -> None:
        """Fail early and clearly when a bucket is missing or the credentials are refused."""
        if bucket in self._checked_buckets:
            return
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        where = self.s3.endpoint_url or "AWS S3"
        try:
            self._client.head_bucket(Bucket=bucket)
        except NoCredentialsError:
            raise StorageError(
                f"s3://{bucket}: no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE, or use an instance profile)"
            ) from None
        except EndpointConnectionError:
            raise StorageError(f"s3://{bucket}: cannot connect to the S3 endpoint {where}") from None
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket"):
                raise StorageError(f"s3://{bucket}: bucket does not exist at {where}") from None
            if code in ("403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
                raise StorageError(
                    f"s3://{bucket}: access denied by {where} ({code}); check the AWS credentials "
                    "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE) and the bucket policy"
                ) from None
            raise StorageError(f"s3://{bucket}: {exc}") from None
        self._checked_buckets.add(bucket)

    # -- reading -----------------------------------------------------------------------------

    def exists(self, uri: str) -> bool:
        fs, path = self.filesystem(uri)
        return fs.get_file_info(path).type != pafs.FileType.NotFound

    def read_bytes(self, uri: str) -> bytes:
        """Read a whole object, its bytes as stored; raises StorageError naming the URI if it is missing."""
        fs, path = self.filesystem(uri)
        try:
            # compression=None: pyarrow would otherwise decompress by the name's suffix (.gz, .zst, ...),
            # so a size or a checksum of the bytes read would not be the object's
            with fs.open_input_stream(path, compression=None) as f:
                return f.read()
        except FileNotFoundError:
            raise StorageError(f"{uri}: no such object") from None
        except OSError as exc:
            if "NoSuchKey" in str(exc) or "does not exist" in str(exc):
                raise StorageError(f"{uri}: no such object") from None
            raise StorageError(f"{uri}: read failed: {exc}") from None

    def size(self, uri: str) -> int:
        """Bytes of the object at ``uri`` (-1 when there is none)."""
        fs, path = self.filesystem(uri)
        info = fs.get_file_info(path)
        return -1 if info.type == pafs.FileType.NotFound else int(info.size or 0)

    def read_json(self, uri: str) -> Any:
        return json.loads(self.read_bytes(uri))

    def list_files(self, uri: str, suffix: str | tuple[str, ...] = "") -> list[str]:
        """URIs of the files under ``uri`` (recursive, sorted) whose names end with ``suffix`` (or
        one of several), skipping in-flight partial writes."""
        fs, path = self.filesystem(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            return []
        if info.type == pafs.FileType.File:
            return [uri]
        selector = pafs.FileSelector(path, recursive=True)
        loc = parse_uri(uri)
        out = []
        for fi in fs.get_file_info(selector):
            if fi.type != pafs.FileType.File or fi.base_name.startswith(PARTIAL_PREFIX):
                continue
            if suffix and not fi.path.endswith(suffix):
                continue
            out.append(f"s3://{fi.path}" if loc.scheme == "s3" else fi.path)
        return sorted(out)

    def file_stats(self, uri: str) -> list[tuple[str, int, int]]:
        """(URI, bytes, modification time in ns) of each file under ``uri``, sorted: a cheap
        fingerprint of data we did not write (one listing, no reads)."""
        fs, path = self.filesystem(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            return []
        infos = [info] if info.type == pafs.FileType.File else fs.get_file_info(pafs.FileSelector(path, recursive=True))
        scheme = parse_uri(uri).scheme
        return sorted(
            (f"s3://{fi.path}" if scheme == "s3" else fi.path, int(fi.size or 0), int(fi.mtime_ns or 0))
            for fi in infos
            if fi.type == pafs.FileType.File and not fi.base_name.startswith(PARTIAL_PREFIX)
        )

    def listing_fingerprint(self, uris: list[str], root: str = "") -> str | None:
        """sha256 of the paths (relative to ``root``), sizes and modification times of every file
        at or under ``uris``: changes when data we did not write does, from listings alone (None
        when there are no files)."""
        stats = [stat for uri in uris for stat in self.file_stats(uri)]
        if not stats:
            return None
        cut = len(root.rstrip("/")) + 1 if root else 0
        return hashlib.sha256(repr([(u[cut:], size, mtime) for u, size, mtime in stats]).encode()).hexdigest()

    def glob(self, pattern: str) -> list[str]:
        """Files matching ``pattern`` (``*`` and ``?`` within a folder name, ``[...]``, ``**/`` any
        folders), local or S3; a pattern without wildcards is a file or a folder (every file in it)."""
        if not any(c in pattern for c in "*?["):
            return self.list_files(pattern)
        parts = pattern.split("/")
        fixed = next(i for i, part in enumerate(parts) if any(c in part for c in "*?["))
        regex = _glob_regex(pattern)
        return [uri for uri in self.list_files("/".join(parts[:fixed])) if regex.fullmatch(uri)]

    def download(self, uri: str, local_dir: str | Path, only: Callable[[list[str]], set[str]] | None = None) -> Path:
        """Copy every file under ``uri`` into ``local_dir``, keeping relative paths; returns it.
        ``only``: given every relative path, the ones to copy."""
        import shutil

        local = Path(local_dir)
        prefix = len(uri.rstrip("/")) + 1
        files = self.list_files(uri)
        wanted = only([f[prefix:] for f in files]) if only else None
        for file_uri in files:
            if wanted is not None and file_uri[prefix:] not in wanted:
                continue
            target = local / file_uri[prefix:]
            target.parent.mkdir(parents=True, exist_ok=True)
            fs, path = self.filesystem(file_uri)
            # streamed in pieces: a model's weight file may be larger than this machine's memory
            with fs.open_input_stream(path, compression=None) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 16 << 20)
        local.mkdir(parents=True, exist_ok=True)
        return local

    # -- writing -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def open_atomic(self, uri: str) -> Iterator[IO[bytes]]:
        """A binary file to write ``uri`` through; the object appears only if the block exits cleanly.

        A crash or exception inside the block leaves the previous version (or nothing) in place.
        """
        loc = parse_uri(uri)
        if loc.scheme == "s3":
            self.check_bucket(loc.bucket)
            with tempfile.TemporaryFile() as spool:
                yield spool
                spool.seek(0)
                self._upload(spool, loc)
            return
        target = Path(loc.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=PARTIAL_PREFIX + target.name + ".")
        try:
            os.fchmod(fd, _FILE_MODE)
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _upload(self, fileobj: IO[bytes], loc: Location) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            # upload_fileobj: one PUT when small, else a multipart upload that S3 only
            # materialises on CompleteMultipartUpload (boto3 aborts it on failure).
            self._client.upload_fileobj(fileobj, loc.bucket, loc.key)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"{loc.uri}: upload failed: {exc}") from None

    def write_bytes(self, uri: str, data: bytes) -> str:
        """Atomically write ``data`` to ``uri``; returns its sha256."""
        with self.open_atomic(uri) as f:
            f.write(data)
        return sha256_bytes(data)

    def write_json(self, uri: str, obj: Any) -> str:
        return self.write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    def delete(self, uri: str) -> None:
        """Delete one object if it exists."""
        fs, path = self.filesystem(uri)
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(path)


def checkpoint_uri(checkpoint) -> str:
    """A Ray Train/Tune checkpoint's location as one of our URIs (its ``path`` has no scheme on S3)."""
    return f"s3://{checkpoint.path}" if checkpoint.filesystem.type_name == "s3" else checkpoint.path
