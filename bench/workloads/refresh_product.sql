-- refresh: each client rotates its own session's refresh token and keeps the newest one (a
-- rotated token presented again would revoke the session). The first transaction of a client
-- reads its token from bench.tokens (run with -D tok=none).
\set ip random(1, 16000000)
SELECT coalesce(nullif(:tok, 'none'),
                (SELECT token FROM bench.tokens WHERE variant = 'product' AND client_id = :client_id)) AS tok \gset
BEGIN;
SELECT set_config('role', 'anon', true), set_config('request.jwt.claims', '{"role": "anon"}', true), set_config('request.headers', '{"x-forwarded-for": "' || host('10.0.0.0'::inet + :ip) || '"}', true);
SELECT auth.refresh_session(refresh_token => :tok) ->> 'refresh_token' AS tok \gset
END;
