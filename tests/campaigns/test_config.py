"""Configuration: a TOML file, each key overridable from the environment (DESIGN.md §3).

The file is `--config FILE`, else the one `CAMPAIGNS_CONFIG` names, else `campaigns.toml`
in the working directory; `CAMPAIGNS_<KEY>` beats the file's `<key>`, unless it is empty.
Expected values are written out by hand here from DESIGN.md and README.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns.config import ConfigError, load_settings

EXE = Path(sys.executable).with_name("campaigns")


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory of the test's own (no campaigns.toml unless a test writes it)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def toml_string(text: str) -> str:
    """A TOML basic string (JSON escapes are TOML escapes; DEL must be escaped too)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


# ------------------------------------------------------------------ in-process


def test_defaults_when_nothing_is_set(
    cwd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    s = load_settings(env={})
    data_dir = tmp_path / "home" / ".local" / "share" / "campaigns"
    assert s.data_dir == data_dir
    assert s.config_file is None
    # The capture transport and a SQLite file, both in the data folder.
    assert s.smtp_url == "" and s.effective_smtp_url == f"maildir://{data_dir}/outbox"
    assert s.database_url == ""
    assert s.effective_database_url == f"sqlite:///{data_dir}/campaigns.db"
    assert s.public_url == "http://127.0.0.1:8080"
    assert (s.smtp_connections, s.send_rate) == (16, 0.0)
    assert (s.soft_bounce_limit, s.soft_bounce_days) == (3, 14)
    assert s.secret_key == "" and s.inbox_url == "" and s.return_domain == ""

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert load_settings(env={}).data_dir == tmp_path / "xdg" / "campaigns"


def test_the_file_in_the_working_directory_is_read_with_its_types(cwd: Path) -> None:
    (cwd / "campaigns.toml").write_text(
        'database_url = "postgresql+psycopg://campaigns@db.example.com/campaigns"\n'
        'smtp_url = "smtp://user:pass@mail.example.com:587?tls=starttls"\n'
        'public_url = "https://news.example.com"\n'
        'sender = "Example Shop <news@example.com>"\n'
        'postal_address = "Example Shop Ltd, 1 Example Street, 12345 Example Town"\n'
        'policy_version = "2026-05"\n'
        'data_dir = "/var/lib/campaigns"\n'
        'return_domain = "bounces.example.com"\n'
        'inbox_url = "maildir:///var/mail/bounces"\n'
        "soft_bounce_limit = 5\n"
        "soft_bounce_days = 30\n"
        "smtp_connections = 4\n"
        "send_rate = 2.5\n",
        encoding="utf-8",
    )
    s = load_settings(env={})
    assert s.config_file == Path("campaigns.toml")
    assert s.database_url == "postgresql+psycopg://campaigns@db.example.com/campaigns"
    assert s.effective_database_url == s.database_url
    assert s.smtp_url == "smtp://user:pass@mail.example.com:587?tls=starttls"
    assert s.effective_smtp_url == s.smtp_url
    assert s.public_url == "https://news.example.com"
    assert s.sender == "Example Shop <news@example.com>"
    assert s.postal_address == "Example Shop Ltd, 1 Example Street, 12345 Example Town"
    assert s.policy_version == "2026-05"
    assert s.data_dir == Path("/var/lib/campaigns") and isinstance(s.data_dir, Path)
    assert s.return_domain == "bounces.example.com"
    assert s.inbox_url == "maildir:///var/mail/bounces"
    assert (s.soft_bounce_limit, s.soft_bounce_days) == (5, 30)
    assert s.smtp_connections == 4 and type(s.smtp_connections) is int
    assert s.send_rate == 2.5 and type(s.send_rate) is float
    # An integer where a float is expected is that float.
    (cwd / "campaigns.toml").write_text("send_rate = 3\n", encoding="utf-8")
    s = load_settings(env={})
    assert s.send_rate == 3.0 and type(s.send_rate) is float


def test_which_file_is_read(cwd: Path, tmp_path: Path) -> None:
    """--config, else CAMPAIGNS_CONFIG, else ./campaigns.toml."""
    (cwd / "campaigns.toml").write_text('sender = "From the working directory <a@example.com>"\n')
    named = tmp_path / "named.toml"
    named.write_text('sender = "From CAMPAIGNS_CONFIG <a@example.com>"\n')
    given_file = tmp_path / "given.toml"
    given_file.write_text('sender = "From --config <a@example.com>"\n')

    s = load_settings(config_file=given_file, env={"CAMPAIGNS_CONFIG": str(named)})
    assert (s.sender, s.config_file) == ("From --config <a@example.com>", given_file)
    s = load_settings(config_file=str(given_file), env={})
    assert s.sender == "From --config <a@example.com>"
    s = load_settings(env={"CAMPAIGNS_CONFIG": str(named)})
    assert (s.sender, s.config_file) == ("From CAMPAIGNS_CONFIG <a@example.com>", named)
    s = load_settings(env={"CAMPAIGNS_CONFIG": ""})
    assert s.sender == "From the working directory <a@example.com>"
    s = load_settings(env={})
    assert s.sender == "From the working directory <a@example.com>"
    # The file is read only once chosen: the others' keys do not leak in.
    named.write_text('reply_to = "named@example.com"\n')
    s = load_settings(config_file=given_file, env={"CAMPAIGNS_CONFIG": str(named)})
    assert s.reply_to == ""


# Every key of README's configuration, with a value for the file and another for the
# environment, and what each becomes.
KEYS = {
    # key: (TOML value, what the file gives, environment value = what it gives)
    "database_url": ('"sqlite:////srv/a.db"', "sqlite:////srv/a.db", "sqlite:////srv/b.db"),
    "smtp_url": ('"smtp://a.example.com:25"', "smtp://a.example.com:25", "smtps://b.example.com"),
    "public_url": ('"https://a.example.com"', "https://a.example.com", "https://b.example.com"),
    "secret_key": ('"key-a"', "key-a", "key-b,key-a"),
    "inbox_url": ('"maildir:///srv/a"', "maildir:///srv/a", "imaps://u:p@b.example.com/INBOX"),
    "return_domain": ('"a.example.com"', "a.example.com", "b.example.com"),
    "sender": ('"A <a@example.com>"', "A <a@example.com>", "B <b@example.com>"),
    "reply_to": ('"a@example.com"', "a@example.com", "b@example.com"),
    "postal_address": ('"1 A Street"', "1 A Street", "2 B Street"),
    "policy_version": ('"2026-01"', "2026-01", "2026-05"),
    "policy_url": ('"https://a.example.com/p"', "https://a.example.com/p", "https://b.test/p"),
    "operator": ('"kim"', "kim", "lea"),
    "brand_name": ('"A Shop"', "A Shop", "B Shop"),
}
TYPED_KEYS = {
    "data_dir": ('"/srv/a"', Path("/srv/a"), "/srv/b", Path("/srv/b")),
    "smtp_connections": ("4", 4, "9", 9),
    "send_rate": ("2.5", 2.5, "10", 10.0),
    "soft_bounce_limit": ("2", 2, "7", 7),
    "soft_bounce_days": ("10", 10, "21", 21),
}


@pytest.mark.parametrize("key", sorted(KEYS))
def test_the_environment_beats_the_file_for_each_key(cwd: Path, key: str) -> None:
    literal, from_file, from_env = KEYS[key]
    (cwd / "campaigns.toml").write_text(f"{key} = {literal}\n", encoding="utf-8")
    variable = "CAMPAIGNS_" + key.upper()
    assert getattr(load_settings(env={}), key) == from_file
    assert getattr(load_settings(env={variable: from_env}), key) == from_env
    # An empty variable is as good as none: the file's value stays.
    assert getattr(load_settings(env={variable: ""}), key) == from_file


@pytest.mark.parametrize("key", sorted(TYPED_KEYS))
def test_typed_keys_are_converted_from_file_and_environment(cwd: Path, key: str) -> None:
    literal, from_file, env_text, from_env = TYPED_KEYS[key]
    (cwd / "campaigns.toml").write_text(f"{key} = {literal}\n", encoding="utf-8")
    variable = "CAMPAIGNS_" + key.upper()
    value = getattr(load_settings(env={}), key)
    assert value == from_file and type(value) is type(from_file)
    value = getattr(load_settings(env={variable: env_text}), key)
    assert value == from_env and type(value) is type(from_env)
    value = getattr(load_settings(env={variable: ""}), key)
    assert value == from_file and type(value) is type(from_file)


def test_effective_urls_follow_an_overridden_data_dir(cwd: Path) -> None:
    (cwd / "campaigns.toml").write_text('data_dir = "/srv/from-file"\n', encoding="utf-8")
    s = load_settings(env={"CAMPAIGNS_DATA_DIR": "/srv/from-env"})
    assert s.effective_database_url == "sqlite:////srv/from-env/campaigns.db"
    assert s.effective_smtp_url == "maildir:///srv/from-env/outbox"
    s = load_settings(env={"CAMPAIGNS_DATA_DIR": "/srv/from-env", "CAMPAIGNS_SMTP_URL": "smtp://h"})
    assert s.effective_smtp_url == "smtp://h"


def test_values_that_are_not_numbers_are_refused_naming_the_key(cwd: Path) -> None:
    for variable, text in [
        ("CAMPAIGNS_SMTP_CONNECTIONS", "many"),
        ("CAMPAIGNS_SEND_RATE", "fast"),
        ("CAMPAIGNS_SMTP_CONNECTIONS", "-1"),
        ("CAMPAIGNS_SEND_RATE", "-0.5"),
    ]:
        key = variable.removeprefix("CAMPAIGNS_").lower()
        with pytest.raises(ConfigError, match=key):
            load_settings(env={variable: text})


@pytest.mark.parametrize("text", ["inf", "nan"])
def test_a_send_rate_that_is_not_a_finite_number_is_refused(cwd: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="send_rate"):
        load_settings(env={"CAMPAIGNS_SEND_RATE": text})


# Display names for a sender: letters of any script, digits, spaces and . - '
NAMES = st.text(
    alphabet=st.characters(whitelist_categories=("L", "Nd"), whitelist_characters=" .-'"),
    max_size=30,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    in_file=st.none() | st.integers(min_value=0, max_value=10**6),
    in_env=st.none() | st.just("") | st.integers(min_value=0, max_value=10**6),
)
def test_smtp_connections_from_file_and_environment(
    cwd: Path, in_file: int | None, in_env: int | str | None
) -> None:
    path = cwd / "campaigns.toml"
    path.write_text("" if in_file is None else f"smtp_connections = {in_file}\n")
    env = {} if in_env is None else {"CAMPAIGNS_SMTP_CONNECTIONS": str(in_env)}
    expected = 16  # the default
    if in_file is not None:
        expected = in_file
    if isinstance(in_env, int):
        expected = in_env
    value = load_settings(env=env).smtp_connections
    assert value == expected and type(value) is int


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    in_file=st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False),
    in_env=st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False),
    sender_file=NAMES.map(lambda n: f"{n} <news@example.com>".strip()),
    sender_env=NAMES.map(lambda n: f"{n} <shop@example.org>".strip()),
)
def test_send_rate_and_sender_from_file_and_environment(
    cwd: Path, in_file: float, in_env: float, sender_file: str, sender_env: str
) -> None:
    (cwd / "campaigns.toml").write_text(
        f"send_rate = {in_file!r}\nsender = {toml_string(sender_file)}\n", encoding="utf-8"
    )
    s = load_settings(env={})
    assert (s.send_rate, s.sender) == (in_file, sender_file)
    s = load_settings(env={"CAMPAIGNS_SEND_RATE": repr(in_env), "CAMPAIGNS_SENDER": sender_env})
    assert (s.send_rate, s.sender) == (in_env, sender_env)


