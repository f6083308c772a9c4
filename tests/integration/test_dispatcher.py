"""The dispatcher binary against real PostgreSQL and fake providers (real HTTP servers on
127.0.0.1). Waits poll the database for a condition with a deadline; none sleeps for luck."""

import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest

from conftest import PG_BIN, dsn, raises_auth

BIN = os.environ.get("DISPATCHER_BIN", os.path.join(os.path.dirname(__file__), "../../target/debug/pg-otp-dispatcher"))
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Fake:
    """A provider (or captcha verifier) on 127.0.0.1 that records requests and answers with
    `respond(request) -> (status, body, delay_seconds[, headers])`."""

    def __init__(self, respond):
        self.requests = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                req = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
                with fake.lock:
                    fake.requests.append(req)
                status, out, delay, *extra = respond(req)
                if delay:
                    time.sleep(delay)
                data = out.encode() if isinstance(out, str) else json.dumps(out).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (extra[0] if extra else {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def form(self, i=0):
        return dict(urllib.parse.parse_qsl(self.requests[i]["body"].decode()))

    def json(self, i=0):
        return json.loads(self.requests[i]["body"])

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Dispatcher:
    def __init__(self, db, *args, env=None, poll="0.2"):
        self.metrics_port = free_port()
        # The fake providers are plain http on 127.0.0.1, which needs the local-testing flag.
        argv = [BIN, "--database-url", f"host=127.0.0.1 port={os.environ['PGPORT']} user=otp_dispatcher dbname={db.name}",
                "--poll-seconds", poll, "--metrics-addr", f"127.0.0.1:{self.metrics_port}", "--allow-insecure-http", *args]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, OTP_LOG="info", **(env or {})))

    def stop(self, sig=signal.SIGTERM, timeout=30):
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def metrics(self):
        return urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()

    def health(self):
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/health", timeout=5).status
        except urllib.error.HTTPError as e:
            return e.code


