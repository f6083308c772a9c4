-- The public SQL API of pg_otp_auth: the contract PostgREST and SQL clients call.
--
-- Every public function is SECURITY DEFINER with a fixed search_path. A failure raises SQLSTATE
-- PT<status> (PostgREST answers HTTP <status>) with the stable code in DETAIL, which rolls back
-- everything the call wrote. Only counters and audit rows that must survive a failure are
-- written outside the transaction, by a background worker (see src/autonomous.rs).
--
-- A function whose answer is jsonb is the Rust function itself (LANGUAGE c): it answers, or
-- raises its error once everything it held is released (src/answer.rs). The few whose answer SQL
-- reshapes (text, text[], void, a table) are PL/pgSQL wrappers around an internal function
-- (auth._*) that returns {"ok": result} or {"error": {status, code, message, hint}}, raised by
-- auth._unwrap. PL/pgSQL keeps a call's plan for the session; a SQL function with SET
-- search_path is parsed and planned again on every call.

CREATE FUNCTION auth._unwrap(result jsonb) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e jsonb := result -> 'error';
BEGIN
    IF e IS NULL THEN
        RETURN result -> 'ok';
    END IF;
    IF e ? 'hint' THEN
        RAISE EXCEPTION USING ERRCODE = 'PT' || (e ->> 'status'), MESSAGE = e ->> 'message',
            DETAIL = e ->> 'code', HINT = e ->> 'hint';
    END IF;
    RAISE EXCEPTION USING ERRCODE = 'PT' || (e ->> 'status'), MESSAGE = e ->> 'message',
        DETAIL = e ->> 'code';
END
$$;

-- Fresh secrets for a new install (a restore replaces them, see auth.secrets).
INSERT INTO auth.secrets (name, value) VALUES
    ('otp_pepper', auth._random_bytes(32)),
    ('jwt_secret', convert_to(auth._random_secret_text(48), 'UTF8'));

-- Identity of the caller, as PostgREST sets it from the verified JWT. Usable in RLS policies:
--   CREATE POLICY own_rows ON notes USING (owner_id = auth.uid());
CREATE FUNCTION auth.jwt() RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(nullif(current_setting('request.jwt.claims', true), ''), '{}')::jsonb
$$;

CREATE FUNCTION auth.uid() RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT nullif(coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),
                           auth.jwt() ->> 'sub'), '')::uuid
$$;

CREATE FUNCTION auth.role() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(nullif(current_setting('request.jwt.claim.role', true), ''),
                    auth.jwt() ->> 'role')
$$;

CREATE FUNCTION auth.session_id() RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT nullif(auth.jwt() ->> 'session_id', '')::uuid
$$;

CREATE FUNCTION auth.send_sms_otp(
    phone text,
    create_user boolean DEFAULT true,
    data jsonb DEFAULT '{}',
    captcha_token text DEFAULT NULL,
    channel text DEFAULT 'sms'
) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_send_sms_otp';

CREATE FUNCTION auth.resend_sms_otp(phone text) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_resend_sms_otp';

CREATE FUNCTION auth.signup_sms_otp(phone text, options jsonb DEFAULT '{}') RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN auth._unwrap(auth._signup_sms_otp(phone, options)) #>> '{}';
END
$$;

CREATE FUNCTION auth.verify_sms_otp(phone text, otp text) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_verify_sms_otp';

CREATE FUNCTION auth.refresh_session(refresh_token text) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_refresh_session';

CREATE FUNCTION auth.sign_out(scope text DEFAULT 'local') RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM auth._unwrap(auth._sign_out(scope));
END
$$;

-- Multi-factor authentication. The acting user is the caller's live session (auth.uid()).

CREATE FUNCTION auth.mfa_enroll(
    factor_type text,
    friendly_name text DEFAULT NULL,
    phone text DEFAULT NULL,
    issuer text DEFAULT NULL
) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_mfa_enroll';

CREATE FUNCTION auth.mfa_challenge(factor_id uuid, channel text DEFAULT 'sms') RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_mfa_challenge';

CREATE FUNCTION auth.mfa_verify(factor_id uuid, challenge_id uuid, code text) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_mfa_verify';

