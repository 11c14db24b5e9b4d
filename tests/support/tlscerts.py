"""A throwaway private CA with a server and a client certificate, made by `openssl`.

The server certificate names 127.0.0.1 (and localhost) so a client verifies it by the
address the test servers listen on; the client certificate is for mutual TLS. EC keys
keep generation to a few tens of milliseconds. Everything is written into one
directory; nothing touches the machine's trust store.
"""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    dir: Path

    def __getattr__(self, name: str) -> Path:  # ca_pem, server_pem, server_key, client_pem, client_key
        stem, _, ext = name.rpartition("_")
        if ext not in ("pem", "key") or not stem:
            raise AttributeError(name)
        return self.dir / f"{stem}.{ext}"

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_pem, self.server_key)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca_pem)
        return context


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(dir: Path, name: str, usage: str, san: str | None) -> None:
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=test {name}", cwd=dir)
    ext = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature",
           f"extendedKeyUsage={usage}", "subjectKeyIdentifier=hash", "authorityKeyIdentifier=keyid"]
    if san:
        ext.append(f"subjectAltName={san}")
    (dir / f"{name}.ext").write_text("\n".join(ext) + "\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext", cwd=dir)


def generate(dir: Path) -> Pki:
    dir.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test private CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash", cwd=dir)
    _issue(dir, "server", "serverAuth", "IP:127.0.0.1,DNS:localhost")
    _issue(dir, "client", "clientAuth", None)
    return Pki(dir)
