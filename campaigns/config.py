"""Configuration: a TOML file, each key overridable from the environment (DESIGN.md §3).

The file is `--config`, else `CAMPAIGNS_CONFIG`, else `campaigns.toml` in the working
directory, else none. A key `smtp_url` in the file is `CAMPAIGNS_SMTP_URL` in the
environment, and the environment wins.
"""

from __future__ import annotations

import email.utils
import math
import os
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

from campaigns import addresses

ENV_PREFIX = "CAMPAIGNS_"


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line for the user."""


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "campaigns"


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(default_factory=_default_data_dir)
    database_url: str = ""
    smtp_url: str = ""
    public_url: str = "http://127.0.0.1:8080"
    # Comma-separated: the first signs, all verify (so keys can be rotated).
    secret_key: str = ""
    inbox_url: str = ""
    return_domain: str = ""
    sender: str = "Campaigns <marketing@example.com>"
    reply_to: str = ""
    postal_address: str = "Example Ltd, 1 Example Street, Example Town"
    policy_version: str = "1"
    policy_url: str = ""
    send_rate: float = 0.0
    # Each connection has one message in flight and each message is recorded before it
    # goes, so more connections share each commit: 16 sent ~25% more than 8 into Postfix's
    # smtp-sink here (bench/README.md, send.py). A relay may allow fewer per client.
    smtp_connections: int = 16
    # Who records operator consent changes when --operator is not given.
    operator: str = ""
    # Soft bounces that suppress an address within the window (issue 6).
    soft_bounce_limit: int = 3
    soft_bounce_days: int = 14
    # A send holds back a receiving domain that keeps blocking us: once this many of
    # its refusals in one run are blocks and they are at least this share of the run's
    # attempts there (issue 14). `campaigns campaign release` lets them go on.
    block_hold_count: int = 20
    block_hold_share: float = 0.05
    brand_name: str = "Campaigns"
    # Optional DKIM signing: all three set turns it on.
    dkim_selector: str = ""
    dkim_domain: str = ""
    dkim_key_path: str = ""
    # Temporary SMTP failures: first retry after this many seconds, doubling each time,
    # until max_attempts; a send waits in-process for retries due within retry_wait.
    retry_delay: float = 30.0
    max_attempts: int = 5
    retry_wait: float = 120.0
    config_file: Path | None = None

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'campaigns.db'}"

    @property
    def effective_smtp_url(self) -> str:
        return self.smtp_url or f"maildir://{self.data_dir / 'outbox'}"

    @property
    def effective_operator(self) -> str:
        return self.operator or os.environ.get("USER") or "operator"


_CONVERTERS = {
    "data_dir": Path,
    "send_rate": float,
    "smtp_connections": int,
    "soft_bounce_limit": int,
    "soft_bounce_days": int,
    "block_hold_count": int,
    "block_hold_share": float,
    "retry_delay": float,
    "max_attempts": int,
    "retry_wait": float,
}


def _convert(name: str, value: object) -> object:
    conv = _CONVERTERS.get(name, str)
    bad = ConfigError(f"configuration key {name!r} has a bad value: {value!r}")
    # TOML gives typed values: a fraction or a boolean for a count is a mistake, never
    # a number to truncate (int(2.9) == 2, int(True) == 1).
    if conv in (int, float) and isinstance(value, bool):
        raise bad
    if conv is int and isinstance(value, float):
        raise bad
    try:
        result = conv(value)  # type: ignore[operator]
    except (TypeError, ValueError) as exc:
        raise bad from exc
    if isinstance(result, float) and not math.isfinite(result):
        raise ConfigError(f"configuration key {name!r} must be a finite number: {value!r}")
    if name in {"send_rate", "smtp_connections", "retry_delay", "retry_wait"} and result < 0:  # type: ignore[operator]
        raise ConfigError(f"configuration key {name!r} must not be negative")
    at_least_one = {"soft_bounce_limit", "soft_bounce_days", "max_attempts", "block_hold_count"}
    if name in at_least_one and result < 1:  # type: ignore[operator]
        raise ConfigError(f"configuration key {name!r} must be at least 1")
    if name == "block_hold_share" and not 0 <= result <= 1:  # type: ignore[operator]
        raise ConfigError(f"configuration key {name!r} must be between 0 and 1")
    return result


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
) -> Settings:
    """Read the TOML file (if any) and apply environment overrides."""
    env = dict(os.environ) if env is None else env
    path: Path | None = None
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"configuration file not found: {path}")
    elif env.get("CAMPAIGNS_CONFIG"):
        path = Path(env["CAMPAIGNS_CONFIG"])
        if not path.is_file():
            raise ConfigError(f"CAMPAIGNS_CONFIG names a missing file: {path}")
    elif Path("campaigns.toml").is_file():
        path = Path("campaigns.toml")

    known = {f.name for f in fields(Settings)} - {"config_file"}
    values: dict[str, object] = {}
    origin: dict[str, str] = {}  # where each value came from, for the error line
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read configuration {path}: {exc}") from exc
        for key, value in data.items():
            if key not in known:
                raise ConfigError(f"unknown configuration key {key!r} in {path}")
            values[key] = _convert(key, value)
            origin[key] = f"{key} in {path}"
    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and name not in _OTHER_VARIABLES:
            key = name[len(ENV_PREFIX) :].lower()
            if key not in known and not name.startswith(_TEST_PREFIX):
                raise ConfigError(f"unknown environment variable {name} (see the README)")
    for key in known:
        env_value = env.get(ENV_PREFIX + key.upper())
        if env_value is not None and env_value != "":
            values[key] = _convert(key, env_value)
            origin[key] = ENV_PREFIX + key.upper()
    settings = Settings(**values, config_file=path)  # type: ignore[arg-type]
    for key, problem in _problems(settings):
        where = origin.get(key, f"{key} (default)")
        raise ConfigError(f"{where}: {problem}")
    return settings


# CAMPAIGNS_* variables that are no setting: the file to read, and tracebacks.
_OTHER_VARIABLES = frozenset({"CAMPAIGNS_CONFIG", "CAMPAIGNS_DEBUG"})
# Reserved for the test suite (CAMPAIGNS_TEST_POSTGRES_URL ...).
_TEST_PREFIX = "CAMPAIGNS_TEST_"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Settings that end up in message headers, URLs or pages: one line of text each.
_ONE_LINE = (
    "public_url",
    "return_domain",
    "sender",
    "reply_to",
    "postal_address",
    "policy_version",
    "policy_url",
    "operator",
    "brand_name",
    "dkim_selector",
    "dkim_domain",
)


def _problems(s: Settings) -> Iterator[tuple[str, str]]:
    """What is wrong with the settings, as (key, one line); nothing if all is well."""
    for key in _ONE_LINE:
        if _CONTROL.search(str(getattr(s, key))):
            yield key, "must be one line of text (it holds a line break or control character)"
    for key in ("return_domain", "dkim_domain"):
        value = str(getattr(s, key))
        if value and not addresses.is_domain(value):
            yield key, f"is not a domain name: {value!r}"
    for key, required in (("sender", True), ("reply_to", False)):
        value = str(getattr(s, key))
        if not value and not required:
            continue
        _name, address = email.utils.parseaddr(value)
        if not address or not addresses.is_valid(address) or value.count("@") != 1:
            yield key, f"is not one email address (like 'Shop <news@shop.example>'): {value!r}"
    for key, required in (("public_url", True), ("policy_url", False)):
        value = str(getattr(s, key))
        if not value and not required:
            continue
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or " " in value:
            yield key, f"is not an http:// or https:// address: {value!r}"
    if s.data_dir.exists() and not s.data_dir.is_dir():
        yield "data_dir", f"is not a directory: {s.data_dir}"