CREATE FUNCTION auth.mfa_challenge_and_verify(factor_id uuid, code text) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_mfa_challenge_and_verify';

CREATE FUNCTION auth.mfa_unenroll(factor_id uuid) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_mfa_unenroll';

CREATE FUNCTION auth.mfa_list_factors() RETURNS jsonb
LANGUAGE c STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_mfa_list_factors';

CREATE FUNCTION auth.mfa_get_authenticator_assurance_level() RETURNS jsonb
LANGUAGE c STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_mfa_get_authenticator_assurance_level';

CREATE FUNCTION auth.signin_mfa_totp(ticket text, otp text) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_signin_mfa_totp';

CREATE FUNCTION auth.signin_mfa_recovery_code(ticket text, code text) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_signin_mfa_recovery_code';

CREATE FUNCTION auth.mfa_generate_recovery_codes() RETURNS text[]
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT ARRAY(SELECT jsonb_array_elements_text(auth._unwrap(auth._mfa_generate_recovery_codes())))
$$;

-- RFC 4226 / RFC 6238 codes, for DBAs and tests (owner only).
CREATE FUNCTION auth.hotp(secret bytea, counter bigint, digits integer DEFAULT 6, algorithm text DEFAULT 'sha1')
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN auth._unwrap(auth._hotp(secret, counter, digits, algorithm)) #>> '{}';
END
$$;

CREATE FUNCTION auth.totp(secret text, at timestamptz DEFAULT now(), digits integer DEFAULT 6,
                          period integer DEFAULT 30, algorithm text DEFAULT 'sha1')
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN auth._unwrap(auth._totp(secret, floor(extract(epoch FROM at))::bigint, digits, period, algorithm)) #>> '{}';
END
$$;

-- The dispatcher's interface (see README "Dispatcher"): executable by the extension owner and
-- by roles given auth.grant_dispatcher(); not by PUBLIC.

