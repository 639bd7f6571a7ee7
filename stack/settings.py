"""Typed configuration: ``conf/base.yaml`` + an optional overlay file + environment overrides.

Every service address and every run size lives here, validated into pydantic models that
forbid unknown keys, so a typo fails loudly with the key's dotted path.

Precedence, lowest first:

1. ``conf/base.yaml`` (shipped with the code);
2. the YAML file named by ``VIGIL_CONFIG`` (or the ``overlay`` argument), merged key by key;
3. environment variables ``VIGIL__SECTION__KEY=value`` (double underscore separates levels,
   names are case-insensitive, values are parsed as YAML scalars, so ``null``, ``42`` and
   ``true`` mean what they look like).

Loading has no side effects: nothing is created, started or connected here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from stack.contracts import DeteriorationKind, EventTimeBounds, OutcomeEventKind

ENV_PREFIX = "VIGIL__"
CONFIG_ENV = "VIGIL_CONFIG"
REPO_ROOT = Path(__file__).resolve().parent.parent
BASE_CONFIG = REPO_ROOT / "conf" / "base.yaml"


class ConfigError(ValueError):
    """Configuration could not be loaded; the message names the offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- services
class TopicNames(_Strict):
    vitals: str = "vitals.raw"
    outcomes: str = "outcomes"
    admissions: str = "admissions"
    dead_letters: str = "vitals.deadletter"
    predictions: str = "predictions"
    alerts: str = "alerts"


class ProducerSettings(_Strict):
    linger_ms: int = Field(20, ge=0)
    batch_size_bytes: int = Field(262_144, gt=0)
    compression: Literal["none", "gzip", "lz4", "zstd"] = "none"


class ConsumerSettings(_Strict):
    max_poll_records: int = Field(5000, gt=0)
    session_timeout_ms: int = Field(6000, gt=0)
    heartbeat_interval_ms: int = Field(1000, gt=0)
    max_poll_interval_ms: int = Field(
        300_000,
        gt=0,
        description="a group member that has not polled for this long is replaced (both"
        " clients' default); at least session_timeout_ms",
    )
    fetch_max_bytes: int = Field(16_777_216, gt=0, description="per fetch request")
    max_partition_fetch_bytes: int = Field(2_097_152, gt=0, description="per partition")

    @model_validator(mode="after")
    def _poll_interval(self) -> ConsumerSettings:
        if self.max_poll_interval_ms < self.session_timeout_ms:  # librdkafka refuses it
            raise ValueError(
                f"max_poll_interval_ms ({self.max_poll_interval_ms}) is below"
                f" session_timeout_ms ({self.session_timeout_ms})"
            )
        return self


class KafkaSecuritySettings(_Strict):
    """TLS and SASL towards a secured cluster, for both client libraries.

    Secrets are never printed: passwords are ``SecretStr`` (shown as ``**********``) or
    read from a file when a client is created (``*_file``, e.g. a mounted Kubernetes secret).
    """

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    ssl_ca_file: Path | None = Field(None, description="CA bundle (PEM) to verify brokers")
    ssl_cert_file: Path | None = Field(None, description="client certificate (PEM), mutual TLS")
    ssl_key_file: Path | None = Field(None, description="client private key (PEM)")
    ssl_key_password: SecretStr | None = None
    ssl_check_hostname: bool = Field(True, description="verify the broker's host name")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = Field(None, description="read the password from here")
    # OAUTHBEARER by OIDC client credentials (librdkafka's own token refresh: confluent).
    oauth_token_endpoint_url: str | None = None
    oauth_client_id: str | None = None
    oauth_client_secret: SecretStr | None = None
    oauth_client_secret_file: Path | None = None
    oauth_scope: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> KafkaSecuritySettings:
        sasl = self.protocol.startswith("SASL")
        if sasl and self.sasl_mechanism is None:
            raise ValueError(f"protocol {self.protocol} needs sasl_mechanism")
        if not sasl and self.sasl_mechanism is not None:
            raise ValueError("sasl_mechanism needs protocol SASL_SSL or SASL_PLAINTEXT")
        if sasl and self.sasl_mechanism == "OAUTHBEARER":
            if not (self.oauth_token_endpoint_url and self.oauth_client_id):
                raise ValueError("OAUTHBEARER needs oauth_token_endpoint_url and oauth_client_id")
            if (self.oauth_client_secret is None) == (self.oauth_client_secret_file is None):
                raise ValueError("OAUTHBEARER needs one of oauth_client_secret(_file)")
        elif sasl:
            if not self.sasl_username:
                raise ValueError(f"SASL {self.sasl_mechanism} needs sasl_username")
            if (self.sasl_password is None) == (self.sasl_password_file is None):
                raise ValueError(f"SASL {self.sasl_mechanism} needs one of sasl_password(_file)")
        if (self.ssl_cert_file is None) != (self.ssl_key_file is None):
            raise ValueError("mutual TLS needs both ssl_cert_file and ssl_key_file")
        return self


