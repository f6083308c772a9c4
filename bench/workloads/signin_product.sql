-- sign-in: send a code; read it from the queued message as the dispatcher would (superuser);
-- verify it in its own transaction (PostgREST-style, as a second HTTP request would).
\set k :client_id * :pool + random(1, :pool)
\set ip random(1, 16000000)
BEGIN;
SELECT set_config('role', 'anon', true), set_config('request.jwt.claims', '{"role": "anon"}', true), set_config('request.headers', '{"x-forwarded-for": "' || host('10.0.0.0'::inet + :ip) || '"}', true);
SELECT auth.send_sms_otp(phone => '+1555' || lpad(:k, 7, '0')) ->> 'message_id' AS mid \gset
END;
SELECT substring(body FROM '[0-9]{6}') AS otp FROM auth.sms_outbox WHERE id = :mid \gset
BEGIN;
SELECT set_config('role', 'anon', true), set_config('request.jwt.claims', '{"role": "anon"}', true), set_config('request.headers', '{"x-forwarded-for": "' || host('10.0.0.0'::inet + :ip) || '"}', true);
SELECT auth.verify_sms_otp(phone => '+1555' || lpad(:k, 7, '0'), otp => :otp);
END;
