"""A throwaway certificate authority and server certificate for the HTTPS cells, made at run time.

DeepSeek is served over HTTPS, so the benchmark has cells whose load server speaks TLS
(:mod:`benchmarks.loadserver` ``--tls-cert``). :func:`make_certificates` writes a CA and a
certificate for ``127.0.0.1`` signed by it (ECDSA P-256, valid two days) with the
``openssl`` command-line tool, or with the ``cryptography`` package when there is no
``openssl``; each contender then trusts the CA through its own option (urllib3's
``ca_certs``, a requests session's ``verify``, an ``ssl.SSLContext`` for httpx and
aiohttp). Nothing is installed anywhere: the files live in a temporary directory.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Certificates", "make_certificates"]

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Certificates:
    """Where the files are: the CA the clients trust, the server's certificate chain and key."""

    ca: str
    cert: str
    key: str


def make_certificates(directory: Path) -> Certificates:
    """Write a throwaway CA and a server certificate for 127.0.0.1 into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    found = Certificates(str(directory / "ca.pem"), str(directory / "server.pem"), str(directory / "server.key"))
    openssl = shutil.which("openssl")
    if openssl is not None:
        _with_openssl(openssl, directory, found)
    else:
        _with_cryptography(found)
    return found


def _with_openssl(openssl: str, directory: Path, files: Certificates) -> None:
    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    ca_key = str(directory / "ca.key")
    run(
        "req", "-x509", *ec, "-days", "2", "-subj", "/CN=deepseek-pool benchmark CA",
        "-keyout", ca_key, "-out", files.ca,
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    request = str(directory / "server.csr")
    run("req", "-new", *ec, "-subj", f"/CN={HOST}", "-keyout", files.key, "-out", request)
    extensions = directory / "server.ext"
    extensions.write_text(
        f"subjectAltName=IP:{HOST}\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    leaf = str(directory / "leaf.pem")
    run(
        "x509", "-req", "-in", request, "-CA", files.ca, "-CAkey", ca_key, "-CAcreateserial",
        "-days", "2", "-out", leaf, "-extfile", str(extensions),
    )  # fmt: skip
    Path(files.cert).write_text(Path(leaf).read_text() + Path(files.ca).read_text())


def _with_cryptography(files: Certificates) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "deepseek-pool benchmark CA")])
    unused = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement")
    usage = dict.fromkeys((*unused, "encipher_only", "decipher_only"), False)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(key_cert_sign=True, crl_sign=True, **usage), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    Path(files.ca).write_bytes(ca.public_bytes(pem))
    Path(files.cert).write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    Path(files.key).write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
