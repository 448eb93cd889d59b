"""The scheduler: jobs run once on demand, one active scheduler per installation, lifecycle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from helpers import make_csr

from ca.authority import Authority
from ca.clients import create_client
from ca.config import ProfileConfig
from ca.enrollment import submit
from ca.issuance import IssuanceRequest, issue
from hsmca.scheduler import SchedulerLock, jobs, run_all_once

pytestmark = [pytest.mark.hsm, pytest.mark.db]

HSMCA = str(Path(sys.executable).parent / "hsmca")


def test_run_once_expires_stale_requests_and_recovers_crashed_issuance(ca_env):
    profiles = dict(ca_env.config.profiles)
    profiles["gated"] = ProfileConfig(dns_names=["."], requires_approval=True)
    config = ca_env.config.model_copy(update={"profiles": profiles})
    auth = Authority(config=config, db=ca_env.auth.db, keys=ca_env.auth.keys)
    create_client(auth, "dev", ["enroll"], [], [], "test")
    pending = submit(auth, IssuanceRequest(make_csr(["late.corp.test"]), "gated", "dev"))

    class Crash(Exception):
        pass

    def crash(step: str) -> None:
        if step == "intent":
            raise Crash

    with pytest.raises(Crash):
        issue(auth, IssuanceRequest(make_csr(["crash.corp.test"]), "server", "t"), crash)

    real_now = auth.now
    auth.now = lambda: real_now() + timedelta(hours=73)  # type: ignore[method-assign]
    try:
        results = run_all_once(auth)
    finally:
        auth.now = real_now  # type: ignore[method-assign]
    assert results == {job.name: True for job in jobs(config)}
    assert auth.db.get_request(pending.id).state == "expired"
    assert auth.db.audit_events("request.expired")[-1].subject == pending.id
    assert auth.db.audit_events("certificate.intent_abandoned")


def test_only_one_scheduler_holds_the_lock(ca_env):
    first, second = SchedulerLock(ca_env.auth), SchedulerLock(ca_env.auth)
    assert first.try_acquire()
    try:
        assert not second.try_acquire()
    finally:
        first.release()
    assert second.try_acquire()
    second.release()


def _env(data: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HSMCA_", "SOFTHSM2_CONF"))}
    return {**base, "HSMCA_HOME": str(data)}


def _wait_for(log: Path, text: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not seen in: {log.read_text(errors='replace')}")


def test_second_scheduler_stands_by_and_both_stop_on_sigterm(sqlite_ca_env):
    # (The first must be active before the second starts, so each waits for its own line.)
    data = sqlite_ca_env.data_dir
    env = _env(data)
    env["SOFTHSM2_CONF"] = os.environ.get("SOFTHSM2_CONF", "")
    listed = subprocess.run(
        [HSMCA, "--data-dir", str(data), "scheduler", "jobs"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "recover-intents" in listed.stdout and "expire-requests" in listed.stdout
    logs = [data / f"scheduler{i}.log" for i in range(2)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for log in logs:
            procs.append(
                subprocess.Popen(
                    [HSMCA, "--data-dir", str(data), "scheduler", "run"],
                    env=env,
                    stderr=log.open("w"),
                )
            )
            _wait_for(log, "scheduler active" if len(procs) == 1 else "standing by")
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            assert p.wait(timeout=30) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_run_once_command_reports_each_job(sqlite_ca_env):
    data = sqlite_ca_env.data_dir
    env = _env(data)
    env["SOFTHSM2_CONF"] = os.environ.get("SOFTHSM2_CONF", "")
    out = subprocess.run(
        [HSMCA, "--data-dir", str(data), "scheduler", "run-once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "recover-intents: ok" in out.stdout
    bad = subprocess.run(
        [HSMCA, "--data-dir", str(data), "scheduler", "run-once", "--job", "nope"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "unknown job" in bad.stderr
