"""S3 connection settings the standard AWS way, for obstore.

obstore reads the AWS_* environment variables itself; what it does not read is the AWS
CLI's files, so a profile's keys, token, region and endpoint_url
(`AWS_SHARED_CREDENTIALS_FILE` / `~/.aws/credentials`, `AWS_CONFIG_FILE` /
`~/.aws/config`, `AWS_PROFILE`) are read here. The environment wins over the files;
the pbkfs configuration's endpoint and region win over both.
"""

from __future__ import annotations

import os
from pathlib import Path

from pbkfs.config import StoreConfig
from pbkfs.errors import UsageError

ENV_KEYS = {  # our key: AWS environment variables, first found wins
    "access_key_id": ("AWS_ACCESS_KEY_ID",),
    "secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
    "session_token": ("AWS_SESSION_TOKEN",),
    "region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
    "endpoint": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
}
FILE_KEYS = {  # our key: key in the AWS files
    "access_key_id": "aws_access_key_id",
    "secret_access_key": "aws_secret_access_key",
    "session_token": "aws_session_token",
    "region": "region",
    "endpoint": "endpoint_url",
}


def _profile_sections(path: Path, profile: str, config_file: bool) -> dict[str, str]:
    """The profile's keys of one AWS file (the config file names it `profile NAME`)."""
    if not path.is_file():
        return {}
    import configparser  # only where AWS files are read

    parser = configparser.RawConfigParser()
    try:
        parser.read(path)
    except (configparser.Error, OSError) as exc:
        raise UsageError(f"AWS file {path}: {exc}") from None
    names = [profile]
    if config_file and profile != "default":
        names = [f"profile {profile}", profile]
    for name in names:
        if parser.has_section(name):
            return dict(parser.items(name))
    return {}


def resolve(cfg: StoreConfig, env: dict[str, str] | None = None) -> dict[str, str]:
    """access_key_id, secret_access_key, session_token, region, endpoint: those known."""
    env = dict(os.environ) if env is None else env
    home = Path(env.get("HOME", "~")).expanduser()
    profile = env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default"
    files = _profile_sections(Path(env.get("AWS_CONFIG_FILE") or home / ".aws/config"),
                              profile, config_file=True)
    files.update(_profile_sections(
        Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws/credentials"),
        profile, config_file=False))
    out: dict[str, str] = {}
    for key, names in ENV_KEYS.items():
        value = next((env[n] for n in names if env.get(n)), "") or files.get(FILE_KEYS[key], "")
        if value:
            out[key] = value
    if cfg.endpoint:
        out["endpoint"] = cfg.endpoint
    if cfg.region:
        out["region"] = cfg.region
    if "access_key_id" in out and "secret_access_key" not in out:
        raise UsageError("AWS_ACCESS_KEY_ID is set but no secret access key was found "
                         "(AWS_SECRET_ACCESS_KEY or the AWS credentials file)")
    return out
