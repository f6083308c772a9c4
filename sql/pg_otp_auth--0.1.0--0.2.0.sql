-- pg_otp_auth 0.1.0 -> 0.2.0, by hand. Every schema change of 0.2.0 is here, so that
-- ALTER EXTENSION pg_otp_auth UPDATE gives the same schema as a fresh install of 0.2.0
-- (tests/integration/test_upgrade.py compares the two) and keeps every row.
\echo Use "ALTER EXTENSION pg_otp_auth UPDATE" to load this file. \quit

-- One verified TOTP factor per user. 0.1.0 let a factor planted by an aal1 session be verified
-- beside the owner's; such a planted factor was created before the owner's (it had to exist
-- before MFA was set up), so the newest verified TOTP factor stays verified and the older ones
-- go back to unverified, with an audit row each for the DBA to review. The user's sessions end
-- (one of them may be the attacker's, raised to aal2 by the planted factor); the owner signs in
-- again with their own factor.
WITH ranked AS (
    SELECT id, user_id,
           row_number() OVER (PARTITION BY user_id ORDER BY created_at DESC, id DESC) AS n
    FROM auth.mfa_factors WHERE factor_type = 'totp' AND status = 'verified'),
demoted AS (
    UPDATE auth.mfa_factors f SET status = 'unverified', updated_at = now()
    FROM ranked r WHERE r.id = f.id AND r.n > 1
    RETURNING f.id, f.user_id),
revoked AS (
    UPDATE auth.sessions s SET revoked_at = now(), revoked_reason = 'mfa_repair'
    WHERE s.revoked_at IS NULL AND s.user_id IN (SELECT user_id FROM demoted))
INSERT INTO auth.audit_log (event, user_id, detail)
SELECT 'mfa_factor_demoted', user_id,
       jsonb_build_object('factor_id', id, 'reason', 'a second verified TOTP factor (upgrade to 0.2.0)')
FROM demoted;

CREATE UNIQUE INDEX mfa_factors_one_verified_totp ON auth.mfa_factors (user_id)
    WHERE factor_type = 'totp' AND status = 'verified';

-- 0.1.0 kept a session's aal1 refresh tokens valid after the session rose to aal2, so each of
-- them minted aal2 access tokens. 0.2.0 deletes them at the rise; here the same is done for
-- sessions that rose before the upgrade. A session's refresh tokens without a parent are issued
-- at sign-in and at each rise, so the newest of them marks the last rise: every token issued
-- before it goes, and so do the tokens rotated from those (even after the rise).
WITH RECURSIVE rise AS (
    SELECT r.session_id, max(r.created_at) AS at
    FROM auth.refresh_tokens r JOIN auth.sessions s ON s.id = r.session_id
    WHERE s.aal = 'aal2' AND r.parent_id IS NULL
    GROUP BY r.session_id),
stale AS (
    SELECT r.id FROM auth.refresh_tokens r JOIN rise ON rise.session_id = r.session_id
    WHERE r.created_at < rise.at
    UNION
    SELECT c.id FROM auth.refresh_tokens c JOIN stale ON c.parent_id = stale.id)
DELETE FROM auth.refresh_tokens WHERE id IN (SELECT id FROM stale);

-- Per-IP limits and the hourly budget move from reading their own history (up to
-- sms_budget_per_hour rows per send) to bucketed counters read in a fixed number of rows. The
-- counters are seeded from that history below, so every limit stays in force across the upgrade.
CREATE TABLE auth.rate_counters (
    key          text NOT NULL,
    bucket_start timestamptz NOT NULL,
    shard        smallint NOT NULL,
    hits         integer NOT NULL,
    last_at      timestamptz NOT NULL,
    PRIMARY KEY (key, bucket_start, shard)
);
REVOKE ALL ON auth.rate_counters FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('auth.rate_counters', '');
INSERT INTO auth.rate_counters (key, bucket_start, shard, hits, last_at)
SELECT 'send_ip:' || host(ip), to_timestamp(floor(extract(epoch FROM created_at) / 60) * 60), 0,
       count(*), max(created_at)
FROM auth.send_events WHERE ip IS NOT NULL AND created_at > now() - interval '30 days'
GROUP BY 1, 2
UNION ALL
SELECT 'budget', to_timestamp(floor(extract(epoch FROM created_at) / 900) * 900), 0,
       count(*), max(created_at)
FROM auth.send_events WHERE queued AND created_at > now() - interval '1 hour'
GROUP BY 1, 2
UNION ALL
SELECT 'verify_ip:' || host(ip), to_timestamp(floor(extract(epoch FROM created_at) / 300) * 300), 0,
       count(*), max(created_at)
FROM auth.audit_log
WHERE event = 'verify_failed' AND ip IS NOT NULL AND created_at > now() - interval '1 day'
GROUP BY 1, 2;
DROP INDEX auth.send_events_ip;
DROP INDEX auth.send_events_queued;

CREATE OR REPLACE FUNCTION auth.purge_expired(older_than interval DEFAULT '1 day') RETURNS jsonb
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

-- The dispatcher's wake-up: the insert trigger, now in the library, hands it to src/wakeup.rs,
-- which notifies once the rows are committed (preloaded: one NOTIFY by the database's recorder
-- for many commits).
CREATE OR REPLACE FUNCTION auth._sms_outbox_notify() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'sms_outbox_notify_wrapper';

CREATE FUNCTION auth."_forget_settings"("rel" oid) RETURNS void
STRICT
LANGUAGE c
AS 'MODULE_PATHNAME', 'forget_wrapper';
REVOKE EXECUTE ON FUNCTION auth._forget_settings(oid) FROM PUBLIC;

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

REVOKE EXECUTE ON FUNCTION auth._settings_changed() FROM PUBLIC;

-- Account lifecycle (issue 9): bans, soft deletes, the acting role of admin actions.
ALTER TABLE auth.users ADD COLUMN banned_until timestamptz, ADD COLUMN deleted_at timestamptz;
ALTER TABLE auth.audit_log ADD COLUMN actor text;

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

CREATE OR REPLACE FUNCTION auth.set_user_disabled(user_id uuid, disabled boolean DEFAULT true) RETURNS void
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

REVOKE EXECUTE ON FUNCTION
    auth.admin_create_user(text, boolean, text, text, jsonb, text[], text),
    auth.admin_get_user(uuid), auth.admin_list_users(integer, integer, text),
    auth.admin_update_user(uuid, jsonb), auth.admin_delete_user(uuid, boolean),
    auth.admin_list_factors(uuid), auth.admin_delete_factor(uuid, uuid), auth.admin_sign_out(uuid),
    auth.grant_admin(name), auth.revoke_admin(name), auth._admin_functions(),
    auth.get_user(), auth.update_user(text, text, text, jsonb), auth.change_phone(text, text),
    auth.verify_phone_change(text, text)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    auth.get_user(), auth.update_user(text, text, text, jsonb), auth.change_phone(text, text),
    auth.verify_phone_change(text, text)
TO PUBLIC;

-- The dispatcher's claim reads only an index range of stale messages (sms_outbox_leases for
-- leases that ran out), and one setting from the backend's cached copy (auth._setting), so a
-- claim costs the same however long the queue is.
CREATE INDEX sms_outbox_leases ON auth.sms_outbox (lease_until) WHERE status = 'sending';

