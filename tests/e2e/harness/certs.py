"""TLS material, the static admin token and the kubeconfig of one e2e control plane, written with the openssl CLI.

Called once per session by `cluster.ControlPlane.start`. Everything lands in the session's temp dir and is valid
for two days: long enough for any test run, short enough that a leaked file is useless.
"""
from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

ADMIN_USER = "kvsched-e2e-admin"


@dataclass(frozen=True)
class Credentials:
    """Files the apiserver and its clients share."""

    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    service_account_key: Path
    service_account_pub: Path
    token_file: Path
    admin_token: str


def _openssl(openssl: Path, *args: str, cwd: Path) -> None:
    subprocess.run([str(openssl), *args], cwd=cwd, check=True, capture_output=True)


def write_credentials(directory: Path, openssl: Path) -> Credentials:
    """Create a CA, an apiserver serving cert for 127.0.0.1/localhost, a service-account key pair and a token file.

    The token file grants the admin token the group system:masters. Raises subprocess.CalledProcessError if
    openssl fails.
    """
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=kvsched-e2e-ca",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    _openssl(openssl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key",
             "-out", "apiserver.csr", "-subj", "/CN=kube-apiserver", cwd=directory)
    (directory / "apiserver.ext").write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc\n"
    )
    _openssl(openssl, "x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "apiserver.ext", "-out", "apiserver.crt", cwd=directory)
    _openssl(openssl, "genrsa", "-out", "sa.key", "2048", cwd=directory)
    _openssl(openssl, "rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)
    token = secrets.token_hex(16)
    token_file = directory / "tokens.csv"
    token_file.write_text(f'{token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
    return Credentials(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        serving_cert=directory / "apiserver.crt",
        serving_key=directory / "apiserver.key",
        service_account_key=directory / "sa.key",
        service_account_pub=directory / "sa.pub",
        token_file=token_file,
        admin_token=token,
    )


def write_kubeconfig(path: Path, server: str, creds: Credentials) -> Path:
    """Write a kubeconfig for `server` that trusts the CA and authenticates with the admin token."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": server, "certificate-authority": str(creds.ca_cert)}}],
        "users": [{"name": "admin", "user": {"token": creds.admin_token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "admin"}}],
        "current-context": "e2e",
    }
    path.write_text(yaml.safe_dump(config))
    return path
