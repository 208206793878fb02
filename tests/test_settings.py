import pytest

from eventbot.settings import Settings, SettingsError


def test_defaults_need_no_environment() -> None:
    s = Settings.from_env({})
    assert s.partitions == 8
    assert s.namespace == "eventbot"
    assert s.redis_url is None


def test_reads_values() -> None:
    s = Settings.from_env(
        {
            "REDIS_URL": "redis://r:6379/1",
            "DATABASE_URL": "postgresql://u@h/db",
            "EVENTBOT_NAMESPACE": "prod-1",
            "EVENTBOT_PARTITIONS": "16",
            "EVENTBOT_ADMIN_IDS": "1, 2",
            "EVENTBOT_PROJECTOR_BATCH_SIZE": "500",
        }
    )
    assert (s.redis_url, s.namespace, s.partitions, s.admin_ids) == ("redis://r:6379/1", "prod-1", 16, {1, 2})
    assert (s.projector_batch_size, s.batch_size) == (500, Settings().batch_size)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EVENTBOT_PARTITIONS", "zero"),
        ("EVENTBOT_PARTITIONS", "0"),
        ("EVENTBOT_NAMESPACE", "has{brace}"),
        ("REDIS_URL", "localhost:6379"),
        ("DATABASE_URL", "mysql://x/y"),
        ("METRICS_PORT", "70000"),
        ("EVENTBOT_ON_NEW_MESSAGE", "ignore"),
        ("EVENTBOT_ADMIN_IDS", "1,abc"),
        ("EVENTBOT_PROJECTOR_BATCH_SIZE", "0"),
    ],
)
def test_bad_value_fails_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_secret_from_file(tmp_path) -> None:
    f = tmp_path / "token"
    f.write_text("123:abc\n")
    s = Settings.from_env({"TELEGRAM_BOT_TOKEN_FILE": str(f)})
    assert s.telegram_bot_token == "123:abc"
    assert "123:abc" not in repr(s)


def test_secret_file_missing_names_the_variable(tmp_path) -> None:
    with pytest.raises(SettingsError, match="ANTHROPIC_API_KEY_FILE"):
        Settings.from_env({"ANTHROPIC_API_KEY_FILE": str(tmp_path / "nope")})


def test_webhook_needs_a_secret() -> None:
    with pytest.raises(SettingsError, match="TELEGRAM_WEBHOOK_SECRET"):
        Settings.from_env({"TELEGRAM_WEBHOOK_URL": "https://bot.example/hook"})


def test_cli_fails_at_start_naming_the_variable(monkeypatch, capsys) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", "from eventbot.settings import Settings; Settings.from_env()"],
        env={"EVENTBOT_PARTITIONS": "-3", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True,
    )
    assert result.returncode != 0
    assert "EVENTBOT_PARTITIONS" in result.stderr
