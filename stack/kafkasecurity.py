"""TLS and SASL options for both Kafka clients, from one settings block.

``kafka.security`` (:class:`~stack.settings.KafkaSecuritySettings`) is mapped here to the
keyword options of kafka-python and to the properties of librdkafka (confluent-kafka),
so every producer, consumer and admin of either library connects the same way. Secrets
are revealed only in these mappings, when a client is created: a ``SecretStr`` (masked
wherever settings are printed) or a file (``*_file``, e.g. a mounted secret, read then, so
a rotated secret takes effect with the next client the process creates).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the fetch process starts without pydantic
    from stack.settings import KafkaSecuritySettings


class KafkaSecurityError(ValueError):
    """A secret file named in ``kafka.security`` cannot be read."""


def _reveal(value: Any) -> str | None:
    if value is None:
        return None
    get = getattr(value, "get_secret_value", None)
    return str(get() if get is not None else value)  # SecretStr, or plain text from a child


def _secret(value: Any, path: Path | str | None, what: str) -> str | None:
    if path is None:
        return _reveal(value)
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise KafkaSecurityError(
            f"kafka.security: cannot read {what} from {path}: {exc.strerror}"
        ) from None


def _tls(sec: KafkaSecuritySettings) -> bool:
    return sec.protocol in ("SSL", "SASL_SSL")


def _sasl(sec: KafkaSecuritySettings) -> bool:
    return sec.protocol in ("SASL_PLAINTEXT", "SASL_SSL")


def kafka_python_options(sec: KafkaSecuritySettings) -> dict[str, Any]:
    """Keyword options for kafka-python's ``KafkaProducer``/``KafkaConsumer``/``KafkaAdminClient``.

    Raises:
        KafkaSecurityError: a secret file cannot be read.
        ValueError: OAUTHBEARER (kafka-python needs a token-provider object; settings
            refuse this combination already, so this guards direct use).
    """
    out: dict[str, Any] = {"security_protocol": sec.protocol}
    if _tls(sec):
        out["ssl_check_hostname"] = sec.ssl_check_hostname
        if sec.ssl_ca_file is not None:
            out["ssl_cafile"] = str(sec.ssl_ca_file)
        if sec.ssl_cert_file is not None:
            out["ssl_certfile"] = str(sec.ssl_cert_file)
            out["ssl_keyfile"] = str(sec.ssl_key_file)
        if sec.ssl_key_password is not None:
            out["ssl_password"] = _reveal(sec.ssl_key_password)
    if _sasl(sec):
        if sec.sasl_mechanism == "OAUTHBEARER":
            raise ValueError("OAUTHBEARER needs kafka.client: confluent")
        out["sasl_mechanism"] = sec.sasl_mechanism
        out["sasl_plain_username"] = sec.sasl_username
        out["sasl_plain_password"] = _secret(
            sec.sasl_password, sec.sasl_password_file, "the SASL password"
        )
    return out


def librdkafka_options(sec: KafkaSecuritySettings) -> dict[str, Any]:
    """Configuration properties for confluent-kafka's ``Producer``/``Consumer``/``AdminClient``.

    Raises:
        KafkaSecurityError: a secret file cannot be read.
    """
    out: dict[str, Any] = {"security.protocol": sec.protocol.lower()}
    if _tls(sec):
        out["ssl.endpoint.identification.algorithm"] = "https" if sec.ssl_check_hostname else "none"
        if sec.ssl_ca_file is not None:
            out["ssl.ca.location"] = str(sec.ssl_ca_file)
        if sec.ssl_cert_file is not None:
            out["ssl.certificate.location"] = str(sec.ssl_cert_file)
            out["ssl.key.location"] = str(sec.ssl_key_file)
        if sec.ssl_key_password is not None:
            out["ssl.key.password"] = _reveal(sec.ssl_key_password)
    if _sasl(sec):
        out["sasl.mechanism"] = sec.sasl_mechanism
        if sec.sasl_mechanism == "OAUTHBEARER":
            out["sasl.oauthbearer.method"] = "oidc"
            out["sasl.oauthbearer.client.id"] = sec.oauth_client_id
            out["sasl.oauthbearer.client.secret"] = _secret(
                sec.oauth_client_secret, sec.oauth_client_secret_file, "the OAuth client secret"
            )
            out["sasl.oauthbearer.token.endpoint.url"] = sec.oauth_token_endpoint_url
            if sec.oauth_scope:
                out["sasl.oauthbearer.scope"] = sec.oauth_scope
        else:
            out["sasl.username"] = sec.sasl_username
            out["sasl.password"] = _secret(
                sec.sasl_password, sec.sasl_password_file, "the SASL password"
            )
    return out


def revealed(sec: KafkaSecuritySettings) -> dict[str, Any]:
    """The block as plain JSON with its secrets in clear: only for a pipe to a child
    process of ours (``stack.kafkafetch``), never for a file or a log."""
    out = sec.model_dump(mode="json")
    for key in ("ssl_key_password", "sasl_password", "oauth_client_secret"):
        out[key] = _reveal(getattr(sec, key))
    return out
