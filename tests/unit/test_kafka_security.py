"""Kafka TLS and SASL: settings that refuse incomplete setups, one mapping per client,
secrets never printed, and both client libraries accepting what is mapped."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from stack.kafkafetch import _attributes
from stack.kafkasecurity import (
    KafkaSecurityError,
    kafka_python_options,
    librdkafka_options,
    revealed,
)
from stack.settings import KafkaSecuritySettings, KafkaSettings, load_settings

SECRET = "s3cr3t-do-not-print"
NOWHERE = "127.0.0.1:1"  # nothing listens: the clients are built, never connected


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA and a client certificate signed by it, as PEM files."""
    d = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("vigil-test-ca"))
        .issuer_name(name("vigil-test-ca"))
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("vigil-lander"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": d / "ca.pem", "cert": d / "client.pem", "key": d / "client.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(SECRET.encode()),
        )
    )
    paths["password"] = d / "sasl-password"
    paths["password"].write_text(SECRET + "\n")
    return paths


def setups(pki: dict[str, Path]) -> dict[str, dict[str, Any]]:
    tls = {"ssl_ca_file": pki["ca"]}
    mtls = tls | {"ssl_cert_file": pki["cert"], "ssl_key_file": pki["key"],
                  "ssl_key_password": SECRET}  # fmt: skip
    return {
        "tls": {"protocol": "SSL", **tls},
        "mutual_tls": {"protocol": "SSL", **mtls},
        "sasl_plain": {"protocol": "SASL_SSL", **tls, "sasl_mechanism": "PLAIN",
                       "sasl_username": "vigil", "sasl_password": SECRET},
        "scram_256_file": {"protocol": "SASL_SSL", **tls, "sasl_mechanism": "SCRAM-SHA-256",
                           "sasl_username": "vigil", "sasl_password_file": pki["password"]},
        "scram_512_plaintext": {"protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
                                "sasl_username": "vigil", "sasl_password": SECRET},
    }  # fmt: skip


OAUTH = {
    "protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER",
    "oauth_token_endpoint_url": "https://idp.example.org/oauth2/token",
    "oauth_client_id": "vigil", "oauth_client_secret": SECRET, "oauth_scope": "kafka",
}  # fmt: skip


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"protocol": "SASL_SSL"}, "needs sasl_mechanism"),
        ({"protocol": "SSL", "sasl_mechanism": "PLAIN"}, "needs protocol SASL"),
        ({"protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u"},
         "one of sasl_password"),
        ({"protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_password": "p"},
         "needs sasl_username"),
        ({"protocol": "SSL", "ssl_cert_file": "c.pem"}, "both ssl_cert_file and ssl_key_file"),
        ({**OAUTH, "oauth_client_id": None}, "oauth_client_id"),
    ],
)  # fmt: skip
def test_incomplete_security_is_refused_with_what_is_missing(
    block: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        KafkaSecuritySettings.model_validate(block)


def test_oauthbearer_needs_the_confluent_client() -> None:
    with pytest.raises(ValidationError, match=r"needs kafka\.client: confluent"):
        KafkaSettings.model_validate({"security": OAUTH})
    assert KafkaSettings.model_validate({"client": "confluent", "security": OAUTH})


def test_secrets_from_the_environment_are_never_printed() -> None:
    s = load_settings(
        environ={
            "VIGIL__KAFKA__SECURITY__PROTOCOL": "SASL_SSL",
            "VIGIL__KAFKA__SECURITY__SASL_MECHANISM": "SCRAM-SHA-512",
            "VIGIL__KAFKA__SECURITY__SASL_USERNAME": "vigil",
            "VIGIL__KAFKA__SECURITY__SASL_PASSWORD": SECRET,
        }
    )
    sec = s.kafka.security
    assert SECRET not in repr(s)
    assert SECRET not in str(s.model_dump(mode="json"))
    assert kafka_python_options(sec)["sasl_plain_password"] == SECRET
    assert librdkafka_options(sec)["sasl.password"] == SECRET


def test_both_mappings_say_the_same_thing(pki: dict[str, Path]) -> None:
    for name, block in setups(pki).items():
        sec = KafkaSecuritySettings.model_validate(block)
        kp, rd = kafka_python_options(sec), librdkafka_options(sec)
        assert kp["security_protocol"].lower() == rd["security.protocol"], name
        assert kp.get("ssl_cafile") == rd.get("ssl.ca.location"), name
        assert kp.get("ssl_certfile") == rd.get("ssl.certificate.location"), name
        assert kp.get("sasl_mechanism") == rd.get("sasl.mechanism"), name
        assert kp.get("sasl_plain_password") == rd.get("sasl.password"), name
        if "sasl_mechanism" in block:
            assert rd["sasl.password"] == SECRET  # from the value or the file, stripped
    none = KafkaSecuritySettings()
    assert kafka_python_options(none) == {"security_protocol": "PLAINTEXT"}
    assert librdkafka_options(none) == {"security.protocol": "plaintext"}


def test_an_unreadable_secret_file_names_the_file_not_the_secret(tmp_path: Path) -> None:
    sec = KafkaSecuritySettings.model_validate(
        {"protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "vigil",
         "sasl_password_file": tmp_path / "missing"}
    )  # fmt: skip
    with pytest.raises(KafkaSecurityError, match="missing"):
        kafka_python_options(sec)
    with pytest.raises(KafkaSecurityError, match="SASL password"):
        librdkafka_options(sec)


def test_kafka_python_clients_accept_every_setup(pki: dict[str, Path]) -> None:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    for name, block in setups(pki).items():
        options = kafka_python_options(KafkaSecuritySettings.model_validate(block))
        for cls in (KafkaProducer, KafkaConsumer, KafkaAdminClient):
            assert set(options) <= set(cls.DEFAULT_CONFIG), (name, cls.__name__)
        # With the API version given, the consumer is built without a connection.
        consumer = KafkaConsumer(bootstrap_servers=NOWHERE, api_version=(2, 8), **options)
        consumer.close()


def test_librdkafka_clients_accept_every_setup(pki: dict[str, Path]) -> None:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient

    for name, block in [*setups(pki).items(), ("oauthbearer", OAUTH)]:
        options = librdkafka_options(KafkaSecuritySettings.model_validate(block))
        # librdkafka checks every property, and loads the CA, certificate and the
        # encrypted key (with its password) when the client is created.
        Producer({"bootstrap.servers": NOWHERE, **options}).flush(0)
        Consumer({"bootstrap.servers": NOWHERE, "group.id": "t", **options}).close()
        AdminClient({"bootstrap.servers": NOWHERE, **options})
        assert name


def test_librdkafka_refuses_a_wrong_key_password(pki: dict[str, Path]) -> None:
    from confluent_kafka import KafkaException, Producer

    block = setups(pki)["mutual_tls"] | {"ssl_key_password": "wrong"}
    options = librdkafka_options(KafkaSecuritySettings.model_validate(block))
    with pytest.raises(KafkaException):
        Producer({"bootstrap.servers": NOWHERE, **options})


def test_the_fetch_process_gets_the_secrets_the_parent_has(pki: dict[str, Path]) -> None:
    # The parent hands its settings to the fetch process as JSON over a pipe; a masked
    # SecretStr would arrive as asterisks. The child's plain attributes map the same.
    for block in setups(pki).values():
        sec = KafkaSecuritySettings.model_validate(block)
        child = _attributes(revealed(sec))
        assert kafka_python_options(child) == kafka_python_options(sec)  # type: ignore[arg-type]
        assert librdkafka_options(child) == librdkafka_options(sec)  # type: ignore[arg-type]
