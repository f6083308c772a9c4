-- Setup only (not measured): queued sends to distinct new phones through the product's API, from
-- 127.0.0.1, to give the rate limits an hour of history. -D i=0 numbers each client's sends.
\set i :i + 1
\set k :client_id * 1000000 + :i
SELECT auth.send_sms_otp(phone => '+1440' || lpad(:k, 7, '0'));
