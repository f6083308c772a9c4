-- Harness-only objects (schema `bench`): setup data, state resets, history generators and the
-- exception-catching wrappers the wrong-code workload needs. Nothing here is called inside a
-- measured product call except bench.guess_* (see the wrong-code workload) and nothing here
-- changes the product: it only prepares rows in its tables, as traffic would have.
--
-- Phone ranges (E.164, 11 digits):
--   +1555 nnnnnnn  pooled sign-in users, client c uses c*pool+1 .. c*pool+pool
--   +1556 nnnnnnn  phones with a live code, for wrong-code guesses
--   +1557 nnnnnnn  users with a verified TOTP factor and an aal1 session (MFA workload)
--   +1558 nnnnnnn  historical users (latency-at-history workload)
--   +1559 nnnnnnn  codes sent just before the latency run (one per measured verification)
--   +1554 nnnnnnn  users signed in once to own a refresh token (refresh workload)
--   +1553 nnnnnnn  the user enrolled in MFA through the API (a check of the pooled rows)
--   +1552 nnnnnnn  the send that checks the 1000/h budget refuses
--   +1551 nnnnnnn  messages queued for the dispatcher throughput runs
--   +1440 nnnnnnn  the send history (sends in the last hour) of the budget study

CREATE SCHEMA bench;
GRANT USAGE ON SCHEMA bench TO PUBLIC;

CREATE TABLE bench.tokens (variant text, client_id integer, token text, PRIMARY KEY (variant, client_id));
CREATE TABLE bench.pending (variant text, n integer, phone text, otp text, PRIMARY KEY (variant, n));
CREATE TABLE bench.mfa_pool (
    n              integer PRIMARY KEY,
    secret         bytea NOT NULL,
    secret_b32     text NOT NULL,
    product_factor uuid, product_claims text,
    plpgsql_factor uuid, plpgsql_claims text,
    floor_factor   uuid, floor_claims text
);

CREATE FUNCTION bench.phone(prefix text, k bigint) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT prefix || lpad(k::text, 7, '0') $$;

-- A deterministic uuid for generated rows (md5 is as evenly spread in the btree as v4).
CREATE FUNCTION bench.id(tag text, k bigint) RETURNS uuid
LANGUAGE sql IMMUTABLE AS $$ SELECT md5(tag || ':' || k)::uuid $$;

CREATE FUNCTION bench.fail(msg text) RETURNS boolean
LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'bench: unexpected answer: %', msg; END $$;

-- RFC 4648 base32, no padding (TOTP secrets as auth.totp() takes them).
CREATE FUNCTION bench.base32(b bytea) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    alphabet constant text := 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
    bits text := '';
    out  text := '';
BEGIN
    FOR i IN 0 .. length(b) - 1 LOOP
        bits := bits || get_byte(b, i)::bit(8)::text;
    END LOOP;
    WHILE length(bits) % 5 <> 0 LOOP
        bits := bits || '0';
    END LOOP;
    FOR i IN 0 .. length(bits) / 5 - 1 LOOP
        out := out || substr(alphabet, substring(bits FROM i * 5 + 1 FOR 5)::bit(5)::int + 1, 1);
    END LOOP;
    RETURN out;
END
$$;

-- The claims of an access token (its payload; PostgREST has verified the signature).
CREATE FUNCTION bench.jwt_claims(token text) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT convert_from(decode(rpad(translate(split_part(token, '.', 2), '-_', '+/'),
                                    (length(split_part(token, '.', 2)) + 3) / 4 * 4, '='), 'base64'),
                        'UTF8')::jsonb
$$;

------------------------------------------------------------------------------------------------
-- Wrong-code wrappers. pgbench ends a client at its first ERROR, and a wrong code is an ERROR
-- (PT401) in pg_otp_auth, so the call runs inside a catching PL/pgSQL block (a subtransaction
-- that has written nothing: the product accepts it). The expected answer is silent; anything
-- else is reported as a NOTICE 'bench-outcome <SQLSTATE>' that the harness counts from
-- pgbench's stderr. All three variants go through the same wrapper shape.

