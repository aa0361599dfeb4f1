"""Real servers for the tests: a throwaway InfluxDB 1.x and Mosquitto, each on free ports in a temp dir.

The fixtures in conftest.py use these helpers; a test that needs a broker with its own configuration (auth,
ACL) calls ``start_mosquitto`` itself. A missing binary skips the test locally and fails it under CI
(``CI`` set), so a CI image without the servers cannot pass by skipping everything.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

__all__ = [
    "INFLUXD",
    "MOSQUITTO",
    "PG_BIN",
    "InfluxServer",
    "MosquittoServer",
    "PostgresServer",
    "TestPki",
    "free_port",
    "influxd_config",
    "need",
    "start_influxd",
    "start_mosquitto",
    "start_postgres",
    "tls_listener_config",
]

INFLUXD = "/usr/bin/influxd"
MOSQUITTO = "/usr/sbin/mosquitto"
# Debian's postgresql (15 on bookworm): the newest installed major version's binaries
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit()
             else 0, default=Path("/usr/lib/postgresql/15/bin"))
START_TIMEOUT_S = 30.0


def need(binary: str) -> str:
    """The path of ``binary`` (a name on PATH or a full path): skip the test if missing, fail under CI."""
    path = binary if os.path.isabs(binary) and os.access(binary, os.X_OK) else shutil.which(binary)
    if path is None:
        reason = f"{binary} is not installed"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: the test image must provide it)")
        pytest.skip(reason)  # locally only: under CI the line above has failed the test
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-limit:]
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------- InfluxDB


class InfluxServer:
    """A running influxd: ``url`` is its HTTP API; with auth on, ``admin`` is its admin's (user, password)."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, root: Path,
                 admin: tuple[str, str] | None = None) -> None:
        self.proc, self.url, self.root, self.admin = proc, url, root, admin

    @property
    def log_path(self) -> Path:
        return self.root / "influxd.log"

    def stop(self) -> None:
        _stop(self.proc)

    def start(self) -> None:
        """Start again on the same config, ports and data (after stop(): an outage ends)."""
        self.proc = _spawn_influxd(self.root)
        _wait_http(self.url, self.proc, self.log_path)


def _set(text: str, section: str, key: str, value: str) -> str:
    """Set ``key = value`` in ``[section]`` ("" for the top level) of influxd's TOML; the key must exist."""
    header = re.compile(r"^\s*\[\[?([^\]]+)\]\]?\s*$")
    out, current, done = [], "", False
    for row in text.splitlines():
        m = header.match(row)
        if m:
            current = m.group(1).strip()
        elif current == section and re.match(rf"^\s*{re.escape(key)}\s*=", row) and not done:
            indent = row[: len(row) - len(row.lstrip())]
            out.append(f"{indent}{key} = {value}")
            done = True
            continue
        out.append(row)
    if not done:
        raise KeyError(f"influxd config has no {key!r} in [{section}]")
    return "\n".join(out) + "\n"


def influxd_config(root: Path, http_port: int, rpc_port: int, *, auth: bool = False) -> str:
    """influxd's own default config (``influxd config``) rewritten to live in ``root`` on the given ports."""
    text = subprocess.run(
        [INFLUXD, "config"], capture_output=True, check=True, timeout=30, cwd=root
    ).stdout.decode()
    q = '"{}"'.format
    if re.search(r"(?m)^reporting-disabled\s*=", text):
        text = _set(text, "", "reporting-disabled", "true")
    else:  # Debian's build spells it the other way round
        text = _set(text, "", "reporting-enabled", "false")
    for section, key, value in [
        ("", "bind-address", q(f"127.0.0.1:{rpc_port}")),
        ("meta", "dir", q(root / "meta")),
        ("meta", "logging-enabled", "false"),
        ("data", "dir", q(root / "data")),
        ("data", "wal-dir", q(root / "wal")),
        ("data", "query-log-enabled", "false"),
        ("monitor", "store-enabled", "false"),
        ("http", "bind-address", q(f"127.0.0.1:{http_port}")),
        ("http", "log-enabled", "false"),
        ("http", "pprof-enabled", "false"),
        ("http", "bind-socket", q(root / "influxdb.sock")),
        ("logging", "level", q("warn")),
        ("logging", "suppress-logo", "true"),
        ("continuous_queries", "log-enabled", "false"),
        ("http", "auth-enabled", "true" if auth else "false"),
    ]:
        text = _set(text, section, key, value)
    return text


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, ca_file: Path | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"influxd exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=1, context=context) as resp:  # noqa: S310 (127.0.0.1)
                if resp.status == 204:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    _stop(proc)
    raise RuntimeError(f"influxd did not answer {url}/ping within {START_TIMEOUT_S:.0f} s:\n{_tail(log)}")


