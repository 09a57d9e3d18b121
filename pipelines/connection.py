"""How every Kafka client of the project connects: plaintext, or SASL_SSL with SCRAM.

`check_connection` tries the broker once, step by step, so that a mistake is one line at
once: nothing listening, a certificate the configured CA did not sign, or a refused SCRAM
login. kafka-python alone would retry its bootstrap until a deadline and then say only that
it could not bootstrap; and when the broker closes the connection right after refusing a
login, kafka-python often loses the refusal, so the login is tried here with a plain
blocking socket that reads the broker's answer before the close.
"""

from __future__ import annotations

import socket
import ssl
import struct

from kafka.errors import KafkaError

from pipelines.config import KafkaSettings
from pipelines.errors import CrmError

SASL_HANDSHAKE, SASL_AUTHENTICATE = 17, 36  # Kafka API keys; version 1 of each
CLIENT_ID = b"crm-check"


def _string(text: bytes) -> bytes:
    return struct.pack(">h", len(text)) + text


def _call(sock: ssl.SSLSocket, api_key: int, correlation: int, body: bytes) -> bytes:
    """Send one version-1 request and return the body of its response."""
    request = struct.pack(">hhi", api_key, 1, correlation) + _string(CLIENT_ID) + body
    sock.sendall(struct.pack(">i", len(request)) + request)
    size = struct.unpack(">i", _read(sock, 4))[0]
    response = _read(sock, size)
    if struct.unpack(">i", response[:4])[0] != correlation:
        raise CrmError("the broker answered a SASL request out of order")
    return response[4:]


def _read(sock: ssl.SSLSocket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        data += chunk
    return data


def _scram_login(sock: ssl.SSLSocket, kafka: KafkaSettings) -> str | None:
    """One SCRAM login (SaslHandshake, then two SaslAuthenticate rounds); the broker's reason
    if it refuses, None if it accepts."""
    from kafka.net.sasl.scram import ScramClient

    username, password, _ = kafka.credentials()
    handshake = _call(sock, SASL_HANDSHAKE, 1, _string(kafka.sasl_mechanism.encode()))
    if struct.unpack(">h", handshake[:2])[0] != 0:
        return f"the broker does not offer {kafka.sasl_mechanism}"
    scram = ScramClient(username, password, kafka.sasl_mechanism)
    rounds = ((scram.first_message, scram.process_server_first_message), (scram.final_message, scram.process_server_final_message))
    for correlation, (message, take_reply) in enumerate(rounds, start=2):  # the handshake was 1
        token = message()
        answer = _call(sock, SASL_AUTHENTICATE, correlation, struct.pack(">i", len(token)) + token)
        error = struct.unpack(">h", answer[:2])[0]
        reason_size = struct.unpack(">h", answer[2:4])[0]
        if error:
            return answer[4 : 4 + reason_size].decode("utf-8", "replace") if reason_size > 0 else f"error code {error}"
        offset = 4 + max(reason_size, 0)
        token_size = struct.unpack(">i", answer[offset : offset + 4])[0]
        reply = answer[offset + 4 : offset + 4 + token_size]
        take_reply(reply)
    return None


def check_connection(kafka: KafkaSettings, timeout_s: float = 10.0) -> None:
    """Fail fast, in one line, when the broker cannot be used: nothing listens, its certificate
    is not signed by the configured CA, or it refuses the SCRAM username or password."""
    host, _, port = kafka.bootstrap_servers.split(",")[0].strip().rpartition(":")
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout_s)
    except (OSError, ValueError) as exc:
        raise CrmError(f"cannot reach Kafka at {host}:{port}: {getattr(exc, 'strerror', None) or exc}; is the broker running (`crm broker start`)?") from None
    with sock:
        if not kafka.secure:
            return
        try:
            context = ssl.create_default_context(cafile=str(kafka.ssl_cafile))
        except (OSError, ssl.SSLError) as exc:
            raise CrmError(f"cannot read the CA certificate {kafka.ssl_cafile} (kafka.ssl_cafile, CRM_KAFKA_CAFILE): {exc}") from None
        try:
            with context.wrap_socket(sock, server_hostname=host) as tls:
                refused = _scram_login(tls, kafka)
        except ssl.SSLCertVerificationError as exc:
            raise CrmError(
                f"the broker at {host}:{port} presented a certificate the CA in {kafka.ssl_cafile} does not vouch for "
                f"({exc.verify_message}); point kafka.ssl_cafile (CRM_KAFKA_CAFILE) at the broker's CA"
            ) from None
        except (OSError, ssl.SSLError, struct.error, ValueError) as exc:  # ValueError: a SCRAM answer that does not check out
            raise CrmError(f"logging in to Kafka at {host}:{port} over SASL_SSL failed: {exc}; is its listener SASL_SSL?") from None
    if refused is not None:
        raise CrmError(
            f"Kafka at {host}:{port} refused user {kafka.username!r} ({kafka.sasl_mechanism}): wrong username or password "
            f"({refused}); check CRM_KAFKA_USERNAME and CRM_KAFKA_PASSWORD"
        )


_checked: set[KafkaSettings] = set()


def connect(client_class, kafka: KafkaSettings, **options):
    """A kafka-python client for the profile's broker, or a one-line reason it cannot be had."""
    if kafka not in _checked:  # once per process: clients are made per call, the check is not free
        check_connection(kafka)
        _checked.add(kafka)
    try:
        return client_class(**kafka.client_options(), request_timeout_ms=10_000, **options)
    except (KafkaError, OSError) as exc:
        raise CrmError(f"cannot reach Kafka at {kafka.bootstrap_servers}: {exc}; is the broker running (`crm broker start`)?") from exc