class KafkaSettings(_Strict):
    bootstrap_servers: str | None = Field(
        None, description="host:port list; null starts the embedded Tansu broker"
    )
    client: Literal["kafka-python", "confluent"] = "kafka-python"
    security: KafkaSecuritySettings = KafkaSecuritySettings()
    partitions: int = Field(4, gt=0)
    replication_factor: int = Field(
        1, ge=1, le=16, description="of the topics Vigil creates (3 on a production cluster)"
    )
    topic_configs: dict[str, str] = Field(
        default_factory=dict,
        description="configs of the topics Vigil creates, e.g. min.insync.replicas: '2'",
    )
    topics: TopicNames = TopicNames()
    producer: ProducerSettings = ProducerSettings()
    consumer: ConsumerSettings = ConsumerSettings()

    @model_validator(mode="after")
    def _oauth_client(self) -> KafkaSettings:
        if self.security.sasl_mechanism == "OAUTHBEARER" and self.client != "confluent":
            raise ValueError(
                "kafka.security.sasl_mechanism OAUTHBEARER needs kafka.client: confluent "
                "(kafka-python has no built-in OIDC token refresh)"
            )
        return self


class PostgresSettings(_Strict):
    url: str | None = Field(None, description="postgresql:// URL; null starts embedded PostgreSQL")
    load_connections: int = Field(
        2, ge=1, le=16, description="connections loading hour partitions (ETL, features) at once"
    )


class LakeSettings(_Strict):
    root: str = Field("data/lake", description="local path or s3a://bucket/prefix")


class MlflowSettings(_Strict):
    tracking_uri: str | None = Field(None, description="null starts the local MLflow server")
    local_store: Path = Field(
        Path("mlruns"), description="backend DB and artifacts of the local MLflow server"
    )
    experiment_prefix: str = "vigil"
    backend_store: Literal["sqlite", "postgres"] = Field(
        "postgres",
        description="the local MLflow server's tracking store: SQLite under local_store "
        "(single writer), or database `database` of Vigil's PostgreSQL (embedded or "
        "postgres.url) for concurrent writers",
    )
    database: str = Field(
        "mlflow", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$", description="PostgreSQL database"
    )
    signing_key: str | None = Field(
        None,
        description="HMAC key that signs registered models (training) and verifies them "
        "before loading (serving, monitoring); null: run_dir/model-signing.key, made on "
        "first use. Set it from a secret store where training and serving run apart",
    )


class AirflowSettings(_Strict):
    metadata_db: Literal["sqlite", "postgres"] = Field(
        "postgres",
        description="Airflow's metadata database: database `database` of Vigil's "
        "PostgreSQL (embedded or postgres.url; concurrent writers, the LocalExecutor's "
        "parallel tasks) or SQLite in the Airflow home (single writer)",
    )
    database: str = Field(
        "airflow", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$", description="PostgreSQL database"
    )


class SparkSettings(_Strict):
    master: str = Field(
        "local[*]", description="local[N], or a cluster: spark://host:7077 (make spark-cluster)"
    )
    shuffle_partitions: int = Field(8, gt=0)
    driver_memory: str = "2g"
    executor_memory: str = Field("1g", description="per executor, on a cluster")
    ui: bool = Field(False, description="Spark UI on port 4040 (loopback)")
    driver_host: str = Field(
        "127.0.0.1",
        description="the address executors reach the driver at: this host's address on the"
        " cluster's network when workers run on other hosts",
    )
    driver_bind_address: str = Field(
        "127.0.0.1", description="the interface the driver listens on (0.0.0.0: all)"
    )
    driver_port: int = Field(
        0, ge=0, lt=65536, description="the driver's RPC port (0: any free one)"
    )
    block_manager_port: int = Field(
        0, ge=0, lt=65536, description="the driver's block manager port (0: any free one)"
    )
    ship_code: bool = Field(
        False,
        description="send Vigil's own packages to the executors as a zip with each session"
        " (spark.submit.pyFiles): for workers where Vigil is not installed. Third-party"
        " packages (pyarrow, pandas) must be on the executors' Python already",
    )
    executor_python: str | None = Field(
        None, description="the executors' Python (null: this interpreter's path)"
    )


