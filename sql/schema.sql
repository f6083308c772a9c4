-- pg_otp_auth schema: tables, indexes, triggers and privileges.
--
-- Every table lives in schema auth, is owned by the extension owner and is readable by no
-- client role: clients reach the data only through the SECURITY DEFINER functions in api.sql.
-- Every table is registered with pg_extension_config_dump so pg_dump keeps its rows.

GRANT USAGE ON SCHEMA auth TO PUBLIC;

-- Ids of the rows written on every call are time-ordered (UUIDv7: Unix milliseconds, then 74
-- random bits; src/lib.rs), so each insert lands on its primary key's latest pages rather than a
-- random page of a large index. Users and factors keep random ids: a user's id is the JWT's
-- subject, and need not tell when the account was made.
CREATE FUNCTION auth._uuid_v7() RETURNS uuid
LANGUAGE c VOLATILE PARALLEL SAFE AS 'MODULE_PATHNAME', 'uuid_v7_wrapper';

-- Value rules of the columns written on every sign-in, as domains rather than table CHECKs:
-- PostgreSQL checks a domain only where a value of it is written, with the constraint planned
-- once per session, while a table's CHECKs are all re-planned for every statement that writes a
-- row and re-checked on every update, whichever columns it sets.
CREATE DOMAIN auth.phone_number AS text
    CONSTRAINT phone_number_check CHECK (VALUE ~ '^\+[1-9][0-9]{7,14}$');
CREATE DOMAIN auth.json_object AS jsonb
    CONSTRAINT json_object_check CHECK (jsonb_typeof(VALUE) = 'object');
CREATE DOMAIN auth.message_channel AS text
    CONSTRAINT message_channel_check CHECK (VALUE IN ('sms', 'whatsapp'));
CREATE DOMAIN auth.assurance_level AS text
    CONSTRAINT assurance_level_check CHECK (VALUE IN ('aal1', 'aal2'));

