"""The storage layer against real local disk and a real S3 server: round trips, atomicity,
clear errors for missing buckets, wrong credentials and bad URIs."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from aigc_ray.manifest import Manifest, read_manifest, write_manifest
from aigc_ray.storage import PARTIAL_PREFIX, S3Settings, Storage, StorageError, parse_uri


@pytest.fixture(scope="module")
def s3(s3_server):
    bucket = s3_server.make_bucket("aigc-storage")
    return Storage(S3Settings(s3_server.endpoint, s3_server.region)), f"s3://{bucket}"


@pytest.fixture(params=["local", "s3"])
def place(request, tmp_path):
    """(storage, base URI) on local disk and on the S3 server, so each test runs on both."""
    if request.param == "local":
        return Storage(), str(tmp_path)
    storage, bucket_uri = request.getfixturevalue("s3")
    return storage, f"{bucket_uri}/{request.node.name}"


def test_round_trip_and_listing(place):
    storage, base = place
    storage.write_bytes(f"{base}/a/x.bin", b"hello")
    storage.write_json(f"{base}/a/b/y.json", {"k": 1})
    assert storage.read_bytes(f"{base}/a/x.bin") == b"hello"
    assert storage.read_json(f"{base}/a/b/y.json") == {"k": 1}
    assert storage.exists(f"{base}/a/x.bin") and not storage.exists(f"{base}/a/none")
    assert storage.list_files(f"{base}/a") == [f"{base}/a/b/y.json", f"{base}/a/x.bin"]
    assert storage.list_files(f"{base}/a", suffix=".bin") == [f"{base}/a/x.bin"]
    storage.delete(f"{base}/a/x.bin")
    assert not storage.exists(f"{base}/a/x.bin")
    with pytest.raises(StorageError, match="no such object"):
        storage.read_bytes(f"{base}/a/x.bin")


def test_an_object_named_like_a_compressed_file_reads_as_stored(place):
    """pyarrow decompresses by a name's suffix unless told not to: a .gz object must read as the
    bytes written (its size and checksum are the object's; the corpus import decompresses)."""
    import gzip

    storage, base = place
    packed = gzip.compress(b"some text")
    storage.write_bytes(f"{base}/c4.json.gz", packed)
    assert storage.read_bytes(f"{base}/c4.json.gz") == packed


def test_failed_write_keeps_previous_version(place):
    storage, base = place
    uri = f"{base}/model.bin"
    storage.write_bytes(uri, b"version-1")
    with pytest.raises(RuntimeError, match="boom"):
        with storage.open_atomic(uri) as f:
            f.write(b"version-2 half")
            raise RuntimeError("boom")
    assert storage.read_bytes(uri) == b"version-1"
    assert storage.list_files(base) == [uri]


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from aigc_ray.storage import S3Settings, Storage
    uri, ready, endpoint = sys.argv[1], sys.argv[2], sys.argv[3] or None
    storage = Storage(S3Settings(endpoint, "us-east-1"))
    with storage.open_atomic(uri) as f:
        f.write(b"x" * 1_000_000)
        f.flush()
        open(ready, "w").close()
        time.sleep(120)
        f.write(b"never")
    """
)


def test_write_killed_midway_leaves_no_partial_object(place, tmp_path, tmp_path_factory):
    storage, base = place
    uri = f"{base}/weights.safetensors"
    storage.write_bytes(uri, b"complete-v1")
    ready = tmp_path_factory.mktemp("signal") / "ready"
    endpoint = storage.s3.endpoint_url if uri.startswith("s3://") else ""
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, uri, str(ready), endpoint or ""])
    deadline = time.time() + 60
    while not ready.exists():
        assert proc.poll() is None, "writer exited early"
        assert time.time() < deadline, "writer never started writing"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert storage.read_bytes(uri) == b"complete-v1"
    assert storage.list_files(base) == [uri]
    if not uri.startswith("s3://"):  # the hidden temp file may remain; it is never listed or read
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(PARTIAL_PREFIX)]
        assert all("weights.safetensors" in name for name in leftovers)


def test_missing_bucket_is_named(s3_server):
    storage = Storage(S3Settings(s3_server.endpoint, s3_server.region))
    with pytest.raises(StorageError, match=r"s3://no-such-bucket: bucket does not exist at http://127\.0\.0\.1"):
        storage.write_bytes("s3://no-such-bucket/x", b"1")
    with pytest.raises(StorageError, match="no-such-bucket: bucket does not exist"):
        storage.read_bytes("s3://no-such-bucket/x")


@pytest.mark.parametrize("key_id", ["AKIAWRONGWRONGWRONG", None])
def test_wrong_credentials_are_refused_clearly(s3, s3_server, monkeypatch, key_id):
    _, bucket_uri = s3
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id or s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    storage = Storage(S3Settings(s3_server.endpoint, s3_server.region))
    with pytest.raises(StorageError, match="access denied .* check the AWS credentials"):
        storage.read_bytes(f"{bucket_uri}/anything")


def test_unreachable_endpoint_is_named():
    from conftest import free_port

    storage = Storage(S3Settings(f"http://127.0.0.1:{free_port()}", "us-east-1"))
    with pytest.raises(StorageError, match="cannot connect to the S3 endpoint"):
        storage.exists("s3://bucket/x")


def test_endpoint_from_the_standard_aws_variable(s3, s3_server, monkeypatch):
    _, bucket_uri = s3
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    storage = Storage()  # nothing from a spec: the standard AWS chain and variables only
    storage.write_bytes(f"{bucket_uri}/env/x", b"via env")
    assert storage.read_bytes(f"{bucket_uri}/env/x") == b"via env"


def test_uri_parsing():
    assert parse_uri("s3://b/k/x").bucket == "b" and parse_uri("s3://b/k/x").key == "k/x"
    assert parse_uri("file:///tmp/x").path == "/tmp/x"
    assert parse_uri("rel/dir").path.endswith("/rel/dir")
    with pytest.raises(StorageError, match="unsupported URI scheme"):
        parse_uri("gs://bucket/x")
    with pytest.raises(StorageError, match="needs a bucket"):
        parse_uri("s3://")


def test_manifest_round_trip_and_corruption(place):
    storage, base = place
    assert read_manifest(storage, f"{base}/art") is None
    m = Manifest(kind="test", spec_hash="abc", inputs={"s3://x": "f1"})
    write_manifest(storage, f"{base}/art", m)
    got = read_manifest(storage, f"{base}/art")
    assert got.kind == "test" and got.inputs == {"s3://x": "f1"} and got.code_version.startswith("0.1.0")
    assert got.created_at.endswith("Z") and got.fingerprint == m.fingerprint
    storage.write_bytes(f"{base}/art/_manifest.json", b'{"kind": 3}')
    with pytest.raises(StorageError, match="corrupt manifest"):
        read_manifest(storage, f"{base}/art")


# -- S3 multipart uploads that fail midway -------------------------------------------------------

MB = 1024 * 1024
POLICY = '{"Version":"2012-10-17","Statement":[{"Effect":"%s","Action":"%s","Resource":"*"}]}'
WRITE_ACTIONS = ["s3:PutObject", "s3:UploadPart", "s3:CompleteMultipartUpload"]


class FailingSource(io.BytesIO):
    """A seekable source whose reads fail once they would pass ``fail_at`` bytes (a disk error
    under the spool), after ``stalled()`` returns: the upload reads it one part at a time and
    sends the parts already read meanwhile."""

    def __init__(self, data: bytes, fail_at: int, stalled=lambda: None):
        super().__init__(data)
        self.fail_at, self.stalled = fail_at, stalled

    def read(self, size: int | None = -1) -> bytes:
        end = len(self.getbuffer()) if size is None or size < 0 else self.tell() + size
        if end > self.fail_at:
            self.stalled()
            raise OSError(5, "Input/output error reading the spool")
        return super().read(size)


def _query(url: str) -> dict[str, str]:
    from urllib.parse import parse_qsl, urlsplit

    return dict(parse_qsl(urlsplit(url).query))


@pytest.fixture
def own_user(s3_server, monkeypatch):
    """A Storage signed by a fresh IAM user of the S3 server (allowed everything), so a policy
    change for it touches no other test: (storage, user name, admin IAM client)."""
    import uuid

    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=s3_server.endpoint,
        region_name=s3_server.region,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
    )
    user = f"multipart-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=POLICY % ("Allow", "*"))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    yield Storage(S3Settings(s3_server.endpoint, s3_server.region)), user, iam
    for name in iam.list_user_policies(UserName=user)["PolicyNames"]:
        iam.delete_user_policy(UserName=user, PolicyName=name)
    iam.delete_access_key(UserName=user, AccessKeyId=key["AccessKeyId"])
    iam.delete_user(UserName=user)


@pytest.mark.parametrize("failure", ["source", "server"])
def test_s3_multipart_write_failing_midway_keeps_previous_object(s3, s3_server, own_user, failure):
    """A multipart upload that fails after its first part leaves the previous object whole and no
    incomplete upload behind (S3 bills stored parts of an upload nobody completes or aborts)."""
    storage, user, iam = own_user
    bucket = s3[1].removeprefix("s3://")
    key = f"multipart-{failure}/model.safetensors"
    uri = f"s3://{bucket}/{key}"
    admin = s3_server.client()
    first = os.urandom(9 * MB)  # over boto3's 8 MiB threshold: a 2-part upload
    storage.write_bytes(uri, first)
    assert admin.head_object(Bucket=bucket, Key=key)["ETag"].strip('"').endswith("-2")  # multipart, 2 parts

    second = os.urandom(30 * MB)  # 4 parts of 8 MiB
    stored: list[dict] = []  # query strings of the parts the server accepted before the failure
    storage._client.meta.events.register(
        "after-call.s3.UploadPart",
        lambda http_response, **_: http_response.status_code == 200 and stored.append(_query(http_response.url)),
    )
    if failure == "source":
        # The source breaks while part 3 is read (after parts 1 and 2 were handed to the uploader):
        # exactly the call open_atomic makes with its spool once the block exits.
        def until_a_part_is_stored():
            deadline = time.time() + 60
            while not stored and time.time() < deadline:
                time.sleep(0.05)

        with pytest.raises(OSError, match="Input/output error"):
            storage._upload(FailingSource(second, 20 * MB, until_a_part_is_stored), parse_uri(uri))
    else:
        # The server refuses the upload midway: once part 1 is stored, the user loses s3:PutObject
        # (UploadPart, CompleteMultipartUpload) but keeps AbortMultipartUpload.
        lock, denied = threading.Lock(), []

        def refuse_later_parts(request, **_):
            query = _query(request.url)
            if int(query["partNumber"]) == 1:
                return
            with lock:
                if denied:
                    return
                deadline = time.time() + 60
                while not admin.list_parts(Bucket=bucket, Key=key, UploadId=query["uploadId"]).get("Parts"):
                    assert time.time() < deadline, "part 1 was never stored"
                    time.sleep(0.05)
                # AWS authorises UploadPart and CompleteMultipartUpload as s3:PutObject; moto 5.2.6
                # checks them under their own names: the write is denied by every name
                no_put = {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Deny", "Action": WRITE_ACTIONS, "Resource": "*"}],
                }
                iam.put_user_policy(UserName=user, PolicyName="no-put", PolicyDocument=json.dumps(no_put))
                denied.append(True)

        storage._client.meta.events.register("before-send.s3.UploadPart", refuse_later_parts)
        with pytest.raises(StorageError, match=rf"{uri}: upload failed: .*AccessDenied.*UploadPart"):
            storage.write_bytes(uri, second)
        assert denied
    # The failure came midway: the server held part of the new version, not all of it.
    assert 1 in [int(q["partNumber"]) for q in stored] and len(stored) < 4
    assert storage.read_bytes(uri) == first
    assert admin.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", []) == []
    assert storage.list_files(f"s3://{bucket}/multipart-{failure}") == [uri]