def wait_until(check, timeout=30, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (psycopg.OperationalError, urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def ddb(db):
    """A test database with a dispatcher role that has only auth.grant_dispatcher()."""
    db.q("DO $$ BEGIN CREATE ROLE otp_dispatcher LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    db.q("SELECT auth.grant_dispatcher('otp_dispatcher')")
    db.setting("sms_retry_base", 1)
    db.setting("sms_retry_max", 2)
    return db


def queue(db, n=1, channel="sms", start=0, captcha=None):
    ids = []
    for i in range(start, start + n):
        ids.append(db.rpc("send_sms_otp", phone=f"+1555300{i:04d}", channel=channel, captcha_token=captcha)["message_id"])
    return ids


def statuses(db):
    return {str(r[0]): r[1:] for r in db.q("SELECT id, status, attempts, body IS NULL, provider_message_id FROM auth.sms_outbox")}


def all_status(db, status):
    return lambda: set(s[0] for s in statuses(db).values()) == {status}


# Request shapes of each provider

def test_twilio(ddb):
    def respond(r):
        to = dict(urllib.parse.parse_qsl(r["body"].decode()))["To"]
        return 201, {"sid": "SM" + to[-1], "status": "queued"}, 0
    fake = Fake(respond)
    [sms] = queue(ddb)
    [wa] = queue(ddb, channel="whatsapp", start=1)
    d = Dispatcher(ddb, "--provider", "twilio", "--provider-base-url", fake.url, "--twilio-account-sid", "AC123",
                   "--twilio-auth-token", "secret-token", "--from", "+15559990000")
    wait_until(all_status(ddb, "sent"), what="sent")
    assert d.stop()[0] == 0
    assert {r["path"] for r in fake.requests} == {"/2010-04-01/Accounts/AC123/Messages.json"}
    assert fake.requests[0]["headers"]["authorization"] == "Basic " + base64.b64encode(b"AC123:secret-token").decode()
    forms = sorted((fake.form(i) for i in range(2)), key=lambda f: f["To"])
    assert forms[0]["To"] == "+15553000000" and forms[0]["From"] == "+15559990000"
    assert forms[0]["Body"].startswith("Your code is ")
    assert forms[1]["To"] == "whatsapp:+15553000001" and forms[1]["From"] == "whatsapp:+15559990000"
    st = statuses(ddb)
    assert st[sms][2] and st[wa][2]  # bodies cleared
    assert (st[sms][3], st[wa][3]) == ("SM0", "SM1")
    fake.close()


def test_twilio_failed_status_and_bad_number(ddb):
    def respond(r):
        to = dict(urllib.parse.parse_qsl(r["body"].decode()))["To"]
        if to.endswith("0"):
            return 400, {"code": 21211, "message": "Invalid 'To' Phone Number"}, 0
        return 201, {"sid": "SM9", "status": "failed", "error_code": 30005}, 0
    fake = Fake(respond)
    queue(ddb, 2)
    d = Dispatcher(ddb, "--provider", "twilio", "--provider-base-url", fake.url, "--twilio-account-sid", "AC1",
                   "--twilio-auth-token", "t", "--from", "+15559990000")
    wait_until(all_status(ddb, "dead"), what="dead")
    d.stop()
    assert len(fake.requests) == 2  # permanent: no retries
    errors = " | ".join(r[0] for r in ddb.q("SELECT last_error FROM auth.sms_outbox"))
    assert "21211" in errors and "30005" in errors
    fake.close()


def test_messagebird(ddb):
    fake = Fake(lambda r: (201, {"id": "mb-1", "recipients": {"totalSentCount": 1}}, 0))
    [mid] = queue(ddb)
    d = Dispatcher(ddb, "--provider", "messagebird", "--provider-base-url", fake.url,
                   "--messagebird-access-key", "live_key", "--from", "Acme")
    wait_until(all_status(ddb, "sent"))
    d.stop()
    r = fake.requests[0]
    assert r["path"] == "/messages" and r["headers"]["authorization"] == "AccessKey live_key"
    body = fake.json()
    assert body["recipients"] == ["15553000000"] and body["originator"] == "Acme" and body["body"].startswith("Your code is")
    assert statuses(ddb)[mid][3] == "mb-1"
    fake.close()


def test_vonage(ddb):
    fake = Fake(lambda r: (200, {"message-count": "1", "messages": [{"status": "0", "message-id": "v-42"}]}, 0))
    [mid] = queue(ddb)
    d = Dispatcher(ddb, "--provider", "vonage", "--provider-base-url", fake.url, "--vonage-api-key", "k",
                   "--vonage-api-secret", "s", "--from", "Acme")
    wait_until(all_status(ddb, "sent"))
    d.stop()
    f = fake.form()
    assert fake.requests[0]["path"] == "/sms/json"
    assert (f["api_key"], f["api_secret"], f["from"], f["to"]) == ("k", "s", "Acme", "15553000000")
    assert f["text"].startswith("Your code is")
    assert statuses(ddb)[mid][3] == "v-42"
    fake.close()


def test_vonage_throttling_is_retried(ddb):
    answers = iter([{"messages": [{"status": "1", "error-text": "Throttled"}]}])
    fake = Fake(lambda r: (200, next(answers, {"messages": [{"status": "0", "message-id": "v-2"}]}), 0))
    queue(ddb)
    d = Dispatcher(ddb, "--provider", "vonage", "--provider-base-url", fake.url, "--vonage-api-key", "k",
                   "--vonage-api-secret", "s", "--from", "Acme")
    wait_until(all_status(ddb, "sent"))
    d.stop()
    assert len(fake.requests) == 2
    fake.close()


def test_textlocal(ddb):
    fake = Fake(lambda r: (200, {"status": "success", "batch_id": 7, "messages": [{"id": "1151346216", "recipient": 15553000000}]}, 0))
    [mid] = queue(ddb)
    d = Dispatcher(ddb, "--provider", "textlocal", "--provider-base-url", fake.url, "--textlocal-api-key", "tk", "--from", "Acme")
    wait_until(all_status(ddb, "sent"))
    d.stop()
    f = fake.form()
    assert fake.requests[0]["path"] == "/send/"
    assert (f["apikey"], f["numbers"], f["sender"]) == ("tk", "15553000000", "Acme") and f["message"].startswith("Your code is")
    assert statuses(ddb)[mid][3] == "1151346216"
    fake.close()


def verify_standard_webhook(req):
    """An independent Standard Webhooks verifier (the spec's algorithm, in Python)."""
    key = base64.b64decode(WEBHOOK_SECRET.removeprefix("whsec_"))
    h = req["headers"]
    signed = f"{h['webhook-id']}.{h['webhook-timestamp']}.".encode() + req["body"]
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert h["webhook-signature"] == f"v1,{expected}"
    assert abs(int(h["webhook-timestamp"]) - time.time()) < 60


def test_webhook_is_signed_and_keeps_its_id_across_retries(ddb):
    answers = iter([(500, "", 0)])
    fake = Fake(lambda r: next(answers, (200, {}, 0)))
    [mid] = queue(ddb, channel="whatsapp")
    d = Dispatcher(ddb, "--provider", "webhook", "--webhook-url", fake.url + "/hooks/sms", "--webhook-secret", WEBHOOK_SECRET)
    wait_until(all_status(ddb, "sent"))
    d.stop()
    assert len(fake.requests) == 2
    for r in fake.requests:
        assert r["path"] == "/hooks/sms"
        verify_standard_webhook(r)
    assert fake.requests[0]["headers"]["webhook-id"] == fake.requests[1]["headers"]["webhook-id"]
    body = fake.json(1)
    assert body["message_id"] == mid and body["phone"] == "+15553000000" and body["channel"] == "whatsapp"
    assert body["body"].startswith("Your code is") and body["attempt"] == 2


# Retries, dead letters, expiry

@pytest.mark.parametrize("first", [(500, "", 0), (429, "", 0), (200, {}, 3)], ids=["500", "429", "timeout"])
def test_transient_failures_are_retried_with_backoff(ddb, first):
    answers = iter([first])
    fake = Fake(lambda r: next(answers, (200, {}, 0)))
    [mid] = queue(ddb)
    d = Dispatcher(ddb, "--provider", "webhook", "--webhook-url", fake.url, "--webhook-secret", WEBHOOK_SECRET,
                   "--http-timeout-seconds", "1", "--lease-seconds", "5")
    wait_until(lambda: statuses(ddb)[mid][0] == "queued" and statuses(ddb)[mid][1] == 1, what="first failure recorded")
    delay = ddb.one("SELECT extract(epoch FROM next_attempt_at - updated_at) FROM auth.sms_outbox")
    assert 0.5 <= float(delay) <= 1.0  # sms_retry_base 1 s, jittered down to at most half
    assert ddb.one("SELECT last_error FROM auth.sms_outbox")
    wait_until(all_status(ddb, "sent"))
    d.stop()
    assert statuses(ddb)[mid][1] == 2
    fake.close()


def test_permanent_4xx_is_not_retried(ddb):
    fake = Fake(lambda r: (400, {"error": "bad number"}, 0))
    [mid] = queue(ddb)
    d = Dispatcher(ddb, "--provider", "webhook", "--webhook-url", fake.url, "--webhook-secret", WEBHOOK_SECRET)
    wait_until(all_status(ddb, "dead"))
    d.stop()
    assert len(fake.requests) == 1
    assert statuses(ddb)[mid][1:3] == (1, True)


def test_dead_letter_after_max_attempts(ddb):
    ddb.setting("sms_max_attempts", 3)
    fake = Fake(lambda r: (503, "", 0))
    [mid] = queue(ddb)
    d = Dispatcher(ddb, "--provider", "webhook", "--webhook-url", fake.url, "--webhook-secret", WEBHOOK_SECRET)
    wait_until(all_status(ddb, "dead"), timeout=40)
    code, _, _ = d.stop()
    assert code == 0
    assert len(fake.requests) == 3 and statuses(ddb)[mid][1:3] == (3, True)
    stats = ddb.one("SELECT auth.sms_queue_stats()")
    assert stats["counts"]["dead"] == 1 and stats["recent_failures"][0]["id"] == mid


def test_a_message_whose_last_attempt_never_reported_is_dead_letters(ddb):
    """A dispatcher that dies on its last allowed attempt must not leave the message to be
    claimed forever."""
    ddb.setting("sms_max_attempts", 1)
    [mid] = queue(ddb)
    ddb.q("SET role otp_dispatcher")
    assert [str(r[0]) for r in ddb.q("SELECT id FROM auth.sms_claim(10, '1 second')")] == [mid]
    ddb.q("RESET role")
    ddb.q("UPDATE auth.sms_outbox SET lease_until = now() - interval '1 second'")
    ddb.q("SET role otp_dispatcher")
    assert ddb.q("SELECT id FROM auth.sms_claim(10)") == []
    ddb.q("RESET role")
    assert statuses(ddb)[mid][:3] == ("dead", 1, True)
    assert "lease ran out" in ddb.one("SELECT last_error FROM auth.sms_outbox")


def as_dispatcher(db, sql, *args):
    db.q("SET role otp_dispatcher")
    try:
        return db.q(sql, *args)
    finally:
        db.q("RESET role")


def test_a_late_failure_report_does_not_touch_the_current_attempt(ddb):
    """Dispatcher A's lease ran out and B claimed the message; A's late report must neither
    cancel B's lease nor revive a finished message."""
    [mid] = queue(ddb)
    [(_, first)] = as_dispatcher(ddb, "SELECT id, attempts FROM auth.sms_claim(10, '1 second')")
    ddb.q("UPDATE auth.sms_outbox SET lease_until = now() - interval '1 second'")
    [(_, second)] = as_dispatcher(ddb, "SELECT id, attempts FROM auth.sms_claim(10, '60 seconds')")
    assert (first, second) == (1, 2)
    before = ddb.q("SELECT status, attempts, lease_until, body FROM auth.sms_outbox")
    as_dispatcher(ddb, "SELECT auth.sms_mark_failed(%s, 'late timeout', true, %s)", mid, first)
    assert ddb.q("SELECT status, attempts, lease_until, body FROM auth.sms_outbox") == before
    as_dispatcher(ddb, "SELECT auth.sms_mark_failed(%s, 'bad number', false, %s)", mid, second)
    assert statuses(ddb)[mid][:3] == ("dead", 2, True)
    as_dispatcher(ddb, "SELECT auth.sms_mark_failed(%s, 'late again', true, %s)", mid, second)
    assert statuses(ddb)[mid][:3] == ("dead", 2, True)


def test_a_new_code_expires_the_queued_message_of_the_old_one(ddb):
    [old] = queue(ddb)
    [new] = queue(ddb)
    st = statuses(ddb)
    assert st[old][0] == "expired" and st[old][2] and st[new][0] == "queued"


def test_purge_removes_finished_messages(ddb):
    fake = Fake(lambda r: (200, {}, 0))
    queue(ddb, 2)
    d = Dispatcher(ddb, "--provider", "webhook", "--webhook-url", fake.url, "--webhook-secret", WEBHOOK_SECRET)
    wait_until(all_status(ddb, "sent"))
    d.stop()
    [keep] = queue(ddb, start=5)
    ddb.q("UPDATE auth.sms_outbox SET updated_at = now() - interval '2 days' WHERE status = 'sent'")
    assert ddb.one("SELECT auth.purge_expired()")["sms_outbox"] == 2
    assert list(statuses(ddb)) == [keep]
    fake.close()


def test_expired_messages_are_never_sent(ddb):
    fake = Fake(lambda r: (200, {}, 0))
    ids = queue(ddb, 2)
    ddb.q("UPDATE auth.sms_outbox SET expires_at = now() - interval '1 second' WHERE id = %s", ids[0])
    d = Dispatcher(ddb, "--provider", "webhook", "--webhook-url", fake.url, "--webhook-secret", WEBHOOK_SECRET)
    wait_until(lambda: statuses(ddb)[ids[1]][0] == "sent" and statuses(ddb)[ids[0]][0] == "expired")
    d.stop()
    assert [json.loads(r["body"])["message_id"] for r in fake.requests] == [ids[1]]
    assert statuses(ddb)[ids[0]][2]  # body cleared


# Several dispatchers, crashes, restarts, shutdown

def test_notify_wakes_the_dispatcher_without_waiting_for_a_poll(ddb):
    fake = Fake(lambda r: (200, {}, 0))
    d = Dispatcher(ddb, "--provider", "webhook", "--webhook-url", fake.url, "--webhook-secret", WEBHOOK_SECRET, poll="60")
    wait_until(lambda: d.health() == 200, what="dispatcher up")
    time.sleep(0.5)  # past the startup claim pass, so only a notification can deliver in time
    [mid] = queue(ddb)
    wait_until(all_status(ddb, "sent"), timeout=10, what="delivery by NOTIFY (poll interval is 60 s)")
    d.stop()
    assert [json.loads(r["body"])["message_id"] for r in fake.requests] == [mid]
    fake.close()


def test_claimed_messages_wait_at_most_for_one_send(ddb):
    # The dispatcher keeps at most --concurrency claimed messages ready beside those being sent
    # (a claim is a commit; claiming ahead keeps the slots busy), never sends more at once than
    # --concurrency, and delivers every message once.
    lock = threading.Lock()
    release = threading.Event()
    state = {"now": 0, "most": 0}

    def respond(r):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        release.wait(30)
        with lock:
            state["now"] -= 1
        return 200, {}, 0

    fake = Fake(respond)
    ids = queue(ddb, 30)
    d = Dispatcher(ddb, "--provider", "webhook", "--webhook-url", fake.url, "--webhook-secret", WEBHOOK_SECRET,
                   "--batch-size", "5", "--concurrency", "4")
    leased = lambda: sum(1 for s in statuses(ddb).values() if s[0] == "sending")
    wait_until(lambda: len(fake.requests) == 4 and leased() == 8, what="4 sends under way, 4 more claimed")
    assert len(fake.requests) == 4 and leased() == 8
    release.set()
    wait_until(all_status(ddb, "sent"), timeout=60)
    assert d.stop()[0] == 0
    assert state["most"] == 4
    assert sorted(json.loads(r["body"])["message_id"] for r in fake.requests) == sorted(ids)
    fake.close()


def test_a_message_left_too_little_lease_is_sent_after_it(ddb):
    # With one slot, the second claimed message waits while the first send times out (1 s):
    # then less than two HTTP timeouts of its 3 s lease remain, too little to send it and
    # record the outcome safely. It is left for the next claim after its lease, sent once.
    first = {}

    def respond(r):
        mid = json.loads(r["body"])["message_id"]
        first.setdefault("id", mid)
        return 200, {}, 3 if mid == first["id"] and len(fake.requests) == 1 else 0

    fake = Fake(respond)
    ids = queue(ddb, 2)
    d = Dispatcher(ddb, "--provider", "webhook", "--webhook-url", fake.url, "--webhook-secret", WEBHOOK_SECRET,
                   "--concurrency", "1", "--lease-seconds", "3", "--http-timeout-seconds", "1")
    wait_until(all_status(ddb, "sent"), timeout=30)
    assert "pg_otp_dispatcher_lease_short_total 1" in d.metrics()
    code, out, err = d.stop()
    assert code == 0 and "too little of the lease" in out + err
    [other] = [i for i in ids if i != first["id"]]
    sends = [json.loads(r["body"])["message_id"] for r in fake.requests]
    # The first timed out and was retried; the other was handed to the provider once, on
    # its second claim.
    assert sends.count(first["id"]) == 2 and sends.count(other) == 1
    st = statuses(ddb)
    assert st[other][:2] == ("sent", 2) and st[first["id"]][:2] == ("sent", 2)
    fake.close()


def test_deliveries_are_recorded_in_one_statement(ddb):
    ids = queue(ddb, 3)
    as_dispatcher(ddb, "SELECT count(*) FROM auth.sms_claim(10)")
    unknown = "00000000-0000-4000-8000-000000000000"
    missing = as_dispatcher(ddb, "SELECT * FROM auth.sms_mark_sent_many(%s::uuid[], %s)",
                            [ids[0], ids[1], unknown], ["p0", "p1", "px"])
    assert [str(r[0]) for r in missing] == [unknown]
    st = statuses(ddb)
    assert st[ids[0]] == ("sent", 1, True, "p0") and st[ids[1]] == ("sent", 1, True, "p1")
    assert st[ids[2]][0] == "sending"
    # Again: already sent is not an error and changes nothing.
    assert as_dispatcher(ddb, "SELECT * FROM auth.sms_mark_sent_many(%s::uuid[], %s)", [ids[0]], ["p9"]) == []
    assert statuses(ddb)[ids[0]][3] == "p0"
    for bad in (([ids[2]], []), ([ids[2], None], ["a", "b"]), ([ids[2]], [None]), (None, ["a"])):
        with raises_auth(400, "invalid-request"):
            as_dispatcher(ddb, "SELECT * FROM auth.sms_mark_sent_many(%s::uuid[], %s::text[])", *bad)
    assert statuses(ddb)[ids[2]][0] == "sending"
    # The one-message form answers PT404 for an unknown id, as before.
    with raises_auth(404, "message-not-found"):
        as_dispatcher(ddb, "SELECT auth.sms_mark_sent(%s, 'p')", unknown)
    as_dispatcher(ddb, "SELECT auth.sms_mark_sent(%s, 'p2')", ids[2])
    assert statuses(ddb)[ids[2]] == ("sent", 1, True, "p2")


def test_a_role_granted_before_batching_still_records_every_outcome(ddb):
    # A dispatcher role granted by 0.1.0 lacks sms_mark_sent_many: outcomes are recorded one
    # call at a time instead, and the log says how to allow batches.
    ddb.q("REVOKE EXECUTE ON FUNCTION auth.sms_mark_sent_many(uuid[], text[]) FROM otp_dispatcher")
    fake = Fake(lambda r: (200, {}, 0))
    ids = queue(ddb, 12)
    d = Dispatcher(ddb, "--provider", "webhook", "--webhook-url", fake.url, "--webhook-secret", WEBHOOK_SECRET)
    wait_until(all_status(ddb, "sent"), timeout=30)
    code, out, err = d.stop()
    assert code == 0 and "auth.grant_dispatcher" in out + err
    assert sorted(json.loads(r["body"])["message_id"] for r in fake.requests) == sorted(ids)
    fake.close()


def test_two_dispatchers_deliver_every_message_exactly_once(ddb):
    fake = Fake(lambda r: (200, {}, 0.02))
    ids = queue(ddb, 60)
    args = ("--provider", "webhook", "--webhook-url", fake.url, "--webhook-secret", WEBHOOK_SECRET,
            "--batch-size", "5", "--concurrency", "4")
    a, b = Dispatcher(ddb, *args), Dispatcher(ddb, *args)
    wait_until(all_status(ddb, "sent"), timeout=60)
    assert a.stop()[0] == 0 and b.stop()[0] == 0
    delivered = [json.loads(r["body"])["message_id"] for r in fake.requests]
    assert sorted(delivered) == sorted(ids)
    fake.close()


def test_a_dispatcher_killed_mid_batch_loses_nothing(ddb):
    slow = threading.Event()
    fake = Fake(lambda r: (200, {}, 0 if slow.is_set() else 30))
    ids = queue(ddb, 6)
    args = ("--provider", "webhook", "--webhook-url", fake.url, "--webhook-secret", WEBHOOK_SECRET,
            "--lease-seconds", "3", "--http-timeout-seconds", "1")
    a = Dispatcher(ddb, *args)
    wait_until(lambda: len(fake.requests) >= 6 and all(s[0] == "sending" for s in statuses(ddb).values()), what="leases held")
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait()
    slow.set()
    b = Dispatcher(ddb, *args)
    wait_until(all_status(ddb, "sent"), timeout=30)
    assert b.stop()[0] == 0
    delivered = {json.loads(r["body"])["message_id"] for r in fake.requests[6:]}
    assert delivered == set(ids)
    fake.close()


def test_postgres_restart_under_a_running_dispatcher(ddb):
    fake = Fake(lambda r: (200, {}, 0))
    d = Dispatcher(ddb, "--provider", "webhook", "--webhook-url", fake.url, "--webhook-secret", WEBHOOK_SECRET)
    queue(ddb, 1)
    wait_until(all_status(ddb, "sent"))
    ddb.admin.close()
    subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/pg_ctl", "-D", os.environ["PGDATA"],
                    "-m", "fast", "-w", "restart"], check=True, stdout=subprocess.DEVNULL)
    ddb.admin = psycopg.connect(ddb.dsn, autocommit=True)
    ids = queue(ddb, 3, start=10)
    wait_until(all_status(ddb, "sent"), timeout=30)
    assert d.health() == 200
    assert d.stop()[0] == 0
    assert {json.loads(r["body"])["message_id"] for r in fake.requests} >= set(ids)
    fake.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_finishes_in_flight_sends_and_exits_zero(ddb, sig):
    fake = Fake(lambda r: (200, {}, 1.5))
    [mid] = queue(ddb)
    d = Dispatcher(ddb, "--provider", "webhook", "--webhook-url", fake.url, "--webhook-secret", WEBHOOK_SECRET,
                   "--http-timeout-seconds", "5", "--lease-seconds", "15")
    wait_until(lambda: len(fake.requests) == 1, what="send in flight")
    code, out, err = d.stop(sig)
    assert code == 0, err
    assert statuses(ddb)[mid][0] == "sent"
    assert f"{sig.name} received" in err and "finishing in-flight" in err
    # Stopped claiming: a message queued now stays queued.
    [later] = queue(ddb, start=5)
    assert statuses(ddb)[later][0] == "queued"
    fake.close()


# Captcha, observability, configuration, privileges

def test_captcha_pass_and_fail(ddb):
    captcha = Fake(lambda r: (200, {"success": dict(urllib.parse.parse_qsl(r["body"].decode()))["response"] == "good"}, 0))
    fake = Fake(lambda r: (200, {}, 0))
    [good] = queue(ddb, captcha="good")
    [bad] = queue(ddb, start=1, captcha="bad")
    [none] = queue(ddb, start=2)
    d = Dispatcher(ddb, "--provider", "webhook", "--webhook-url", fake.url, "--webhook-secret", WEBHOOK_SECRET,
                   "--captcha-provider", "hcaptcha", "--captcha-secret", "cs", "--captcha-base-url", captcha.url)
    wait_until(lambda: statuses(ddb)[bad][0] == "dead" and statuses(ddb)[good][0] == "sent" and statuses(ddb)[none][0] == "sent")
    d.stop()
    assert {json.loads(r["body"])["message_id"] for r in fake.requests} == {good, none}
    assert {r["path"] for r in captcha.requests} == {"/siteverify"}
    assert dict(urllib.parse.parse_qsl(captcha.requests[0]["body"].decode()))["secret"] == "cs"
    assert "captcha" in ddb.one("SELECT last_error FROM auth.sms_outbox WHERE id = %s", bad)
    assert statuses(ddb)[bad][2]
    captcha.close()
    fake.close()


def test_a_passed_captcha_is_not_asked_again_on_retry(ddb):
    """Captcha tokens are single-use: the retry after a provider error must not re-verify."""
    captcha = Fake(lambda r: (200, {"success": len(captcha.requests) == 1}, 0))
    answers = iter([(500, "", 0)])
    fake = Fake(lambda r: next(answers, (200, {}, 0)))
    [mid] = queue(ddb, captcha="single-use")
    d = Dispatcher(ddb, "--provider", "webhook", "--webhook-url", fake.url, "--webhook-secret", WEBHOOK_SECRET,
                   "--captcha-provider", "hcaptcha", "--captcha-secret", "cs", "--captcha-base-url", captcha.url)
    wait_until(all_status(ddb, "sent"))
    d.stop()
    assert len(captcha.requests) == 1 and len(fake.requests) == 2
    assert ddb.one("SELECT captcha_token FROM auth.sms_outbox WHERE id = %s", mid) is None
    captcha.close()
    fake.close()


def test_turnstile_and_required_captcha(ddb):
    captcha = Fake(lambda r: (200, {"success": True}, 0))
    fake = Fake(lambda r: (200, {}, 0))
    [with_token] = queue(ddb, captcha="tok")
    [without] = queue(ddb, start=1)
    d = Dispatcher(ddb, "--provider", "webhook", "--webhook-url", fake.url, "--webhook-secret", WEBHOOK_SECRET,
                   "--captcha-provider", "turnstile", "--captcha-secret", "cs", "--captcha-base-url", captcha.url,
                   "--captcha-required")
    wait_until(lambda: statuses(ddb)[with_token][0] == "sent" and statuses(ddb)[without][0] == "dead")
    d.stop()
    assert captcha.requests[0]["path"] == "/turnstile/v0/siteverify"
    captcha.close()
    fake.close()


def test_metrics_health_and_log_provider(ddb):
    queue(ddb, 2)
    d = Dispatcher(ddb, "--provider", "log")
    wait_until(all_status(ddb, "sent"))
    wait_until(lambda: "pg_otp_dispatcher_sent_total 2\n" in d.metrics(), what="metrics")
    text = d.metrics()
    for name in ("failed_total", "retried_total", "dead_total", "expired_total", "send_duration_seconds_bucket"):
        assert f"pg_otp_dispatcher_{name}" in text
    assert "pg_otp_outbox_queue_depth" in text
    assert d.health() == 200
    code, out, _ = d.stop()
    assert code == 0
    assert out.count("Your code is") == 2 and "+15553000000" in out


def test_help_and_bad_configuration():
    help_text = subprocess.run([BIN, "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--database-url", "--provider", "--provider-base-url", "--twilio-account-sid", "--webhook-secret",
                 "--captcha-provider", "--concurrency", "--batch-size", "--lease-seconds", "--metrics-addr", "DATABASE_URL"):
        assert flag in help_text
    bad = subprocess.run([BIN, "--database-url", "host=127.0.0.1", "--provider", "twilio", "--from", "+1555"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--twilio-account-sid is required" in bad.stderr
    bad = subprocess.run([BIN, "--database-url", "host=127.0.0.1", "--provider", "log", "--lease-seconds", "10"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "three times --http-timeout-seconds" in bad.stderr
    bad = subprocess.run([BIN, "--database-url", "host=127.0.0.1", "--provider", "webhook",
                          "--webhook-url", "https://127.0.0.1:1", "--webhook-secret", "plain"], capture_output=True, text=True)
    assert bad.returncode == 2 and "whsec_" in bad.stderr


def test_dispatcher_role_has_no_other_privilege(ddb):
    ddb.q("SET role otp_dispatcher")
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            ddb.q("SELECT * FROM auth.sms_outbox")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            ddb.q("SELECT auth.settings()")
        assert ddb.q("SELECT * FROM auth.sms_claim(1)") == []
    finally:
        ddb.q("RESET role")
    with psycopg.connect(dsn(ddb.name)) as c:
        c.execute("SET role anon")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT * FROM auth.sms_claim(1)")
