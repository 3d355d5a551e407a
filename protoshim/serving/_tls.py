"""TLS for the listeners: one server-side ``ssl.SSLContext`` from the options.

Every file is read here, before any socket is opened, so a missing
certificate or a wrong password ends the command in one line instead of
failing each handshake later.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from ._errors import CliError

__all__ = ["CERT_REQS", "HTTP_ALPN", "TLSConfig", "parse_cert_reqs"]

#: What an HTTP server offers in ALPN: protoshim's HTTP protocol speaks HTTP/1.1 only.
HTTP_ALPN = ("http/1.1",)

#: ``--cert-reqs`` values: uvicorn's numbers (the ``ssl.CERT_*`` values) and names.
CERT_REQS = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


def parse_cert_reqs(text: str) -> ssl.VerifyMode:
    """Return the verify mode ``text`` names: 0/1/2 or none/optional/required."""
    name = text.strip().lower()
    for key, mode in CERT_REQS.items():
        if name in (key, str(int(mode))):
            return mode
    raise CliError(f"--cert-reqs: expected 0/none, 1/optional or 2/required, got {text!r}")


@dataclass(frozen=True)
class TLSConfig:
    """The TLS options of a server; with no ``certfile`` it serves plain TCP."""

    certfile: str | None = None
    keyfile: str | None = None
    keyfile_password: str | None = None
    ca_certs: str | None = None
    cert_reqs: ssl.VerifyMode = ssl.CERT_NONE

    def context(self, alpn: Sequence[str] = ()) -> ssl.SSLContext | None:
        """Build the server's context, offering ``alpn``; None without a certificate.

        Raise :class:`CliError` for an option without ``--certfile``, an
        unreadable file, a key that does not match or a wrong password.
        """
        if self.certfile is None:
            given = [
                option
                for option, value in (
                    ("--keyfile", self.keyfile),
                    ("--keyfile-password", self.keyfile_password),
                    ("--ca-certs", self.ca_certs),
                    ("--cert-reqs", self.cert_reqs != ssl.CERT_NONE or None),
                )
                if value is not None
            ]
            if given:
                raise CliError(f"{given[0]} needs --certfile")
            return None
        if self.cert_reqs != ssl.CERT_NONE and self.ca_certs is None:
            raise CliError("--cert-reqs optional/required needs --ca-certs to check clients with")
        # PROTOCOL_TLS_SERVER: no hostname check, which a server has no use
        # for; TLS 1.2 is the oldest version still considered safe.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load_chain(context)
        if self.ca_certs is not None:
            _readable("--ca-certs", self.ca_certs)
            try:
                context.load_verify_locations(cafile=self.ca_certs)
            except ssl.SSLError as exc:
                reason = _reason(exc, "expected a PEM file of CA certificates")
                raise CliError(f"--ca-certs {self.ca_certs}: {reason}") from None
        context.verify_mode = self.cert_reqs
        if alpn:
            context.set_alpn_protocols(list(alpn))
        return context

    def _load_chain(self, context: ssl.SSLContext) -> None:
        assert self.certfile is not None
        _readable("--certfile", self.certfile)
        if self.keyfile is not None:
            _readable("--keyfile", self.keyfile)
        asked: list[bool] = []

        def password() -> bytes:
            # Always a callback: with None, OpenSSL would prompt on the terminal.
            asked.append(True)
            return (self.keyfile_password or "").encode()

        try:
            context.load_cert_chain(self.certfile, self.keyfile, password)
        except ssl.SSLError as exc:
            key = self.keyfile or self.certfile
            if asked and self.keyfile_password is None:
                raise CliError(f"the key in {key} is encrypted: give --keyfile-password") from None
            if asked:
                raise CliError(f"--keyfile-password does not decrypt the key in {key}") from None
            files = self.certfile if self.keyfile is None else f"{self.certfile} and {key}"
            reason = _reason(exc, "expected PEM files with a certificate chain and its key")
            raise CliError(f"cannot load the certificate and key from {files}: {reason}") from None


def _readable(option: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise CliError(f"cannot read {option} {path}: {exc.strerror or exc}") from None


def _reason(exc: ssl.SSLError, expected: str) -> str:
    """OpenSSL's reason in words; its PEM errors carry none, so say what was expected."""
    if exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    return expected