class LocalStackSettings(_Strict):
    host: str = "127.0.0.1"
    kafka_port: int = Field(19092, gt=0, lt=65536)
    postgres_port: int = Field(15432, gt=0, lt=65536)
    mlflow_port: int = Field(5000, gt=0, lt=65536)
    start_timeout_s: float = Field(90.0, gt=0)
    services: tuple[Literal["kafka", "postgres", "mlflow"], ...] = ("kafka", "postgres", "mlflow")

    @field_validator("host")
    @classmethod
    def _loopback_only(cls, v: str) -> str:
        if v not in {"127.0.0.1", "localhost", "::1"}:
            raise ValueError("the embedded stack listens on loopback only")
        return v


# --------------------------------------------------------------------------- simulator
class PopulationSettings(_Strict):
    age_mean: float = Field(64.0, gt=0)
    age_sd: float = Field(17.0, gt=0)
    female_share: float = Field(0.5, ge=0, le=1)
    copd_share: float = Field(0.12, ge=0, le=1)
    hypercapnic_share_of_copd: float = Field(
        0.35, ge=0, le=1, description="COPD patients with chronic hypercapnia (SpO2 scale 2)"
    )
    beta_blocker_share: float = Field(0.2, ge=0, le=1)
    hypertension_share: float = Field(0.35, ge=0, le=1)
    admit_spread: float = Field(
        0.25, ge=0, le=1, description="admissions spread over this share of the window"
    )


def _default_mix() -> dict[DeteriorationKind, float]:
    return {"sepsis": 0.35, "respiratory": 0.30, "hypovolaemic": 0.15, "cardiac": 0.20}


def _default_outcome_mix() -> dict[OutcomeEventKind, float]:
    return {"icu_transfer": 0.67, "emergency_response": 0.30, "cardiac_arrest": 0.03}


class EpisodeSettings(_Strict):
    """Deterioration episodes and their look-alikes (mimics)."""

    # Published ward rates of the composite outcome are near 1.2 per 100 patient-days
    # (resuscitation events and death: 1.2 % of patient-days, Alvarez et al., BMC Med
    # Inform Decis Mak 2013;13:28; cardiac arrest, ICU transfer or death: 6.1 % of 269,999
    # ward admissions, Churpek et al., Am J Respir Crit Care Med 2014;190:649-655). About
    # 60 % of the simulator's deteriorations end in an outcome (a quarter settle by
    # themselves, the ward rescues some), so 2 per 100 patient-days give ~1.2 outcomes.
    deterioration_rate_per_day: float = Field(
        0.02, ge=0, le=1, description="deteriorations per patient-day on the real ward"
    )
    enrichment: float = Field(
        1.0,
        ge=1,
        le=100,
        description="simulated rate = deterioration_rate_per_day x this (enriched training "
        "wards; training.calibration.odds_ratio maps risks back to the real rate)",
    )
    mix: dict[DeteriorationKind, float] = Field(default_factory=_default_mix)
    min_hours: float = Field(2.0, gt=0)
    max_hours: float = Field(12.0, gt=0)
    quiet_share: float = Field(
        0.3, ge=0, le=1, description="share of deteriorations with muted vital-sign changes"
    )
    mimic_rate_per_day: float = Field(
        0.25, ge=0, le=5, description="pain/anxiety/benign-fever episodes per patient-day"
    )
    recover_share: float = Field(
        0.25,
        ge=0,
        le=1,
        description="deteriorations that peak and resolve on their own (no outcome)",
    )
    acuity_sd: float = Field(
        0.6, ge=0, le=3, description="spread of admission acuity (abnormal baseline vitals)"
    )
    acuity_shift: float = Field(
        0.8, ge=0, le=3, description="extra acuity of patients whose stay holds a deterioration"
    )
    # Of the outcomes, cardiac arrests are a small share: 424 of ~16,450 (2.6 %) in
    # Churpek et al. 2014; the rest are ICU transfers and emergency (rapid) responses.
    outcome_mix: dict[OutcomeEventKind, float] = Field(default_factory=_default_outcome_mix)

    @field_validator("mix", "outcome_mix")
    @classmethod
    def _mix_positive(cls, v: dict[str, float]) -> dict[str, float]:
        if not v or any(w < 0 for w in v.values()) or sum(v.values()) <= 0:
            raise ValueError("a mix needs non-negative weights with a positive sum")
        return v

    @property
    def simulated_rate_per_day(self) -> float:
        """Deteriorations per patient-day the simulator draws (enriched)."""
        return min(1.0, self.deterioration_rate_per_day * self.enrichment)