-- Settings a DBA has changed from their defaults (see auth.settings() for all of them).
CREATE TABLE auth.config (
    key        text PRIMARY KEY,
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The code-hashing pepper and the JWT signing secret. Readable by the extension owner only.
CREATE TABLE auth.secrets (
    name       text PRIMARY KEY CHECK (name IN ('otp_pepper', 'jwt_secret')),
    value      bytea NOT NULL CHECK (octet_length(value) >= 32),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- CREATE EXTENSION generates fresh secrets; a restore then COPYs the dumped ones over them.
-- Without this the COPY would fail on the primary key and every stored hash and issued token
-- would be orphaned by the newly generated secrets.
CREATE FUNCTION auth._secrets_restore_replaces() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE auth.secrets SET value = NEW.value, created_at = NEW.created_at WHERE name = NEW.name;
    IF FOUND THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER secrets_restore_replaces BEFORE INSERT ON auth.secrets
    FOR EACH ROW EXECUTE FUNCTION auth._secrets_restore_replaces();

CREATE TABLE auth.users (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    phone              auth.phone_number UNIQUE,
    phone_confirmed_at timestamptz,
    email              text UNIQUE,
    email_confirmed_at timestamptz,
    display_name       text,
    avatar_url         text,
    locale             text NOT NULL,
    default_role       text NOT NULL,
    roles              text[] NOT NULL,
    metadata           auth.json_object NOT NULL DEFAULT '{}',
    is_anonymous       boolean NOT NULL DEFAULT false,
    disabled           boolean NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    last_sign_in_at    timestamptz,
    -- Set by auth.admin_update_user's ban_duration: signs nothing in until then.
    banned_until       timestamptz,
    -- Set by a soft delete (auth.admin_delete_user): the row stays, the phone is gone.
    deleted_at         timestamptz,
    CHECK (default_role = ANY (roles))
);

-- One-time codes, stored only as keyed hashes. subject is the phone for sign-in codes.
CREATE TABLE auth.otp_codes (
    id             uuid PRIMARY KEY DEFAULT auth._uuid_v7(),
    user_id        uuid REFERENCES auth.users (id) ON DELETE CASCADE,
    purpose        text NOT NULL,
    subject        text NOT NULL,
    code_hash      bytea NOT NULL,
    attempts       integer NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    consumed_at    timestamptz,
    invalidated_at timestamptz
);
CREATE INDEX otp_codes_live ON auth.otp_codes (subject, purpose, created_at DESC)
    WHERE consumed_at IS NULL AND invalidated_at IS NULL;
CREATE INDEX otp_codes_expires ON auth.otp_codes (expires_at);

CREATE TABLE auth.sessions (
    id             uuid PRIMARY KEY DEFAULT auth._uuid_v7(),
    user_id        uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    aal            auth.assurance_level NOT NULL DEFAULT 'aal1',
    amr            jsonb NOT NULL DEFAULT '[]',
    ip             inet,
    created_at     timestamptz NOT NULL DEFAULT now(),
    refreshed_at   timestamptz,
    revoked_at     timestamptz,
    revoked_reason text
);
CREATE INDEX sessions_user ON auth.sessions (user_id) WHERE revoked_at IS NULL;

-- Refresh tokens, stored only as SHA-256 hashes. A rotated token keeps its row so that a late
-- replay can be recognised as reuse.
CREATE TABLE auth.refresh_tokens (
    id         uuid PRIMARY KEY DEFAULT auth._uuid_v7(),
    session_id uuid NOT NULL REFERENCES auth.sessions (id) ON DELETE CASCADE,
    parent_id  uuid,
    token_hash bytea NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    rotated_at timestamptz
);
CREATE INDEX refresh_tokens_session ON auth.refresh_tokens (session_id);
CREATE INDEX refresh_tokens_expires ON auth.refresh_tokens (expires_at);

-- Messages for the dispatcher. body holds the plain code until the message is delivered or
-- given up on; expires_at is the code's expiry, after which the message must not be sent.
CREATE TABLE auth.sms_outbox (
    id                  uuid PRIMARY KEY DEFAULT auth._uuid_v7(),
    phone               text NOT NULL,
    channel             auth.message_channel NOT NULL,
    body                text,
    captcha_token       text,
    captcha_verified    boolean NOT NULL DEFAULT false,
    purpose             text NOT NULL,
    user_id             uuid,
    created_at          timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz NOT NULL,
    status              text NOT NULL DEFAULT 'queued'
                        CHECK (status IN ('queued', 'sending', 'sent', 'dead', 'expired')),
    attempts            integer NOT NULL DEFAULT 0,
    next_attempt_at     timestamptz NOT NULL DEFAULT now(),
    lease_until         timestamptz,
    provider_message_id text,
    last_error          text,
    sent_at             timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sms_outbox_due ON auth.sms_outbox (next_attempt_at) WHERE status IN ('queued', 'sending');
CREATE INDEX sms_outbox_pending_expiry ON auth.sms_outbox (expires_at) WHERE status IN ('queued', 'sending');
CREATE INDEX sms_outbox_leases ON auth.sms_outbox (lease_until) WHERE status = 'sending';
CREATE INDEX sms_outbox_failures ON auth.sms_outbox (updated_at) WHERE last_error IS NOT NULL;
CREATE INDEX sms_outbox_finished ON auth.sms_outbox (updated_at) WHERE status IN ('sent', 'dead', 'expired');
CREATE INDEX sms_outbox_phone ON auth.sms_outbox (phone, purpose) WHERE status = 'queued';

-- The insert trigger that wakes the dispatcher is in api.sql (its function is in the library).

-- Every code request: the per-phone cooldown and limit read a phone's own recent rows (exact,
-- and never more rows than the limit). queued is false for requests that sent nothing (unknown
-- phones), which still count against the per-phone and per-IP limits so that limits do not
-- reveal whether a phone is registered.
CREATE TABLE auth.send_events (
    id         uuid PRIMARY KEY DEFAULT auth._uuid_v7(),
    phone      text NOT NULL,
    ip         inet,
    channel    auth.message_channel NOT NULL,
    queued     boolean NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX send_events_phone ON auth.send_events (phone, created_at);

-- Rate-limit counters for the per-IP limits and the install's hourly budget: events per key,
-- time bucket and shard, so that a check reads a fixed number of rows whatever the limit and
-- however much history there is, and concurrent writers of one key (the budget, a busy address)
-- spread over shards instead of queueing on one row. last_at, a bucket's latest event, keeps
-- the limits strict: a bucket's events count until its latest one leaves the window.
CREATE TABLE auth.rate_counters (
    key          text NOT NULL,
    bucket_start timestamptz NOT NULL,
    shard        smallint NOT NULL,
    hits         integer NOT NULL,
    last_at      timestamptz NOT NULL,
    PRIMARY KEY (key, bucket_start, shard)
);

CREATE TABLE auth.audit_log (
    id         uuid PRIMARY KEY DEFAULT auth._uuid_v7(),
    created_at timestamptz NOT NULL DEFAULT now(),
    event      text NOT NULL,
    user_id    uuid,
    phone      text,
    ip         inet,
    detail     jsonb NOT NULL DEFAULT '{}',
    -- The database role that performed an administrative action (NULL for users' own events).
    actor      text
);
CREATE INDEX audit_log_created ON auth.audit_log (created_at);
CREATE INDEX audit_log_user ON auth.audit_log (user_id, created_at);

-- Second factors. A TOTP factor keeps its shared secret (readable by the extension owner only,
-- never returned after enrollment) and the last time step it accepted, so no code is used twice.
CREATE TABLE auth.mfa_factors (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id        uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    factor_type    text NOT NULL CHECK (factor_type IN ('totp', 'phone')),
    friendly_name  text,
    status         text NOT NULL DEFAULT 'unverified' CHECK (status IN ('unverified', 'verified')),
    secret         bytea,
    algorithm      text NOT NULL DEFAULT 'sha1',
    digits         integer NOT NULL DEFAULT 6,
    period         integer NOT NULL DEFAULT 30,
    last_used_step bigint,
    phone          auth.phone_number,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, friendly_name),
    CHECK ((factor_type = 'totp') = (secret IS NOT NULL)),
    CHECK ((factor_type = 'phone') = (phone IS NOT NULL))
);
CREATE INDEX mfa_factors_user ON auth.mfa_factors (user_id);
-- At most one verified TOTP factor per user: sign-in tickets are judged against it, and a
-- sign-in reads it by index (src/lookup.rs) to tell whether the user has one.
CREATE UNIQUE INDEX mfa_factors_one_verified_totp ON auth.mfa_factors (user_id)
    WHERE factor_type = 'totp' AND status = 'verified';

-- One verification attempt of a factor. Phone challenges hold the keyed hash of the code sent.
CREATE TABLE auth.mfa_challenges (
    id          uuid PRIMARY KEY DEFAULT auth._uuid_v7(),
    factor_id   uuid NOT NULL REFERENCES auth.mfa_factors (id) ON DELETE CASCADE,
    session_id  uuid NOT NULL REFERENCES auth.sessions (id) ON DELETE CASCADE,
    code_hash   bytea,
    attempts    integer NOT NULL DEFAULT 0,
    ip          inet,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    verified_at timestamptz
);
CREATE INDEX mfa_challenges_factor ON auth.mfa_challenges (factor_id);
CREATE INDEX mfa_challenges_expires ON auth.mfa_challenges (expires_at);

-- Sign-in tickets: the first factor (SMS) passed, the second is still owed. Stored hashed; the
-- caller holds "mfaTotp:<id>".
CREATE TABLE auth.mfa_tickets (
    id          uuid PRIMARY KEY DEFAULT auth._uuid_v7(),
    ticket_hash bytea NOT NULL UNIQUE,
    user_id     uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    first_amr   jsonb NOT NULL,
    attempts    integer NOT NULL DEFAULT 0,
    ip          inet,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    consumed_at timestamptz
);
CREATE INDEX mfa_tickets_expires ON auth.mfa_tickets (expires_at);

CREATE TABLE auth.mfa_recovery_codes (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    code_hash  bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    used_at    timestamptz
);
CREATE INDEX mfa_recovery_codes_user ON auth.mfa_recovery_codes (user_id);

REVOKE ALL ON ALL TABLES IN SCHEMA auth FROM PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('auth.config', '');
SELECT pg_catalog.pg_extension_config_dump('auth.secrets', '');
SELECT pg_catalog.pg_extension_config_dump('auth.users', '');
SELECT pg_catalog.pg_extension_config_dump('auth.otp_codes', '');
SELECT pg_catalog.pg_extension_config_dump('auth.sessions', '');
SELECT pg_catalog.pg_extension_config_dump('auth.refresh_tokens', '');
SELECT pg_catalog.pg_extension_config_dump('auth.sms_outbox', '');
SELECT pg_catalog.pg_extension_config_dump('auth.send_events', '');
SELECT pg_catalog.pg_extension_config_dump('auth.rate_counters', '');
SELECT pg_catalog.pg_extension_config_dump('auth.audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('auth.mfa_factors', '');
SELECT pg_catalog.pg_extension_config_dump('auth.mfa_challenges', '');
SELECT pg_catalog.pg_extension_config_dump('auth.mfa_tickets', '');
SELECT pg_catalog.pg_extension_config_dump('auth.mfa_recovery_codes', '');
