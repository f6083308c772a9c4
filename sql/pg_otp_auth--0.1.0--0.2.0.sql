-- pg_otp_auth 0.1.0 -> 0.2.0, by hand. Every schema change of 0.2.0 is here, so that
-- ALTER EXTENSION pg_otp_auth UPDATE gives the same schema as a fresh install of 0.2.0
-- (tests/integration/test_upgrade.py compares the two) and keeps every row.
\echo Use "ALTER EXTENSION pg_otp_auth UPDATE" to load this file. \quit

-- One verified TOTP factor per user. 0.1.0 let a factor planted by an aal1 session be verified
-- beside the owner's; such a planted factor was created before the owner's (it had to exist
-- before MFA was set up), so the newest verified TOTP factor stays verified and the older ones
-- go back to unverified, with an audit row each for the DBA to review.
WITH ranked AS (
    SELECT id, user_id,
           row_number() OVER (PARTITION BY user_id ORDER BY created_at DESC, id DESC) AS n
    FROM auth.mfa_factors WHERE factor_type = 'totp' AND status = 'verified'),
demoted AS (
    UPDATE auth.mfa_factors f SET status = 'unverified', updated_at = now()
    FROM ranked r WHERE r.id = f.id AND r.n > 1
    RETURNING f.id, f.user_id)
INSERT INTO auth.audit_log (event, user_id, detail)
SELECT 'mfa_factor_demoted', user_id,
       jsonb_build_object('factor_id', id, 'reason', 'a second verified TOTP factor (upgrade to 0.2.0)')
FROM demoted;

CREATE UNIQUE INDEX mfa_factors_one_verified_totp ON auth.mfa_factors (user_id)
    WHERE factor_type = 'totp' AND status = 'verified';

-- 0.1.0 kept a session's aal1 refresh tokens valid after the session rose to aal2, so each of
-- them minted aal2 access tokens. 0.2.0 deletes them at the rise; here the same is done for
-- sessions that rose before the upgrade: tokens issued before the session's last second factor.
DELETE FROM auth.refresh_tokens r
USING auth.sessions s
WHERE r.session_id = s.id AND s.aal = 'aal2'
  AND r.created_at < (SELECT to_timestamp(max((m ->> 'timestamp')::bigint))
                      FROM jsonb_array_elements(s.amr) m
                      WHERE m ->> 'method' IN ('totp', 'mfa/phone'));
