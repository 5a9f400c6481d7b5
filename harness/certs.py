"""Certificates for everything the harness serves over TLS, made by one generator: trustme.

trustme (python-trio's test CA) makes a throwaway CA and leaf certificates with the
extensions TLS stacks check (key usage, SANs, key identifiers), EC P-256 keys in
milliseconds. The API server's client-certificate user is the leaf's common name and its
groups the organisation, so the admin certificate is a trustme leaf too. The one key that
is not a certificate, the ServiceAccount token signing key, is an RSA key pair: what
clusters use and what token verifiers expect by default.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import trustme


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)
    return path


@dataclass(frozen=True)
class ServingCert:
    """A CA and one server certificate signed by it, as files."""

    ca: Path
    cert: Path
    key: Path

    @property
    def ca_pem(self) -> bytes:
        return self.ca.read_bytes()


def serving_cert(directory: Path, *hosts: str, ca: trustme.CA | None = None, name: str = "tls") -> ServingCert:
    """A certificate for ``hosts`` (default 127.0.0.1 and localhost) in ``directory``:
    ``ca.crt``, ``<name>.crt``, ``<name>.key``; from ``ca`` or a new CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = ca or trustme.CA(organization_name="kubescribe-test")
    leaf = ca.issue_cert(*(hosts or ("127.0.0.1", "localhost")))
    return ServingCert(
        ca=_write(directory / "ca.crt", ca.cert_pem.bytes()),
        cert=_write(directory / f"{name}.crt", b"".join(blob.bytes() for blob in leaf.cert_chain_pems)),
        key=_write(directory / f"{name}.key", leaf.private_key_pem.bytes(), private=True),
    )


def make_tls_certs(directory: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 and localhost: ``{"ca", "cert", "key"}``."""
    certs = serving_cert(directory, name="server")
    return {"ca": certs.ca, "cert": certs.cert, "key": certs.key}


@dataclass(frozen=True)
class ClusterPki:
    """The envtest control plane's files: CA, API server serving cert, admin client cert,
    ServiceAccount signing key pair."""

    dir: Path
    ca_cert: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path


def cluster_pki(directory: Path, *, host: str, service_cidr: str, admin_user: str) -> ClusterPki:
    """The serving certificate covers loopback, ``host``, the first address of the Service
    range (the ``kubernetes`` Service) and the in-cluster DNS names; the admin is
    ``admin_user`` in ``system:masters``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    service_ip = next(ipaddress.ip_network(service_cidr).hosts())  # 10.96.0.1 by default
    ips = sorted({ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address(host), service_ip})
    ca = trustme.CA(organization_name="kubescribe-envtest")
    serving = serving_cert(directory, *(str(ip) for ip in ips), "localhost", "kubernetes", "kubernetes.default",
                           "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", ca=ca, name="serving")
    admin = ca.issue_cert(admin_user, common_name=admin_user, organization_name="system:masters")
    admin_cert = _write(directory / "admin.crt", admin.cert_chain_pems[0].bytes())
    admin_key = _write(directory / "admin.key", admin.private_key_pem.bytes(), private=True)
    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_key = _write(directory / "sa.key", sa.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()), private=True)
    sa_pub = _write(directory / "sa.pub", sa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return ClusterPki(dir=directory, ca_cert=serving.ca, serving_cert=serving.cert, serving_key=serving.key,
                      admin_cert=admin_cert, admin_key=admin_key, sa_key=sa_key, sa_pub=sa_pub)
