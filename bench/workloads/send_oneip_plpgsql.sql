-- send from one client IP: the same PostgREST-style transaction as send_plpgsql.sql, but the request
-- carries no x-forwarded-for, so every request comes from the TCP peer 127.0.0.1 (one app server
-- calling the database directly) and the per-IP limit sees all of that IP's history.
\set k :client_id * :pool + random(1, :pool)
BEGIN;
SELECT set_config('role', 'anon', true), set_config('request.jwt.claims', '{"role": "anon"}', true), set_config('request.headers', '{}', true);
SELECT plsql.send_code(phone => '+1555' || lpad(:k, 7, '0'));
END;
