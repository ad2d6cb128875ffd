"""OpenBao's HTTP API: the one client the controller's modules and the hosts' tool use.

Only the standard library, so the same file runs in an Ansible module on the controller and,
shipped by the sevenleague-pki package, in the timer on a Debian host. Every request has a
timeout and verifies TLS against `ca_cert` (the system trust store without it); a `unix://` URL
is OpenBao's unix listener on this host, plain HTTP on a socket only root can open. Errors are
OpenBaoError, one line naming OpenBao and the cause, with `retry` set when waiting may help
(unreachable, sealed, 429, 5xx); Refused is every other 4xx, with OpenBao's `errors`.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request

SEALED_HINT = "unseal it (see roles/openbao/README.md)"
# The openbao role closes the API port from each start of the service until it is unsealed.
REFUSED_HINT = f"OpenBao is stopped, or sealed, its API port closed until it is unsealed: {SEALED_HINT}"
REQUEST_TIMEOUT = 10
UNIX = "unix://"


class OpenBaoError(Exception):
    """A request failed; the message names OpenBao and the cause."""

    def __init__(self, message: str, *, retry: bool = False, status: int | None = None, errors: str = ""):
        super().__init__(message)
        self.retry = retry
        self.status = status
        self.errors = errors


class Refused(OpenBaoError):
    """OpenBao answered with a 4xx other than 429: waiting will not help."""

    def __init__(self, message: str, status: int, errors: str):
        super().__init__(message, retry=False, status=status, errors=errors)


def one_line(text) -> str:
    return " ".join(str(text).split())


def errors_of(body: bytes) -> str:
    """OpenBao's `errors` list as one line; the raw body when it is not OpenBao's JSON."""
    try:
        errors = json.loads(body.decode("utf-8", "replace")).get("errors")
    except (ValueError, AttributeError):
        errors = None
    if errors:
        # "1 error occurred:\n\t* permission denied\n\n" -> "permission denied"
        cleaned = [re.sub(r"^\d+ errors? occurred:\s*\*\s*", "", one_line(error)) for error in errors]
        return "; ".join(text.replace(" * ", "; ") for text in cleaned)
    return one_line(body.decode("utf-8", "replace"))[:300] or "no details"


def network_reason(reason, timeout: float = REQUEST_TIMEOUT) -> str:
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"TLS verification failed: {reason.verify_message or reason.reason}"
    if isinstance(reason, ssl.SSLError):
        return f"TLS error: {reason.reason or reason}"
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout} s"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason)


def _unix_opener(path: str) -> urllib.request.OpenerDirector:
    """urllib over the unix socket at `path`; no proxy, whatever the environment says."""

    class Connection(http.client.HTTPConnection):
        def connect(self):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(path)
            except OSError:
                sock.close()
                raise
            self.sock = sock

    class Handler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(Connection, req)

    return urllib.request.build_opener(urllib.request.ProxyHandler({}), Handler())


def quote(path: str) -> str:
    """A path for the URL; a query string (sys/health?standbycode=200) passes as it is."""
    return urllib.parse.quote(path.strip("/"), safe="/?=&")


class OpenBao:
    """One OpenBao server: `request` for any call, `read` and `write` for the KV-shaped ones."""

    def __init__(
        self,
        url: str,
        ca_cert: str | None = None,
        token: str | None = None,
        timeout: float = REQUEST_TIMEOUT,
        validate_certs: bool = True,
    ):
        self.url = url.rstrip("/")
        self.ca_cert = ca_cert
        self.token = token
        self.timeout = timeout
        self.validate_certs = validate_certs

    def context(self, client_cert: tuple[str, str] | None = None) -> ssl.SSLContext:
        if self.validate_certs:
            context = ssl.create_default_context(cafile=self.ca_cert)
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if client_cert:
            certfile, keyfile = client_cert
            try:
                context.load_cert_chain(certfile, keyfile)
            except (OSError, ssl.SSLError) as exc:
                raise OpenBaoError(
                    f"cannot use {certfile} and {keyfile} as a client certificate: {network_reason(exc)}"
                ) from None
        return context

    def request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        body: dict | None = None,
        token: str | None = None,
        client_cert: tuple[str, str] | None = None,
    ) -> dict:
        """OpenBao's JSON answer to `method /v1/<path>` ({} for an empty one)."""
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        token = token if token is not None else self.token
        if token:
            headers["X-Vault-Token"] = token
        base = "http://localhost" if self.url.startswith(UNIX) else self.url
        request = urllib.request.Request(f"{base}/v1/{quote(path)}", data=data, method=method, headers=headers)
        try:
            if self.url.startswith(UNIX):
                answer = _unix_opener(self.url[len(UNIX) :]).open(request, timeout=self.timeout)
            else:
                answer = urllib.request.urlopen(request, context=self.context(client_cert), timeout=self.timeout)
            with answer:
                payload = answer.read()
        except urllib.error.HTTPError as exc:
            errors = errors_of(exc.read() or b"")
            if exc.code == 503 and "sealed" in errors.lower():
                raise OpenBaoError(
                    f"OpenBao at {self.url} is sealed: {SEALED_HINT}", retry=True, status=503, errors=errors
                ) from None
            if exc.code == 429 or exc.code >= 500:
                raise OpenBaoError(
                    f"OpenBao at {self.url} answered {exc.code} to {what}: {errors}",
                    retry=True,
                    status=exc.code,
                    errors=errors,
                ) from None
            raise Refused(f"OpenBao at {self.url} refused {what} ({exc.code}): {errors}", exc.code, errors) from None
        except urllib.error.URLError as exc:
            reason = network_reason(exc.reason, self.timeout)
            if isinstance(exc.reason, ssl.SSLCertVerificationError):
                reason += f" (does {self.ca_cert or 'the system trust store'} hold the CA of OpenBao's listener?)"
            if isinstance(exc.reason, ConnectionRefusedError) and not self.url.startswith(UNIX):
                reason += f" ({REFUSED_HINT})"
            raise OpenBaoError(f"cannot reach OpenBao at {self.url} ({what}): {reason}", retry=True) from None
        except OSError as exc:  # a timeout or reset while reading the answer
            raise OpenBaoError(
                f"cannot reach OpenBao at {self.url} ({what}): {network_reason(exc, self.timeout)}", retry=True
            ) from None
        if not payload.strip():
            return {}
        try:
            return json.loads(payload)
        except ValueError:
            raise OpenBaoError(
                f"OpenBao at {self.url} answered {what} with something that is not JSON", retry=True
            ) from None

    def read(self, path: str) -> tuple[bool, dict]:
        """(exists, data) for `path`. OpenBao answers "nothing here" with 404, and some paths
        (an issuer not created yet) with 400 or 500: all of these count as absent."""
        try:
            answer = self.request("GET", path, what=f"reading {path}")
        except OpenBaoError as exc:
            if exc.status in (400, 404) or (exc.status == 500 and "sealed" not in exc.errors.lower()):
                return False, {}
            raise
        if not answer:
            return False, {}
        return True, dict(answer.get("data") or answer)

    def delete(self, path: str) -> None:
        self.request("DELETE", path, what=f"deleting {path}")

    def write(self, path: str, data: dict) -> dict:
        """OpenBao's answer to writing `data` at `path`: its `data`; {"auth": ...} for the calls
        that answer with a token instead (auth/token/create); the whole answer of the calls that
        have neither (sys/init, sys/unseal)."""
        answer = self.request("POST", path, what=f"writing {path}", body=data)
        if not isinstance(answer, dict):
            return {}
        if isinstance(answer.get("data"), dict):
            return dict(answer["data"])
        if "data" in answer:
            return {"auth": dict(answer["auth"])} if isinstance(answer.get("auth"), dict) else {}
        return dict(answer)


__all__ = [
    "REFUSED_HINT",
    "REQUEST_TIMEOUT",
    "SEALED_HINT",
    "UNIX",
    "OpenBao",
    "OpenBaoError",
    "Refused",
    "errors_of",
    "network_reason",
    "one_line",
    "quote",
]
