"""Wrong guesses are recorded before their verdict, by the attempt recorder when pg_otp_auth is
preloaded (one long-lived worker per database, several records per commit), else by a dynamic
worker each. scripts/test.sh runs the suite both ways."""

import psycopg
import pytest

from conftest import raises_auth, run_concurrently


def preloaded(db):
    return "pg_otp_auth" in db.one("SHOW shared_preload_libraries")


def recorders(db):
    return db.q("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_otp_auth recorder' AND datname = %s",
                db.name)


def guess(db, phone, conn=None):
    try:
        db.rpc("verify_sms_otp", phone=phone, otp="000000", conn=conn)
    except psycopg.Error as e:
        return e.diag.message_detail
    return "ok"


def test_sixteen_concurrent_guessers_are_all_counted_and_none_refused(db):
    """With the default max_worker_processes (8) a worker per guess would run out of slots."""
    db.setting("verify_rate_per_ip", 100000)
    guess(db, "+15550909000")  # the first failure of a database may start its recorder
    rounds = 5
    answers = run_concurrently(db, 16, lambda conn: [guess(db, f"+1555090{i:04d}", conn) for i in range(rounds)])
    details = [d for kind, ds in answers for d in (ds if kind == "ok" else [ds])]
    counted = db.one("SELECT count(*) FROM auth.audit_log WHERE event = 'verify_failed'") - 1
    if preloaded(db):
        assert details == ["invalid-otp"] * 16 * rounds
        assert counted == 16 * rounds
        assert len(recorders(db)) == 1
    else:
        # Every guess is either counted or refused unanswered: never judged unrecorded.
        assert set(details) <= {"invalid-otp", "temporarily-unavailable"}
        assert counted >= details.count("invalid-otp")


def test_a_wrong_code_is_counted_on_its_code(db):
    db.rpc("send_sms_otp", phone="+15550909100")
    for n in (1, 2, 3):
        with raises_auth(401, "invalid-otp"):
            db.rpc("verify_sms_otp", phone="+15550909100", otp="000000" if db.last_code("+15550909100") != "000000" else "111111")
        assert db.one("SELECT attempts FROM auth.otp_codes WHERE subject = '+15550909100'") == n


def test_a_dead_recorder_is_replaced_and_nothing_goes_unrecorded(db):
    if not preloaded(db):
        pytest.skip("the recorder runs only when pg_otp_auth is preloaded")
    guess(db, "+15550909200")
    guess(db, "+15550909200")
    [(pid,)] = recorders(db)
    db.q("SELECT pg_terminate_backend(%s)", pid)
    answers = [guess(db, "+15550909200") for _ in range(20)]
    assert answers == ["invalid-otp"] * 20
    assert db.one("SELECT count(*) FROM auth.audit_log WHERE event = 'verify_failed'") == 22
    [(new_pid,)] = recorders(db)
    assert new_pid != pid
