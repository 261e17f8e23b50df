"""TLS for MQTT, the same on both sides: one client context, and a check at start.

This is the one module of the package that touches files and sockets: both sides build
their MQTT clients' TLS from it, so that the agent's uplink, its sensor sources, the
hub's ingest, announcements and broker control verify the broker in exactly one way.

A broker that answers with the wrong certificate (an unknown CA, another host name) or
does not speak TLS at all is a configuration error that no retry will fix:
:func:`check_broker_tls` raises :class:`~sync.errors.BrokerTlsError` for it, so that a
process fails at start, loudly, instead of reconnecting in silence. A broker that cannot
be reached yet is not an error here: the MQTT client retries.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from sync.errors import BrokerTlsError

HANDSHAKE_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where a client's TLS material is.

    Attributes:
        ca_file: CA bundle that signed the broker's certificate; ``None``: the system's.
        cert_file: Client certificate for mutual TLS (with ``key_file``).
        key_file: The client certificate's private key.
    """

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate and its key go together")


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """A TLS client context that verifies the broker's certificate and host name.

    Raises:
        BrokerTlsError: A file is missing or is not a certificate or key.
    """
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH,
            cafile=str(files.ca_file) if files.ca_file is not None else None)
        if files.cert_file is not None and files.key_file is not None:
            context.load_cert_chain(str(files.cert_file), str(files.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise BrokerTlsError(f"cannot load the MQTT TLS files ({files}): {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def check_broker_tls(host: str, port: int, context: ssl.SSLContext, *,
                     timeout_s: float = HANDSHAKE_TIMEOUT_S) -> bool:
    """Shake hands with the broker once, as the MQTT client will.

    Returns:
        True when the handshake succeeded; False when the broker could not be reached
        (not listening yet, network down): the caller's MQTT client will retry.

    Raises:
        BrokerTlsError: The broker answered but its certificate does not verify against
            the CA or names another host, it refused our client certificate, or it does
            not speak TLS on that port.
    """
    try:
        raw = socket.create_connection((host, port), timeout=timeout_s)
    except OSError:
        return False
    try:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            # TLS 1.3 reports a refused client certificate only with the first read.
            tls.settimeout(0.2)
            with contextlib.suppress(TimeoutError, BlockingIOError):
                tls.recv(1)
    except ssl.SSLCertVerificationError as exc:
        raise BrokerTlsError(
            f"the broker at {host}:{port} failed TLS verification: "
            f"{exc.verify_message or exc}") from exc
    except ssl.SSLError as exc:
        raise BrokerTlsError(f"TLS with the broker at {host}:{port} failed: {exc}") from exc
    except (ConnectionResetError, BrokenPipeError) as exc:
        raise BrokerTlsError(
            f"the broker at {host}:{port} closed the TLS handshake: {exc}") from exc
    except OSError:
        return False
    finally:
        raw.close()
    return True
