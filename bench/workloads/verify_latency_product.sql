-- verify latency: one client verifies codes sent just before the run (bench.pending, read back
-- from the outbox), one per transaction, PostgREST-style. Run with -D i=0 and -t.
\set i :i + 1
\set ip random(1, 16000000)
SELECT phone, otp FROM bench.pending WHERE variant = 'product' AND n = :i \gset
BEGIN;
SELECT set_config('role', 'anon', true), set_config('request.jwt.claims', '{"role": "anon"}', true), set_config('request.headers', '{"x-forwarded-for": "' || host('10.0.0.0'::inet + :ip) || '"}', true);
SELECT auth.verify_sms_otp(phone => :phone, otp => :otp);
END;