# ------------------------------------------------------------------ the console script


def script_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGNS_")}
    env.pop("XDG_DATA_HOME", None)
    env["HOME"] = str(home / "home")
    env.update(extra)
    return env


def upgrade(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EXE), *args, "db", "upgrade"],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def test_script_environment_beats_the_file(tmp_path: Path) -> None:
    (tmp_path / "campaigns.toml").write_text(
        f'database_url = "sqlite:///{tmp_path}/from-file.db"\ndata_dir = "{tmp_path}/file-data"\n',
        encoding="utf-8",
    )
    env_db = upgrade(
        tmp_path, script_env(tmp_path, CAMPAIGNS_DATABASE_URL=f"sqlite:///{tmp_path}/from-env.db")
    )
    assert env_db.returncode == 0 and env_db.stdout.startswith("created"), env_db
    assert (tmp_path / "from-env.db").is_file()
    assert not (tmp_path / "from-file.db").exists()

    # An empty variable does not override: the file's database is used.
    empty = upgrade(tmp_path, script_env(tmp_path, CAMPAIGNS_DATABASE_URL=""))
    assert empty.returncode == 0 and empty.stdout.startswith("created"), empty
    assert (tmp_path / "from-file.db").is_file()

    # data_dir from the environment beats the file's: the default database goes there.
    (tmp_path / "campaigns.toml").write_text(f'data_dir = "{tmp_path}/file-data"\n')
    data = upgrade(tmp_path, script_env(tmp_path, CAMPAIGNS_DATA_DIR=str(tmp_path / "env-data")))
    assert data.returncode == 0, data
    assert (tmp_path / "env-data" / "campaigns.db").is_file()
    assert not (tmp_path / "file-data").exists()