class RescueSettings(_Strict):
    """The ward's usual care: an escalation trigger seen at an observation set may start
    treatment that turns a deterioration around (so alerting has consequences)."""

    trigger: Literal["none", "news2_ge5", "news2_ge7", "news2_ge5_or_red"] = "news2_ge5_or_red"
    response_share: float = Field(
        0.6, ge=0, le=1, description="triggers that get a clinical response"
    )
    delay_minutes: float = Field(
        60.0, ge=0, description="trigger to treatment (at least until the simulated hour ends)"
    )
    success_share: float = Field(
        0.5, ge=0, le=1, description="treated deteriorations that recover instead of the outcome"
    )
    recovery_minutes: float = Field(
        180.0, gt=0, description="time constant of recovery once treatment works"
    )


class ObservationSettings(_Strict):
    """How the ward observes its patients.

    ``continuous``: bedside monitors at :class:`CadenceSettings` (HDU / step-down beds).
    ``news2_tier``: a nurse charts a full observation set at the interval RCP 2017 chart 3
    prescribes for the last set's score (12-hourly at 0, 4-6-hourly at 1-4, hourly at a red
    score or 5-6), and the patient goes on continuous monitoring at 7 or more.
    """

    mode: Literal["continuous", "news2_tier"] = "continuous"
    low_score_hours: float = Field(
        6.0, ge=4, le=6, description="interval at an aggregate of 1-4 (chart 3: 4-6-hourly)"
    )
    late_share: float = Field(
        0.25, ge=0, le=1, description="a set may be charted up to this share of its interval late"
    )
    review_minutes: int = Field(
        60, gt=0, description="on continuous monitoring, how often the score is reviewed"
    )


class FaultSettings(_Strict):
    """Per-reading or per-message probabilities of each fault the simulator injects."""

    missing: float = Field(0.02, ge=0, le=1, description="a vital missing from a reading")
    artifact: float = Field(0.004, ge=0, le=1, description="motion artifact on a reading")
    impossible: float = Field(0.001, ge=0, le=1, description="physically impossible value")
    fahrenheit_device: float = Field(0.05, ge=0, le=1, description="device reporting °F")
    duplicate: float = Field(0.005, ge=0, le=1, description="message sent twice")
    late: float = Field(0.01, ge=0, le=1, description="message delayed by minutes")
    malformed: float = Field(0.001, ge=0, le=1, description="undecodable or invalid message")
    late_max_minutes: float = Field(30.0, gt=0)


class CadenceSettings(_Strict):
    """How often each vital is measured, in minutes (continuous monitors vs. cuff vs. nurse)."""

    heart_rate: int = Field(1, gt=0)
    spo2: int = Field(1, gt=0)
    resp_rate: int = Field(1, gt=0)
    blood_pressure: int = Field(15, gt=0)
    temperature: int = Field(30, gt=0)
    consciousness: int = Field(60, gt=0)


class SimulatorSettings(_Strict):
    seed: int = 42
    patients: int = Field(300, gt=0)
    hours: float = Field(24.0, gt=0)
    start: datetime = datetime(2026, 1, 5, tzinfo=UTC)
    interval_s: int = Field(60, gt=0, description="one reading per patient per interval")
    chunk_minutes: int = Field(60, gt=0, description="simulated minutes generated at a time")
    scenario: str = "baseline"
    mode: Literal["backfill", "live"] = "backfill"
    speedup: float = Field(60.0, gt=0, description="live mode: simulated seconds per second")
    population: PopulationSettings = PopulationSettings()
    episodes: EpisodeSettings = EpisodeSettings()
    faults: FaultSettings = FaultSettings()
    cadence: CadenceSettings = CadenceSettings()
    observation: ObservationSettings = ObservationSettings()
    rescue: RescueSettings = RescueSettings()

    @field_validator("start")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("simulator.start must carry a timezone (use ...Z)")
        return v.astimezone(UTC)


