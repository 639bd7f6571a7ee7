from __future__ import annotations

from pathlib import Path

import pytest

from stack.settings import ConfigError, env_overrides, load_settings


def test_base_config_loads_with_every_service_address_unset() -> None:
    s = load_settings(environ={})
    assert s.kafka.bootstrap_servers is None
    assert s.postgres.url is None
    assert s.mlflow.tracking_uri is None
    assert s.simulator.start.utcoffset() is not None


def test_env_overrides_nest_and_parse_yaml_scalars() -> None:
    s = load_settings(
        environ={
            "VIGIL__KAFKA__BOOTSTRAP_SERVERS": "kafka-1:9092,kafka-2:9092",
            "VIGIL__SIMULATOR__PATIENTS": "12",
            "VIGIL__SIMULATOR__FAULTS__LATE": "0.5",
            "VIGIL__LANDING__DEAD_LETTERS_TO_TOPIC": "false",
            "UNRELATED": "ignored",
        }
    )
    assert s.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert s.simulator.patients == 12
    assert s.simulator.faults.late == 0.5
    assert s.landing.dead_letters_to_topic is False


def test_a_typo_in_an_env_override_fails_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap_server: unknown key"):
        load_settings(environ={"VIGIL__KAFKA__BOOTSTRAP_SERVER": "x:1"})


def test_a_typo_in_an_overlay_file_fails_naming_the_key(tmp_path: Path) -> None:
    p = tmp_path / "o.yaml"
    p.write_text("simulator:\n  faults:\n    artefact: 0.1\n")
    with pytest.raises(ConfigError, match=r"simulator\.faults\.artefact: unknown key") as e:
        load_settings(p, environ={})
    assert str(p) in str(e.value)


def test_an_invalid_value_names_the_key_and_the_value() -> None:
    with pytest.raises(ConfigError, match=r"simulator\.faults\.missing: .*less than or equal"):
        load_settings(environ={"VIGIL__SIMULATOR__FAULTS__MISSING": "1.5"})


def test_overlay_from_vigil_config_env(tmp_path: Path) -> None:
    p = tmp_path / "o.yaml"
    p.write_text("lake:\n  root: s3a://bucket/vigil\n")
    assert load_settings(environ={"VIGIL_CONFIG": str(p)}).lake.root == "s3a://bucket/vigil"


def test_missing_overlay_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.yaml", environ={})


def test_the_embedded_stack_refuses_a_non_loopback_host() -> None:
    with pytest.raises(ConfigError, match=r"local_stack\.host: .*loopback"):
        load_settings(environ={"VIGIL__LOCAL_STACK__HOST": "0.0.0.0"})


def test_naive_simulator_start_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"simulator\.start"):
        load_settings(environ={"VIGIL__SIMULATOR__START": "2026-01-01T00:00:00"})


def test_empty_segment_in_override_name_is_rejected() -> None:
    with pytest.raises(ConfigError, match="empty key segment"):
        env_overrides({"VIGIL__KAFKA____CLIENT": "confluent"})


def test_with_scorer_replaces_scorer_keys_and_validates_them() -> None:
    from pydantic import ValidationError

    from stack.settings import Settings

    s = Settings()
    t = s.with_scorer(workers=2, group_id="g")
    assert (t.scorer.workers, t.scorer.group_id) == (2, "g")
    assert t.scorer.micro_batch_rows == s.scorer.micro_batch_rows  # the rest kept
    assert s.scorer.workers == 1  # the original untouched
    with pytest.raises(ValidationError, match="workers"):
        s.with_scorer(workers=0)


def test_sqlalchemy_urls_name_the_driver_and_database() -> None:
    from stack.localstack import sqlalchemy_url

    url = "postgresql://vigil:p%40ss@db.hospital.org:5432/vigil?sslmode=require"
    assert sqlalchemy_url(url, database="mlflow") == (
        "postgresql+psycopg://vigil:p%40ss@db.hospital.org:5432/mlflow?sslmode=require"
    )
    assert sqlalchemy_url(url, driver="psycopg_async").startswith("postgresql+psycopg_async://")
    with pytest.raises(ValueError, match=r"not a PostgreSQL URL: mysql://u:\*\*\*@h/d") as err:
        sqlalchemy_url("mysql://u:secret@h/d")
    assert "secret" not in str(err.value)


def test_a_poll_interval_below_the_session_timeout_is_refused() -> None:
    ok = load_settings(environ={"VIGIL__KAFKA__CONSUMER__MAX_POLL_INTERVAL_MS": "6000"})
    assert ok.kafka.consumer.max_poll_interval_ms == ok.kafka.consumer.session_timeout_ms
    with pytest.raises(ConfigError, match=r"max_poll_interval_ms \(5999\) is below"):
        load_settings(environ={"VIGIL__KAFKA__CONSUMER__MAX_POLL_INTERVAL_MS": "5999"})
