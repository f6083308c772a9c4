"""The dispatcher never follows a redirect, never sends over plain http unless told to for local
testing, and never writes a URL, token or credential into a log line, error, metric or the
outbox. Every provider shape is run against real HTTP servers on 127.0.0.1."""

import json
import subprocess
import uuid

import pytest

from test_dispatcher import (BIN, WEBHOOK_SECRET, Dispatcher, Fake, all_status, ddb, free_port,  # noqa: F401
                             queue, wait_until)

# Credentials with values that can be searched for afterwards.
CREDENTIALS = {
    "twilio": ["--twilio-account-sid", "ACsid0secret", "--twilio-auth-token", "twilio-auth-s3cret", "--from", "+15559990000"],
    "messagebird": ["--messagebird-access-key", "mb-access-s3cret", "--from", "Acme"],
    "vonage": ["--vonage-api-key", "vonage-key-s3cret", "--vonage-api-secret", "vonage-api-s3cret", "--from", "Acme"],
    "textlocal": ["--textlocal-api-key", "textlocal-key-s3cret", "--from", "Acme"],
    "webhook": ["--webhook-secret", WEBHOOK_SECRET],
}


def provider_args(provider, url):
    where = "--webhook-url" if provider == "webhook" else "--provider-base-url"
    return ["--provider", provider, where, url, *CREDENTIALS[provider]]


def secrets_of(provider):
    flags = CREDENTIALS[provider]
    return [flags[i + 1] for i in range(0, len(flags), 2) if flags[i] != "--from"]


def last_error(db, mid):
    return db.one("SELECT last_error FROM auth.sms_outbox WHERE id = %s", mid)


@pytest.mark.parametrize("provider", sorted(CREDENTIALS))
def test_a_provider_redirect_is_not_followed(ddb, provider):
    """A 307 keeps the method and body: followed, it would hand the credentials and the code
    to the host it names, and that host's answer would mark the message sent."""
    collector = Fake(lambda r: (200, {"sid": "x", "id": "x", "status": "success",
                                      "messages": [{"status": "0", "message-id": "x", "id": "x"}]}, 0))
    fake = Fake(lambda r: (307, "", 0, {"Location": collector.url + "/collect"}))
    [mid] = queue(ddb)
    d = Dispatcher(ddb, *provider_args(provider, fake.url))
    wait_until(all_status(ddb, "dead"), what="dead")
    code, _, err = d.stop()
    assert code == 0
    assert collector.requests == []
    assert len(fake.requests) == 1  # a redirect is permanent: not retried
    assert "HTTP 307 redirect refused" in last_error(ddb, mid)
    assert collector.url not in err and collector.url not in last_error(ddb, mid)
    collector.close()
    fake.close()


@pytest.mark.parametrize("status", [301, 302, 303, 308])
def test_no_redirect_status_is_followed(ddb, status):
    collector = Fake(lambda r: (200, {}, 0))
    fake = Fake(lambda r: (status, "", 0, {"Location": collector.url + "/collect"}))
    [mid] = queue(ddb)
    d = Dispatcher(ddb, *provider_args("webhook", fake.url))
    wait_until(all_status(ddb, "dead"), what="dead")
    d.stop()
    assert collector.requests == [] and len(fake.requests) == 1
    assert f"HTTP {status} redirect refused" in last_error(ddb, mid)
    collector.close()
    fake.close()


def test_a_captcha_redirect_is_not_followed(ddb):
    """The captcha secret and the user's token must not reach another host either."""
    collector = Fake(lambda r: (200, {"success": True}, 0))
    captcha = Fake(lambda r: (307, "", 0, {"Location": collector.url + "/siteverify"}))
    fake = Fake(lambda r: (200, {}, 0))
    [mid] = queue(ddb, captcha="tok")
    d = Dispatcher(ddb, *provider_args("webhook", fake.url), "--captcha-provider", "hcaptcha",
                   "--captcha-secret", "captcha-s3cret", "--captcha-base-url", captcha.url)
    wait_until(all_status(ddb, "dead"), what="dead")
    d.stop()
    assert collector.requests == [] and fake.requests == [] and len(captcha.requests) == 1
    assert "captcha verification: HTTP 307 redirect refused" in last_error(ddb, mid)
    for x in (collector, captcha, fake):
        x.close()


@pytest.mark.parametrize("flag,args", [
    ("--provider-base-url", ["--provider", "vonage", "--vonage-api-key", "k", "--vonage-api-secret", "s", "--from", "A"]),
    ("--webhook-url", ["--provider", "webhook", "--webhook-secret", WEBHOOK_SECRET]),
    ("--captcha-base-url", ["--provider", "log", "--captcha-provider", "turnstile", "--captcha-secret", "c"]),
])
def test_plain_http_is_refused_without_the_local_testing_flag(flag, args):
    url = "http://sms.example.com/api?token=url-s3cret"
    bad = subprocess.run([BIN, "--database-url", "host=127.0.0.1", *args, flag, url], capture_output=True, text=True)
    assert bad.returncode == 2 and flag in bad.stderr and "--allow-insecure-http" in bad.stderr
    assert "url-s3cret" not in bad.stderr and "sms.example.com" not in bad.stderr


@pytest.mark.parametrize("provider", sorted(CREDENTIALS))
def test_no_url_token_or_credential_in_logs_errors_metrics_or_outbox(ddb, provider):
    token = "url-token-" + uuid.uuid4().hex
    closed = free_port()  # nothing listens there: the request fails with a connection error
    [mid] = queue(ddb)
    d = Dispatcher(ddb, *provider_args(provider, f"http://127.0.0.1:{closed}/otp?token={token}"))
    wait_until(lambda: last_error(ddb, mid) is not None, what="a failed attempt")
    metrics = d.metrics()
    _, out, err = d.stop()
    assert "connect" in last_error(ddb, mid).lower()  # the cause is still told
    places = {
        "stdout": out, "stderr": err, "metrics": metrics,
        "outbox": ddb.one("SELECT json_agg(o)::text FROM auth.sms_outbox o"),
        "queue stats": json.dumps(ddb.one("SELECT auth.sms_queue_stats()")),
    }
    for where, text in places.items():
        for secret in (token, "http://", *secrets_of(provider)):
            assert secret not in text, f"{secret!r} found in {where}"