# --------------------------------------------------------------------------- stages
class LandingSettings(_Strict):
    group_id: str = "vigil-landing"
    flush_records: int = Field(50_000, gt=0)
    flush_seconds: float = Field(10.0, gt=0)
    idle_timeout_s: float = Field(
        5.0, gt=0, description="bounded drain gives up waiting for data after this long"
    )
    dead_letters_to_topic: bool = True
    assignment: Literal["all", "group"] = Field(
        "all",
        description="'all': one lander reads every partition (start at once; run one at a"
        " time); 'group': landers of the group share the partitions (scale out, each one"
        " exactly once; joining costs a few seconds)",
    )
    fetch: Literal["process", "inline"] = Field(
        "process",
        description="read Kafka in a child process (overlaps with validating and writing)"
        " or inline in the lander's own process",
    )
    backoff_initial_s: float = Field(0.5, gt=0, description="an outage's first retry wait...")
    backoff_max_s: float = Field(20.0, gt=0, description="...doubling up to this")
    outage_max_wait_s: float = Field(
        60.0,
        gt=0,
        description="a bounded drain gives up (fails, naming the dependency) when the broker"
        " or the lake stays away this long; a continuous one waits for ever",
    )


def _default_presence() -> dict[str, float]:
    # Below these shares of non-null readings a vital counts as "almost entirely missing"
    # (a broken feed), given monitors every minute, a cuff every 15 min, a thermometer
    # every 30 min.
    return {
        "heart_rate": 0.5,
        "spo2": 0.5,
        "resp_rate": 0.5,
        "systolic_bp": 0.02,
        "diastolic_bp": 0.02,
        "temperature": 0.01,
    }


class EtlSettings(_Strict):
    """Batch-level thresholds of the raw expectations and the ETL's time bounds."""

    max_duplicate_share: float = Field(0.05, ge=0, le=1)
    max_out_of_range_share: float = Field(0.03, ge=0, le=1)
    max_bad_time_share: float = Field(0.01, ge=0, le=1)
    max_future_minutes: float = Field(5.0, ge=0)
    max_age_days: float = Field(730.0, gt=0)
    min_present_share: dict[str, float] = Field(default_factory=_default_presence)
    context_hours: int = Field(
        2, ge=0, description="hours before (and after) a partition read for continuity"
    )
    reports_dir: Path = Path("reports/etl")


class FeaturesSettings(_Strict):
    """Feature table cadence, label horizon and the online state's bounds."""

    cadence_minutes: int = Field(5, ge=1, le=60, description="one feature row per patient per N")
    horizon_hours: float = Field(4.0, gt=0, description="a deterioration within it labels 1")
    lateness_minutes: int = Field(
        45, ge=1, le=240, description="online: how late an event may be and still count"
    )
    cascade_hours: int = Field(
        5, ge=0, description="hours after a changed hour recomputed (the look-back window)"
    )


