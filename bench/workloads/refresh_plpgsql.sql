-- refresh: each client rotates its own session's refresh token and keeps the newest one (a
-- rotated token presented again would revoke the session). The first transaction of a client
-- reads its token from bench.tokens (run with -D tok=none).
\set ip random(1, 16000000)
SELECT coalesce(nullif(:tok, 'none'),
                (SELECT token FROM bench.tokens WHERE variant = 'plpgsql' AND client_id = :client_id)) AS tok \gset
BEGIN;
SELECT set_config('role', 'anon', true), set_config('request.jwt.claims', '{"role": "anon"}', true), set_config('request.headers', '{"x-forwarded-for": "' || host('10.0.0.0'::inet + :ip) || '"}', true);
SELECT CASE WHEN r ? 'error' THEN bench.fail(r::text) END AS chk, r ->> 'refresh_token' AS tok FROM plsql.refresh(refresh_token => :tok) AS r \gset
END;
