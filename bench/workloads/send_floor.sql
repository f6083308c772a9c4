-- send: one code request for a registered user, as PostgREST runs POST /rpc/... (one
-- transaction: the request settings, then the call). Each client has its own phones.
\set k :client_id * :pool + random(1, :pool)
\set ip random(1, 16000000)
BEGIN;
SELECT set_config('role', 'anon', true), set_config('request.jwt.claims', '{"role": "anon"}', true), set_config('request.headers', '{"x-forwarded-for": "' || host('10.0.0.0'::inet + :ip) || '"}', true);
SELECT floor.send_code(phone => '+1555' || lpad(:k, 7, '0'));
END;
