-- FLOOR ("bare SQL"): the table writes pg_otp_auth does for each call, with no logic at all:
-- no hashing, no JWT, no rate-limit checks, no locks, no checks beyond finding the row to touch.
-- Anything slower than this is the price of the logic, not of the writes.
--
-- Same call shape as the product (one SECURITY DEFINER function per API call, jsonb answer),
-- same table layout (uuid keys, the product's indexes, so each row written maintains as many
-- index entries as the product's does), the same rows written per call: a send also bumps
-- the per-IP and budget counter rows and retires the phone's previous live code and queued
-- message, as the product does; a right code also writes its attempt's audit row. Schema `floor`.
-- Its ids are gen_random_uuid(), as bare SQL on PostgreSQL 15 makes them (the product's rows
-- written on every call get time-ordered UUIDv7 ids instead).

CREATE SCHEMA floor;

CREATE TABLE floor.users (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    phone           text UNIQUE,
    locale          text NOT NULL DEFAULT 'en',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    last_sign_in_at timestamptz
);

CREATE TABLE floor.otp_codes (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid REFERENCES floor.users (id) ON DELETE CASCADE,
    subject     text NOT NULL,
    code        text NOT NULL,          -- plain: the floor does no hashing
    attempts    integer NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    consumed_at timestamptz,
    invalidated_at timestamptz
);
CREATE INDEX otp_codes_live ON floor.otp_codes (subject, created_at DESC)
    WHERE consumed_at IS NULL AND invalidated_at IS NULL;
CREATE INDEX otp_codes_expires ON floor.otp_codes (expires_at);

CREATE TABLE floor.sms_outbox (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    phone           text NOT NULL,
    body            text,
    status          text NOT NULL DEFAULT 'queued',
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz,
    last_error      text,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sms_outbox_due ON floor.sms_outbox (next_attempt_at) WHERE status IN ('queued', 'sending');
CREATE INDEX sms_outbox_pending_expiry ON floor.sms_outbox (expires_at) WHERE status IN ('queued', 'sending');
CREATE INDEX sms_outbox_leases ON floor.sms_outbox (lease_until) WHERE status = 'sending';
CREATE INDEX sms_outbox_failures ON floor.sms_outbox (updated_at) WHERE last_error IS NOT NULL;
CREATE INDEX sms_outbox_finished ON floor.sms_outbox (updated_at) WHERE status IN ('sent', 'dead', 'expired');
CREATE INDEX sms_outbox_phone ON floor.sms_outbox (phone) WHERE status = 'queued';

CREATE TABLE floor.send_events (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    phone      text NOT NULL,
    ip         inet,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX send_events_phone ON floor.send_events (phone, created_at);

CREATE TABLE floor.rate_counters (
    key          text NOT NULL,
    bucket_start timestamptz NOT NULL,
    shard        smallint NOT NULL,
    hits         integer NOT NULL,
    PRIMARY KEY (key, bucket_start, shard)
);

CREATE TABLE floor.sessions (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      uuid NOT NULL REFERENCES floor.users (id) ON DELETE CASCADE,
    aal          text NOT NULL DEFAULT 'aal1',
    created_at   timestamptz NOT NULL DEFAULT now(),
    refreshed_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX sessions_user ON floor.sessions (user_id) WHERE revoked_at IS NULL;

CREATE TABLE floor.refresh_tokens (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    session_id uuid NOT NULL REFERENCES floor.sessions (id) ON DELETE CASCADE,
    token      text NOT NULL UNIQUE,    -- plain: the floor does no hashing
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    rotated_at timestamptz
);
CREATE INDEX refresh_tokens_session ON floor.refresh_tokens (session_id);
CREATE INDEX refresh_tokens_expires ON floor.refresh_tokens (expires_at);

CREATE TABLE floor.audit_log (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    event      text NOT NULL,
    user_id    uuid,
    phone      text,
    ip         inet
);
CREATE INDEX audit_log_created ON floor.audit_log (created_at);
CREATE INDEX audit_log_user ON floor.audit_log (user_id, created_at);

CREATE TABLE floor.mfa_factors (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id        uuid NOT NULL REFERENCES floor.users (id) ON DELETE CASCADE,
    secret         bytea NOT NULL,
    last_used_step bigint
);

CREATE TABLE floor.mfa_challenges (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    factor_id   uuid NOT NULL REFERENCES floor.mfa_factors (id) ON DELETE CASCADE,
    session_id  uuid NOT NULL REFERENCES floor.sessions (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    verified_at timestamptz
);

-- send: a send_events row, the per-IP and budget counter rows bumped, the phone's previous live
-- code and queued message retired, a code row, an outbox row carrying the code.
CREATE FUNCTION floor.send_code(phone text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    uid  uuid;
    code text := lpad((floor(random() * 1000000))::int::text, 6, '0');
    mid  uuid;
    ip   text := nullif(current_setting('request.headers', true), '')::jsonb ->> 'x-forwarded-for';
BEGIN
    SELECT u.id INTO uid FROM floor.users u WHERE u.phone = send_code.phone;
    IF uid IS NULL THEN
        INSERT INTO floor.users (phone) VALUES (send_code.phone) RETURNING id INTO uid;
    END IF;
    INSERT INTO floor.send_events (phone, ip) VALUES (send_code.phone, ip::inet);
    INSERT INTO floor.rate_counters AS r (key, bucket_start, shard, hits)
        SELECT v.k, v.b, v.s, 1
        FROM (VALUES ('send_ip:' || ip, date_trunc('minute', now()), (random() * 3)::int),
                     ('budget', date_trunc('hour', now()), (random() * 7)::int)) AS v (k, b, s)
        WHERE v.k IS NOT NULL
        ON CONFLICT (key, bucket_start, shard) DO UPDATE SET hits = r.hits + 1;
    UPDATE floor.otp_codes c SET invalidated_at = now()
        WHERE c.subject = send_code.phone AND c.consumed_at IS NULL AND c.invalidated_at IS NULL;
    UPDATE floor.sms_outbox o SET status = 'expired', body = NULL, updated_at = now()
        WHERE o.phone = send_code.phone AND o.status = 'queued';
    INSERT INTO floor.otp_codes (user_id, subject, code, expires_at)
        VALUES (uid, send_code.phone, code, now() + interval '5 minutes');
    INSERT INTO floor.sms_outbox (phone, body, expires_at)
        VALUES (send_code.phone, 'Your code is ' || code, now() + interval '5 minutes')
        RETURNING id INTO mid;
    RETURN jsonb_build_object('message_id', mid);
END
$$;

-- sign-in: consume the code, its attempt's audit row, a session row, a refresh-token row, an
-- audit row.
CREATE FUNCTION floor.verify_code(phone text, otp text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    uid uuid;
    sid uuid;
    tok text := gen_random_uuid()::text;
BEGIN
    UPDATE floor.otp_codes c SET consumed_at = now(), attempts = c.attempts + 1
    WHERE c.id = (SELECT c2.id FROM floor.otp_codes c2
                  WHERE c2.subject = verify_code.phone AND c2.consumed_at IS NULL
                    AND c2.invalidated_at IS NULL
                  ORDER BY c2.created_at DESC LIMIT 1)
    RETURNING c.user_id INTO uid;
    INSERT INTO floor.audit_log (event, user_id, phone) VALUES ('verify_attempt', uid, verify_code.phone);
    UPDATE floor.users SET last_sign_in_at = now(), updated_at = now() WHERE id = uid;
    INSERT INTO floor.sessions (user_id) VALUES (uid) RETURNING id INTO sid;
    INSERT INTO floor.refresh_tokens (session_id, token, expires_at)
        VALUES (sid, tok, now() + interval '30 days');
    INSERT INTO floor.audit_log (event, user_id, phone) VALUES ('sign_in', uid, verify_code.phone);
    RETURN jsonb_build_object('session', jsonb_build_object('refresh_token', tok, 'session_id', sid));
END
$$;

-- wrong guess: count the attempt, an audit row.
CREATE FUNCTION floor.record_guess(phone text, otp text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE floor.otp_codes c SET attempts = c.attempts + 1
    WHERE c.id = (SELECT c2.id FROM floor.otp_codes c2
                  WHERE c2.subject = record_guess.phone AND c2.consumed_at IS NULL
                    AND c2.invalidated_at IS NULL
                  ORDER BY c2.created_at DESC LIMIT 1);
    INSERT INTO floor.audit_log (event, phone) VALUES ('verify_failed', record_guess.phone);
    RETURN jsonb_build_object('error', 'invalid-otp');
END
$$;

-- refresh: rotate the presented token, a new token row, touch the session.
CREATE FUNCTION floor.refresh(refresh_token text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    sid uuid;
    tok text := gen_random_uuid()::text;
BEGIN
    UPDATE floor.refresh_tokens r SET rotated_at = now() WHERE r.token = refresh_token
        RETURNING r.session_id INTO sid;
    UPDATE floor.sessions SET refreshed_at = now() WHERE id = sid;
    INSERT INTO floor.refresh_tokens (session_id, token, expires_at)
        VALUES (sid, tok, now() + interval '30 days');
    RETURN jsonb_build_object('refresh_token', tok);
END
$$;

-- MFA step-up: a challenge row, the factor's step, the session to aal2, a refresh token, audit.
CREATE FUNCTION floor.totp_verify(factor_id uuid, code text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    sid uuid := (current_setting('request.jwt.claims', true)::jsonb ->> 'session_id')::uuid;
    tok text := gen_random_uuid()::text;
BEGIN
    INSERT INTO floor.mfa_challenges (factor_id, session_id, verified_at)
        VALUES (totp_verify.factor_id, sid, now());
    UPDATE floor.mfa_factors f SET last_used_step = floor(extract(epoch FROM now()) / 30)::bigint
        WHERE f.id = totp_verify.factor_id;
    UPDATE floor.sessions SET aal = 'aal2' WHERE id = sid;
    INSERT INTO floor.refresh_tokens (session_id, token, expires_at)
        VALUES (sid, tok, now() + interval '30 days');
    INSERT INTO floor.audit_log (event) VALUES ('mfa_verified');
    RETURN jsonb_build_object('refresh_token', tok);
END
$$;

GRANT USAGE ON SCHEMA floor TO PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA floor FROM PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA floor TO PUBLIC;
