"""The dispatcher reaches PostgreSQL over TLS as libpq's sslmode asks: against a cluster with
ssl = on and a certificate made here (a CA and a server certificate for localhost/127.0.0.1),
and against the suite's cluster, which has no TLS. No password or URL reaches a log line."""

import os
import shutil
import subprocess
import tempfile
import time

import psycopg
import pytest

from conftest import PG_BIN
from test_dispatcher import BIN, free_port
PASSWORD = "dispatch-s3cret"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)


def server_has_tls():
    configure = subprocess.run([f"{PG_BIN}/pg_config", "--configure"], capture_output=True, text=True).stdout
    return "ssl" in configure


@pytest.fixture(scope="module")
def tls_cluster():
    if not server_has_tls():
        pytest.skip("this PostgreSQL build has no TLS (the PostgreSQL 18 wheel); the PostgreSQL 15 run covers it")
    d = tempfile.mkdtemp(prefix="pg_otp_auth-tls-")
    os.chmod(d, 0o755)
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    with open(os.path.join(d, "san.ext"), "w") as f:
        f.write("subjectAltName = DNS:localhost, IP:127.0.0.1\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key",
            "-out", "server.csr", cwd=d)
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", "server.crt", cwd=d)
    shutil.chown(os.path.join(d, "server.key"), "postgres")
    os.chmod(os.path.join(d, "server.key"), 0o600)
    shutil.chown(d, "postgres")
    port = free_port()
    data = os.path.join(d, "data")
    run_pg = lambda *a: subprocess.run(["runuser", "-u", "postgres", "--", *a], check=True, capture_output=True)
    run_pg(f"{PG_BIN}/initdb", "-D", data, "-U", "postgres", "-A", "trust", "--no-sync")
    run_pg(f"{PG_BIN}/pg_ctl", "-D", data, "-l", os.path.join(d, "server.log"), "-w", "-o",
           f"-p {port} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off -c ssl=on "
           f"-c ssl_cert_file={d}/server.crt -c ssl_key_file={d}/server.key", "start")
    dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE EXTENSION pg_otp_auth")
        c.execute(f"CREATE ROLE otp_dispatcher LOGIN PASSWORD '{PASSWORD}'")
        c.execute("SELECT auth.grant_dispatcher('otp_dispatcher')")
        c.execute("SELECT auth.set_setting('resend_cooldown', '0')")
        c.execute("SELECT auth.set_setting('sms_rate_per_ip', '1000')")
    yield {"dir": d, "port": port, "dsn": dsn}
    subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/pg_ctl", "-D", data, "-m", "immediate", "stop"],
                   capture_output=True)
    shutil.rmtree(d, ignore_errors=True)


class Run:
    """The dispatcher with the log provider, its stderr in a file that can be read while it runs."""

    def __init__(self, database_url):
        self.err = tempfile.NamedTemporaryFile("w+", suffix=".log")
        self.proc = subprocess.Popen([BIN, "--database-url", database_url, "--provider", "log", "--metrics-addr", "off",
                                      "--poll-seconds", "0.2"], stdout=subprocess.PIPE, stderr=self.err, text=True,
                                     env=dict(os.environ, OTP_LOG="info"))

    def stderr(self):
        self.err.seek(0)
        return self.err.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        return out, self.stderr()


@pytest.fixture
def dispatch():
    """Starts dispatchers that are stopped at the end of the test even when it fails."""
    runs = []

    def start(database_url):
        runs.append(Run(database_url))
        return runs[-1]

    yield start
    for r in runs:
        r.stop()


def queue(dsn, phone):
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute("SELECT auth.send_sms_otp(%s) ->> 'message_id'", (phone,)).fetchone()[0]


def status(dsn, mid):
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute("SELECT status FROM auth.sms_outbox WHERE id = %s", (mid,)).fetchone()[0]


def wait_for(check, what, timeout=30, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f"; dispatcher log:\n{log.stderr()}" if log else ""))


def assert_no_secrets(text, *urls):
    assert PASSWORD not in text
    for url in urls:
        assert url not in text


