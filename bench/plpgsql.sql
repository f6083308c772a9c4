-- PLPGSQL baseline: the SQL-only phone sign-in a DBA can write today with pgcrypto, in schema
-- `plsql`. It does the same job as pg_otp_auth's hot paths with the same safety ideas where plain
-- SQL allows them:
--   send_code(phone)            random 6-digit code (gen_random_bytes), HMAC-SHA256 under a pepper
--                               stored, outbox row with the code (+ NOTIFY), send_events row,
--                               per-phone lock, cooldown / per-phone / per-IP / hourly-budget limits
--   verify_code(phone, code)    keyed-hash compare, attempts counter, consume, session row, refresh
--                               token (random 256 bits, stored as SHA-256), HS256 JWT signed in SQL
--   refresh(refresh_token)      rotate; a rotated token presented again revokes the session
--   totp(secret, step)          RFC 6238 / 4226 HOTP-SHA1, 6 digits, in PL/pgSQL
--   totp_verify(factor_id, code) the caller's session from request.jwt.claims, +-1 step window,
--                               replay protection (last_used_step), per-factor failure limit,
--                               session raised to aal2, new tokens
--
-- One thing plain PL/pgSQL cannot do is commit a counter while raising an error (no autonomous
-- transactions without dblink). So, as DBAs usually do, verify_code/refresh/totp_verify do not
-- RAISE for a wrong code: they return {"error": ...} and commit, so the attempt counter and the
-- audit row survive. (pg_otp_auth raises a real SQLSTATE and keeps the counter through a
-- background worker instead.)

CREATE SCHEMA plsql;

CREATE TABLE plsql.config (
    only_row            boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    otp_ttl             interval NOT NULL DEFAULT '5 minutes',
    otp_max_attempts    integer NOT NULL DEFAULT 5,
    resend_cooldown     interval NOT NULL DEFAULT '60 seconds',
    sms_rate_per_phone  integer NOT NULL DEFAULT 3,
    sms_rate_phone_win  interval NOT NULL DEFAULT '5 minutes',
    sms_rate_per_ip     integer NOT NULL DEFAULT 10,
    sms_rate_ip_win     interval NOT NULL DEFAULT '10 minutes',
    sms_budget_per_hour integer NOT NULL DEFAULT 1000,
    jwt_exp             integer NOT NULL DEFAULT 3600,
    refresh_ttl         interval NOT NULL DEFAULT '30 days',
    mfa_failure_limit   integer NOT NULL DEFAULT 10,
    mfa_failure_window  interval NOT NULL DEFAULT '15 minutes'
);
INSERT INTO plsql.config DEFAULT VALUES;

CREATE TABLE plsql.secrets (
    only_row   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    otp_pepper bytea NOT NULL DEFAULT gen_random_bytes(32),
    jwt_secret bytea NOT NULL DEFAULT convert_to(encode(gen_random_bytes(36), 'base64'), 'UTF8')
);
INSERT INTO plsql.secrets DEFAULT VALUES;

CREATE TABLE plsql.users (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    phone              text UNIQUE CHECK (phone ~ '^\+[1-9][0-9]{7,14}$'),
    phone_confirmed_at timestamptz,
    locale             text NOT NULL DEFAULT 'en',
    default_role       text NOT NULL DEFAULT 'authenticated',
    roles              text[] NOT NULL DEFAULT '{authenticated}',
    metadata           jsonb NOT NULL DEFAULT '{}',
    disabled           boolean NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    last_sign_in_at    timestamptz
);

CREATE TABLE plsql.otp_codes (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid REFERENCES plsql.users (id) ON DELETE CASCADE,
    subject     text NOT NULL,
    code_hash   bytea NOT NULL,
    attempts    integer NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    consumed_at timestamptz,
    invalidated_at timestamptz
);
CREATE INDEX otp_codes_live ON plsql.otp_codes (subject, created_at DESC)
    WHERE consumed_at IS NULL AND invalidated_at IS NULL;
