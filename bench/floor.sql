-- FLOOR ("bare SQL"): the table writes pg_otp_auth does for each call, with no logic at all:
-- no hashing, no JWT, no rate limits, no locks, no checks beyond finding the row to touch.
-- Anything slower than this is the price of the logic, not of the writes.
--
-- Same call shape as the product (one SECURITY DEFINER function per API call, jsonb answer),
-- same table layout (uuid keys, the same indexes on the lookup columns), schema `floor`.

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
    consumed_at timestamptz
);
CREATE INDEX otp_codes_live ON floor.otp_codes (subject, created_at DESC) WHERE consumed_at IS NULL;

CREATE TABLE floor.sms_outbox (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    phone      text NOT NULL,
    body       text,
    status     text NOT NULL DEFAULT 'queued',
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

CREATE TABLE floor.send_events (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    phone      text NOT NULL,
    ip         inet,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE floor.sessions (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      uuid NOT NULL REFERENCES floor.users (id) ON DELETE CASCADE,
    aal          text NOT NULL DEFAULT 'aal1',
    created_at   timestamptz NOT NULL DEFAULT now(),
    refreshed_at timestamptz,
    revoked_at   timestamptz
);

CREATE TABLE floor.refresh_tokens (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    session_id uuid NOT NULL REFERENCES floor.sessions (id) ON DELETE CASCADE,
    token      text NOT NULL UNIQUE,    -- plain: the floor does no hashing
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    rotated_at timestamptz
);

CREATE TABLE floor.audit_log (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    event      text NOT NULL,
    user_id    uuid,
    phone      text,
    ip         inet
);

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

-- send: a send_events row, a code row, an outbox row carrying the code.
CREATE FUNCTION floor.send_code(phone text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    uid  uuid;
    code text := lpad((floor(random() * 1000000))::int::text, 6, '0');
    mid  uuid;
BEGIN
    SELECT u.id INTO uid FROM floor.users u WHERE u.phone = send_code.phone;
    IF uid IS NULL THEN
        INSERT INTO floor.users (phone) VALUES (send_code.phone) RETURNING id INTO uid;
    END IF;
    INSERT INTO floor.send_events (phone) VALUES (send_code.phone);
    INSERT INTO floor.otp_codes (user_id, subject, code, expires_at)
        VALUES (uid, send_code.phone, code, now() + interval '5 minutes');
    INSERT INTO floor.sms_outbox (phone, body, expires_at)
        VALUES (send_code.phone, 'Your code is ' || code, now() + interval '5 minutes')
        RETURNING id INTO mid;
    RETURN jsonb_build_object('message_id', mid);
END
$$;

-- sign-in: consume the code, a session row, a refresh-token row, an audit row.
CREATE FUNCTION floor.verify_code(phone text, otp text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    uid uuid;
    sid uuid;
    tok text := gen_random_uuid()::text;
BEGIN
    UPDATE floor.otp_codes c SET consumed_at = now()
    WHERE c.id = (SELECT c2.id FROM floor.otp_codes c2
                  WHERE c2.subject = verify_code.phone AND c2.consumed_at IS NULL
                  ORDER BY c2.created_at DESC LIMIT 1)
    RETURNING c.user_id INTO uid;
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