@pytest.mark.parametrize("form", ["key=value", "url"])
def test_require_connects_over_tls(tls_cluster, form, dispatch):
    port = tls_cluster["port"]
    url = (f"host=127.0.0.1 port={port} user=otp_dispatcher password={PASSWORD} dbname=postgres sslmode=require"
           if form == "key=value" else
           f"postgres://otp_dispatcher:{PASSWORD}@127.0.0.1:{port}/postgres?sslmode=require")
    mid = queue(tls_cluster["dsn"], "+15550930001" if form == "url" else "+15550930002")
    d = dispatch(url)
    wait_for(lambda: status(tls_cluster["dsn"], mid) == "sent", "delivery")
    with psycopg.connect(tls_cluster["dsn"]) as c:
        ssl = c.execute("SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                        "WHERE a.usename = 'otp_dispatcher'").fetchone()[0]
    out, err = d.stop()
    assert ssl is True
    assert_no_secrets(out + err, url)


def test_verify_full_with_the_right_root_connects(tls_cluster, dispatch):
    url = (f"postgresql://otp_dispatcher:{PASSWORD}@localhost:{tls_cluster['port']}/postgres"
           f"?sslmode=verify-full&sslrootcert={tls_cluster['dir']}/ca.pem")
    mid = queue(tls_cluster["dsn"], "+15550930003")
    d = dispatch(url)
    wait_for(lambda: status(tls_cluster["dsn"], mid) == "sent", "delivery")
    out, err = d.stop()
    assert_no_secrets(out + err, url)


@pytest.mark.parametrize("mode,root,expected", [
    ("verify-full", "ca.pem", "not valid for name"),  # the certificate names localhost, not this host
    ("verify-full", "other-ca.pem", "UnknownIssuer"),
    ("verify-ca", "other-ca.pem", "UnknownIssuer"),
])
def test_verification_failures_refuse_with_a_clear_error(tls_cluster, mode, root, expected, dispatch):
    url = (f"host=db.wrong-name.invalid hostaddr=127.0.0.1 port={tls_cluster['port']} user=otp_dispatcher "
           f"password={PASSWORD} dbname=postgres sslmode={mode} sslrootcert={tls_cluster['dir']}/{root}")
    mid = queue(tls_cluster["dsn"], "+15550930004")
    d = dispatch(url)
    wait_for(lambda: expected in d.stderr(), f"the {expected} error", timeout=15, log=d)
    out, err = d.stop()
    assert status(tls_cluster["dsn"], mid) == "queued"
    assert_no_secrets(out + err, url)


def test_verify_ca_does_not_check_the_name(tls_cluster, dispatch):
    url = (f"host=db.wrong-name.invalid hostaddr=127.0.0.1 port={tls_cluster['port']} user=otp_dispatcher "
           f"password={PASSWORD} dbname=postgres sslmode=verify-ca sslrootcert={tls_cluster['dir']}/ca.pem")
    mid = queue(tls_cluster["dsn"], "+15550930005")
    d = dispatch(url)
    wait_for(lambda: status(tls_cluster["dsn"], mid) == "sent", "delivery")
    d.stop()


def test_a_server_without_tls_is_refused_under_require(db, dispatch):
    """The suite's own cluster has no TLS."""
    db.q("DO $$ BEGIN CREATE ROLE otp_dispatcher LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    db.q("SELECT auth.grant_dispatcher('otp_dispatcher')")
    mid = db.rpc("send_sms_otp", phone="+15550930006")["message_id"]
    url = f"host=127.0.0.1 port={os.environ['PGPORT']} user=otp_dispatcher password={PASSWORD} dbname={db.name} sslmode=require"
    d = dispatch(url)
    wait_for(lambda: "TLS" in d.stderr() or "tls" in d.stderr(), "the TLS error")
    out, err = d.stop()
    assert db.one("SELECT status FROM auth.sms_outbox WHERE id = %s", mid) == "queued"
    assert_no_secrets(out + err, url)


def test_bad_tls_options_stop_the_start_without_echoing_them():
    for url, expected in [("host=h password=s3cret sslmode=bogus", "sslmode must be"),
                          ("host=h password=s3cret sslmode=verify-full sslrootcert=/nonexistent/s3cret.pem", "sslrootcert")]:
        bad = subprocess.run([BIN, "--database-url", url, "--provider", "log"], capture_output=True, text=True)
        assert bad.returncode == 2 and expected in bad.stderr
        assert "s3cret" not in bad.stderr