class ParamRange(_Strict):
    """One hyperparameter's search range: ``choices``, or ``low``..``high``.

    Integer bounds (both ``low`` and ``high`` written without a decimal point) search
    integers; ``log`` searches on a log scale; ``step`` quantises.
    """

    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[str | float | int, ...] | None = None

    @field_validator("choices")
    @classmethod
    def _non_empty(cls, v: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
        if v is not None and len(v) == 0:
            raise ValueError("choices must not be empty")
        return v

    def model_post_init(self, _context: Any) -> None:
        if self.choices is None and (self.low is None or self.high is None):
            raise ValueError("give choices, or both low and high")
        if self.choices is None and self.low is not None and self.high is not None:
            if self.low > self.high:
                raise ValueError(f"low {self.low} > high {self.high}")
            if self.log and self.low <= 0:
                raise ValueError("a log range needs low > 0")

    @property
    def is_int(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)


Family = Literal["logistic_regression", "random_forest", "xgboost"]


class ThresholdSettings(_Strict):
    """The alert budget the operating threshold is chosen for (exactly one)."""

    sensitivity: float | None = Field(0.6, gt=0, le=1)
    alerts_per_patient_day: float | None = Field(None, gt=0)

    def model_post_init(self, _context: Any) -> None:
        if (self.sensitivity is None) == (self.alerts_per_patient_day is None):
            raise ValueError("set exactly one of sensitivity or alerts_per_patient_day")

    def describe(self) -> str:
        """The budget in one token, e.g. ``sensitivity>=0.6`` (tags, tables, the card)."""
        if self.sensitivity is not None:
            return f"sensitivity>={self.sensitivity:g}"
        return f"alerts_per_patient_day<={self.alerts_per_patient_day:g}"


# The escalation triggers of the RCP NEWS2 chart (features.news2.TRIGGERS defines them;
# a unit test keeps the two lists equal).
News2Trigger = Literal["news2_ge5", "news2_ge7", "news2_ge5_or_red"]
NEWS2_TRIGGERS: tuple[News2Trigger, ...] = ("news2_ge5", "news2_ge7", "news2_ge5_or_red")


CalibrationShape = Literal["platt", "isotonic"]
CALIBRATION_SHAPES: tuple[CalibrationShape, ...] = ("platt", "isotonic")


class CalibrationSettings(_Strict):
    """How raw scores become risks (``training.calibrate``, ``stack.calibration``)."""

    shapes: list[CalibrationShape] = Field(
        default_factory=lambda: list(CALIBRATION_SHAPES),
        min_length=1,
        description="candidate maps; the one of lowest patient-grouped CV log-loss wins",
    )
    odds_ratio: float = Field(
        1.0,
        gt=0,
        description="deployment odds of the outcome / training odds: 1 when training data "
        "come from the ward the model serves; below 1 for enriched training data",
    )
    outcome: str = Field(
        "deterioration (ICU transfer, emergency response or cardiac arrest)",
        min_length=1,
        max_length=200,
        description="what the risk is a risk of, shown with every risk",
    )


class GateSettings(_Strict):
    """When a challenger may replace the champion."""

    bootstrap: int = Field(200, ge=20, description="patient-level bootstrap resamples")
    confidence: float = Field(0.95, gt=0.5, lt=1)
    margin_roc_auc: float = Field(0.02, ge=0, description="may be at most this much worse")
    margin_pr_auc: float = Field(0.05, ge=0)
    calibration_slope: tuple[float, float] = Field(
        (0.6, 1.6),
        description="held-out calibration slope must lie within (1: ideal; < 1: risks too "
        "extreme; > 1: too timid)",
    )
    expected_observed: tuple[float, float] = Field(
        (0.67, 1.5),
        description="held-out mean risk / observed rate must lie within (1: ideal)",
    )
    min_brier_skill: float = Field(
        0.0, le=1, description="held-out Brier skill vs the base rate must exceed this"
    )
    news2_triggers: list[News2Trigger] = Field(
        default_factory=lambda: list(NEWS2_TRIGGERS),
        min_length=1,
        description="NEWS2 escalation triggers the challenger must beat at a matched budget",
    )


class TrainingSettings(_Strict):
    """Dataset range, split, tuning budget, search spaces, threshold and gate."""

    experiment: str = "deterioration"
    registered_model: str = "vigil-deterioration"
    since: datetime | None = Field(None, description="first feature time used (null: all)")
    until: datetime | None = Field(None, description="feature times before this (null: all)")
    seed: int = 7
    test_share: float = Field(0.2, gt=0, lt=1)
    folds: int = Field(3, ge=2, le=10)
    tune_row_stride: int = Field(
        3, ge=1, description="tuning uses every Nth feature row of a patient (rows correlate)"
    )
    rows: Literal["fresh", "all"] = Field(
        "fresh",
        description="fresh: feature rows with a reading since the previous row, the moments "
        "the scorer scores (on an observation-set ward: the sets); all: every grid row",
    )
    families: tuple[Family, ...] = ("logistic_regression", "random_forest", "xgboost")
    trials: int = Field(8, ge=1, description="Optuna trials per family")
    timeout_s: float | None = Field(
        150.0, gt=0, description="per-family study time limit (null: trials only)"
    )
    n_jobs: int = Field(2, ge=1)
    search_spaces: dict[Family, dict[str, ParamRange]] = Field(default_factory=dict)
    threshold: ThresholdSettings = ThresholdSettings()
    calibration: CalibrationSettings = CalibrationSettings()
    gate: GateSettings = GateSettings()
    reports_dir: Path = Path("reports/training")


class BatchingSettings(_Strict):
    max_batch_size: int = Field(1000, gt=1, description="rows per adaptive batch")
    max_latency_ms: int = Field(
        2000, gt=0, description="a request that would wait longer is refused with 503"
    )


class ServingSettings(_Strict):
    """The BentoML service: where it listens, what it serves, how it guards itself."""

    host: str = "127.0.0.1"
    port: int = Field(3000, gt=0, lt=65536)
    url: str | None = Field(None, description="a remote service; null: http://host:port")
    model_source: Literal["registry", "bento"] = Field(
        "registry", description="registry: MLflow alias, hot-swapped; bento: the packaged model"
    )
    model_alias: str = "champion"
    shadow_alias: str | None = Field("challenger", description="also scored, never alerts")
    reload_interval_s: float = Field(10.0, gt=0, description="registry poll for a moved alias")
    max_request_bytes: int = Field(8_000_000, gt=1024)
    api_key: str | None = Field(None, description="require X-API-Key on scoring endpoints")
    workers: int = Field(1, ge=1)
    batching: BatchingSettings = BatchingSettings()
    top_features: int = Field(5, ge=1, le=20, description="contributions explained per alert")
    start_timeout_s: float = Field(120.0, gt=0)


class ScorerSettings(_Strict):
    """The Kafka scoring consumer: micro-batches, alert policy, retries."""

    group_id: str = "vigil-scorer"
    workers: int = Field(
        1, ge=1, description="scoring processes in the group (serving.workers): one per core"
    )
    new_group_starts_at: Literal["earliest", "latest"] = Field(
        "latest", description="a group with no committed offsets: score history, or from now"
    )
    micro_batch_rows: int = Field(1000, ge=1, description="rows per call to the service")
    quiet_period_minutes: float = Field(
        60.0, ge=0, description="no repeat alert for a patient within this time..."
    )
    realert_margin: float = Field(0.15, ge=0, le=1, description="...unless risk rose by this")
    request_timeout_s: float = Field(10.0, gt=0)
    backoff_initial_s: float = Field(0.5, gt=0, description="an outage's first retry wait...")
    backoff_max_s: float = Field(20.0, gt=0, description="...doubling up to this")
    outage_max_wait_s: float = Field(
        60.0,
        gt=0,
        description="a bounded run gives up (fails, naming the dependency) when PostgreSQL, "
        "the service or the broker stays away this long; an unbounded one waits for ever",
    )
    idle_timeout_s: float = Field(5.0, gt=0, description="bounded runs stop after this idle")
    metrics_port: int | None = Field(
        9108, gt=0, lt=65536, description="Prometheus /metrics of the scorer (null: none)"
    )
    warmup_minutes: int = Field(
        300,
        ge=0,
        description="event minutes replayed unscored into the online features before "
        "scoring partitions taken over (start, rebalance): window + lateness + a margin "
        "(serving.replay); 0: none",
    )


class DriftSettings(_Strict):
    """Evidently data-drift tests, reference (the champion's training sample) vs current."""

    num_method: str = Field("wasserstein", description="Evidently stat test for numbers")
    num_threshold: float = Field(
        0.3, gt=0, description="Wasserstein distance, in reference std units, that is drift"
    )
    cat_method: str = Field("jensenshannon", description="stat test for categorical columns")
    cat_threshold: float = Field(0.1, gt=0)
    exclude: tuple[str, ...] = Field(
        ("stay_minutes",), description="features not tested (see conf/base.yaml for why)"
    )
    trigger_share: float = Field(
        0.02, gt=0, le=1, description="share of tested columns drifted that triggers retraining"
    )
    trigger_severity: float = Field(
        1.5,
        ge=1,
        description="a trigger also needs one column (or the risk score) at this multiple of "
        "its threshold: beyond the seed-to-seed spread of baseline wards",
    )
    prediction_trigger: bool = Field(True, description="drift of the risk score also triggers")
    max_rows: int = Field(50_000, ge=1000, description="rows per side (sampled by patient-time)")


class PerformanceSettings(_Strict):
    """Realized performance of stored predictions once outcomes have landed."""

    min_labelled: int = Field(500, ge=1, description="fewer labelled predictions: not judged")
    min_positive: int = Field(10, ge=1)
    roc_auc_floor: float = Field(0.70, gt=0, le=1, description="below this: retrain")
    pr_auc_floor: float | None = Field(None, gt=0, le=1)


class RetrainSettings(_Strict):
    """What ``make retrain-if-needed`` trains on once a trigger fired."""

    window_days: float = Field(7.0, gt=0, description="sliding window of recent data used")
    cooldown_hours: float = Field(
        6.0, ge=0, description="no second retraining within this after one started"
    )


class MonitoringSettings(_Strict):
    """Drift and realized-performance monitoring (``make drift``) and the retraining trigger."""

    experiment: str = "monitoring"
    window_hours: float = Field(24.0, gt=0, description="current window: the last N hours")
    drift: DriftSettings = DriftSettings()
    performance: PerformanceSettings = PerformanceSettings()
    retrain: RetrainSettings = RetrainSettings()
    reports_dir: Path = Path("reports/monitoring")


class EdaSettings(_Strict):
    """The exploratory data analysis report (``make eda``)."""

    reports_dir: Path = Path("reports/eda")


class ContractSettings(_Strict):
    """The door of every consumer (lander, scorer): which event times are accepted at all.

    Outside this window an event is a dead letter (``time_out_of_bounds``); inside it the
    stages' own rules still apply (the ETL quarantines events a few minutes ahead).
    """

    earliest_event_time: datetime = Field(
        datetime(2000, 1, 1, tzinfo=UTC), description="older events are refused"
    )
    max_future_minutes: float = Field(
        1440.0, gt=0, description="events further ahead of the receiver's clock are refused"
    )

    @field_validator("earliest_event_time")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        return v if v.tzinfo is not None else v.replace(tzinfo=UTC)

    def bounds(self) -> EventTimeBounds:
        return EventTimeBounds(self.earliest_event_time, timedelta(minutes=self.max_future_minutes))


class LoggingSettings(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class Settings(_Strict):
    run_dir: Path = Path(".vigil")
    kafka: KafkaSettings = KafkaSettings()
    postgres: PostgresSettings = PostgresSettings()
    lake: LakeSettings = LakeSettings()
    mlflow: MlflowSettings = MlflowSettings()
    airflow: AirflowSettings = AirflowSettings()
    spark: SparkSettings = SparkSettings()
    local_stack: LocalStackSettings = LocalStackSettings()
    simulator: SimulatorSettings = SimulatorSettings()
    landing: LandingSettings = LandingSettings()
    etl: EtlSettings = EtlSettings()
    features: FeaturesSettings = FeaturesSettings()
    training: TrainingSettings = TrainingSettings()
    serving: ServingSettings = ServingSettings()
    scorer: ScorerSettings = ScorerSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    eda: EdaSettings = EdaSettings()
    contract: ContractSettings = ContractSettings()
    logging: LoggingSettings = LoggingSettings()

    def with_scorer(self, **changes: Any) -> Settings:
        """These settings with the scorer's keys ``changes`` replaced (validated)."""
        scorer = ScorerSettings.model_validate({**self.scorer.model_dump(), **changes})
        return self.model_copy(update={"scorer": scorer})

    def resolve(self, path: Path | str) -> Path:
        """A path from config, made absolute against the repository root."""
        p = Path(path)
        return p if p.is_absolute() else REPO_ROOT / p

    @property
    def run_path(self) -> Path:
        return self.resolve(self.run_dir)


# --------------------------------------------------------------------------- loading
def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Nested overrides from ``VIGIL__A__B=value`` variables (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.upper().startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not all(parts):
            raise ConfigError(f"malformed config variable {name!r}: empty key segment")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config variable {name!r} conflicts with another override")
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config variable {name!r} is not a valid value: {exc}") from exc
    return out


def _describe(exc: ValidationError, sources: str) -> str:
    lines = [f"invalid configuration ({sources}):"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"  - {key}: unknown key (typo?)")
        else:
            lines.append(f"  - {key}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def load_settings(
    overlay: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    base: Path = BASE_CONFIG,
) -> Settings:
    """Load and validate settings.

    Args:
        overlay: extra YAML merged over the base; defaults to ``$VIGIL_CONFIG`` if set.
        environ: the environment to read overrides from (``os.environ`` by default).
        base: the base YAML file.

    Raises:
        ConfigError: a file is missing or malformed, or a key is unknown or invalid;
            the message names the dotted key.
    """
    env = os.environ if environ is None else environ
    data = _read_yaml(base)
    sources = [str(base)]
    overlay = overlay if overlay is not None else env.get(CONFIG_ENV)
    if overlay:
        data = _merge(data, _read_yaml(Path(overlay)))
        sources.append(str(overlay))
    over = env_overrides(env)
    if over:
        data = _merge(data, over)
        sources.append(f"{ENV_PREFIX}* environment")
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, " + ".join(sources))) from None