def test_script_reads_config_option_then_campaigns_config_then_cwd(tmp_path: Path) -> None:
    for name in ("option", "variable", "cwd"):
        path = tmp_path / ("campaigns.toml" if name == "cwd" else f"{name}.toml")
        path.write_text(f'database_url = "sqlite:///{tmp_path}/{name}.db"\n', encoding="utf-8")
    env = script_env(tmp_path, CAMPAIGNS_CONFIG=str(tmp_path / "variable.toml"))

    first = upgrade(tmp_path, env, "--config", str(tmp_path / "option.toml"))
    assert first.returncode == 0, first
    assert [p.name for p in sorted(tmp_path.glob("*.db"))] == ["option.db"]
    second = upgrade(tmp_path, env)
    assert second.returncode == 0, second
    assert [p.name for p in sorted(tmp_path.glob("*.db"))] == ["option.db", "variable.db"]
    third = upgrade(tmp_path, script_env(tmp_path))
    assert third.returncode == 0, third
    assert [p.name for p in sorted(tmp_path.glob("*.db"))] == ["cwd.db", "option.db", "variable.db"]


def test_script_default_database_is_in_the_default_data_dir(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    run = upgrade(tmp_path, script_env(tmp_path))
    assert run.returncode == 0 and run.stdout.startswith("created"), run
    assert (tmp_path / "home" / ".local" / "share" / "campaigns" / "campaigns.db").is_file()
    assert list(tmp_path.glob("*.db")) == []


@pytest.mark.parametrize("literal", ["2.9", "true"])
def test_a_whole_number_key_refuses_fractions_and_booleans(cwd: Path, literal: str) -> None:
    (cwd / "campaigns.toml").write_text(f"smtp_connections = {literal}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="smtp_connections"):
        load_settings(env={})


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        # Each of these reached every message's headers or pages before (issue 15).
        (
            "RETURN_DOMAIN",
            "b.example\r\nBcc: a@b.example",
            "CAMPAIGNS_RETURN_DOMAIN: must be one line",
        ),
        ("RETURN_DOMAIN", "b.example>, <mailto:evil@evil.example", "is not a domain name"),
        ("RETURN_DOMAIN", "bounces example.com", "is not a domain name"),
        ("PUBLIC_URL", "javascript:alert(1)//", "is not an http:// or https:// address"),
        ("PUBLIC_URL", "https://", "is not an http:// or https:// address"),
        ("POLICY_URL", "ftp://example.com/policy", "CAMPAIGNS_POLICY_URL: is not an http://"),
        ("SENDER", "Shop <news@example.com>\r\nBcc: x@evil.example", "must be one line"),
        ("SENDER", "news@example.com, other@example.com", "is not one email address"),
        ("SENDER", "Shop", "is not one email address"),
        ("REPLY_TO", "help@example.com\nX-Injected: 1", "CAMPAIGNS_REPLY_TO: must be one line"),
        ("POSTAL_ADDRESS", "1 Street\x00", "must be one line"),
        ("DKIM_DOMAIN", "example..com", "is not a domain name"),
    ],
)
def test_values_that_would_reach_headers_or_pages_are_refused(
    cwd: Path, variable: str, value: str, says: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env={f"CAMPAIGNS_{variable}": value})
    message = str(caught.value)
    assert says in message and "\n" not in message and "\r" not in message


