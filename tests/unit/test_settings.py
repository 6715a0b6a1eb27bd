import pytest

from services.common.settings import Settings, SettingsError

SECRET = "s" * 32


def test_defaults_match_the_public_contract() -> None:
    settings = Settings.from_env("inventory", {"LC_JWT_SECRET": SECRET})
    assert settings.http_port == 8082
    assert settings.kafka_bootstrap == "localhost:9092"
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.reservation_ttl_s == 900
    assert settings.topic_prefix == "lc."
    assert Settings.from_env("live_orders", {"LC_JWT_SECRET": SECRET}).http_port == 8081
    assert Settings.from_env("notifier", {"LC_JWT_SECRET": SECRET}).http_port == 8083


def test_missing_secret_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="LC_JWT_SECRET is required"):
        Settings.from_env("notifier", {})


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LC_NOTIFIER_PORT", "eighty"),
        ("LC_NOTIFIER_PORT", "-1"),
        ("LC_RESERVATION_TTL_S", "-5"),
        ("LC_REDIS_URL", "localhost:6379"),
        ("LC_TOPIC_PARTITIONS", "0"),
        ("LC_LOG_LEVEL", "LOUD"),
        ("LC_JWT_SECRET", "   "),
        ("LC_BODY_READ_TIMEOUT_S", "0"),
        ("LC_BODY_READ_TIMEOUT_S", "soon"),
    ],
)
def test_malformed_values_name_the_variable(variable: str, value: str) -> None:
    env = {"LC_JWT_SECRET": SECRET, variable: value}
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env("notifier", env)


def test_values_are_parsed() -> None:
    env = {
        "LC_JWT_SECRET": SECRET,
        "LC_NOTIFIER_PORT": "9999",
        "LC_ALLOWED_ORIGINS": "https://a.example, https://b.example",
        "LC_RESERVATION_TTL_S": "2.5",
        "LC_BODY_READ_TIMEOUT_S": "1.5",
    }
    settings = Settings.from_env("notifier", env)
    assert settings.body_read_timeout_s == 1.5
    assert Settings.from_env("notifier", {"LC_JWT_SECRET": SECRET}).body_read_timeout_s == 5.0
    assert settings.http_port == 9999
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.reservation_ttl_s == 2.5


def test_settings_are_frozen() -> None:
    settings = Settings.from_env("notifier", {"LC_JWT_SECRET": SECRET})
    with pytest.raises(AttributeError):
        settings.http_port = 1  # type: ignore[misc]
