"""The fuzzer's own accounting: a signal is a crash, silence is a hang, and a short real run is clean."""
import pytest

from tests.fuzz.runner import replay, run


def test_a_worker_killed_by_a_signal_is_a_crash_and_is_restarted(tmp_path):
    report = run(["selftest_crash"], tmp_path, seconds=120, max_cases=2, memory_gib=0)
    assert report.cases == 2 and [c[1] for c in report.crashes] == ["SIGSEGV", "SIGSEGV"]
    assert "CRASH selftest_crash:0: SIGSEGV" in report.text()


def test_a_case_that_never_answers_is_a_hang(tmp_path):
    report = run(["selftest_hang"], tmp_path, seconds=120, max_cases=1, case_timeout=2, memory_gib=0)
    assert report.hangs == ["selftest_hang:0"] and not report.crashes


@pytest.mark.parametrize("target", ["kiln", "feeds"])
def test_short_run_has_no_crash_or_hang(target, tmp_path):
    report = run([target], tmp_path, seconds=10, max_cases=150)
    assert report.cases > 0 and not report.crashes and not report.hangs, report.text()
    assert report.raw == 0 and not report.wrong, report.text()  # every bad input is a KilnError
    assert report.ok + report.clean + report.raw + report.skipped + len(report.wrong) == report.cases


def test_replay_rebuilds_a_case(tmp_path, capsys):
    assert replay("feeds", 3, tmp_path) in (0, 1)
    out = capsys.readouterr()
    assert "feeds:3" in out.out or "Traceback" in out.err
