import pytest

from pm25.settings import Secret, Settings, SettingsError


def test_defaults_and_env():
    s = Settings.from_env({})
    assert s.bootstrap_servers == "127.0.0.1:9092" and s.readings_topic == "pm25.readings"
    s = Settings.from_env({"PM25_BOOTSTRAP_SERVERS": "kafka:29092", "PM25_PARTITIONS": "8"})
    assert s.bootstrap_servers == "kafka:29092" and s.partitions == 8


def test_cli_overrides_env():
    s = Settings.from_env({"PM25_BOOTSTRAP_SERVERS": "a:1"}, bootstrap_servers="b:2", readings_topic=None)
    assert s.bootstrap_servers == "b:2" and s.readings_topic == "pm25.readings"


@pytest.mark.parametrize(
    "env",
    [
        {"PM25_BOOTSTRAP_SERVERS": "nohostport"},
        {"PM25_PARTITIONS": "many"},
        {"PM25_SECURITY_PROTOCOL": "TLS9"},
        {"PM25_SECURITY_PROTOCOL": "SASL_SSL"},  # no credentials
    ],
)
def test_invalid_settings_raise(env):
    with pytest.raises(SettingsError):
        Settings.from_env(env)


def test_secrets_never_printed():
    s = Settings.from_env(
        {
            "PM25_SECURITY_PROTOCOL": "SASL_SSL",
            "PM25_SASL_MECHANISM": "SCRAM-SHA-512",
            "PM25_SASL_USERNAME": "u",
            "PM25_SASL_PASSWORD": "hunter2",
        }
    )
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.sasl_password)
    assert isinstance(s.sasl_password, Secret) and s.sasl_password.reveal() == "hunter2"
    assert s.kafka_python_security()["sasl_plain_password"] == "hunter2"