CREATE INDEX otp_codes_expires ON plsql.otp_codes (expires_at);

CREATE TABLE plsql.sms_outbox (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    phone      text NOT NULL,
    body       text,
    user_id    uuid,
    status     text NOT NULL DEFAULT 'queued',
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sms_outbox_due ON plsql.sms_outbox (created_at) WHERE status = 'queued';
CREATE INDEX sms_outbox_phone ON plsql.sms_outbox (phone) WHERE status = 'queued';
CREATE FUNCTION plsql.outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('plsql_outbox', NEW.id::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER sms_outbox_notify AFTER INSERT ON plsql.sms_outbox
    FOR EACH ROW EXECUTE FUNCTION plsql.outbox_notify();

CREATE TABLE plsql.send_events (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    phone      text NOT NULL,
    ip         inet,
    queued     boolean NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX send_events_phone ON plsql.send_events (phone, created_at);
CREATE INDEX send_events_ip ON plsql.send_events (ip, created_at) WHERE ip IS NOT NULL;
CREATE INDEX send_events_queued ON plsql.send_events (created_at) WHERE queued;

CREATE TABLE plsql.sessions (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id        uuid NOT NULL REFERENCES plsql.users (id) ON DELETE CASCADE,
    aal            text NOT NULL DEFAULT 'aal1',
    amr            jsonb NOT NULL DEFAULT '[]',
    ip             inet,
    created_at     timestamptz NOT NULL DEFAULT now(),
    refreshed_at   timestamptz,
    revoked_at     timestamptz,
    revoked_reason text
);
CREATE INDEX sessions_user ON plsql.sessions (user_id) WHERE revoked_at IS NULL;

CREATE TABLE plsql.refresh_tokens (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    session_id uuid NOT NULL REFERENCES plsql.sessions (id) ON DELETE CASCADE,
    parent_id  uuid,
    token_hash bytea NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    rotated_at timestamptz
);
CREATE INDEX refresh_tokens_session ON plsql.refresh_tokens (session_id);
CREATE INDEX refresh_tokens_expires ON plsql.refresh_tokens (expires_at);

CREATE TABLE plsql.audit_log (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    event      text NOT NULL,
    user_id    uuid,
    phone      text,
    ip         inet,
    detail     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_created ON plsql.audit_log (created_at);
CREATE INDEX audit_log_user ON plsql.audit_log (user_id, created_at);

CREATE TABLE plsql.mfa_factors (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id        uuid NOT NULL REFERENCES plsql.users (id) ON DELETE CASCADE,
    status         text NOT NULL DEFAULT 'unverified',
    secret         bytea NOT NULL,
    last_used_step bigint,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX mfa_factors_user ON plsql.mfa_factors (user_id);

CREATE TABLE plsql.mfa_challenges (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    factor_id   uuid NOT NULL REFERENCES plsql.mfa_factors (id) ON DELETE CASCADE,
    session_id  uuid NOT NULL REFERENCES plsql.sessions (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    verified_at timestamptz
);
CREATE INDEX mfa_challenges_factor ON plsql.mfa_challenges (factor_id);

------------------------------------------------------------------------------------------------
-- Helpers

CREATE FUNCTION plsql.b64url(b bytea) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT translate(encode(b, 'base64'), E'+/=\n', '-_')
$$;

CREATE FUNCTION plsql.sign_jwt(claims jsonb) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    signing_input text := 'eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.'   -- {"alg":"HS256","typ":"JWT"}
                          || plsql.b64url(convert_to(claims::text, 'UTF8'));
BEGIN
    RETURN signing_input || '.' || plsql.b64url(
        hmac(convert_to(signing_input, 'UTF8'), (SELECT jwt_secret FROM plsql.secrets), 'sha256'));
END
$$;

CREATE FUNCTION plsql.client_ip() RETURNS inet
LANGUAGE plpgsql STABLE AS $$
DECLARE
    xff text := nullif(current_setting('request.headers', true), '')::jsonb ->> 'x-forwarded-for';
BEGIN
    IF xff IS NOT NULL THEN
        BEGIN
            RETURN trim(split_part(xff, ',', 1))::inet;
        EXCEPTION WHEN invalid_text_representation THEN
            NULL;
        END;
    END IF;
    RETURN inet_client_addr();
END
$$;

CREATE FUNCTION plsql.code_hash(phone text, code text) RETURNS bytea
LANGUAGE sql STABLE SET search_path = pg_catalog, public, pg_temp AS $$
    SELECT hmac(convert_to('signin:' || phone || ':' || code, 'UTF8'),
                (SELECT otp_pepper FROM plsql.secrets), 'sha256')
$$;

-- A new access token and refresh token for a session (the refresh token stored as SHA-256).
CREATE FUNCTION plsql.issue(session_id uuid, parent_id uuid) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    cfg     plsql.config;
    s       record;
    now_s   bigint := floor(extract(epoch FROM now()))::bigint;
    refresh text := plsql.b64url(gen_random_bytes(32));
    rid     uuid;
BEGIN
    SELECT * INTO cfg FROM plsql.config;
    SELECT ses.id, ses.aal, ses.amr, u.id AS user_id, u.phone, u.default_role, u.roles, u.metadata
      INTO s
      FROM plsql.sessions ses JOIN plsql.users u ON u.id = ses.user_id
     WHERE ses.id = issue.session_id;
    INSERT INTO plsql.refresh_tokens (session_id, parent_id, token_hash, expires_at)
        VALUES (s.id, issue.parent_id, digest(refresh, 'sha256'), now() + cfg.refresh_ttl)
        RETURNING id INTO rid;
    RETURN jsonb_build_object(
        'access_token', plsql.sign_jwt(jsonb_build_object(
            'sub', s.user_id, 'role', s.default_role, 'aud', 'authenticated', 'iss', 'plsql',
            'iat', now_s, 'exp', now_s + cfg.jwt_exp, 'session_id', s.id, 'phone', s.phone,
            'aal', s.aal, 'amr', s.amr, 'is_anonymous', false,
            'app_metadata', jsonb_build_object('provider', 'phone', 'providers', '["phone"]'::jsonb,
                                               'roles', to_jsonb(s.roles), 'default_role', s.default_role),
            'user_metadata', s.metadata)),
        'token_type', 'bearer', 'expires_in', cfg.jwt_exp, 'expires_at', now_s + cfg.jwt_exp,
        'refresh_token', refresh, 'refresh_token_id', rid,
        'user', jsonb_build_object('id', s.user_id, 'phone', s.phone, 'roles', to_jsonb(s.roles),
                                   'default_role', s.default_role, 'metadata', s.metadata));
END
$$;

------------------------------------------------------------------------------------------------
-- The API

CREATE FUNCTION plsql.send_code(phone text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    cfg  plsql.config;
    p    text := regexp_replace(send_code.phone, '[\s()-]', '', 'g');
    cip  inet := plsql.client_ip();
    u    plsql.users;
    code text;
    n    integer;
    r    bigint;
    mid  uuid;
    exp  timestamptz;
BEGIN
    IF p !~ '^\+[1-9][0-9]{7,14}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400', MESSAGE = 'invalid phone', DETAIL = 'invalid-phone';
    END IF;
    SELECT * INTO cfg FROM plsql.config;
    PERFORM pg_advisory_xact_lock(hashtext('plsql.phone:' || p));
    -- Limits: cooldown, per phone, per IP, hourly budget (each count bounded by its limit).
    IF EXISTS (SELECT 1 FROM plsql.send_events e
               WHERE e.phone = p AND e.created_at > now() - cfg.resend_cooldown) THEN
        RAISE EXCEPTION USING ERRCODE = 'PT429', MESSAGE = 'cooldown', DETAIL = 'over-sms-send-rate-limit';
    END IF;
    SELECT count(*) INTO n FROM (SELECT 1 FROM plsql.send_events e
        WHERE e.phone = p AND e.created_at > now() - cfg.sms_rate_phone_win
        LIMIT cfg.sms_rate_per_phone) x;
    IF n >= cfg.sms_rate_per_phone THEN
        RAISE EXCEPTION USING ERRCODE = 'PT429', MESSAGE = 'per-phone limit', DETAIL = 'over-sms-send-rate-limit';
    END IF;
    IF cip IS NOT NULL THEN
        SELECT count(*) INTO n FROM (SELECT 1 FROM plsql.send_events e
            WHERE e.ip = cip AND e.created_at > now() - cfg.sms_rate_ip_win
            LIMIT cfg.sms_rate_per_ip) x;
        IF n >= cfg.sms_rate_per_ip THEN
            RAISE EXCEPTION USING ERRCODE = 'PT429', MESSAGE = 'per-IP limit', DETAIL = 'over-request-rate-limit';
        END IF;
    END IF;
    SELECT count(*) INTO n FROM (SELECT 1 FROM plsql.send_events e
        WHERE e.queued AND e.created_at > now() - interval '1 hour'
        LIMIT cfg.sms_budget_per_hour) x;
    IF n >= cfg.sms_budget_per_hour THEN
        RAISE EXCEPTION USING ERRCODE = 'PT429', MESSAGE = 'hourly budget', DETAIL = 'over-sms-send-rate-limit';
    END IF;
    INSERT INTO plsql.send_events (phone, ip, queued) VALUES (p, cip, true);

    SELECT * INTO u FROM plsql.users WHERE users.phone = p;
    IF NOT FOUND THEN
        INSERT INTO plsql.users (phone) VALUES (p) RETURNING * INTO u;
        INSERT INTO plsql.audit_log (event, user_id, phone, ip) VALUES ('user_created', u.id, p, cip);
    END IF;
    IF u.disabled THEN
        RETURN jsonb_build_object('message_id', gen_random_uuid());   -- same answer, nothing sent
    END IF;

    UPDATE plsql.otp_codes SET invalidated_at = now()
     WHERE subject = p AND consumed_at IS NULL AND invalidated_at IS NULL;
    UPDATE plsql.sms_outbox SET status = 'expired', body = NULL, updated_at = now()
     WHERE sms_outbox.phone = p AND status = 'queued';
    -- Uniform 6 digits: 32 random bits, rejected above the largest multiple of 10^6.
    LOOP
        r := ('x' || encode(gen_random_bytes(4), 'hex'))::bit(32)::bigint;
        EXIT WHEN r < 4294000000;
    END LOOP;
    code := lpad((r % 1000000)::text, 6, '0');
    exp := now() + cfg.otp_ttl;
    INSERT INTO plsql.otp_codes (user_id, subject, code_hash, expires_at)
        VALUES (u.id, p, plsql.code_hash(p, code), exp);
    INSERT INTO plsql.sms_outbox (phone, body, user_id, expires_at)
        VALUES (p, 'Your code is ' || code, u.id, exp)
        RETURNING id INTO mid;
    RETURN jsonb_build_object('message_id', mid, 'expires_at', exp);
END
$$;

CREATE FUNCTION plsql.verify_code(phone text, code text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    cfg   plsql.config;
    p     text := regexp_replace(verify_code.phone, '[\s()-]', '', 'g');
    cip   inet := plsql.client_ip();
    c     plsql.otp_codes;
    ok    boolean;
    sid   uuid;
BEGIN
    IF code !~ '^[0-9]{6}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400', MESSAGE = 'bad code', DETAIL = 'invalid-request';
    END IF;
    SELECT * INTO cfg FROM plsql.config;
    PERFORM pg_advisory_xact_lock(hashtext('plsql.phone:' || p));
    SELECT * INTO c FROM plsql.otp_codes o
     WHERE o.subject = p AND o.consumed_at IS NULL AND o.invalidated_at IS NULL
     ORDER BY o.created_at DESC LIMIT 1;
    -- Compare keyed hashes (a timing difference reveals nothing about the code).
    ok := c.id IS NOT NULL AND c.expires_at > clock_timestamp() AND c.attempts < cfg.otp_max_attempts
          AND c.code_hash = plsql.code_hash(p, code);
    IF c.id IS NOT NULL THEN
        UPDATE plsql.otp_codes SET attempts = attempts + 1 WHERE id = c.id;
    END IF;
    IF NOT ok THEN
        INSERT INTO plsql.audit_log (event, user_id, phone, ip, detail)
            VALUES ('verify_failed', c.user_id, p, cip, jsonb_build_object('attempts', c.attempts + 1));
        RETURN jsonb_build_object('error', 'invalid-otp');          -- committed, not raised
    END IF;
    UPDATE plsql.otp_codes SET consumed_at = now() WHERE id = c.id;
    UPDATE plsql.users SET phone_confirmed_at = coalesce(phone_confirmed_at, now()),
                           last_sign_in_at = now(), updated_at = now()
     WHERE id = c.user_id AND NOT disabled;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('error', 'disabled-user');
    END IF;
    INSERT INTO plsql.sessions (user_id, amr, ip)
        VALUES (c.user_id, jsonb_build_array(jsonb_build_object(
                    'method', 'sms', 'timestamp', floor(extract(epoch FROM now()))::bigint)), cip)
        RETURNING id INTO sid;
    INSERT INTO plsql.audit_log (event, user_id, phone, ip) VALUES ('sign_in', c.user_id, p, cip);
    RETURN jsonb_build_object('session', plsql.issue(sid, NULL), 'mfa', NULL);
END
$$;

CREATE FUNCTION plsql.refresh(refresh_token text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    h bytea := digest(refresh_token, 'sha256');
    t record;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('plsql.refresh:' || encode(h, 'hex')));
    SELECT r.id, r.session_id, r.rotated_at, r.expires_at, s.revoked_at, u.disabled INTO t
      FROM plsql.refresh_tokens r JOIN plsql.sessions s ON s.id = r.session_id
      JOIN plsql.users u ON u.id = s.user_id
     WHERE r.token_hash = h;
    IF t.id IS NULL OR t.revoked_at IS NOT NULL OR t.expires_at <= clock_timestamp() OR t.disabled THEN
        RETURN jsonb_build_object('error', 'invalid-refresh-token');
    END IF;
    IF t.rotated_at IS NOT NULL THEN
        UPDATE plsql.sessions SET revoked_at = now(), revoked_reason = 'refresh_token_reused'
         WHERE id = t.session_id;
        INSERT INTO plsql.audit_log (event, detail)
            VALUES ('refresh_token_reused', jsonb_build_object('refresh_token_id', t.id));
        RETURN jsonb_build_object('error', 'refresh-token-reused');  -- committed, not raised
    END IF;
    UPDATE plsql.refresh_tokens SET rotated_at = now() WHERE id = t.id;
    UPDATE plsql.sessions SET refreshed_at = now() WHERE id = t.session_id;
    RETURN plsql.issue(t.session_id, t.id);
END
$$;

-- RFC 4226 HOTP (SHA-1), 6 digits; TOTP is hotp(secret, floor(epoch / 30)).
CREATE FUNCTION plsql.hotp(secret bytea, counter bigint) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    mac bytea := hmac(int8send(counter), secret, 'sha1');
    o   integer := get_byte(mac, 19) & 15;
BEGIN
    RETURN lpad(((((get_byte(mac, o) & 127) << 24) | (get_byte(mac, o + 1) << 16)
                  | (get_byte(mac, o + 2) << 8) | get_byte(mac, o + 3)) % 1000000)::text, 6, '0');
END
$$;

CREATE FUNCTION plsql.totp(secret bytea, at timestamptz DEFAULT now()) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT plsql.hotp(secret, floor(extract(epoch FROM at) / 30)::bigint)
$$;

CREATE FUNCTION plsql.totp_verify(factor_id uuid, code text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    cfg    plsql.config;
    claims jsonb := coalesce(nullif(current_setting('request.jwt.claims', true), ''), '{}')::jsonb;
    cip    inet := plsql.client_ip();
    me     record;
    f      plsql.mfa_factors;
    now_step bigint := floor(extract(epoch FROM clock_timestamp()) / 30)::bigint;
    matched bigint;
    fails  integer;
BEGIN
    IF code !~ '^[0-9]{6}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400', MESSAGE = 'bad code', DETAIL = 'invalid-request';
    END IF;
    SELECT * INTO cfg FROM plsql.config;
    -- The claims must name a live session of their user.
    SELECT s.id, s.user_id, s.aal INTO me
      FROM plsql.sessions s JOIN plsql.users u ON u.id = s.user_id
     WHERE s.id = (claims ->> 'session_id')::uuid AND s.user_id::text = claims ->> 'sub'
       AND s.revoked_at IS NULL AND NOT u.disabled
       AND (claims ->> 'exp')::bigint > extract(epoch FROM clock_timestamp());
    IF me.id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'PT401', MESSAGE = 'not authenticated', DETAIL = 'not-authenticated';
    END IF;
    SELECT * INTO f FROM plsql.mfa_factors m WHERE m.id = totp_verify.factor_id AND m.user_id = me.user_id
       FOR UPDATE;
    IF f.id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'PT404', MESSAGE = 'no such factor', DETAIL = 'mfa-factor-not-found';
    END IF;
    SELECT count(*) INTO fails FROM (SELECT 1 FROM plsql.audit_log a
        WHERE a.user_id = me.user_id AND a.event = 'mfa_verify_failed'
          AND a.created_at > clock_timestamp() - cfg.mfa_failure_window
          AND a.detail ->> 'factor_id' = f.id::text
        LIMIT cfg.mfa_failure_limit) x;
    IF fails >= cfg.mfa_failure_limit THEN
        RETURN jsonb_build_object('error', 'too-many-attempts');
    END IF;
    SELECT st INTO matched FROM generate_series(now_step - 1, now_step + 1) st
     WHERE st > coalesce(f.last_used_step, -1) AND plsql.hotp(f.secret, st) = code
     ORDER BY st LIMIT 1;
    INSERT INTO plsql.mfa_challenges (factor_id, session_id, verified_at)
        VALUES (f.id, me.id, CASE WHEN matched IS NOT NULL THEN now() END);
    IF matched IS NULL THEN
        INSERT INTO plsql.audit_log (event, user_id, ip, detail)
            VALUES ('mfa_verify_failed', me.user_id, cip, jsonb_build_object('factor_id', f.id));
        RETURN jsonb_build_object('error', 'invalid-totp');          -- committed, not raised
    END IF;
    UPDATE plsql.mfa_factors SET last_used_step = matched, status = 'verified', updated_at = now()
     WHERE id = f.id;
    UPDATE plsql.sessions SET aal = 'aal2', amr = amr || jsonb_build_array(jsonb_build_object(
               'method', 'totp', 'timestamp', floor(extract(epoch FROM now()))::bigint))
     WHERE id = me.id;
    IF me.aal <> 'aal2' THEN
        DELETE FROM plsql.refresh_tokens WHERE session_id = me.id;
        UPDATE plsql.sessions SET revoked_at = now(), revoked_reason = 'mfa_upgrade'
         WHERE user_id = me.user_id AND id <> me.id AND aal <> 'aal2' AND revoked_at IS NULL;
    END IF;
    INSERT INTO plsql.audit_log (event, user_id, ip, detail)
        VALUES ('mfa_verified', me.user_id, cip, jsonb_build_object('factor_id', f.id));
    RETURN plsql.issue(me.id, NULL);
END
$$;

GRANT USAGE ON SCHEMA plsql TO PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA plsql FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA plsql FROM PUBLIC;
GRANT EXECUTE ON FUNCTION plsql.send_code(text), plsql.verify_code(text, text), plsql.refresh(text),
    plsql.totp_verify(uuid, text) TO PUBLIC;
