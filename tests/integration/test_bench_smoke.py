"""The benchmark harness runs end to end: `bash bench/run.sh --smoke --no-build`.

Standalone (starts its own throwaway cluster through bench/run.sh; needs no conftest fixture).
Asserts only that it succeeds and that the report has a positive number for every workload and
variant: no timing thresholds, the numbers of a smoke run mean nothing.
"""

import os
import re
import subprocess

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
TPS_WORKLOADS = {
    "send": ("floor", "plpgsql", "product"),
    "signin_c2": ("floor", "plpgsql", "product"),
    "signin_c16": ("floor", "plpgsql", "product"),
    "refresh": ("floor", "plpgsql", "product"),
    "wrong_code": ("floor", "plpgsql", "product"),
    "mfa": ("floor", "plpgsql", "product"),
    "send_budget_1e8": ("plpgsql", "product"),
    "send_budget_history": ("plpgsql", "product"),
    "send_one_ip": ("plpgsql", "product"),
}
COLUMNS = ("floor", "plpgsql", "product")


def number(cell):
    cell = cell.strip().replace(",", "").rstrip("×")
    return float(cell)


def table_rows(md, header_start):
    """The rows (lists of cells) of the markdown table whose header line starts with header_start."""
    lines = md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(header_start):
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip() for c in row.strip().strip("|").split("|")])
            return rows
    raise AssertionError(f"no table starting with {header_start!r} in the report")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    report = tmp_path_factory.mktemp("bench") / "BENCHMARKS.md"
    env = dict(os.environ, BENCH_REPORT=str(report))
    env.setdefault("DISPATCHER_BIN", os.path.join(ROOT, "target/debug/pg-otp-dispatcher"))
    p = subprocess.run(["bash", "bench/run.sh", "--smoke", "--no-build"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    return p, report


def test_smoke_run_succeeds(smoke):
    p, report = smoke
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout[-4000:]}\nstderr:\n{p.stderr[-4000:]}"
    assert report.exists()
    md = report.read_text()
    assert "## Problems" in md and "None: every workload completed" in md


def test_every_throughput_workload_has_positive_tps(smoke):
    _, report = smoke
    md = report.read_text()
    rows = table_rows(md, "| workload | clients | FLOOR tps")
    seen = {}
    for cells in rows:
        m = re.search(r"\(`([a-z0-9_]+)`\)", cells[0])
        assert m, cells
        seen[m.group(1)] = dict(zip(COLUMNS, cells[2:5]))
    assert set(seen) == set(TPS_WORKLOADS), seen.keys()
    for wid, variants in TPS_WORKLOADS.items():
        for v in variants:
            assert number(seen[wid][v]) > 0, (wid, v, seen[wid][v])


def test_wrong_code_guesses_were_counted(smoke):
    _, report = smoke
    rows = table_rows(report.read_text(), "| variant | guesses answered")
    assert [r[0] for r in rows] == ["FLOOR", "PLPGSQL", "PRODUCT"]
    for r in rows:
        assert number(r[1]) > 0 and number(r[2]) > 0 and number(r[3]) > 0, r


def test_verify_latency_has_positive_percentiles(smoke):
    _, report = smoke
    md = report.read_text()
    rows = table_rows(md, "| history rows per table")
    # The smoke run's two sizes, side by side: 2 rounds of 25 verifications each, every round's
    # per-transaction log in the percentiles (the fewest samples of any variant is shown).
    assert [number(r[0]) for r in rows] == [2000, 10000]
    assert "p50 at 10,000 rows over its p50 at 2,000: FLOOR" in md
    for r in rows:
        assert number(r[1]) == 50, r
        for cell in r[2:5]:
            p50, p99 = (number(x) for x in cell.split("/"))
            assert p50 > 0 and p99 > 0, r


def test_dispatcher_throughput_and_latency(smoke):
    _, report = smoke
    md = report.read_text()
    rows = table_rows(md, "| concurrency | messages")
    assert [r[0] for r in rows] == ["8", "64"]
    for r in rows:
        messages, sent, received = number(r[1]), number(r[2]), number(r[3])
        assert messages > 0 and sent == messages and received == messages, r
        assert number(r[6]) > 0, r
    m = re.search(r"\*\*p50 ([\d.,]+) ms, p99 ([\d.,]+) ms\*\*", md)
    assert m, "no dispatcher latency"
    assert number(m.group(1)) > 0 and number(m.group(2)) > 0


def test_interleaved_rounds_merge_into_one_result():
    """A variant's rounds (full runs take turns in several) add up: TPS is all transactions over
    all measured time, latency is weighted by transactions, answers and failures are summed."""
    import sys

    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from driver import merge_runs

    def run(tx, tps, lat, notices, failed=0, rc=0, stmt_failures=0):
        return {"tx": tx, "tps": tps, "lat_avg_ms": lat, "failed": failed, "aborted": 0, "rc": rc,
                "errors": [], "notices": notices,
                "statements": [{"ms": lat, "failures": stmt_failures, "sql": "SELECT 1"}]}

    merged = merge_runs([run(1000, 500.0, 2.0, {"PT503": 1}, stmt_failures=1),
                         run(3000, 1000.0, 1.0, {"PT503": 2}, failed=2, rc=2, stmt_failures=2)])
    assert merged["tx"] == 4000
    assert merged["tps"] == pytest.approx(4000 / (2.0 + 3.0))  # 2 s and 3 s of measured time
    assert merged["lat_avg_ms"] == pytest.approx((1000 * 2.0 + 3000 * 1.0) / 4000)
    assert merged["notices"] == {"PT503": 3}
    assert merged["failed"] == 2 and merged["rc"] == 2
    assert merged["statements"][0]["failures"] == 3
    assert merged["rounds_tps"] == [500.0, 1000.0]
    # A round whose TPS could not be read does not count toward the TPS.
    assert merge_runs([run(1000, 500.0, 2.0, {}), run(50, 0.0, 1.0, {})])["tps"] == pytest.approx(500.0)
    single = merge_runs([run(10, 5.0, 1.0, {})])
    assert single["tps"] == 5.0 and single["rounds_tps"] == [5.0]


def test_the_two_budgets_are_measured_side_by_side(smoke):
    """The product's send at budgets 1,000,000 and 100,000,000, in alternating rounds: both
    positive, no failed transaction, and the ratio of the two is given."""
    _, report = smoke
    md = report.read_text()
    m = re.search(r"budget 1,000,000 per hour ([\d,.]+) tps, budget 100,000,000 per hour ([\d,.]+) tps; "
                  r"budget 100,000,000 over budget 1,000,000: ([\d.]+)× \(rounds: ([\d, ]+) / ([\d, ]+); "
                  r"failed (\d+) / (\d+)\)", md)
    assert m, "no side-by-side budget line in the report"
    low, high, r = number(m.group(1)), number(m.group(2)), number(m.group(3))
    assert low > 0 and high > 0
    assert abs(r - high / low) < 0.01
    assert len(m.group(4).split(", ")) == len(m.group(5).split(", ")) >= 2
    assert (m.group(6), m.group(7)) == ("0", "0")
