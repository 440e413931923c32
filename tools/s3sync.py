"""Upload a directory tree (a pg_probackup catalog) to S3, keeping relative paths.

    python -m tools.s3sync SRC_DIR s3://BUCKET/PREFIX [--endpoint URL] [--region R] [--jobs N]

Like `aws s3 sync` without --delete and without comparing: every regular file under SRC_DIR
is put to PREFIX/RELATIVE/PATH, in parallel. A catalog holds only directories and regular
files, so anything else (a symlink, a socket, ...) is an error naming its path, found before
anything is uploaded. Credentials and the endpoint come from the environment the standard AWS
way (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION or
AWS_DEFAULT_REGION, AWS_ENDPOINT_URL); --endpoint and --region override them, and a plain
http:// endpoint is allowed. Prints one summary line; exits 1 with a message on any error.
"""

from __future__ import annotations

import os
import re
import stat
import sys
import time
from collections.abc import Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

DEFAULT_JOBS = 8


class SyncError(Exception):
    """A reason to stop, worded for the user."""


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, prefix without slashes at either end) of s3://BUCKET[/PREFIX]."""
    if not url.startswith("s3://"):
        raise SyncError(f"destination must be s3://BUCKET/PREFIX, not {url!r}")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not bucket:
        raise SyncError(f"no bucket in {url!r}")
    return bucket, prefix.strip("/")


def regular_files(src: Path) -> list[Path]:
    """Every regular file under `src`, sorted; SyncError on anything but files and dirs."""
    if not src.is_dir():
        raise SyncError(f"{src}: not a directory")
    found: list[Path] = []
    pending = [src]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISDIR(mode):
                    pending.append(Path(entry.path))
                elif stat.S_ISREG(mode):
                    found.append(Path(entry.path))
                else:
                    raise SyncError(f"{entry.path}: not a regular file or directory "
                                    f"({describe(mode)}); a catalog holds only those")
    return sorted(found)


def describe(mode: int) -> str:
    kinds = {stat.S_ISLNK: "symlink", stat.S_ISSOCK: "socket", stat.S_ISFIFO: "fifo",
             stat.S_ISCHR: "character device", stat.S_ISBLK: "block device"}
    return next((name for test, name in kinds.items() if test(mode)), "unknown type")


def store_options(env: Mapping[str, str], endpoint: str | None,
                  region: str | None) -> dict[str, Any]:
    """S3Store keyword arguments from AWS_* variables, --endpoint and --region."""
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret:
        raise SyncError("no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    opts: dict[str, Any] = {"access_key_id": key, "secret_access_key": secret}
    if env.get("AWS_SESSION_TOKEN"):
        opts["session_token"] = env["AWS_SESSION_TOKEN"]
    region = region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        opts["region"] = region
    endpoint = endpoint or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    allow_http = env.get("AWS_ALLOW_HTTP", "").lower() == "true"
    if endpoint:
        opts["endpoint"] = endpoint
        allow_http = allow_http or endpoint.startswith("http://")
    opts["client_options"] = {"allow_http": allow_http, "connect_timeout": timedelta(seconds=10),
                              "timeout": timedelta(minutes=5)}
    opts["retry_config"] = {"max_retries": 5, "retry_timeout": timedelta(minutes=2)}
    return opts


def make_store(bucket: str, env: Mapping[str, str], endpoint: str | None = None,
               region: str | None = None) -> Any:
    """An obstore S3Store for `bucket` (obstore imported here: --help stays fast)."""
    from obstore.store import S3Store

    return S3Store(bucket, **store_options(env, endpoint, region))


def short_error(exc: BaseException) -> str:
    """One line from an obstore error: the S3 error code and message when there is one."""
    text = str(exc).split("\n\nDebug source:", 1)[0]
    doc = re.search(r"<Code>(.*?)</Code>.*?<Message>(.*?)</Message>", text, re.S)
    status = re.search(r"status code: (\d{3})", text)
    if doc:
        return f"HTTP {status.group(1) if status else '?'} {doc.group(1)}: {doc.group(2)}"
    return " ".join(text.split())[:500]


def object_key(prefix: str, src: Path, path: Path) -> str:
    rel = path.relative_to(src).as_posix()
    return f"{prefix}/{rel}" if prefix else rel


def sync_dir(src: Path, url: str, env: Mapping[str, str] | None = None, *,
             endpoint: str | None = None, region: str | None = None,
             jobs: int = DEFAULT_JOBS) -> tuple[int, int]:
    """Upload every regular file under `src` to `url`; (files, bytes). SyncError on failure.

    `env` stands for os.environ (the AWS_* variables), which it defaults to.
    """
    import obstore

    bucket, prefix = parse_url(url)
    files = regular_files(src)
    store = make_store(bucket, os.environ if env is None else env, endpoint, region)

    def upload(path: Path) -> int:
        key = object_key(prefix, src, path)
        try:
            size = path.stat().st_size
            obstore.put(store, key, path)
        except Exception as e:
            raise SyncError(f"{path}: upload to s3://{bucket}/{key} failed: "
                            f"{short_error(e)}") from e
        return size

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures: list[Future[int]] = [pool.submit(upload, p) for p in files]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if f.exception() is not None]
        if failed:
            pool.shutdown(cancel_futures=True)
            failed[0].result()
        return len(files), sum(f.result() for f in futures)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("url")
@click.option("--endpoint", help="S3 endpoint URL (default: $AWS_ENDPOINT_URL, else AWS).")
@click.option("--region", help="Region (default: $AWS_REGION or $AWS_DEFAULT_REGION).")
@click.option("--jobs", "-j", default=DEFAULT_JOBS, show_default=True, help="Parallel uploads.")
def main(src: Path, url: str, endpoint: str | None, region: str | None, jobs: int) -> None:
    """Upload every regular file under SRC to s3://BUCKET/PREFIX with the same relative path."""
    t0 = time.monotonic()
    try:
        files, size = sync_dir(src, url, endpoint=endpoint, region=region, jobs=jobs)
    except SyncError as e:
        raise click.ClickException(str(e)) from e
    secs = time.monotonic() - t0
    click.echo(f"s3sync: {files} files, {size} bytes in {secs:.2f} s "
               f"({size / 1e6 / max(secs, 1e-9):.1f} MB/s) to {url}")


if __name__ == "__main__":
    sys.exit(main())
