"""Hostile-user cases for durable runs: kill -9 and --resume, limits across a kill, two writers, a run into a
finished folder; and the refusals of the hostile-input pass: a deleted ledger, a finished run resumed, a corrupt
checkpoint, a mistyped key flag, a server whose echo is misaligned. Every case runs real `bbtune tune`
processes against the mock server (in a thread of this process, with latency) and reads the mock's own counters.

A kill is made deterministic by a gate in front of the mock: requests past number N are held unanswered,
so when the client goes quiet every request it sent is either answered (and received) or held in flight;
then the client gets SIGKILL. "Repaid" counts requests whose exact body the mock had already answered
before: a resumed run must answer those from its reply cache.

    python benchmarks/faults.py            # prints the table, writes benchmarks/results/faults.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bbtune.core.table import markdown_table  # noqa: E402
from mock_server import FaultConfig, MockServer, ServerConfig, shared_scorer  # noqa: E402

RUN = ["--remote-mode", "echo", "--remote-model", "tiny", "--remote-local-model", "tiny", "--mode", "hard",
       "--model", "tiny", "--data", "demo", "--k", "4", "--test-limit", "16", "--budget-calls", "60", "--popsize", "6", "--prompt-tokens",
       "3", "--intrinsic-dim", "20", "--eval-every", "24", "--no-progress"]
TIMING = ("wall_s", "backend_stats")  # differ between any two runs


class Gate:
    """Wraps a mock app's `handle`: counts arrivals, answers by body, repeats of answered bodies, and holds every
    request past `hold_after` until `release()`."""

    def __init__(self, server: MockServer):
        self._inner, self._lock = server.app.handle, threading.Lock()
        server.app.handle = self.handle  # type: ignore[method-assign]
        self._open = threading.Event()
        self.reset()

    def reset(self, hold_after: int | None = None) -> None:
        with self._lock:
            self.arrived, self.held, self.repaid, self.last_arrival = 0, 0, 0, time.monotonic()
            self.answered: set[str] = set()
            self.earlier: set[str] = set()  # answered to an earlier process of the case
            self.hold_after = hold_after
        self._open.set() if hold_after is None else self._open.clear()

    def handle(self, method: str, path: str, headers: Any, body: bytes) -> Any:
        digest = hashlib.sha256(path.encode() + b"\0" + body).hexdigest()
        with self._lock:
            self.arrived += 1
            self.last_arrival = time.monotonic()
            held = self.hold_after is not None and self.arrived > self.hold_after
            self.held += held
            self.repaid += digest in self.earlier
        if held:
            self._open.wait()  # the client is killed meanwhile: this answer never reaches it
        reply = self._inner(method, path, headers, body)
        if reply.status == 200 and not held:
            with self._lock:
                self.answered.add(digest)
        return reply

    def release(self) -> None:
        self._open.set()

    def next_process(self) -> None:
        """From now on, a body answered so far is a repeat if sent again (the probe's deliberate repeats within
        one process are not)."""
        with self._lock:
            self.earlier |= self.answered
            self.hold_after = None

    def quiet_for(self) -> float:
        with self._lock:
            return time.monotonic() - self.last_arrival


@dataclass
class Case:
    name: str
    limit: int | None  # --remote-max-requests (None = no limit)
    sent: int = 0  # requests the mock received, all processes of the case together
    repaid: int = 0
    identical: str = "-"  # same metrics and curve as the clean run (or why not compared)
    exit_codes: list[int] = field(default_factory=list)
    reported: int | None = None  # requests in the run's metrics.json: never fewer than were sent (a request
    # cancelled on its way out when a sibling hit the limit counts as sent: it may have reached the server)
    notes: str = ""
    expected: bool | None = None  # a refusal case: refused as it should be (exit code, message, nothing sent or leaked)

    @property
    def holds(self) -> bool:
        within = self.limit is None or self.sent <= self.limit
        truthful = self.reported is None or self.reported >= self.sent
        return within and truthful and self.repaid == 0 and self.identical in ("yes", "-") and self.expected is not False


def bbtune(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bbtune.app.cli", "tune", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[bytes], timeout: float = 600) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err.decode(errors="replace")


def wait_until(cond: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not cond():
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended before the fault was injected: {finish(proc)[1][-2000:]}")
        if time.time() > deadline:
            raise TimeoutError("the fault was never reached")
        time.sleep(0.05)


def kill_at(gate: Gate, proc: subprocess.Popen[bytes], hold_after: int, quiet_s: float = 1.0) -> int:
    """SIGKILL `proc` once requests past `hold_after` are held and it has been quiet for `quiet_s` (every answer
    it got has been handled); returns how many requests were in flight at the kill."""
    wait_until(lambda: gate.held > 0 and gate.quiet_for() > quiet_s, proc)
    in_flight = gate.held
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gate.release()
    time.sleep(0.2)  # the held handlers answer a closed socket
    return in_flight


def metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text())


def same_result(run_dir: Path, clean: Path) -> str:
    a, b = metrics(run_dir), metrics(clean)
    same = {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}
    same = same and (run_dir / "curve.csv").read_text() == (clean / "curve.csv").read_text()
    return "yes" if same else "NO"


class Bench:
    def __init__(self, root: Path, latency_s: float):
        self.root, self.latency_s = root, latency_s
        self.server = MockServer(ServerConfig(model="tiny", port=0, max_logprobs=400), FaultConfig(latency_s=latency_s),
                                 scorer=shared_scorer("tiny")).start()
        self.server._httpd.handle_error = lambda *a: None  # type: ignore[union-attr] # killed clients: broken pipes
        self.gate = Gate(self.server)
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

    def args(self, run_dir: Path, limit: int | None = None, *more: str) -> list[str]:
        extra = ["--remote-max-requests", str(limit)] if limit else []
        return ["--backend", "remote", "--remote-base-url", self.server.url, *RUN, "--run-dir", str(run_dir), *extra,
                *more]

    def start_case(self, hold_after: int | None = None) -> int:
        self.gate.reset(hold_after)
        return int(self.server.stats()["requests"])

    def sent_since(self, before: int) -> int:
        return int(self.server.stats()["requests"]) - before

    def clean(self) -> tuple[Case, Path]:
        run_dir, before = self.root / "clean", self.start_case()
        case = Case("clean run (reference)", None)
        case.exit_codes.append(finish(bbtune(*self.args(run_dir), env=self.env))[0])
        case.sent, case.repaid = self.sent_since(before), self.gate.repaid
        case.reported = metrics(run_dir)["backend_stats"]["requests"]
        return case, run_dir

    def kill_resume(self, clean: Path, hold_after: int, limit: int | None, name: str, raise_to: int | None = None) -> Case:
        """kill -9 at a held request, then --resume (with `--remote-max-requests raise_to` after a limit stop)."""
        run_dir = self.root / name.split()[0]
        before = self.start_case(hold_after)
        case = Case(name, raise_to or limit)
        proc = bbtune(*self.args(run_dir, limit), env=self.env)
        in_flight = kill_at(self.gate, proc, hold_after)
        case.exit_codes.append(proc.returncode)
        self.gate.next_process()
        code, err = finish(bbtune("--resume", str(run_dir), "--no-progress", env=self.env))
        case.exit_codes.append(code)
        if raise_to is not None:
            self.gate.next_process()
            code, err = finish(bbtune("--resume", str(run_dir), "--no-progress", "--remote-max-requests",
                                      str(raise_to), env=self.env))
            case.exit_codes.append(code)
        case.sent, case.repaid = self.sent_since(before), self.gate.repaid
        m = metrics(run_dir)
        case.reported = m["backend_stats"]["requests"]
        ended = m.get("ending")
        case.identical = same_result(run_dir, clean) if ended != "limit" else "-"
        case.notes = f"{in_flight} in flight at the kill; ending {ended}; exit codes {case.exit_codes}"
        return case

    def two_writers(self, clean: Path) -> Case:
        run_dir, before = self.root / "two-writers", self.start_case(hold_after=5)
        case = Case("two processes, one folder", None)
        first = bbtune(*self.args(run_dir), env=self.env)
        wait_until(lambda: self.gate.held > 0, first)  # the first writer is mid-run, waiting on the server
        code2, err2 = finish(bbtune(*self.args(run_dir, None, "--seed", "7"), env=self.env), timeout=120)
        self.gate.release()
        code1, _ = finish(first)
        case.exit_codes = [code1, code2]
        case.sent, case.repaid = self.sent_since(before), self.gate.repaid
        case.reported = metrics(run_dir)["backend_stats"]["requests"]
        refused = code2 == 2 and f"pid {first.pid}" in err2
        case.identical = same_result(run_dir, clean) if refused else "NO (second writer not refused)"
        case.notes = "second writer: " + (err2.strip().splitlines() or ["?"])[-1][:90]
        return case

    def into_finished(self, clean: Path) -> Case:
        before_files = {p.name: p.read_bytes() for p in clean.iterdir() if p.is_file()}
        before = self.start_case()
        case = Case("new run into a finished folder", None)
        code, err = finish(bbtune(*self.args(clean, None, "--seed", "7"), env=self.env), timeout=120)
        case.exit_codes = [code]
        case.sent, case.repaid = self.sent_since(before), self.gate.repaid
        unchanged = before_files == {p.name: p.read_bytes() for p in clean.iterdir() if p.is_file()}
        case.identical = "yes" if code == 2 and unchanged else "NO"
        case.notes = (err.strip().splitlines() or ["?"])[-1][:90]
        return case

    def refusal(self, name: str, args: list[str], check: Callable[[int, str], bool], run_dir: Path | None = None,
                server: MockServer | None = None) -> Case:
        """One process that must be refused: `check(exit code, stderr)`, one error line and no traceback."""
        server = server or self.server
        before = int(server.stats()["requests"]) if server is not self.server else self.start_case()
        case = Case(name, None)
        code, err = finish(bbtune(*args, env=self.env), timeout=120)
        case.exit_codes = [code]
        case.sent = int(server.stats()["requests"]) - before
        lines = [x for x in err.splitlines() if x.startswith("bbtune: error:")]
        case.expected = check(code, err) and len(lines) == 1 and "Traceback" not in err
        said = (lines or err.strip().splitlines() or ["?"])[-1].removeprefix("bbtune: error: ")
        case.notes = said.replace(f"{self.root}/", "")[:90]
        if run_dir is not None and (run_dir / "metrics.json").exists():
            case.reported = metrics(run_dir)["backend_stats"]["requests"]
        return case

    def copy(self, clean: Path, name: str, *remove: str) -> Path:
        run_dir = Path(shutil.copytree(clean, self.root / name))
        for file in remove:
            (run_dir / file).unlink()
        return run_dir

    def hardening(self, clean: Path) -> list[Case]:
        """Refusals that send nothing, change nothing and say what to do in one line."""
        resume = ["--resume"]
        no_ledger = self.copy(clean, "no-ledger", "metrics.json", "ledger.jsonl")  # as if killed, then the ledger lost
        cases = [self.refusal("deleted ledger: --resume refused", [*resume, str(no_ledger), "--no-progress"],
                              lambda code, err: code == 2 and "ledger.jsonl is missing" in err)]
        finished_before = (clean / "metrics.json").read_bytes()
        case = self.refusal("finished run: --resume sends nothing", [*resume, str(clean), "--no-progress"],
                            lambda code, err: code == 2 and "nothing to resume" in err)
        case.expected = case.expected and case.sent == 0 and (clean / "metrics.json").read_bytes() == finished_before
        cases.append(case)
        corrupt = self.copy(clean, "corrupt", "metrics.json")
        pkl = corrupt / "checkpoint.pkl"
        pkl.write_bytes(pkl.read_bytes()[: pkl.stat().st_size // 2])
        cases.append(self.refusal("corrupt checkpoint: one line", [*resume, str(corrupt), "--no-progress"],
                                  lambda code, err: code == 2 and "checkpoint.pkl is damaged" in err))
        secret, leak_dir = "sk-" + "fake-faults-zq7x", self.root / "leak"  # key-shaped on purpose, never a real one
        case = self.refusal("mistyped key flag (--remote-api-key): leaks nothing",
                            [*self.args(leak_dir), "--remote-api-key", secret],
                            lambda code, err: code == 2 and secret not in err and secret[-4:] not in err)
        case.expected = case.expected and case.sent == 0 and not leak_dir.exists()
        cases.append(case)
        wrong = MockServer(ServerConfig(model="tiny", port=0, max_logprobs=400, wrong_echo=True),
                           FaultConfig(latency_s=self.latency_s), scorer=shared_scorer("tiny")).start()
        try:
            echo_dir = self.root / "wrong-echo"
            args = [a if a != self.server.url else wrong.url for a in self.args(echo_dir)]
            case = self.refusal("wrong echo (shifted one position): refused", args,
                                lambda code, err: code == 2 and "misaligned" in err and "--remote-mode top_logprobs" in err,
                                echo_dir, server=wrong)
            case.expected = case.expected and not (echo_dir / "metrics.json").exists()
            cases.append(case)
        finally:
            wrong.stop()
        return cases

    def close(self) -> None:
        self.server.stop()


def run_all(root: Path, latency_s: float = 0.05) -> list[Case]:
    bench = Bench(root, latency_s)
    try:
        clean_case, clean = bench.clean()
        total = clean_case.sent
        cases = [clean_case,
                 bench.kill_resume(clean, total // 2, None, "kill -9 mid-run + --resume"),
                 bench.kill_resume(clean, total // 3, total // 2, "limit-kill: kill -9 + --resume under a request limit"),
                 bench.kill_resume(clean, total // 3, total // 2, "raise-limit: limit stop, kill -9, --resume "
                                   "--remote-max-requests raised", raise_to=2 * total),
                 bench.two_writers(clean),
                 bench.into_finished(clean),
                 *bench.hardening(clean)]
    finally:
        bench.close()
    return cases


def table(cases: list[Case]) -> str:
    rows = [{"case": c.name, "requests sent": c.sent, "limit": c.limit or "-", "metrics.json requests": c.reported
             if c.reported is not None else "-", "repaid": c.repaid, "identical to clean": c.identical,
             "refused as expected": "-" if c.expected is None else "yes" if c.expected else "NO",
             "holds": "yes" if c.holds else "NO", "notes": c.notes} for c in cases]
    return markdown_table(rows, list(rows[0]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency-s", type=float, default=0.05, help="mock latency per request")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "faults.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bbtune-faults-") as tmp:
        cases = run_all(Path(tmp), args.latency_s)
    print(table(cases))
    Path(args.out).write_text(json.dumps([{**c.__dict__, "holds": c.holds} for c in cases], indent=2) + "\n")
    return 0 if all(c.holds for c in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