def test_a_bad_value_in_the_file_names_the_key_and_the_file(cwd: Path) -> None:
    (cwd / "campaigns.toml").write_text('return_domain = "bounces .example.com"\n')
    with pytest.raises(ConfigError, match=r"^return_domain in campaigns.toml: is not a domain"):
        load_settings(env={})


def test_good_values_pass(cwd: Path) -> None:
    s = load_settings(
        env={
            "CAMPAIGNS_RETURN_DOMAIN": "Bounces.Example-Shop.co.uk",
            "CAMPAIGNS_PUBLIC_URL": "https://news.example.com:8443/base",
            "CAMPAIGNS_SENDER": '"Shop, Inc." <news@example.com>',
            "CAMPAIGNS_REPLY_TO": "help@example.com",
            "CAMPAIGNS_POLICY_URL": "http://example.com/privacy",
        }
    )
    assert s.return_domain == "Bounces.Example-Shop.co.uk"


def test_unknown_campaigns_variables_are_refused_like_unknown_keys(cwd: Path) -> None:
    with pytest.raises(ConfigError, match=r"^unknown environment variable CAMPAIGNS_SMTP_ULR "):
        load_settings(env={"CAMPAIGNS_SMTP_ULR": "smtp://x"})
    # The file to read, tracebacks and the test suite's own are not settings.
    load_settings(env={"CAMPAIGNS_DEBUG": "1", "CAMPAIGNS_TEST_POSTGRES_URL": "x"})


def test_a_data_dir_that_is_a_file_is_refused(cwd: Path) -> None:
    (cwd / "afile").write_text("x")
    with pytest.raises(ConfigError, match=r"^CAMPAIGNS_DATA_DIR: is not a directory"):
        load_settings(env={"CAMPAIGNS_DATA_DIR": str(cwd / "afile")})


def test_the_script_says_one_line_and_exits_2(tmp_path: Path) -> None:
    env = script_env(tmp_path, CAMPAIGNS_RETURN_DOMAIN="b.example\r\nBcc: a@b.example")
    done = upgrade(tmp_path, env)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "CAMPAIGNS_RETURN_DOMAIN: must be one line" in done.stderr
