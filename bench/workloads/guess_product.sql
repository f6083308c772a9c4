-- wrong code: a guess at a random phone that has a live code. The call runs inside a catching
-- PL/pgSQL wrapper (bench.sql), because a wrong code is an ERROR and pgbench would stop the
-- client; unexpected answers are reported as NOTICEs and counted by the harness.
\set k random(1, :wpool)
\set ip random(1, 16000000)
BEGIN;
SELECT set_config('role', 'anon', true), set_config('request.jwt.claims', '{"role": "anon"}', true), set_config('request.headers', '{"x-forwarded-for": "' || host('10.0.0.0'::inet + :ip) || '"}', true);
SELECT bench.guess_product('+1556' || lpad(:k, 7, '0'), '000000');
END;