CREATE FUNCTION bench.guess_product(phone text, otp text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM auth.verify_sms_otp(phone => guess_product.phone, otp => guess_product.otp);
    RAISE NOTICE 'bench-outcome ok';
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> 'PT401' THEN
        RAISE NOTICE 'bench-outcome % %', SQLSTATE, SQLERRM;
    END IF;
    RETURN SQLSTATE;
END
$$;

CREATE FUNCTION bench.guess_plpgsql(phone text, otp text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    r jsonb;
BEGIN
    r := plsql.verify_code(guess_plpgsql.phone, guess_plpgsql.otp);
    IF r ->> 'error' IS DISTINCT FROM 'invalid-otp' THEN
        RAISE NOTICE 'bench-outcome %', coalesce(r ->> 'error', 'ok');
    END IF;
    RETURN coalesce(r ->> 'error', 'ok');
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'bench-outcome % %', SQLSTATE, SQLERRM;
    RETURN SQLSTATE;
END
$$;

CREATE FUNCTION bench.guess_floor(phone text, otp text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM floor.record_guess(guess_floor.phone, guess_floor.otp);
    RETURN 'invalid-otp';
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'bench-outcome % %', SQLSTATE, SQLERRM;
    RETURN SQLSTATE;
END
$$;
GRANT EXECUTE ON FUNCTION bench.guess_product(text, text), bench.guess_plpgsql(text, text),
    bench.guess_floor(text, text), bench.fail(text) TO PUBLIC;

------------------------------------------------------------------------------------------------
-- State

-- Back to an empty install (settings and secrets kept), so every workload starts alike. Every
-- table of the variant's schema is emptied, whatever tables the installed version has.
CREATE FUNCTION bench.reset(variant text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    nsp text := CASE variant WHEN 'product' THEN 'auth' WHEN 'plpgsql' THEN 'plsql' ELSE 'floor' END;
BEGIN
    EXECUTE (SELECT 'TRUNCATE ' || string_agg(format('%I.%I', schemaname, tablename), ', ')
             FROM pg_tables WHERE schemaname = nsp AND tablename NOT IN ('config', 'secrets'));
    DELETE FROM bench.tokens t WHERE t.variant = reset.variant;
    DELETE FROM bench.pending p WHERE p.variant = reset.variant;
END
$$;

-- Registered users with verified phones (they signed up earlier).
CREATE FUNCTION bench.make_users(variant text, prefix text, first bigint, last bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    CASE variant
    WHEN 'product' THEN
        INSERT INTO auth.users (id, phone, phone_confirmed_at, locale, default_role, roles,
                                created_at, updated_at, last_sign_in_at)
        SELECT bench.id(prefix, k), bench.phone(prefix, k), t, 'en', 'authenticated',
               '{authenticated}', t, t, t
        FROM generate_series(first, last) k,
             LATERAL (SELECT now() - interval '90 days' + (k % 7776000) * interval '1 second' AS t) x;
    WHEN 'plpgsql' THEN
        INSERT INTO plsql.users (id, phone, phone_confirmed_at, created_at, updated_at, last_sign_in_at)
        SELECT bench.id(prefix, k), bench.phone(prefix, k), t, t, t, t
        FROM generate_series(first, last) k,
             LATERAL (SELECT now() - interval '90 days' + (k % 7776000) * interval '1 second' AS t) x;
    WHEN 'floor' THEN
        INSERT INTO floor.users (id, phone, created_at, updated_at, last_sign_in_at)
        SELECT bench.id(prefix, k), bench.phone(prefix, k), t, t, t
        FROM generate_series(first, last) k,
             LATERAL (SELECT now() - interval '90 days' + (k % 7776000) * interval '1 second' AS t) x;
    END CASE;
END
$$;

-- Phones that each have one live code (whose value nobody knows): wrong-guess targets.
CREATE FUNCTION bench.make_live_codes(variant text, n bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM bench.make_users(variant, '+1556', 1, n);
    CASE variant
    WHEN 'product' THEN
        INSERT INTO auth.otp_codes (user_id, purpose, subject, code_hash, created_at, expires_at)
        SELECT bench.id('+1556', k), 'signin', bench.phone('+1556', k), gen_random_bytes(32),
               now(), now() + interval '1 hour'
        FROM generate_series(1, n) k;
    WHEN 'plpgsql' THEN
        INSERT INTO plsql.otp_codes (user_id, subject, code_hash, created_at, expires_at)
        SELECT bench.id('+1556', k), bench.phone('+1556', k), gen_random_bytes(32),
               now(), now() + interval '1 hour'
        FROM generate_series(1, n) k;
    WHEN 'floor' THEN
        INSERT INTO floor.otp_codes (user_id, subject, code, created_at, expires_at)
        SELECT bench.id('+1556', k), bench.phone('+1556', k), '999999', now(), now() + interval '1 hour'
        FROM generate_series(1, n) k;
    END CASE;
END
$$;

-- Queued sends in the last hour for the PL/pgSQL baseline (its limits read only send_events;
-- the product's history is made through its own API instead, see the driver), from one IP.
CREATE FUNCTION bench.prefill_plpgsql_sends(n bigint, from_ip inet) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO plsql.send_events (phone, ip, queued, created_at)
    SELECT bench.phone('+1440', k), from_ip, true,
           now() - interval '59 minutes' + (k::float8 / n) * interval '59 minutes'
    FROM generate_series(1, n) k;
$$;

-- Codes sent through each variant's own send function, with the code read back from the
-- outbox as a dispatcher would: the verifications the latency run will make.
CREATE FUNCTION bench.send_pending(variant text, n integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    p   text;
    mid uuid;
BEGIN
    FOR k IN 1 .. n LOOP
        p := bench.phone('+1559', k);
        CASE variant
        WHEN 'product' THEN
            mid := (auth.send_sms_otp(phone => p) ->> 'message_id')::uuid;
            INSERT INTO bench.pending SELECT variant, k, p, substring(body FROM '[0-9]{6}')
                FROM auth.sms_outbox WHERE id = mid;
        WHEN 'plpgsql' THEN
            mid := (plsql.send_code(p) ->> 'message_id')::uuid;
            INSERT INTO bench.pending SELECT variant, k, p, substring(body FROM '[0-9]{6}')
                FROM plsql.sms_outbox WHERE id = mid;
        WHEN 'floor' THEN
            mid := (floor.send_code(p) ->> 'message_id')::uuid;
            INSERT INTO bench.pending SELECT variant, k, p, substring(body FROM '[0-9]{6}')
                FROM floor.sms_outbox WHERE id = mid;
        END CASE;
    END LOOP;
END
$$;

-- Users with a verified TOTP factor (the n-th user of each variant has the same secret) and an
-- aal1 session, with the claims PostgREST would pass for that session's access token (the
-- product reads sub, session_id, exp and aal from them; PostgREST has checked the signature).
CREATE FUNCTION bench.make_mfa_pool(n bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    now_s bigint := floor(extract(epoch FROM now()))::bigint;
BEGIN
    TRUNCATE bench.mfa_pool;
    INSERT INTO bench.mfa_pool (n, secret, secret_b32)
    SELECT k, s, bench.base32(s) FROM generate_series(1, n) k, LATERAL (SELECT gen_random_bytes(20) AS s) x;

    PERFORM bench.make_users(v, '+1557', 1, n) FROM unnest(ARRAY['product', 'plpgsql', 'floor']) v;

    INSERT INTO auth.sessions (id, user_id, aal, amr, ip, created_at)
    SELECT bench.id('ps', k), bench.id('+1557', k), 'aal1',
           jsonb_build_array(jsonb_build_object('method', 'sms', 'timestamp', now_s - 60)),
           '10.9.0.0'::inet + k, now() - interval '1 minute'
    FROM generate_series(1, n) k;
    INSERT INTO auth.mfa_factors (id, user_id, factor_type, status, secret, created_at, updated_at)
    SELECT bench.id('pf', m.n), bench.id('+1557', m.n), 'totp', 'verified', m.secret,
           now() - interval '30 days', now() - interval '30 days'
    FROM bench.mfa_pool m;

    INSERT INTO plsql.sessions (id, user_id, aal, amr, ip, created_at)
    SELECT bench.id('ls', k), bench.id('+1557', k), 'aal1',
           jsonb_build_array(jsonb_build_object('method', 'sms', 'timestamp', now_s - 60)),
           '10.9.0.0'::inet + k, now() - interval '1 minute'
    FROM generate_series(1, n) k;
    INSERT INTO plsql.mfa_factors (id, user_id, status, secret, created_at, updated_at)
    SELECT bench.id('lf', m.n), bench.id('+1557', m.n), 'verified', m.secret,
           now() - interval '30 days', now() - interval '30 days'
    FROM bench.mfa_pool m;

    INSERT INTO floor.sessions (id, user_id, created_at)
    SELECT bench.id('fs', k), bench.id('+1557', k), now() - interval '1 minute'
    FROM generate_series(1, n) k;
    INSERT INTO floor.mfa_factors (id, user_id, secret)
    SELECT bench.id('ff', m.n), bench.id('+1557', m.n), m.secret FROM bench.mfa_pool m;

    UPDATE bench.mfa_pool m SET
        product_factor = bench.id('pf', m.n), plpgsql_factor = bench.id('lf', m.n),
        floor_factor = bench.id('ff', m.n),
        product_claims = c.claims || jsonb_build_object('session_id', bench.id('ps', m.n), 'iss', 'pg_otp_auth'),
        plpgsql_claims = c.claims || jsonb_build_object('session_id', bench.id('ls', m.n), 'iss', 'plsql'),
        floor_claims = c.claims || jsonb_build_object('session_id', bench.id('fs', m.n), 'iss', 'floor')
    FROM (SELECT k, jsonb_build_object(
                 'aal', 'aal1', 'amr', jsonb_build_array(jsonb_build_object('method', 'sms', 'timestamp', now_s - 60)),
                 'aud', 'authenticated', 'exp', now_s + 7200, 'iat', now_s - 60,
                 'sub', bench.id('+1557', k), 'role', 'authenticated', 'phone', bench.phone('+1557', k),
                 'app_metadata', jsonb_build_object('roles', '["authenticated"]'::jsonb, 'provider', 'phone',
                                                    'providers', '["phone"]'::jsonb, 'default_role', 'authenticated'),
                 'is_anonymous', false, 'user_metadata', '{}'::jsonb) AS claims
          FROM generate_series(1, n) k) c
    WHERE c.k = m.n;
END
$$;

-- History: n rows each in codes, sessions, refresh tokens and audit log (plus n/4 users), all
-- old (1 to 60 days ago): consumed or dead codes, sessions (a third revoked), rotated tokens.
CREATE FUNCTION bench.make_history(variant text, n bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    nu bigint := greatest(n / 4, 1);
BEGIN
    -- Bulk load: the rows reference each other correctly by construction, so the foreign-key
    -- triggers are skipped for this transaction (as pg_restore would).
    PERFORM set_config('session_replication_role', 'replica', true);
    PERFORM bench.make_users(variant, '+1558', 1, nu);
    CASE variant
    WHEN 'product' THEN
        INSERT INTO auth.otp_codes (user_id, purpose, subject, code_hash, attempts, created_at,
                                    expires_at, consumed_at, invalidated_at)
        SELECT bench.id('+1558', u), 'signin', bench.phone('+1558', u), sha256(int8send(k)), k % 3, t,
               t + interval '5 minutes', CASE WHEN k % 4 <> 0 THEN t + interval '40 seconds' END,
               CASE WHEN k % 4 = 0 THEN t + interval '2 minutes' END
        FROM generate_series(1, n) k,
             LATERAL (SELECT k % nu + 1 AS u, now() - interval '1 day' - (k % 5000000) * interval '1 second' AS t) x;
        INSERT INTO auth.sessions (id, user_id, aal, amr, ip, created_at, refreshed_at, revoked_at, revoked_reason)
        SELECT bench.id('hs', k), bench.id('+1558', u), 'aal1',
               jsonb_build_array(jsonb_build_object('method', 'sms', 'timestamp', floor(extract(epoch FROM t))::bigint)),
               '100.64.0.0'::inet + (k % 4000000), t, t + interval '1 hour',
               CASE WHEN k % 3 = 0 THEN t + interval '2 hours' END, CASE WHEN k % 3 = 0 THEN 'sign_out' END
        FROM generate_series(1, n) k,
             LATERAL (SELECT k % nu + 1 AS u, now() - interval '1 day' - (k % 5000000) * interval '1 second' AS t) x;
        INSERT INTO auth.refresh_tokens (session_id, token_hash, created_at, expires_at, rotated_at)
        SELECT bench.id('hs', k), sha256(convert_to('history-token:' || k, 'UTF8')), t,
               t + interval '30 days', t + interval '1 hour'
        FROM generate_series(1, n) k,
             LATERAL (SELECT now() - interval '1 day' - (k % 5000000) * interval '1 second' AS t) x;
        INSERT INTO auth.audit_log (created_at, event, user_id, phone, ip, detail)
        SELECT t, (ARRAY['sign_in', 'verify_attempt', 'verify_failed', 'user_created'])[k % 4 + 1],
               bench.id('+1558', u), bench.phone('+1558', u), '100.64.0.0'::inet + (k % 4000000),
               jsonb_build_object('purpose', 'signin', 'attempts', 1)
        FROM generate_series(1, n) k,
             LATERAL (SELECT k % nu + 1 AS u, now() - interval '1 day' - (k % 5000000) * interval '1 second' AS t) x;
    WHEN 'plpgsql' THEN
        INSERT INTO plsql.otp_codes (user_id, subject, code_hash, attempts, created_at, expires_at,
                                     consumed_at, invalidated_at)
        SELECT bench.id('+1558', u), bench.phone('+1558', u), sha256(int8send(k)), k % 3, t,
               t + interval '5 minutes', CASE WHEN k % 4 <> 0 THEN t + interval '40 seconds' END,
               CASE WHEN k % 4 = 0 THEN t + interval '2 minutes' END
        FROM generate_series(1, n) k,
             LATERAL (SELECT k % nu + 1 AS u, now() - interval '1 day' - (k % 5000000) * interval '1 second' AS t) x;
        INSERT INTO plsql.sessions (id, user_id, aal, amr, ip, created_at, refreshed_at, revoked_at, revoked_reason)
        SELECT bench.id('hs', k), bench.id('+1558', u), 'aal1',
               jsonb_build_array(jsonb_build_object('method', 'sms', 'timestamp', floor(extract(epoch FROM t))::bigint)),
               '100.64.0.0'::inet + (k % 4000000), t, t + interval '1 hour',
               CASE WHEN k % 3 = 0 THEN t + interval '2 hours' END, CASE WHEN k % 3 = 0 THEN 'sign_out' END
        FROM generate_series(1, n) k,
             LATERAL (SELECT k % nu + 1 AS u, now() - interval '1 day' - (k % 5000000) * interval '1 second' AS t) x;
        INSERT INTO plsql.refresh_tokens (session_id, token_hash, created_at, expires_at, rotated_at)
        SELECT bench.id('hs', k), sha256(convert_to('history-token:' || k, 'UTF8')), t,
               t + interval '30 days', t + interval '1 hour'
        FROM generate_series(1, n) k,
             LATERAL (SELECT now() - interval '1 day' - (k % 5000000) * interval '1 second' AS t) x;
        INSERT INTO plsql.audit_log (created_at, event, user_id, phone, ip, detail)
        SELECT t, (ARRAY['sign_in', 'verify_attempt', 'verify_failed', 'user_created'])[k % 4 + 1],
               bench.id('+1558', u), bench.phone('+1558', u), '100.64.0.0'::inet + (k % 4000000),
               jsonb_build_object('attempts', 1)
        FROM generate_series(1, n) k,
             LATERAL (SELECT k % nu + 1 AS u, now() - interval '1 day' - (k % 5000000) * interval '1 second' AS t) x;
    WHEN 'floor' THEN
        INSERT INTO floor.otp_codes (user_id, subject, code, attempts, created_at, expires_at, consumed_at)
        SELECT bench.id('+1558', u), bench.phone('+1558', u), lpad((k % 1000000)::text, 6, '0'), k % 3, t,
               t + interval '5 minutes', t + interval '40 seconds'
        FROM generate_series(1, n) k,
             LATERAL (SELECT k % nu + 1 AS u, now() - interval '1 day' - (k % 5000000) * interval '1 second' AS t) x;
        INSERT INTO floor.sessions (id, user_id, created_at, refreshed_at, revoked_at)
        SELECT bench.id('hs', k), bench.id('+1558', u), t, t + interval '1 hour',
               CASE WHEN k % 3 = 0 THEN t + interval '2 hours' END
        FROM generate_series(1, n) k,
             LATERAL (SELECT k % nu + 1 AS u, now() - interval '1 day' - (k % 5000000) * interval '1 second' AS t) x;
        INSERT INTO floor.refresh_tokens (session_id, token, created_at, expires_at, rotated_at)
        SELECT bench.id('hs', k), 'history-token:' || k, t, t + interval '30 days', t + interval '1 hour'
        FROM generate_series(1, n) k,
             LATERAL (SELECT now() - interval '1 day' - (k % 5000000) * interval '1 second' AS t) x;
        INSERT INTO floor.audit_log (created_at, event, user_id, phone, ip)
        SELECT t, (ARRAY['sign_in', 'verify_attempt', 'verify_failed', 'user_created'])[k % 4 + 1],
               bench.id('+1558', u), bench.phone('+1558', u), '100.64.0.0'::inet + (k % 4000000)
        FROM generate_series(1, n) k,
             LATERAL (SELECT k % nu + 1 AS u, now() - interval '1 day' - (k % 5000000) * interval '1 second' AS t) x;
    END CASE;
END
$$;
