#!/usr/bin/env python3
"""Runs the benchmark workloads against the cluster bench/run.sh started (PGHOST/PGPORT,
database `bench`) and writes the report. Not meant to be run by hand: use bench/run.sh.

Every throughput workload runs with pgbench (-M prepared, fixed clients, the same -T for every
workload) for three variants back to back on the same server: FLOOR (bench/floor.sql), PLPGSQL
(bench/plpgsql.sql) and PRODUCT (pg_otp_auth). Before each workload every variant is reset to the
same starting state (bench.reset + the workload's setup), vacuumed/analyzed, and a CHECKPOINT is
taken, so runs do not inherit each other's dirty pages or history.
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone

import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKLOADS = os.path.join(HERE, "workloads")
VARIANTS = ["floor", "plpgsql", "product"]
PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PRODUCT_LIMIT = 1_000_000  # the highest value auth.set_setting accepts for the rate limits


def log(msg):
    print(f"\033[1m==> {msg}\033[0m", file=sys.stderr, flush=True)


def note_pid(pid):
    path = os.environ.get("BG_PIDS_FILE")
    if path:
        with open(path, "a") as f:
            f.write(f"{pid}\n")


COMPETITORS = ("rustc", "cargo", "cc1", "cc1plus", "ld", "ld.lld", "clang", "gcc", "make", "node", "java")


def ancestors():
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def machine_load():
    """The 1-minute load average and other work seen on the machine (compilers, test runs,
    other PostgreSQL clusters), which skews the numbers; the report shows it per workload."""
    seen = set()
    mine = ancestors()
    own_data = os.environ.get("PGDATA", "")
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) in mine:
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if name in COMPETITORS or name.startswith("build-script"):
            seen.add(name)
        elif any(a.endswith(b"pytest") or a.endswith(b"py.test") for a in argv[:3]):
            seen.add("pytest")
        elif name == "postgres" and b"-D" in argv:
            data = argv[argv.index(b"-D") + 1].decode(errors="replace") if argv.index(b"-D") + 1 < len(argv) else ""
            if data != own_data:
                seen.add("another PostgreSQL cluster")
    with open("/proc/loadavg") as f:
        load = float(f.read().split()[0])
    return {"load1": load, "others": sorted(seen)}


def percentile(values, p):
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


class Db:
    def __init__(self, dbname="bench"):
        self.dbname = dbname
        self.dsn = f"host=127.0.0.1 port={os.environ['PGPORT']} user=postgres dbname={dbname}"
        self.conn = psycopg.connect(self.dsn, autocommit=True)

    def reconnect(self, wait=60):
        """A new connection, waiting for the server to accept one (after a crash it restarts)."""
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001
            pass
        deadline = time.time() + wait
        while True:
            try:
                self.conn = psycopg.connect(self.dsn, autocommit=True)
                return
            except psycopg.OperationalError:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)

    def q(self, sql, *args):
        cur = self.conn.execute(sql, args)
        return cur.fetchall() if cur.description else []

    def one(self, sql, *args):
        rows = self.q(sql, *args)
        return rows[0][0] if rows else None

    def psql_file(self, path):
        subprocess.run([f"{PG_BIN}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                        "-p", os.environ["PGPORT"], "-U", "postgres", "-d", self.dbname, "-f", path],
                       check=True, stdout=subprocess.DEVNULL)


# --------------------------------------------------------------------------------------------
# pgbench

def parse_pgbench(out, err):
    r = {}
    m = re.search(r"number of transactions actually processed: (\d+)", out)
    r["tx"] = int(m.group(1)) if m else 0
    m = re.search(r"number of failed transactions: (\d+)", out)
    r["failed"] = int(m.group(1)) if m else 0
    m = re.search(r"latency average = ([\d.]+) ms", out)
    r["lat_avg_ms"] = float(m.group(1)) if m else None
    m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    r["tps"] = float(m.group(1)) if m else 0.0
    stmts = []
    section = out.split("statement latencies in milliseconds", 1)
    if len(section) == 2:
        for line in section[1].splitlines()[1:]:
            m = re.match(r"\s+([\d.]+)\s+(\d+)\s+(.*)$", line)
            if m:
                stmts.append({"ms": float(m.group(1)), "failures": int(m.group(2)), "sql": m.group(3).strip()})
    r["statements"] = stmts
    outcomes = {}
    for m in re.finditer(r"bench-outcome (\S+)", err):
        outcomes[m.group(1)] = outcomes.get(m.group(1), 0) + 1
    r["notices"] = outcomes
    errors = [l.strip() for l in err.splitlines()
              if ("error" in l.lower() or "abort" in l.lower()) and "bench-outcome" not in l]
    r["aborted"] = sum(1 for l in errors if "aborted" in l and "client" in l)
    r["errors"] = errors[:10]
    return r


def pgbench(script, clients, duration=None, transactions=None, defines=None, log_prefix=None,
            dbname="bench"):
    cmd = [f"{PG_BIN}/pgbench", "-h", "127.0.0.1", "-p", os.environ["PGPORT"], "-U", "postgres",
           "-n", "-M", "prepared", "-r", "-c", str(clients), "-j", str(min(clients, os.cpu_count() or 1)),
           "-f", os.path.join(WORKLOADS, script)]
    cmd += ["-T", str(duration)] if duration else ["-t", str(transactions)]
    for k, v in (defines or {}).items():
        cmd += ["-D", f"{k}={v}"]
    if log_prefix:
        cmd += ["-l", f"--log-prefix={log_prefix}"]
    cmd.append(dbname)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=tempfile.gettempdir())
    note_pid(p.pid)
    out, err = p.communicate()
    r = parse_pgbench(out, err)
    r["rc"] = p.returncode
    r["clients"] = clients
    r["command"] = " ".join(c if " " not in c else repr(c) for c in cmd[1:])
    if log_prefix:
        lat = []
        d = os.path.dirname(log_prefix)
        for name in os.listdir(d):
            if name.startswith(os.path.basename(log_prefix) + "."):
                with open(os.path.join(d, name)) as f:
                    for line in f:
                        parts = line.split()
                        if len(parts) >= 3 and parts[2].isdigit():
                            lat.append(int(parts[2]) / 1000.0)
        r["latencies_ms"] = lat
    return r


def merge_runs(runs):
    """One result from a workload's interleaved rounds for one variant: transactions, failures
    and answers add up; TPS is all transactions over all measured time (each round's
    transactions over its own TPS); latencies are weighted by transactions."""
    if len(runs) == 1:
        return dict(runs[0], rounds_tps=[runs[0]["tps"]])
    r = dict(runs[-1])
    tx = sum(x["tx"] for x in runs)
    timed = [x for x in runs if x["tps"] > 0]
    seconds = sum(x["tx"] / x["tps"] for x in timed)
    r["tx"] = tx
    r["tps"] = sum(x["tx"] for x in timed) / seconds if seconds > 0 else 0.0
    r["failed"] = sum(x["failed"] for x in runs)
    r["aborted"] = sum(x["aborted"] for x in runs)
    r["rc"] = max((x["rc"] for x in runs), key=lambda c: c != 0)
    r["errors"] = [e for x in runs for e in x["errors"]][:10]
    notices = {}
    for x in runs:
        for k, n in x["notices"].items():
            notices[k] = notices.get(k, 0) + n
    r["notices"] = notices
    lat = [(x["lat_avg_ms"], x["tx"]) for x in runs if x["lat_avg_ms"] is not None]
    r["lat_avg_ms"] = sum(l * n for l, n in lat) / max(1, sum(n for _, n in lat)) if lat else None
    if all(len(x["statements"]) == len(runs[0]["statements"]) for x in runs):
        r["statements"] = [dict(st, ms=sum(x["statements"][i]["ms"] * x["tx"] for x in runs) / max(1, tx),
                                failures=sum(x["statements"][i]["failures"] for x in runs))
                           for i, st in enumerate(runs[0]["statements"])]
    r["rounds_tps"] = [x["tps"] for x in runs]
    return r


# --------------------------------------------------------------------------------------------

def guarded(fn):
    """A step that fails (a crashed or restarted server, a lost connection, …) is recorded as a
    problem and the run goes on with the next step, so the report still shows everything else."""
    def wrapper(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - reported, not swallowed
            name = args[0] if args and isinstance(args[0], str) else fn.__name__
            first = (str(e).strip().splitlines() or [""])[0]
            self.results["problems"].append(f"{name}: {type(e).__name__}: {first}")
            log(f"   FAILED {name}: {type(e).__name__}: {first}")
            self.db.reconnect()
    return wrapper


class Bench:
    def __init__(self, args):
        self.args = args
        self.db = Db()
        smoke = args.smoke
        self.duration = args.duration or (2 if smoke else 20)
        # Each variant's time is split into rounds, variants taking turns (A B C, C B A, …), so
        # that the machine's slower and faster spells fall on every variant alike.
        self.rounds = args.rounds or max(1, min(5, self.duration // 4))
        self.c_low = args.clients or 2
        self.c_high = args.clients_high or 16
        self.pool = 200 if smoke else 2000                       # phones per client
        self.wpool = 2000 if smoke else 50000                     # phones with a live code
        self.mpool = max(5000 if smoke else 20000, 3000 * self.duration)  # MFA users
        self.latency_n = 50 if smoke else 1000                    # verifications per latency run
        sizes = args.history_sizes or ("2000,10000" if smoke else "10000,1000000")
        self.history_sizes = [int(x) for x in sizes.split(",") if x]
        self.send_history = args.send_history if args.send_history is not None else (300 if smoke else 30000)
        self.dispatch_n = args.dispatcher_messages or (200 if smoke else 20000)
        self.results = {"workloads": [], "problems": [], "checks": []}
        # Inside the cluster's directory, which bench/run.sh deletes (or keeps the logs of, on failure).
        self.tmp = os.path.join(os.environ.get("CLUSTER_DIR") or tempfile.mkdtemp(prefix="pg_otp_auth-bench-"), "driver")
        os.makedirs(self.tmp, exist_ok=True)

    # ---- setup ------------------------------------------------------------------------------

    def install(self, db=None):
        """Installs the product, the baselines and the helpers into `db` (the bench database by
        default), with the limits raised; the roles are the cluster's, made the first time."""
        db = db or self.db
        log(f"installing pg_otp_auth, pgcrypto, the baselines and the bench helpers in {db.dbname}")
        db.q("CREATE EXTENSION pgcrypto")
        db.q("CREATE EXTENSION pg_otp_auth")
        for role, login in (("anon", "NOLOGIN"), ("authenticated", "NOLOGIN"), ("otp_dispatcher", "LOGIN")):
            if not db.one("SELECT count(*) FROM pg_roles WHERE rolname = %s", role):
                db.q(f"CREATE ROLE {role} {login}")
        db.q("SELECT auth.grant_dispatcher('otp_dispatcher')")
        for f in ("floor.sql", "plpgsql.sql", "bench.sql"):
            db.psql_file(os.path.join(HERE, f))
        # Limits raised so the load is not refused (the budget study below changes the budget).
        for name, value in (("resend_cooldown", 0), ("sms_rate_per_phone", PRODUCT_LIMIT),
                            ("sms_rate_per_ip", PRODUCT_LIMIT), ("verify_rate_per_ip", PRODUCT_LIMIT),
                            ("sms_budget_per_hour", PRODUCT_LIMIT)):
            db.q("SELECT auth.set_setting(%s, %s::jsonb)", name, json.dumps(value))
        db.q("UPDATE plsql.config SET resend_cooldown = '0', sms_rate_per_phone = %s, sms_rate_per_ip = %s, "
             "sms_budget_per_hour = %s", PRODUCT_LIMIT, PRODUCT_LIMIT, PRODUCT_LIMIT)
        self.results["product_settings"] = {r[0]: r[1] for r in db.q(
            "SELECT name, value::text FROM auth.settings() WHERE NOT is_default ORDER BY 1")}

    def set_budget(self, n):
        self.db.q("SELECT auth.set_setting('sms_budget_per_hour', %s::jsonb)", json.dumps(n))
        self.db.q("UPDATE plsql.config SET sms_budget_per_hour = %s", n)

    def reset(self, variants=VARIANTS):
        for v in variants:
            self.db.q("SELECT bench.reset(%s)", v)

    def settle(self, db=None):
        """Vacuum/analyze what the setup wrote, then checkpoint: each run starts clean. Tables left
        empty are not analyzed: statistics saying "0 rows" would give every variant's cached
        plans sequential scans that slow down as the run fills the table (the product renews
        its plans, the baselines would not), while a table emptied by TRUNCATE has unknown
        statistics, as on a new install, and gets index plans."""
        db = db or self.db
        for schema in ("auth", "plsql", "floor", "bench"):
            tables = [r[0] for r in db.q(
                "SELECT format('%%I.%%I', schemaname, tablename) FROM pg_tables WHERE schemaname = %s", schema)]
            filled = [t for t in tables if db.one(f"SELECT EXISTS (SELECT 1 FROM {t})")]
            if filled:
                db.q("VACUUM (ANALYZE) " + ", ".join(filled))
        db.q("CHECKPOINT")

    def users(self, clients, variants=VARIANTS):
        for v in variants:
            self.db.q("SELECT bench.make_users(%s, '+1555', 1, %s)", v, clients * self.pool)

    def sign_in(self, variant, phone):
        """One sign-in through the variant's API (separate autocommit statements, as a client)."""
        db = self.db
        if variant == "product":
            mid = db.one("SELECT auth.send_sms_otp(phone => %s) ->> 'message_id'", phone)
            otp = db.one("SELECT substring(body FROM '[0-9]{6}') FROM auth.sms_outbox WHERE id = %s", mid)
            return db.one("SELECT auth.verify_sms_otp(phone => %s, otp => %s)", phone, otp)["session"]
        if variant == "plpgsql":
            mid = db.one("SELECT plsql.send_code(%s) ->> 'message_id'", phone)
            otp = db.one("SELECT substring(body FROM '[0-9]{6}') FROM plsql.sms_outbox WHERE id = %s", mid)
            return db.one("SELECT plsql.verify_code(%s, %s)", phone, otp)["session"]
        mid = db.one("SELECT floor.send_code(%s) ->> 'message_id'", phone)
        otp = db.one("SELECT substring(body FROM '[0-9]{6}') FROM floor.sms_outbox WHERE id = %s", mid)
        return db.one("SELECT floor.verify_code(%s, %s)", phone, otp)["session"]

    # ---- running ------------------------------------------------------------------------------

    def check_run(self, wid, variant, r, expect_notices=()):
        """Problems: no successful transaction, failed transactions, aborted clients, unexpected
        answers. Returns the list (also recorded)."""
        problems = []
        if r["tx"] <= 0:
            problems.append("no successful transaction")
        if r["failed"]:
            problems.append(f"{r['failed']} failed transactions")
        if r["rc"] != 0 or r["aborted"]:
            problems.append(f"pgbench exit {r['rc']}, {r['aborted']} aborted clients: {'; '.join(r['errors'][:3])}")
        unexpected = {k: n for k, n in r["notices"].items() if k not in expect_notices}
        if unexpected:
            problems.append(f"unexpected answers {unexpected}")
        for p in problems:
            self.results["problems"].append(f"{wid}/{variant}: {p}")
        r["problems"] = problems
        return problems

    @guarded
    def tps_workload(self, wid, title, how, script, clients, variants=VARIANTS, defines=None,
                     setup=None, post=None, reset=True, expect_notices=(), rounds=None, before=None,
                     listed=True):
        """Runs the workload for each variant, `rounds` turns each (interleaved: A B C, C B A,
        …) of duration / rounds seconds; workloads that carry state from one transaction to the
        next (refresh tokens, TOTP steps) run in one round. `before(v)` runs before each of
        variant v's turns; `listed=False` keeps the workload out of the main table."""
        if not self.wanted(wid):
            return
        rounds = rounds or self.rounds
        seconds = max(2, round(self.duration / rounds)) if rounds > 1 else self.duration
        log(f"{wid}: {title} ({clients} clients, {rounds} x {seconds} s each)")
        w = {"id": wid, "title": title, "kind": "tps", "clients": clients, "duration": seconds * rounds,
             "rounds": rounds, "load_start": machine_load(),
             "how": how, "script": script.replace("{v}", "*"), "results": {}}
        if reset:
            self.reset(variants)
        if setup:
            setup(w)
        self.settle()
        runs = {v: [] for v in variants}
        for i in range(rounds):
            for v in (variants if i % 2 == 0 else variants[::-1]):
                d = dict(defines(v) if callable(defines) else (defines or {}))
                if before:
                    before(v)
                runs[v].append(pgbench(script.format(v=v), clients, duration=seconds, defines=d))
                self.db.q("CHECKPOINT")
        for v in variants:
            r = merge_runs(runs[v])
            self.check_run(wid, v, r, expect_notices)
            if post:
                post(v, r)
            w["results"][v] = r
            r["load_end"] = machine_load()
            spread = "" if rounds == 1 else " rounds " + "/".join(f"{t:.0f}" for t in r["rounds_tps"])
            log(f"   {v:8s} {r['tps']:10.1f} tps  tx={r['tx']} failed={r['failed']} {r['notices'] or ''}{spread}")
        if listed:
            self.results["workloads"].append(w)
        return w

    # ---- the workloads --------------------------------------------------------------------------

    def wanted(self, wid):
        """--only: the workload ids (or their prefixes: `signin` selects signin_c2 and signin_c16)."""
        only = self.args.only
        return not only or any(wid == o or wid.startswith(o + "_") for o in only.split(","))

    def run_all(self):
        d = {"pool": self.pool}
        c1, c2 = self.c_low, self.c_high
        # a) send
        self.tps_workload(
            "send", "send a code", "One `send` call per transaction for a registered user (own phone range "
            "per client), PostgREST-style: BEGIN; set_config(role anon, claims, x-forwarded-for = a random "
            "client IP); the call; COMMIT.", "send_{v}.sql", c1, defines=d,
            setup=lambda w: self.users(c1))
        # b) sign-in
        for c in (c1, c2):
            self.tps_workload(
                f"signin_c{c}", f"sign-in, {c} clients",
                "Send (as above); read the code from the queued outbox row by message_id (superuser, as the "
                "dispatcher would); verify it in its own PostgREST-style transaction. One sign-in per transaction.",
                "signin_{v}.sql", c, defines=d, setup=lambda w, c=c: self.users(c))
        # c) refresh
        self.tps_workload(
            "refresh", "refresh a session",
            f"{c1} users signed in once through each variant's API at setup; each client rotates its own "
            "session's refresh token (keeps the newest) in a PostgREST-style transaction.",
            "refresh_{v}.sql", c1, defines={"tok": "none"}, setup=lambda w: self.setup_refresh(c1), rounds=1)
        # d) wrong codes
        self.tps_workload(
            "wrong_code", f"wrong-code guesses, {c2} clients",
            f"{self.wpool} phones with a live code; each transaction guesses a wrong code for a random one "
            "through a catching PL/pgSQL wrapper (bench.guess_*), PostgREST-style. See the notes.",
            "guess_{v}.sql", c2, defines={"wpool": self.wpool},
            setup=lambda w: [self.db.q("SELECT bench.make_live_codes(%s, %s)", v, self.wpool) for v in VARIANTS],
            post=self.post_wrong_code, expect_notices=("PT503",))
        # e) MFA
        self.tps_workload(
            "mfa", "MFA step-up with a TOTP code",
            f"{self.mpool} users with a verified TOTP factor and an aal1 session; each transaction takes the "
            "next unused user, computes the current code with auth.totp(secret) (superuser) and calls the "
            "verification with role authenticated and the session's claims (as PostgREST does).",
            "mfa_{v}.sql", c1, defines={"i": 0, "nclients": c1, "mpool": self.mpool},
            setup=self.setup_mfa, post=self.post_mfa, rounds=1)
        # send cost vs budget and history
        if self.wanted("send_budget"):
            self.budget_side_by_side(c1)
            self.send_history_study(c1)
        # f) verify latency with history
        if self.wanted("latency"):
            self.latency_study()

    def setup_refresh(self, clients):
        for v in VARIANTS:
            for c in range(clients):
                s = self.sign_in(v, f"+1554{c:07d}")
                self.db.q("INSERT INTO bench.tokens VALUES (%s, %s, %s)", v, c, s["refresh_token"])

    def post_wrong_code(self, v, r):
        db = self.db
        if v == "product":
            counted = db.one("SELECT coalesce(sum(attempts), 0) FROM auth.otp_codes WHERE subject LIKE '+1556%%'")
            audited = db.one("SELECT count(*) FROM auth.audit_log WHERE event = 'verify_failed'")
        elif v == "plpgsql":
            counted = db.one("SELECT coalesce(sum(attempts), 0) FROM plsql.otp_codes WHERE subject LIKE '+1556%%'")
            audited = db.one("SELECT count(*) FROM plsql.audit_log WHERE event = 'verify_failed'")
        else:
            counted = db.one("SELECT coalesce(sum(attempts), 0) FROM floor.otp_codes")
            audited = db.one("SELECT count(*) FROM floor.audit_log WHERE event = 'verify_failed'")
        r["counted_attempts"] = int(counted)
        r["audit_rows"] = int(audited)
        r["pt503"] = r["notices"].get("PT503", 0)
        # Every answered guess must be on record (in-flight calls at the end of -T may add a few).
        # The audit row is the record: a code's own counter stops at otp_max_attempts (guesses at
        # a dead code are audited as no_live_code).
        if audited < r["tx"] - r["pt503"]:
            self.results["problems"].append(f"wrong_code/{v}: only {audited} guesses on record for {r['tx']} answered")
        elif v == "product":
            others = {k: n for k, n in r["notices"].items() if k != "PT503"}
            self.results["checks"].append(
                "Wrong codes through the catching PL/pgSQL wrapper (a subtransaction): the product "
                + ("answered PT401 to every guess" if not others else f"also answered {others}")
                + f" and counted {counted:,} attempts ({audited:,} verify_failed audit rows) for {r['tx']:,} "
                f"answered guesses; {r['pt503']} answered PT503.")

    def setup_mfa(self, w):
        db = self.db
        # First, the real enrollment path once, through the API (as tests/integration/test_mfa.py):
        # sign in, enroll, verify with auth.totp(secret). Then the pool's rows are checked to have
        # the same shape as the factor the API made.
        db.q("SELECT bench.make_users('product', '+1553', 1, 1)")
        s = self.sign_in("product", "+15530000001")
        claims = db.one("SELECT bench.jwt_claims(%s)::text", s["access_token"])

        def rpc(sql, *args):
            with db.conn.transaction():
                db.q("SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims', %s, true)", claims)
                return db.one(sql, *args)
        f = rpc("SELECT auth.mfa_enroll(factor_type => 'totp')")
        code = db.one("SELECT auth.totp(%s)", f["totp"]["secret"])
        s2 = rpc("SELECT auth.mfa_challenge_and_verify(factor_id => %s, code => %s)", f["id"], code)
        aal = db.one("SELECT bench.jwt_claims(%s) ->> 'aal'", s2["access_token"])
        db.q("SELECT bench.make_mfa_pool(%s)", self.mpool)
        real = db.one("SELECT to_jsonb(x) FROM (SELECT factor_type, status, algorithm, digits, period, "
                      "octet_length(secret) AS secret_bytes FROM auth.mfa_factors WHERE id = %s) x", f["id"])
        pooled = db.one("SELECT to_jsonb(x) FROM (SELECT factor_type, status, algorithm, digits, period, "
                        "octet_length(secret) AS secret_bytes FROM auth.mfa_factors WHERE id = "
                        "(SELECT product_factor FROM bench.mfa_pool WHERE n = 1)) x")
        ok = aal == "aal2" and real == pooled
        self.results["checks"].append(
            f"MFA enrollment through the API (sign in, mfa_enroll, mfa_challenge_and_verify with auth.totp): "
            f"{'aal2 reached' if aal == 'aal2' else 'FAILED'}; pooled factor rows {'match' if real == pooled else 'DIFFER from'} "
            f"the API-made one ({real})")
        if not ok:
            self.results["problems"].append(f"mfa/setup: API enrollment check failed ({aal}, {real} vs {pooled})")

    def post_mfa(self, v, r):
        db = self.db
        q = {"product": "SELECT count(*) FROM auth.sessions WHERE aal = 'aal2' AND user_id IN "
                        "(SELECT id FROM auth.users WHERE phone LIKE '+1557%%')",
             "plpgsql": "SELECT count(*) FROM plsql.sessions WHERE aal = 'aal2' AND user_id IN "
                        "(SELECT id FROM plsql.users WHERE phone LIKE '+1557%%')",
             "floor": "SELECT count(*) FROM floor.sessions WHERE aal = 'aal2'"}[v]
        r["raised_sessions"] = int(db.one(q))
        if r["tx"] > self.mpool and v != "floor":
            self.results["problems"].append(f"mfa/{v}: {r['tx']} transactions for a pool of {self.mpool} "
                                            "users (some users verified twice)")

    @guarded
    def budget_side_by_side(self, clients):
        """The product's send at a budget of 1,000,000 and of 100,000,000 per hour, in rounds that
        alternate the two (A B, B A, …) on one database: the budget is the only difference, and
        the machine's slower and faster spells fall on both. (At 1,000 per hour the budget is
        spent within seconds, and the sends are refused: see the history study.)"""
        budgets = {f"budget {b:,}": b for b in (PRODUCT_LIMIT, 100_000_000)}

        def setup(w):
            self.reset(["product"])
            self.users(clients, ["product"])

        try:
            w = self.tps_workload(
                "send_budget_side_by_side", "product send at two budgets",
                "As `send`, product only, the budget set before each turn.", "send_product.sql", clients,
                variants=list(budgets), defines={"pool": self.pool}, setup=setup, reset=False,
                rounds=max(2, self.rounds), before=lambda v: self.set_budget(budgets[v]), listed=False)
        finally:
            self.set_budget(PRODUCT_LIMIT)
        self.results["send_budgets"] = {
            "clients": clients, "rounds": w["rounds"], "seconds": w["duration"] // w["rounds"],
            "budgets": [{"budget": b, **{k: w["results"][v][k] for k in ("tps", "tx", "failed", "rounds_tps")}}
                        for v, b in budgets.items()]}

    @guarded
    def send_history_study(self, clients):
        """Send cost against the hourly budget and history, PLPGSQL and PRODUCT, measured back to
        back: budget 100,000,000 with no history; the same after N sends in the last hour (all from
        127.0.0.1) from random client IPs; then from that one IP; and whether 1000/h refuses."""
        n = self.send_history
        variants = ["plpgsql", "product"]
        log(f"send cost vs budget/history: budget 100,000,000, then {n} sends in the last hour")
        self.set_budget(100_000_000)
        self.tps_workload("send_budget_1e8", "send, budget 1e8, no history",
                          "As `send`, with sms_budget_per_hour = 100,000,000 and empty history; the reference "
                          "for the two history rows measured right after it.",
                          "send_{v}.sql", clients, variants=variants, defines={"pool": self.pool},
                          setup=lambda w: self.users(clients, variants))
        hist = {}

        def fill_history(w):
            # Through the product's own API, so the history lands in whatever rate-limit
            # bookkeeping the installed version keeps; from 127.0.0.1. The baseline's only
            # state is send_events, filled directly with as many rows.
            self.users(clients, variants)
            t0 = time.time()
            per = -(-n // self.c_low)
            h = pgbench("history_sends_product.sql", self.c_low, transactions=per, defines={"i": 0}) if n else None
            made = int(self.db.one("SELECT count(*) FROM auth.send_events WHERE queued"))
            self.db.q("SELECT bench.prefill_plpgsql_sends(%s, '127.0.0.1')", made)
            hist.update(sends=made, seconds=round(time.time() - t0, 1))
            if h and (h["failed"] or h["rc"]):
                self.results["problems"].append(f"send history: {h['errors'][:2]}")

        common = (f"sms_budget_per_hour = 100,000,000; before the first of these two runs {n:,} messages were "
                  "queued in the last hour (product: through auth.send_sms_otp; baseline: rows in its "
                  "send_events), all from 127.0.0.1; the second run also sees the first one's sends.")
        self.tps_workload("send_budget_history", "send, budget 1e8 + history",
                          common + " Requests from random client IPs (as `send`).",
                          "send_{v}.sql", clients, variants=variants, defines={"pool": self.pool},
                          setup=fill_history)
        self.tps_workload("send_one_ip", "send, one client IP + history",
                          common + " Requests carry no x-forwarded-for, so all come from 127.0.0.1, the IP of the "
                          "history (per-IP limit 1,000,000 per 10 min), as one app server calling the database directly.",
                          "send_oneip_{v}.sql", clients, variants=variants, defines={"pool": self.pool}, reset=False)
        self.results["send_history"] = hist
        # Budget 1000/h: refused now?
        self.set_budget(1000)
        refused = {}
        for v, sql in (("product", "SELECT auth.send_sms_otp(phone => '+15529999999')"),
                       ("plpgsql", "SELECT plsql.send_code('+15529999999')")):
            try:
                self.db.q(sql)
                refused[v] = "accepted"
            except psycopg.Error as e:
                refused[v] = f"{e.diag.sqlstate} {e.diag.message_detail}"
        self.set_budget(PRODUCT_LIMIT)
        self.results["budget_1000"] = refused
        self.results["checks"].append(
            f"sms_budget_per_hour = 1000 with {hist.get('sends', 0):,} + the runs' sends in the last hour: "
            f"product {refused['product']}, plpgsql {refused['plpgsql']}")

    @guarded
    def latency_study(self):
        """Verify latency against history size, the sizes side by side: each in its own database
        (installed as the bench database is), all filled, sent their codes and settled before any
        is measured, then measured in alternating rounds (sizes and variants in turn, the order
        reversed every other round), so a noisy minute of the machine falls on every size alike."""
        sizes = self.history_sizes
        rounds = 2 if self.args.smoke else 4
        per = self.latency_n // rounds
        log(f"verify latency: {', '.join(f'{n:,}' for n in sizes)} history rows per table, "
            f"one database each, {rounds} alternating rounds of {per} verifications")
        dbs = {}
        try:
            for n in sizes:
                name = f"bench_h{n}"
                self.db.q(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                self.db.q(f"CREATE DATABASE {name}")
                dbs[n] = Db(name)
                self.install(dbs[n])
            gen = {}
            for n in sizes:
                t0 = time.time()
                for v in VARIANTS:
                    dbs[n].q("SELECT bench.make_history(%s, %s)", v, n)
                gen[n] = time.time() - t0
            for n in sizes:
                for v in VARIANTS:
                    dbs[n].q("SELECT bench.send_pending(%s, %s)", v, per * rounds)
                self.settle(dbs[n])
            runs = {(n, v): [] for n in sizes for v in VARIANTS}
            for i in range(rounds):
                for n in (sizes if i % 2 == 0 else sizes[::-1]):
                    for v in (VARIANTS if i % 2 == 0 else VARIANTS[::-1]):
                        prefix = os.path.join(self.tmp, f"verify_latency_{n}_{v}_{i}")
                        runs[(n, v)].append(pgbench(f"verify_latency_{v}.sql", 1, transactions=per,
                                                    defines={"i": i * per}, log_prefix=prefix,
                                                    dbname=dbs[n].dbname))
            for n in sizes:
                rows = {v: dbs[n].one("SELECT count(*) FROM auth.otp_codes" if v == "product" else
                                      f"SELECT count(*) FROM {'plsql' if v == 'plpgsql' else 'floor'}.otp_codes")
                        for v in VARIANTS}
                wid = f"verify_latency_{n}"
                w = {"id": wid, "title": f"verify latency, {n:,} history rows", "kind": "latency",
                     "clients": 1, "transactions": per * rounds, "rounds": rounds, "history_rows": n,
                     "script": "verify_latency_*.sql", "load_start": machine_load(),
                     "how": f"{n:,} old rows each in otp_codes, sessions, refresh_tokens, audit_log "
                            f"(+{max(n // 4, 1):,} users; generated in {gen[n]:.1f} s for the three variants) in "
                            f"a database of its own; {per * rounds} codes sent through each variant's send "
                            f"before the runs; one client verifies them one per transaction (PostgREST-style), "
                            f"in {rounds} rounds of {per} that alternate with the other history sizes.",
                     "results": {}}
                for v in VARIANTS:
                    r = merge_runs(runs[(n, v)])
                    self.check_run(wid, v, r)
                    lat = [x for run in runs[(n, v)] for x in run.get("latencies_ms", [])]
                    r.pop("latencies_ms", None)
                    r["p50_ms"] = percentile(lat, 50)
                    r["p99_ms"] = percentile(lat, 99)
                    r["samples"] = len(lat)
                    verify_stmt = [st for st in r["statements"] if "verify" in st["sql"]]
                    r["verify_stmt_avg_ms"] = verify_stmt[0]["ms"] if verify_stmt else None
                    r["otp_codes_rows"] = rows[v]
                    r["load_end"] = machine_load()
                    w["results"][v] = r
                    log(f"   {n:>9,} {v:8s} p50 {r['p50_ms'] or 0:.2f} ms  p99 {r['p99_ms'] or 0:.2f} ms  "
                        f"({len(lat)} samples)")
                self.results["workloads"].append(w)
        finally:
            for n, db in dbs.items():
                db.conn.close()
                self.db.q(f"DROP DATABASE IF EXISTS {db.dbname} WITH (FORCE)")

    # ---- primitives: TOTP and JWT per call ------------------------------------------------------

    def per_call_us(self, expr, n):
        """Microseconds per evaluation of `expr` (over g = 1..n) inside one statement: the best
        of three runs."""
        best = None
        for _ in range(3):
            us = self.db.one(
                # The count is used, or the planner drops the unused aggregate and its calls.
                "SELECT extract(epoch FROM clock_timestamp() - statement_timestamp()) * 1e6 / x.n "
                f"FROM (SELECT count({expr}) AS n FROM generate_series(1, %s) g) x", n)
            best = us if best is None else min(best, us)
        return float(best)

    @guarded
    def run_primitives(self):
        """TOTP and HS256 per call: the product's functions as SQL calls them beside the PL/pgSQL +
        pgcrypto ones, timed in the same loop; and the product's Rust code alone, in process."""
        n = 2000 if self.args.smoke else 20000
        log(f"primitives: TOTP and JWT signing per call ({n} calls per loop, best of 3)")
        secret_b32 = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"   # b"12345678901234567890"
        secret_hex = "3132333435363738393031323334353637383930"
        claims = ('{"sub": "6f1c1d1e-3b0a-4c55-9a55-0c3f8e9f2b11", "role": "authenticated", '
                  '"aud": "authenticated", "iss": "pg_otp_auth", "iat": 1700000000, "exp": 1700003600, '
                  '"session_id": "0b6d8a7e-6c1f-4f0e-8c2e-5b9a1d2c3e4f", "phone": "+15550104242", '
                  '"aal": "aal1", "amr": [{"method": "otp", "timestamp": 1700000000}], '
                  '"is_anonymous": false, "app_metadata": {"provider": "phone", "providers": ["phone"], '
                  '"roles": ["authenticated"], "default_role": "authenticated"}, "user_metadata": {}}')
        at = "timestamptz '2026-01-01' + g * interval '30 seconds'"
        r = {"calls": n, "sql": {
            "totp_product": self.per_call_us(f"auth.totp('{secret_b32}', {at})", n),
            "totp_plpgsql": self.per_call_us(f"plsql.totp('\\x{secret_hex}'::bytea, {at})", n),
            "jwt_plpgsql": self.per_call_us(f"plsql.sign_jwt(jsonb_set('{claims}'::jsonb, '{{iat}}', to_jsonb(g)))", n),
        }}
        r["rust"] = None
        if not self.args.smoke:
            out = subprocess.run(["cargo", "run", "--release", "-q", "-p", "pg_otp_auth_core", "--example",
                                  "primitives", "--", "200000"], cwd=ROOT, capture_output=True, text=True)
            if out.returncode == 0:
                r["rust"] = json.loads(out.stdout.strip().splitlines()[-1])
            else:
                self.results["problems"].append(f"primitives: the Rust timing failed: {out.stderr[-500:]}")
        log(f"   TOTP code per SQL call: product {r['sql']['totp_product']:.1f} us, "
            f"plpgsql {r['sql']['totp_plpgsql']:.1f} us; HS256 JWT plpgsql {r['sql']['jwt_plpgsql']:.1f} us"
            + (f"; Rust in process: TOTP verify {r['rust']['totp_verify_ns'] / 1000:.2f} us, "
               f"JWT sign {r['rust']['jwt_sign_ns'] / 1000:.2f} us" if r["rust"] else ""))
        self.results["primitives"] = r

    # ---- the dispatcher -------------------------------------------------------------------------

    def receiver_get(self, path, method="GET"):
        req = urllib.request.Request(f"http://127.0.0.1:{self.rport}{path}", method=method,
                                     data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def start_dispatcher(self, *extra):
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTP_") and k != "DATABASE_URL"}
        cmd = [self.args.dispatcher, "--database-url",
               f"host=127.0.0.1 port={os.environ['PGPORT']} user=otp_dispatcher dbname=bench",
               "--provider", "webhook", "--allow-insecure-http",
               "--webhook-url", f"http://127.0.0.1:{self.rport}/hook", "--webhook-secret", WEBHOOK_SECRET,
               "--metrics-addr", "off", *extra]
        logf = open(os.path.join(self.tmp, "dispatcher.log"), "a")
        p = subprocess.Popen(cmd, stdout=logf, stderr=logf, env=env)
        note_pid(p.pid)
        return p

    @staticmethod
    def stop(p):
        if p and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def queue_counts(self):
        return dict(self.db.q("SELECT status, count(*) FROM auth.sms_outbox GROUP BY 1"))

    def dispatcher_throughput(self, concurrency):
        n = self.dispatch_n
        db = self.db
        db.q("TRUNCATE auth.sms_outbox")
        self.receiver_get("/reset", "POST")
        db.q("INSERT INTO auth.sms_outbox (phone, channel, body, purpose, expires_at) "
             "SELECT bench.phone('+1551', k), 'sms', 'Your code is ' || lpad((k %% 1000000)::text, 6, '0'), "
             "'signin', now() + interval '1 hour' FROM generate_series(1, %s) k", n)
        db.q("VACUUM (ANALYZE) auth.sms_outbox")
        db.q("CHECKPOINT")
        extra = ["--concurrency", str(concurrency)] if concurrency else []
        t0 = time.time()
        p = self.start_dispatcher(*extra)
        deadline = t0 + max(120, n / 50)
        counts = {}
        try:
            while time.time() < deadline:
                counts = self.queue_counts()
                if counts.get("queued", 0) + counts.get("sending", 0) == 0:
                    break
                if p.poll() is not None:
                    break
                time.sleep(0.05)
            t_done = time.time()
        finally:
            self.stop(p)
        st = self.receiver_get("/stats")
        arr = sorted(st["arrivals"].values())
        sent = counts.get("sent", 0)
        rate = (len(arr) - 1) / (arr[-1] - arr[0]) if len(arr) > 1 and arr[-1] > arr[0] else 0.0
        r = {"messages": n, "sent": sent, "dead": counts.get("dead", 0), "expired": counts.get("expired", 0),
             "left": counts.get("queued", 0) + counts.get("sending", 0),
             "received": st["unique"], "duplicates": st["duplicates"], "msgs_per_s": rate,
             "wall_s": t_done - t0, "wall_msgs_per_s": sent / (t_done - t0) if t_done > t0 else 0.0,
             "concurrency": concurrency or 8}
        probs = []
        if sent != n or st["unique"] != n:
            probs.append(f"{sent} sent / {st['unique']} received of {n} ({counts})")
        if rate <= 0:
            probs.append("no delivery rate")
        for pr in probs:
            self.results["problems"].append(f"dispatcher c{r['concurrency']}: {pr}")
        r["problems"] = probs
        log(f"   concurrency {r['concurrency']}: {rate:.0f} msg/s (receiver), {r['wall_msgs_per_s']:.0f} msg/s "
            f"wall incl. start; sent {sent}/{n}, duplicates {st['duplicates']}")
        return r

    def dispatcher_latency(self):
        db = self.db
        rate, seconds = 100, (1.5 if self.args.smoke else 5)
        n = int(rate * seconds)
        db.q("TRUNCATE auth.sms_outbox")
        self.reset(["product"])
        db.q("SELECT bench.make_users('product', '+1555', 1, %s)", n)
        self.settle()
        self.receiver_get("/reset", "POST")
        p = self.start_dispatcher("--poll-seconds", "3600")
        commits = {}
        try:
            # Wait until its LISTEN connection is up and the first (empty) claim is done.
            deadline = time.time() + 30
            while time.time() < deadline:
                if db.one("SELECT count(*) FROM pg_stat_activity WHERE usename = 'otp_dispatcher' "
                          "AND query ILIKE 'LISTEN%%'"):
                    break
                time.sleep(0.05)
            time.sleep(1.0)
            client = psycopg.connect(self.db.dsn, autocommit=True)
            start = time.time()
            for k in range(1, n + 1):
                target = start + (k - 1) / rate
                now = time.time()
                if target > now:
                    time.sleep(target - now)
                mid = client.execute("SELECT auth.send_sms_otp(phone => %s) ->> 'message_id'",
                                     (f"+1555{k:07d}",)).fetchone()[0]
                commits[mid] = time.time()   # autocommit: the call has committed when it returns
            client.close()
            deadline = time.time() + 30
            while time.time() < deadline:
                if self.receiver_get("/stats")["unique"] >= n:
                    break
                time.sleep(0.1)
        finally:
            self.stop(p)
        arrivals = self.receiver_get("/stats")["arrivals"]
        lat = [(arrivals[m] - t) * 1000 for m, t in commits.items() if m in arrivals]
        r = {"messages": n, "rate_per_s": rate, "delivered": len(lat),
             "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
             "max_ms": max(lat) if lat else None, "poll_seconds": 3600}
        if len(lat) != n:
            self.results["problems"].append(f"dispatcher latency: {len(lat)} of {n} delivered")
        log(f"   commit-to-provider latency: p50 {r['p50_ms'] or 0:.1f} ms, p99 {r['p99_ms'] or 0:.1f} ms ({len(lat)}/{n})")
        return r

    @guarded
    def run_dispatcher(self):
        log(f"dispatcher: {self.dispatch_n} queued messages to a local webhook receiver")
        port_file = os.path.join(self.tmp, "receiver.port")
        self.receiver = subprocess.Popen([sys.executable, os.path.join(HERE, "receiver.py"),
                                          "--port-file", port_file])
        note_pid(self.receiver.pid)
        try:
            deadline = time.time() + 10
            while not os.path.exists(port_file) and time.time() < deadline:
                time.sleep(0.05)
            self.rport = int(open(port_file).read())
            self.reset(["product"])
            self.settle()
            res = {"throughput": [self.dispatcher_throughput(None), self.dispatcher_throughput(64)],
                   "latency": self.dispatcher_latency(), "binary": self.args.dispatcher}
        finally:
            self.stop(self.receiver)
        self.results["dispatcher"] = res

    # ---- meta -----------------------------------------------------------------------------------

    def meta(self):
        def sh(cmd):
            try:
                return subprocess.run(cmd, shell=True, capture_output=True, text=True, cwd=ROOT).stdout.strip()
            except OSError:
                return ""
        cpu = ""
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        mem_kb = 0
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    mem_kb = int(line.split()[1])
        settings = dict(self.db.q(
            "SELECT name, current_setting(name) FROM pg_settings WHERE name IN "
            "('shared_buffers', 'max_connections', 'max_worker_processes', 'fsync', 'synchronous_commit', "
            "'full_page_writes', 'wal_level', 'max_wal_size', 'checkpoint_timeout', 'shared_preload_libraries', "
            "'work_mem', 'jit', 'autovacuum', 'max_parallel_workers_per_gather', 'wal_sync_method') ORDER BY name"))
        so = "/usr/lib/postgresql/15/lib/pg_otp_auth.so"
        so_info = ""
        if os.path.exists(so):
            st = os.stat(so)
            so_info = (f"{so}, {st.st_size / 1e6:.1f} MB, installed "
                       f"{datetime.fromtimestamp(st.st_mtime, timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
            # Which build it is: the installed library is a copy of one of cargo's outputs.
            for profile in ("release", "debug"):
                built = os.path.join(ROOT, "target", profile, "libpg_otp_auth.so")
                if os.path.exists(built) and subprocess.run(["cmp", "-s", so, built]).returncode == 0:
                    so_info += f", identical to target/{profile}/libpg_otp_auth.so (a {profile} build)"
                    break
            else:
                so_info += ", not identical to target/release or target/debug libpg_otp_auth.so"
                if shutil.which("readelf"):
                    sections = subprocess.run(["readelf", "-S", "-W", so], capture_output=True, text=True).stdout
                    so_info += ("; has DWARF debug info (a debug build, unless the release profile enables debuginfo)"
                                if ".debug_info" in sections else "; no debug info (likely a release build)")
        dirty = sh("git status --porcelain --untracked-files=no -- src core sql dispatcher Cargo.toml Cargo.lock")
        return {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": self.args.command,
            "smoke": self.args.smoke,
            "nproc": os.cpu_count(), "cpu": cpu, "memory_gb": round(mem_kb / 1024 / 1024, 1),
            "kernel": platform.release(), "loadavg_start": self.loadavg_start,
            "loadavg_end": open("/proc/loadavg").read().split()[:3],
            "postgres": self.db.one("SELECT version()"),
            "pgbench": sh(f"{PG_BIN}/pgbench --version"),
            "extension_version": self.db.one("SELECT extversion FROM pg_extension WHERE extname = 'pg_otp_auth'"),
            "extension_so": so_info,
            "build_mode": self.args.build_mode,
            "dispatcher": self.args.dispatcher,
            "preload": self.args.preload == "1",
            "git_commit": sh("git rev-parse HEAD"),
            "git_subject": sh("git log -1 --format=%s"),
            "git_dirty": [l for l in dirty.splitlines() if l],
            "settings": settings,
            "duration": self.duration, "rounds": self.rounds, "clients_low": self.c_low, "clients_high": self.c_high,
            "pool_per_client": self.pool, "wrong_code_pool": self.wpool, "mfa_pool": self.mpool,
        }

    @staticmethod
    def so_fingerprint():
        """The installed library's content hash (another engineer may install a build mid-run)."""
        import hashlib
        h = hashlib.sha256()
        try:
            with open("/usr/lib/postgresql/15/lib/pg_otp_auth.so", "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        except OSError:
            return None
        return h.hexdigest()

    def run(self):
        self.loadavg_start = open("/proc/loadavg").read().split()[:3]
        so_start = self.so_fingerprint()
        t0 = time.time()
        self.install()
        self.run_all()
        if self.wanted("primitives"):
            self.run_primitives()
        if self.wanted("dispatcher"):
            self.run_dispatcher()
        self.db.reconnect()
        self.results["meta"] = self.meta()
        self.results["meta"]["elapsed_s"] = round(time.time() - t0, 1)
        self.results["warnings"] = []
        so_end = self.so_fingerprint()
        self.results["meta"]["extension_so"] += f", sha256 {str(so_end)[:16]}…"
        if so_end != so_start:
            if self.results["problems"]:
                self.results["problems"].append(
                    "the installed pg_otp_auth.so was replaced during the run, which alone can explain the "
                    "failures above (a library overwritten in place crashes the backends that have it mapped)")
            self.results["warnings"].append(
                "The installed pg_otp_auth.so was replaced during this run (someone installed a new build): "
                "connections opened after that loaded the new library against the schema created from the "
                "old one. The numbers mix two builds; run the benchmark again on a quiet machine.")
        return self.results


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--duration", type=int)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--clients", type=int)
    ap.add_argument("--clients-high", type=int)
    ap.add_argument("--history-sizes")
    ap.add_argument("--send-history", type=int)
    ap.add_argument("--dispatcher-messages", type=int)
    ap.add_argument("--dispatcher", required=True)
    ap.add_argument("--report", required=True)
    ap.add_argument("--preload", default="0")
    ap.add_argument("--build-mode", default="")
    ap.add_argument("--command", default="bash bench/run.sh")
    ap.add_argument("--only", default="", help="comma-separated workload ids (for profiling; partial report)")
    args = ap.parse_args()

    def on_term(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_term)

    sys.path.insert(0, HERE)
    import report

    b = Bench(args)
    results = b.run()
    json_path = os.path.splitext(args.report)[0] + ".json"
    if json_path.startswith(os.path.join(ROOT, "docs")):
        json_path = os.path.join(HERE, "results", "last-run.json")
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(results, f, indent=1, default=str)
    md = report.markdown(results)
    os.makedirs(os.path.dirname(os.path.abspath(args.report)), exist_ok=True)
    with open(args.report, "w") as f:
        f.write(md)
    print(report.console_table(results))
    print(f"\nreport: {args.report}\nraw results: {json_path}")
    if results["problems"]:
        print("\nPROBLEMS:\n  " + "\n  ".join(results["problems"]), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