-- Leases up to batch_size due messages to the caller. Rows locked by another dispatcher are
-- skipped, and a lease that runs out (the dispatcher died) makes its messages due again.
CREATE FUNCTION auth.sms_claim(batch_size integer DEFAULT 100, lease interval DEFAULT '30 seconds')
RETURNS TABLE (id uuid, phone text, channel text, body text, captcha_token text, attempts integer,
               expires_at timestamptz, captcha_verified boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    max_attempts integer := auth._unwrap(auth._setting('sms_max_attempts'))::integer;
BEGIN
    IF batch_size IS NULL OR batch_size < 1 OR batch_size > 10000 THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400', MESSAGE = 'batch_size must be between 1 and 10000.',
            DETAIL = 'invalid-request';
    END IF;
    IF lease IS NULL OR lease < interval '1 second' OR lease > interval '1 hour' THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400', MESSAGE = 'lease must be between 1 second and 1 hour.',
            DETAIL = 'invalid-request';
    END IF;
    -- A code that expired before delivery is never sent; its body (the plain code) goes. A
    -- message whose last allowed attempt never reported back (its dispatcher died, perhaps on
    -- this very message) is dead rather than retried forever. SKIP LOCKED: dispatchers never
    -- wait on each other's sweeps. Both sweeps read an index range of what is stale, so a claim
    -- costs the same however long the queue is.
    WITH stale AS (
        SELECT o.id FROM auth.sms_outbox o
        WHERE o.status IN ('queued', 'sending') AND o.expires_at <= now()
          AND (o.lease_until IS NULL OR o.lease_until < now())
        FOR UPDATE SKIP LOCKED)
    UPDATE auth.sms_outbox o
    SET status = 'expired', body = NULL, captcha_token = NULL, lease_until = NULL, updated_at = now()
    FROM stale WHERE o.id = stale.id;
    WITH stale AS (
        SELECT o.id FROM auth.sms_outbox o
        WHERE o.status = 'sending' AND o.lease_until < now() AND o.attempts >= max_attempts
        FOR UPDATE SKIP LOCKED)
    UPDATE auth.sms_outbox o
    SET status = 'dead', last_error = 'no result reported for the last attempt before its lease ran out',
        body = NULL, captcha_token = NULL, lease_until = NULL, updated_at = now()
    FROM stale WHERE o.id = stale.id;
    RETURN QUERY
    WITH due AS (
        SELECT o.id FROM auth.sms_outbox o
        WHERE o.status IN ('queued', 'sending') AND o.next_attempt_at <= now()
          AND o.expires_at > now() AND (o.lease_until IS NULL OR o.lease_until < now())
          AND o.body IS NOT NULL
        ORDER BY o.next_attempt_at
        LIMIT sms_claim.batch_size
        FOR UPDATE SKIP LOCKED)
    UPDATE auth.sms_outbox o
    SET status = 'sending', lease_until = now() + sms_claim.lease, attempts = o.attempts + 1,
        updated_at = now()
    FROM due WHERE o.id = due.id
    RETURNING o.id, o.phone, o.channel::text, o.body, o.captcha_token, o.attempts, o.expires_at,
              o.captcha_verified;
END
$$;

-- Records deliveries: for each (id, provider_message_id) pair the sent status and the provider's
-- id, the body cleared, all in one statement (the dispatcher's batches: one commit for many).
-- Returns the ids that match no message (purged or deleted meanwhile); the others are recorded.
CREATE FUNCTION auth.sms_mark_sent_many(ids uuid[], provider_message_ids text[]) RETURNS SETOF uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF ids IS NULL OR provider_message_ids IS NULL
       OR cardinality(ids) <> cardinality(provider_message_ids)
       OR array_position(ids, NULL) IS NOT NULL OR array_position(provider_message_ids, NULL) IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400',
            MESSAGE = 'ids and provider_message_ids must be arrays of equal length without nulls.',
            DETAIL = 'invalid-request';
    END IF;
    IF cardinality(ids) > 10000 THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400', MESSAGE = 'At most 10000 deliveries per call.',
            DETAIL = 'invalid-request';
    END IF;
    RETURN QUERY
    WITH given AS (
        SELECT g.id, g.provider_message_id FROM unnest(ids, provider_message_ids) AS g(id, provider_message_id)),
    marked AS (
        UPDATE auth.sms_outbox o
        SET status = 'sent', provider_message_id = g.provider_message_id, body = NULL,
            captcha_token = NULL, sent_at = now(), lease_until = NULL, last_error = NULL, updated_at = now()
        FROM given g WHERE o.id = g.id AND o.status <> 'sent'
        RETURNING o.id)
    SELECT g.id FROM given g
    WHERE NOT EXISTS (SELECT 1 FROM marked m WHERE m.id = g.id)
      AND NOT EXISTS (SELECT 1 FROM auth.sms_outbox o WHERE o.id = g.id);
END
$$;

-- Records a delivery: the provider's id and the sent status in one commit; the body is cleared.
CREATE FUNCTION auth.sms_mark_sent(id uuid, provider_message_id text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF sms_mark_sent.id IS NULL OR sms_mark_sent.provider_message_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400', MESSAGE = 'id and provider_message_id are required.',
            DETAIL = 'invalid-request';
    END IF;
    IF EXISTS (SELECT FROM auth.sms_mark_sent_many(ARRAY[sms_mark_sent.id], ARRAY[sms_mark_sent.provider_message_id])) THEN
        RAISE EXCEPTION USING ERRCODE = 'PT404', MESSAGE = 'No such message.', DETAIL = 'message-not-found';
    END IF;
END
$$;

-- Records a failed attempt: retried with exponential backoff and jitter up to sms_max_attempts,
-- then dead; a permanent (non-retryable) error is dead at once; an expired code is expired.
-- With `attempt` (the attempts value sms_claim returned), a report that arrives after the lease
-- ran out and the message was claimed again, or finished, changes nothing.
CREATE FUNCTION auth.sms_mark_failed(id uuid, error text, retryable boolean DEFAULT true,
                                     attempt integer DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM auth._unwrap(auth._sms_mark_failed(id, error, retryable, attempt));
END
$$;

-- Records that a message's captcha passed: tokens are single-use, so a retry must not ask again.
CREATE FUNCTION auth.sms_mark_captcha_passed(id uuid) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE auth.sms_outbox o SET captcha_verified = true, captcha_token = NULL, updated_at = now()
    WHERE o.id = sms_mark_captcha_passed.id AND o.status = 'sending'
$$;

-- For DBAs and the dispatcher's metrics: counts by status, the oldest due message, recent failures.
CREATE FUNCTION auth.sms_queue_stats() RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_object(
        'counts', (SELECT jsonb_object_agg(s.status, coalesce(c.n, 0))
                   FROM unnest(ARRAY['queued', 'sending', 'sent', 'dead', 'expired']) AS s(status)
                   LEFT JOIN (SELECT status, count(*) AS n FROM auth.sms_outbox GROUP BY status) c
                          ON c.status = s.status),
        'max_attempts', auth._unwrap(auth._setting('sms_max_attempts')),
        'oldest_queued_age_seconds',
            (SELECT extract(epoch FROM now() - min(created_at))::float8 FROM auth.sms_outbox
             WHERE status IN ('queued', 'sending')),
        'recent_failures',
            (SELECT coalesce(jsonb_agg(f ORDER BY f.updated_at DESC), '[]') FROM (
                SELECT id, status, attempts, last_error, updated_at FROM auth.sms_outbox
                WHERE last_error IS NOT NULL ORDER BY updated_at DESC LIMIT 20) f))
$$;

-- Lets a role run the dispatcher: EXECUTE on the six functions above, nothing else.
CREATE FUNCTION auth.grant_dispatcher(role_name name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE format('GRANT EXECUTE ON FUNCTION auth.sms_claim(integer, interval), '
                   'auth.sms_mark_sent(uuid, text), auth.sms_mark_sent_many(uuid[], text[]), '
                   'auth.sms_mark_failed(uuid, text, boolean, integer), '
                   'auth.sms_mark_captcha_passed(uuid), auth.sms_queue_stats() TO %I', role_name);
END
$$;

-- Administration: owner only (not executable by PUBLIC).

CREATE FUNCTION auth.settings()
RETURNS TABLE (name text, value jsonb, is_default boolean, description text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT s.name, s.value, s.is_default, s.description
    FROM jsonb_to_recordset(auth._unwrap(auth._settings()))
         AS s(name text, value jsonb, is_default boolean, description text)
$$;

CREATE FUNCTION auth.set_setting(name text, value jsonb) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_set_setting';

CREATE FUNCTION auth.reset_setting(name text) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_reset_setting';

-- The secret PostgREST needs as jwt-secret (PGRST_JWT_SECRET).
CREATE FUNCTION auth.jwt_secret() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT convert_from(value, 'UTF8') FROM auth.secrets WHERE name = 'jwt_secret'
$$;

CREATE FUNCTION auth.set_jwt_secret(secret text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF secret IS NULL OR octet_length(secret) < 32 THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400', MESSAGE = 'The JWT secret must be at least 32 bytes.',
            DETAIL = 'invalid-request';
    END IF;
    UPDATE auth.secrets SET value = convert_to(secret, 'UTF8'), created_at = now()
    WHERE name = 'jwt_secret';
END
$$;

CREATE FUNCTION auth.set_user_disabled(user_id uuid, disabled boolean DEFAULT true) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE auth.users u SET disabled = set_user_disabled.disabled, updated_at = now()
    WHERE u.id = set_user_disabled.user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'PT404', MESSAGE = 'No such user.', DETAIL = 'user-not-found';
    END IF;
    IF set_user_disabled.disabled THEN
        UPDATE auth.sessions s SET revoked_at = now(), revoked_reason = 'user_disabled'
        WHERE s.user_id = set_user_disabled.user_id AND s.revoked_at IS NULL;
    END IF;
    INSERT INTO auth.audit_log (event, user_id, detail, actor)
    VALUES (CASE WHEN set_user_disabled.disabled THEN 'user_disabled' ELSE 'user_enabled' END,
            set_user_disabled.user_id, '{}',
            CASE WHEN current_setting('role') <> 'none' THEN current_setting('role')
                 ELSE session_user::text END);
END
$$;

-- Deletes what can no longer be used: dead codes, expired refresh tokens, sessions that can no
-- longer be refreshed, rate-limit events and counters older than any window, and finished
-- outbox messages. Returns counts.
CREATE FUNCTION auth.purge_expired(older_than interval DEFAULT '1 day') RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cutoff timestamptz := now() - older_than;
    n_codes bigint;
    n_tokens bigint;
    n_sessions bigint;
    n_events bigint;
    n_messages bigint;
    n_counters bigint;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400', MESSAGE = 'older_than must be a non-negative interval.',
            DETAIL = 'invalid-request';
    END IF;
    DELETE FROM auth.otp_codes
    WHERE expires_at < cutoff OR consumed_at < cutoff OR invalidated_at < cutoff;
    GET DIAGNOSTICS n_codes = ROW_COUNT;
    DELETE FROM auth.refresh_tokens WHERE expires_at < cutoff;
    GET DIAGNOSTICS n_tokens = ROW_COUNT;
    DELETE FROM auth.mfa_challenges WHERE expires_at < cutoff;
    DELETE FROM auth.mfa_tickets WHERE expires_at < cutoff;
    DELETE FROM auth.sessions s
    WHERE s.revoked_at < cutoff
       OR (s.created_at < cutoff
           AND NOT EXISTS (SELECT 1 FROM auth.refresh_tokens r
                           WHERE r.session_id = s.id AND r.expires_at >= now()));
    GET DIAGNOSTICS n_sessions = ROW_COUNT;
    DELETE FROM auth.send_events WHERE created_at < now() - interval '30 days' - older_than;
    GET DIAGNOSTICS n_events = ROW_COUNT;
    DELETE FROM auth.rate_counters WHERE last_at < now() - interval '30 days' - older_than;
    GET DIAGNOSTICS n_counters = ROW_COUNT;
    DELETE FROM auth.sms_outbox WHERE status IN ('sent', 'dead', 'expired') AND updated_at < cutoff;
    GET DIAGNOSTICS n_messages = ROW_COUNT;
    RETURN jsonb_build_object('otp_codes', n_codes, 'refresh_tokens', n_tokens,
                              'sessions', n_sessions, 'send_events', n_events,
                              'rate_counters', n_counters, 'sms_outbox', n_messages);
END
$$;

-- The signed-in user's own account (acting user: the live session in request.jwt.claims).

CREATE FUNCTION auth.get_user() RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_get_user';

-- Each argument is optional (NULL: unchanged). display_name or avatar_url '' clears it;
-- metadata is merged into the stored object (a key set to null is removed).
CREATE FUNCTION auth.update_user(
    display_name text DEFAULT NULL,
    locale text DEFAULT NULL,
    avatar_url text DEFAULT NULL,
    metadata jsonb DEFAULT NULL
) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_update_user';

CREATE FUNCTION auth.change_phone(new_phone text, channel text DEFAULT 'sms') RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_change_phone';

CREATE FUNCTION auth.verify_phone_change(new_phone text, otp text) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_verify_phone_change';

-- Administration of users: the extension owner, and roles given auth.grant_admin (such as a
-- PostgREST service role). Every action is audited with the acting role (audit_log.actor).

CREATE FUNCTION auth.admin_create_user(
    phone text,
    phone_confirmed boolean DEFAULT false,
    display_name text DEFAULT NULL,
    locale text DEFAULT NULL,
    metadata jsonb DEFAULT NULL,
    roles text[] DEFAULT NULL,
    default_role text DEFAULT NULL
) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_admin_create_user';

CREATE FUNCTION auth.admin_get_user(user_id uuid) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_admin_get_user';

CREATE FUNCTION auth.admin_list_users(page integer DEFAULT 1, per_page integer DEFAULT 50,
                                      phone_prefix text DEFAULT NULL) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_admin_list_users';

CREATE FUNCTION auth.admin_update_user(user_id uuid, attributes jsonb) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_admin_update_user';

CREATE FUNCTION auth.admin_delete_user(user_id uuid, soft boolean DEFAULT false) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_admin_delete_user';

CREATE FUNCTION auth.admin_list_factors(user_id uuid) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_admin_list_factors';

CREATE FUNCTION auth.admin_delete_factor(user_id uuid, factor_id uuid) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_admin_delete_factor';

CREATE FUNCTION auth.admin_sign_out(user_id uuid) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_admin_sign_out';

-- Owner only: lets role_name call the admin_* functions (and set_user_disabled), or stops it.
CREATE FUNCTION auth.grant_admin(role_name name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', auth._admin_functions(), role_name);
    INSERT INTO auth.audit_log (event, detail, actor)
    VALUES ('admin_granted', jsonb_build_object('role', role_name), session_user);
END
$$;

CREATE FUNCTION auth.revoke_admin(role_name name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM %I', auth._admin_functions(), role_name);
    INSERT INTO auth.audit_log (event, detail, actor)
    VALUES ('admin_revoked', jsonb_build_object('role', role_name), session_user);
END
$$;

CREATE FUNCTION auth._admin_functions() RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'auth.admin_create_user(text, boolean, text, text, jsonb, text[], text), '
           'auth.admin_get_user(uuid), auth.admin_list_users(integer, integer, text), '
           'auth.admin_update_user(uuid, jsonb), auth.admin_delete_user(uuid, boolean), '
           'auth.admin_list_factors(uuid), auth.admin_delete_factor(uuid, uuid), '
           'auth.admin_sign_out(uuid), auth.set_user_disabled(uuid, boolean)'
$$;

-- Backends keep the settings and secrets once read (src/config.rs); a change to either table
-- makes every backend drop its copy when the change commits.
CREATE FUNCTION auth._settings_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM auth._forget_settings(TG_RELID);
    RETURN NULL;
END
$$;
CREATE TRIGGER config_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON auth.config
    FOR EACH STATEMENT EXECUTE FUNCTION auth._settings_changed();
CREATE TRIGGER secrets_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON auth.secrets
    FOR EACH STATEMENT EXECUTE FUNCTION auth._settings_changed();

-- Wakes the dispatcher once the rows are committed (src/wakeup.rs): by NOTIFY
-- pg_otp_auth_outbox, sent by this transaction or, when preloaded, once for many commits by the
-- database's attempt recorder. A C trigger: it runs on every send.
CREATE FUNCTION auth._sms_outbox_notify() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'sms_outbox_notify_wrapper';
CREATE TRIGGER sms_outbox_notify AFTER INSERT ON auth.sms_outbox
    FOR EACH ROW EXECUTE FUNCTION auth._sms_outbox_notify();

-- Deleting or truncating counter rows (a DBA resetting a limit, or auth.purge_expired) drops
-- the hourly budget's tally in shared memory when the transaction commits, so the next send
-- counts from the rows again (src/budget.rs).
CREATE FUNCTION auth._rate_counters_deleted() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'rate_counters_deleted_wrapper';
CREATE TRIGGER rate_counters_deleted AFTER DELETE OR TRUNCATE ON auth.rate_counters
    FOR EACH STATEMENT EXECUTE FUNCTION auth._rate_counters_deleted();

-- Least privilege: nothing in schema auth is executable by PUBLIC unless granted below.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA auth FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    auth.jwt(), auth.uid(), auth.role(), auth.session_id(),
    auth.send_sms_otp(text, boolean, jsonb, text, text),
    auth.resend_sms_otp(text),
    auth.signup_sms_otp(text, jsonb),
    auth.verify_sms_otp(text, text),
    auth.refresh_session(text),
    auth.sign_out(text),
    auth.mfa_enroll(text, text, text, text),
    auth.mfa_challenge(uuid, text),
    auth.mfa_verify(uuid, uuid, text),
    auth.mfa_challenge_and_verify(uuid, text),
    auth.mfa_unenroll(uuid),
    auth.mfa_list_factors(),
    auth.mfa_get_authenticator_assurance_level(),
    auth.signin_mfa_totp(text, text),
    auth.signin_mfa_recovery_code(text, text),
    auth.mfa_generate_recovery_codes(),
    auth.get_user(),
    auth.update_user(text, text, text, jsonb),
    auth.change_phone(text, text),
    auth.verify_phone_change(text, text)
TO PUBLIC;
