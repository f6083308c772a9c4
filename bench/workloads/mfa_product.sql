-- MFA step-up: a signed-in user (aal1 session, verified TOTP factor) computes the current code
-- (superuser, as the authenticator app would) and verifies it, as PostgREST runs the RPC with
-- role authenticated and the caller's JWT claims. Users are taken round robin, each at most
-- once per run (a TOTP step is accepted once per factor). Run with -D i=0 -D nclients=N -D mpool=M.
\set i :i + 1
\set u ((:i - 1) * :nclients + :client_id) % :mpool + 1
\set ip random(1, 16000000)
SELECT product_factor AS fid, product_claims AS claims, auth.totp(secret_b32) AS code FROM bench.mfa_pool WHERE n = :u \gset
BEGIN;
SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims', :claims, true), set_config('request.headers', '{"x-forwarded-for": "' || host('10.0.0.0'::inet + :ip) || '"}', true);
SELECT auth.mfa_challenge_and_verify(factor_id => :fid, code => :code);
END;