CREATE FUNCTION auth."_setting"("name" text) RETURNS jsonb
LANGUAGE c
AS 'MODULE_PATHNAME', 'setting_impl_wrapper';
REVOKE EXECUTE ON FUNCTION auth._setting(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION auth.sms_claim(batch_size integer DEFAULT 100, lease interval DEFAULT '30 seconds')
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

CREATE OR REPLACE FUNCTION auth.sms_queue_stats() RETURNS jsonb
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

-- The dispatcher records its deliveries in batches: one statement, one commit for many.
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
REVOKE EXECUTE ON FUNCTION auth.sms_mark_sent_many(uuid[], text[]) FROM PUBLIC;

-- Records a delivery: the provider's id and the sent status in one commit; the body is cleared.
CREATE OR REPLACE FUNCTION auth.sms_mark_sent(id uuid, provider_message_id text) RETURNS void
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

-- Dispatcher roles granted before 0.2.0: run SELECT auth.grant_dispatcher(role) again to allow
-- batched recording (until then the dispatcher records one outcome at a time).
-- Lets a role run the dispatcher: EXECUTE on the six functions above, nothing else.
CREATE OR REPLACE FUNCTION auth.grant_dispatcher(role_name name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE format('GRANT EXECUTE ON FUNCTION auth.sms_claim(integer, interval), '
                   'auth.sms_mark_sent(uuid, text), auth.sms_mark_sent_many(uuid[], text[]), '
                   'auth.sms_mark_failed(uuid, text, boolean, integer), '
                   'auth.sms_mark_captcha_passed(uuid), auth.sms_queue_stats() TO %I', role_name);
END
$$;

-- An API function that answers the jsonb of its internal function is now that function:
-- LANGUAGE c, raising its own errors (src/answer.rs), with no wrapper and no second call. The
-- wrappers that reshape an answer are PL/pgSQL: a SQL function with SET search_path is parsed
-- and planned again on every call, a PL/pgSQL one keeps its plan for the session.
CREATE OR REPLACE FUNCTION auth.send_sms_otp(
    phone text,
    create_user boolean DEFAULT true,
    data jsonb DEFAULT '{}',
    captcha_token text DEFAULT NULL,
    channel text DEFAULT 'sms'
) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_send_sms_otp';

CREATE OR REPLACE FUNCTION auth.resend_sms_otp(phone text) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_resend_sms_otp';

CREATE OR REPLACE FUNCTION auth.signup_sms_otp(phone text, options jsonb DEFAULT '{}') RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN auth._unwrap(auth._signup_sms_otp(phone, options)) #>> '{}';
END
$$;

CREATE OR REPLACE FUNCTION auth.verify_sms_otp(phone text, otp text) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_verify_sms_otp';

CREATE OR REPLACE FUNCTION auth.refresh_session(refresh_token text) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_refresh_session';

CREATE OR REPLACE FUNCTION auth.mfa_enroll(
    factor_type text,
    friendly_name text DEFAULT NULL,
    phone text DEFAULT NULL,
    issuer text DEFAULT NULL
) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_mfa_enroll';

CREATE OR REPLACE FUNCTION auth.mfa_challenge(factor_id uuid, channel text DEFAULT 'sms') RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_mfa_challenge';

CREATE OR REPLACE FUNCTION auth.mfa_verify(factor_id uuid, challenge_id uuid, code text) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_mfa_verify';

CREATE OR REPLACE FUNCTION auth.mfa_challenge_and_verify(factor_id uuid, code text) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_mfa_challenge_and_verify';

CREATE OR REPLACE FUNCTION auth.mfa_unenroll(factor_id uuid) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_mfa_unenroll';

CREATE OR REPLACE FUNCTION auth.mfa_list_factors() RETURNS jsonb
LANGUAGE c STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_mfa_list_factors';

CREATE OR REPLACE FUNCTION auth.mfa_get_authenticator_assurance_level() RETURNS jsonb
LANGUAGE c STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_mfa_get_authenticator_assurance_level';

CREATE OR REPLACE FUNCTION auth.signin_mfa_totp(ticket text, otp text) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_signin_mfa_totp';

CREATE OR REPLACE FUNCTION auth.signin_mfa_recovery_code(ticket text, code text) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_signin_mfa_recovery_code';

CREATE OR REPLACE FUNCTION auth.hotp(secret bytea, counter bigint, digits integer DEFAULT 6, algorithm text DEFAULT 'sha1')
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN auth._unwrap(auth._hotp(secret, counter, digits, algorithm)) #>> '{}';
END
$$;

CREATE OR REPLACE FUNCTION auth.totp(secret text, at timestamptz DEFAULT now(), digits integer DEFAULT 6,
                          period integer DEFAULT 30, algorithm text DEFAULT 'sha1')
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN auth._unwrap(auth._totp(secret, floor(extract(epoch FROM at))::bigint, digits, period, algorithm)) #>> '{}';
END
$$;

CREATE OR REPLACE FUNCTION auth.set_setting(name text, value jsonb) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_set_setting';

CREATE OR REPLACE FUNCTION auth.reset_setting(name text) RETURNS jsonb
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'auth_reset_setting';

DROP FUNCTION auth._send_sms_otp(text, bool, jsonb, text, text),
    auth._resend_sms_otp(text),
    auth._verify_sms_otp(text, text),
    auth._refresh_session(text),
    auth._mfa_enroll(text, text, text, text),
    auth._mfa_challenge(uuid, text),
    auth._mfa_verify(uuid, uuid, text),
    auth._mfa_challenge_and_verify(uuid, text),
    auth._mfa_unenroll(uuid),
    auth._mfa_list_factors(),
    auth._mfa_get_authenticator_assurance_level(),
    auth._signin_mfa_totp(text, text),
    auth._signin_mfa_recovery_code(text, text),
    auth._set_setting(text, jsonb),
    auth._reset_setting(text);

-- Time-ordered ids for the tables written on every call (see schema.sql); existing rows keep
-- theirs.
CREATE FUNCTION auth._uuid_v7() RETURNS uuid
LANGUAGE c VOLATILE PARALLEL SAFE AS 'MODULE_PATHNAME', 'uuid_v7_wrapper';
REVOKE EXECUTE ON FUNCTION auth._uuid_v7() FROM PUBLIC;
ALTER TABLE auth.otp_codes ALTER COLUMN id SET DEFAULT auth._uuid_v7();
ALTER TABLE auth.sessions ALTER COLUMN id SET DEFAULT auth._uuid_v7();
ALTER TABLE auth.refresh_tokens ALTER COLUMN id SET DEFAULT auth._uuid_v7();
ALTER TABLE auth.sms_outbox ALTER COLUMN id SET DEFAULT auth._uuid_v7();
ALTER TABLE auth.send_events ALTER COLUMN id SET DEFAULT auth._uuid_v7();
ALTER TABLE auth.audit_log ALTER COLUMN id SET DEFAULT auth._uuid_v7();
ALTER TABLE auth.mfa_challenges ALTER COLUMN id SET DEFAULT auth._uuid_v7();
ALTER TABLE auth.mfa_tickets ALTER COLUMN id SET DEFAULT auth._uuid_v7();

-- The per-IP verification limit reads its counters (auth.rate_counters), no longer the audit
-- log by address: nothing queries audit_log by ip, and every audited call with an address paid
-- for one more random index insert. (A DBA who searches the log by address adds an index.)
DROP INDEX auth.audit_log_ip;

-- The value rules of the columns written on every sign-in become domains (see schema.sql): a
-- table's CHECKs are re-planned for each statement that writes it and re-checked on every
-- update. Each column changes to its domain while the domain has no constraint yet, which keeps
-- the rows and indexes as they are (a domain with a constraint would rewrite the table), then
-- the constraint is added to the domain, which checks the existing rows once.
CREATE DOMAIN auth.phone_number AS text;
CREATE DOMAIN auth.json_object AS jsonb;
CREATE DOMAIN auth.message_channel AS text;
CREATE DOMAIN auth.assurance_level AS text;
ALTER TABLE auth.users DROP CONSTRAINT users_phone_check, DROP CONSTRAINT users_metadata_check,
    ALTER COLUMN phone TYPE auth.phone_number, ALTER COLUMN metadata TYPE auth.json_object,
    ALTER COLUMN metadata SET DEFAULT '{}';
ALTER TABLE auth.mfa_factors DROP CONSTRAINT mfa_factors_phone_check,
    ALTER COLUMN phone TYPE auth.phone_number;
ALTER TABLE auth.sessions DROP CONSTRAINT sessions_aal_check,
    ALTER COLUMN aal TYPE auth.assurance_level, ALTER COLUMN aal SET DEFAULT 'aal1';
ALTER TABLE auth.sms_outbox DROP CONSTRAINT sms_outbox_channel_check,
    ALTER COLUMN channel TYPE auth.message_channel;
ALTER TABLE auth.send_events DROP CONSTRAINT send_events_channel_check,
    ALTER COLUMN channel TYPE auth.message_channel;
ALTER DOMAIN auth.phone_number
    ADD CONSTRAINT phone_number_check CHECK (VALUE ~ '^\+[1-9][0-9]{7,14}$');
ALTER DOMAIN auth.json_object
    ADD CONSTRAINT json_object_check CHECK (jsonb_typeof(VALUE) = 'object');
ALTER DOMAIN auth.message_channel
    ADD CONSTRAINT message_channel_check CHECK (VALUE IN ('sms', 'whatsapp'));
ALTER DOMAIN auth.assurance_level
    ADD CONSTRAINT assurance_level_check CHECK (VALUE IN ('aal1', 'aal2'));

-- Deleting or truncating counter rows (a DBA resetting a limit, or auth.purge_expired) drops
-- the hourly budget's tally in shared memory when the transaction commits, so the next send
-- counts from the rows again (src/budget.rs).
CREATE FUNCTION auth._rate_counters_deleted() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'rate_counters_deleted_wrapper';
CREATE TRIGGER rate_counters_deleted AFTER DELETE OR TRUNCATE ON auth.rate_counters
    FOR EACH STATEMENT EXECUTE FUNCTION auth._rate_counters_deleted();
REVOKE EXECUTE ON FUNCTION auth._rate_counters_deleted() FROM PUBLIC;