T = TypeVar("T")
PORT_ATTEMPTS = 3  # free_port() is free "a moment ago": a client's ephemeral port may take it before the server


def _on_free_ports(start: Callable[[], T]) -> T:
    """``start()`` again (it picks new ports) when the server lost its port to someone else meanwhile."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            return start()
        except RuntimeError as exc:
            if attempt == PORT_ATTEMPTS or "address already in use" not in str(exc).lower():
                raise
    raise AssertionError("unreachable")


def start_influxd(root: Path, *, admin: tuple[str, str] | None = None,
                  https: tuple[Path, Path, Path] | None = None) -> InfluxServer:
    """Start influxd with a throwaway config and data under ``root``; returns when /ping answers 204.

    ``admin`` (user, password): HTTP authentication on, with that admin created as the official image does on
    its first start (InfluxDB lets the first user be created without credentials). ``https`` (certificate,
    key, CA file) serves the API over TLS only.
    """
    need(INFLUXD)
    root.mkdir(parents=True, exist_ok=True)
    return _on_free_ports(lambda: _start_influxd(root, admin, https))


def _start_influxd(root: Path, admin: tuple[str, str] | None = None,
                   https: tuple[Path, Path, Path] | None = None) -> InfluxServer:
    (root / "influxd.log").unlink(missing_ok=True)  # an earlier attempt's error must not decide this one's
    http_port, rpc_port = free_port(), free_port()
    conf = root / "influxdb.conf"
    text = influxd_config(root, http_port, rpc_port, auth=admin is not None)
    if https is not None:
        text = _set(text, "http", "https-enabled", "true")
        text = _set(text, "http", "https-certificate", f'"{https[0]}"')
        text = _set(text, "http", "https-private-key", f'"{https[1]}"')
    conf.write_text(text, encoding="utf-8")
    proc = _spawn_influxd(root)
    url = f"{'https' if https else 'http'}://127.0.0.1:{http_port}"
    _wait_http(url, proc, root / "influxd.log", https[2] if https else None)
    if admin is not None:
        user, password = (x.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'") for x in admin)
        statement = f"CREATE USER \"{user}\" WITH PASSWORD '{password}' WITH ALL PRIVILEGES"
        data = urllib.parse.urlencode({"q": statement}).encode()
        with urllib.request.urlopen(f"{url}/query", data=data, timeout=10) as resp:  # noqa: S310 (http://127.0.0.1)
            assert b'"error"' not in resp.read()
    return InfluxServer(proc, url, root, admin)


def _spawn_influxd(root: Path) -> subprocess.Popen[bytes]:
    with (root / "influxd.log").open("ab") as out:
        return subprocess.Popen([INFLUXD, "-config", str(root / "influxdb.conf")], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


# -------------------------------------------------------------------------------------------- Mosquitto


class MosquittoServer:
    """A running mosquitto listening on ``host``:``port``; ``log_path`` is its log file."""

    def __init__(self, proc: subprocess.Popen[bytes], host: str, port: int, root: Path) -> None:
        self.proc, self.host, self.port, self.root = proc, host, port, root

    @property
    def log_path(self) -> Path:
        return self.root / "mosquitto.log"

    @property
    def log(self) -> str:
        return _tail(self.log_path, 100_000)

    def stop(self) -> None:
        _stop(self.proc)


def start_mosquitto(config_text: str, tmp_path: Path) -> MosquittoServer:
    """Start mosquitto on a free port of 127.0.0.1 with ``config_text`` as the rest of its config.

    The helper writes the ``listener``, ``user`` and logging lines itself (to ``tmp_path/mosquitto.log``);
    ``config_text`` holds everything else (``allow_anonymous``, ``password_file``, ``acl_file``, limits) and
    must not declare a listener. Returns when a TCP connect to the port succeeds.
    """
    need(MOSQUITTO)
    tmp_path.mkdir(parents=True, exist_ok=True)
    return _on_free_ports(lambda: _start_mosquitto(config_text, tmp_path))


def _start_mosquitto(config_text: str, tmp_path: Path) -> MosquittoServer:
    host, port = "127.0.0.1", free_port()
    log = tmp_path / "mosquitto.log"
    log.unlink(missing_ok=True)  # an earlier attempt's error must not decide this one's
    header = "\n".join(
        [
            f"listener {port} {host}",
            # as root mosquitto drops to user "mosquitto", which cannot write the temp dir: stay who we are
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            f"log_dest file {log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "",
        ]
    )
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(header + config_text.strip() + "\n", encoding="utf-8")
    with (tmp_path / "mosquitto.stderr").open("wb") as err:
        proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)], stdout=err, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stderr = _tail(tmp_path / "mosquitto.stderr")
            raise RuntimeError(f"mosquitto exited with {proc.returncode}:\n{stderr}\n{_tail(log)}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return MosquittoServer(proc, host, port, tmp_path)
        except OSError:
            time.sleep(0.05)
    _stop(proc)
    raise RuntimeError(f"mosquitto did not listen on {host}:{port} in {START_TIMEOUT_S:.0f} s:\n{_tail(log)}")


# ------------------------------------------------------------------------------------------- PostgreSQL


class PostgresServer:
    """A throwaway PostgreSQL cluster on a free port of 127.0.0.1 (trust auth); ``url(db)`` names a database."""

    def __init__(self, root: Path, port: int, run_as: list[str]) -> None:
        self.root, self.port, self.run_as = root, port, run_as

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://smartpark@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        subprocess.run([*self.run_as, str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", "smartpark", name], check=True, capture_output=True, timeout=30)
        return self.url(name)

    def stop(self) -> None:
        subprocess.run([*self.run_as, str(PG_BIN / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w",
                        "stop"], check=False, capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """initdb + pg_ctl start in a fresh temp dir; as root, the cluster runs as the ``postgres`` user.

    PostgreSQL refuses to run as root, and pytest's tmp dirs are private to root, so the cluster lives in its
    own ``/tmp`` dir owned by whoever runs it.
    """
    need(str(PG_BIN / "initdb"))
    run_as: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="smartpark-pg-"))
    if os.geteuid() == 0:
        run_as = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
    subprocess.run([*run_as, str(PG_BIN / "initdb"), "-D", str(root / "data"), "-U", "smartpark", "--auth=trust",
                    "--no-sync", "-E", "UTF8", "--locale=C"], check=True, capture_output=True, timeout=120)
    return _on_free_ports(lambda: _start_postgres(root, run_as))


def _start_postgres(root: Path, run_as: list[str]) -> PostgresServer:
    port = free_port()
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    proc = subprocess.run([*run_as, str(PG_BIN / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "pg.log"),
                           "-o", options, "-w", "-t", str(int(START_TIMEOUT_S)), "start"],
                          capture_output=True, timeout=START_TIMEOUT_S + 10, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"postgres did not start: {proc.stdout.decode()}{proc.stderr.decode()}\n"
                           f"{_tail(root / 'pg.log')}")
    return PostgresServer(root, port, run_as)


# ------------------------------------------------------------------------------------------------ TLS


class TestPki:
    """A CA made for one test run (``trustme``) and PEM files under ``root``: the CA, a server certificate for
    127.0.0.1 and localhost, and a client certificate; ``issue`` makes more (expired, other host names)."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, root: Path) -> None:
        import trustme

        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self._ca = trustme.CA(organization_name="smartpark test CA")
        self.ca_file = root / "ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_file))
        self.server_cert, self.server_key = self.issue("server", "127.0.0.1", "localhost")
        self.client_cert, self.client_key = self.issue("client", "smartpark-ingest")

    def issue(self, name: str, *identities: str, **kwargs: object) -> tuple[Path, Path]:
        """A certificate (chain) and key signed by this CA, as files ``name.pem`` and ``name.key``."""
        leaf = self._ca.issue_cert(*identities, **kwargs)  # type: ignore[arg-type]
        cert, key = self.root / f"{name}.pem", self.root / f"{name}.key"
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)
        return cert, key


def tls_listener_config(cert: Path, key: Path, ca_file: Path, *, require_certificate: bool = False) -> str:
    """Lines that make ``start_mosquitto``'s listener a TLS one (they follow its ``listener`` line)."""
    return "\n".join([f"certfile {cert}", f"keyfile {key}", f"cafile {ca_file}",
                      f"require_certificate {'true' if require_certificate else 'false'}", ""])
