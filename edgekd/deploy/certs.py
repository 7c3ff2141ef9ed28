"""Self-signed development certificates and SuperNode authentication keys.

For a test or a local/lab deployment, this writes everything Flower's TLS and SuperNode
authentication need into one directory:

=========================  ===============================================================
``ca.crt``, ``ca.key``     a self-signed certificate authority (give ``ca.crt`` to every
                           SuperNode as ``--root-certificates`` and to ``flwr`` as the
                           connection's ``root-certificates``; keep ``ca.key`` private)
``server.crt``             the SuperLink's certificate, signed by the CA, valid for the host
                           names / IP addresses given (default ``127.0.0.1`` and
                           ``localhost``): ``--ssl-certfile``
``server.key``             its private key: ``--ssl-keyfile``
``supernode-<i>``          SuperNode ``i``'s ECDSA P-384 private key, OpenSSH format:
                           ``flower-supernode --auth-supernode-private-key``
``supernode-<i>.pub``      its public key, OpenSSH format: ``flwr supernode register``
=========================  ===============================================================

Private keys are written with mode 0600. These are *development* credentials: for a
production SuperLink use a certificate from your organisation's CA, and generate each
SuperNode's key on the device itself (``ssh-keygen -t ecdsa -b 384 -N "" -f supernode-0``)
so that the private key never leaves it.

Usage::

    python -m edgekd.deploy certs OUT_DIR [--nodes 2] [--host 127.0.0.1 --host localhost]
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "DEFAULT_HOSTS",
    "DevCredentials",
    "generate_dev_credentials",
    "generate_node_key",
]

DEFAULT_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class DevCredentials:
    """Paths of the files written by :func:`generate_dev_credentials`.

    Attributes
    ----------
    directory : Path
        The output directory.
    ca_cert, ca_key : Path
        The certificate authority.
    server_cert, server_key : Path
        The SuperLink's TLS certificate and key.
    node_keys : tuple of (Path, Path)
        ``(private key, public key)`` of every SuperNode, in node order.
    """

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    node_keys: tuple[tuple[Path, Path], ...]

    @classmethod
    def load(cls, directory: str | Path) -> DevCredentials:
        """Find the files of an existing credentials directory (written earlier)."""
        root = Path(directory).expanduser().resolve()
        creds = cls(
            directory=root,
            ca_cert=root / "ca.crt",
            ca_key=root / "ca.key",
            server_cert=root / "server.crt",
            server_key=root / "server.key",
            node_keys=tuple(
                (path, path.with_name(path.name + ".pub"))
                for path in sorted(root.glob("supernode-*"), key=_node_index)
                if not path.name.endswith(".pub")
            ),
        )
        for path in (creds.ca_cert, creds.server_cert, creds.server_key):
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} is missing; create the credentials with "
                    f"`python -m edgekd.deploy certs {root}`"
                )
        return creds


def _node_index(path: Path) -> int:
    suffix = path.name.removeprefix("supernode-").removesuffix(".pub")
    return int(suffix) if suffix.isdigit() else 1 << 30


def _write(path: Path, data: bytes, private: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if private:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        path.chmod(0o600)
    else:
        path.write_bytes(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def generate_node_key(private_path: str | Path, comment: str = "") -> tuple[Path, Path]:
    """Write one SuperNode authentication key pair (ECDSA P-384, OpenSSH format).

    Parameters
    ----------
    private_path : str | Path
        Where the private key goes (mode 0600); the public key goes to ``<path>.pub``.
    comment : str, optional
        Appended to the public key line (e.g. the node's name).

    Returns
    -------
    tuple of Path
        ``(private key path, public key path)``.
    """
    private = Path(private_path)
    public = private.with_name(private.name + ".pub")
    key = ec.generate_private_key(ec.SECP384R1())
    _write(
        private,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
        private=True,
    )
    line = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    if comment:
        line += b" " + comment.encode()
    _write(public, line + b"\n", private=False)
    return private, public


def _ca_certificate(
    start: datetime.datetime, end: datetime.datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed development CA (key and certificate) valid from ``start`` to ``end``."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgekd development CA")])
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    return ca_key, ca_cert


def _server_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hosts: Sequence[str],
    start: datetime.datetime,
    end: datetime.datetime,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The SuperLink's key and certificate for ``hosts``, signed by the CA."""
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return server_key, server_cert


def generate_dev_credentials(
    out_dir: str | Path,
    num_nodes: int = 2,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = 365,
) -> DevCredentials:
    """Write a development CA, a SuperLink certificate and ``num_nodes`` SuperNode key pairs.

    Parameters
    ----------
    out_dir : str | Path
        Output directory (created; existing files of the same names are overwritten).
    num_nodes : int, optional
        Number of SuperNode key pairs, ``supernode-0`` ... ``supernode-<num_nodes - 1>``.
    hosts : sequence of str, optional
        Host names and IP addresses the SuperLink certificate is valid for (its
        subjectAltName); SuperNodes and ``flwr`` must reach the SuperLink under one of them.
    days : int, optional
        Validity of the certificates.

    Returns
    -------
    DevCredentials
        The paths written.

    Raises
    ------
    ValueError
        If ``num_nodes < 0``, ``days < 1`` or ``hosts`` is empty.
    """
    if num_nodes < 0:
        raise ValueError(f"num_nodes must be >= 0, got {num_nodes}")
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    if not hosts:
        raise ValueError("give at least one host name or IP address for the certificate")
    root = Path(out_dir).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key, ca_cert = _ca_certificate(start, end)
    server_key, server_cert = _server_certificate(ca_key, ca_cert, hosts, start, end)

    paths = {name: root / name for name in ("ca.crt", "ca.key", "server.crt", "server.key")}
    _write(paths["ca.crt"], ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(paths["ca.key"], _pem_key(ca_key), private=True)
    _write(paths["server.crt"], server_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(paths["server.key"], _pem_key(server_key), private=True)
    node_keys = tuple(
        generate_node_key(root / f"supernode-{i}", comment=f"edgekd-supernode-{i}")
        for i in range(num_nodes)
    )
    return DevCredentials(
        directory=root,
        ca_cert=paths["ca.crt"],
        ca_key=paths["ca.key"],
        server_cert=paths["server.crt"],
        server_key=paths["server.key"],
        node_keys=node_keys,
    )
