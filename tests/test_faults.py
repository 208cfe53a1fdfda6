"""Searches that survive faults (issue 21). Each Ray case ends in a finished search whose trial
records and Optuna study (its journal) agree, and each fault is told in one line:

1. a trial's worker process SIGKILLed while it trains: that trial is ``failed`` (not retried;
   ``--resume --retry-failed`` would rerun it), every other trial is intact;
2. a trial out of memory (``MemoryError``, ``torch.cuda.OutOfMemoryError`` raised on CPU as the
   stand-in): ``failed``, the reason in its record;
3. the journal's last entry cut in half, then ``--resume``: cut back to the last whole entry,
   the original kept, one line;
4. a trial record cut off: ``analyze`` refuses in one line naming it; ``--resume`` sets it aside
   (one line) and leaves an ended trial out of the results, or reruns an unfinished one;
5. no space left on the device while the driver writes a record or ``best.json``: the search
   stops in one line, no temporary file stays, ``--resume`` after space is freed finishes it;
6. the data root removed mid-search: the running trial fails naming the missing file, no new
   trial starts, the driver exits 3 printing the resume command;
7. SIGTERM to the driver: the same as Ctrl-C, resumable.

Faults come from the product's test hook (``searcher.FAULT_ENV``): ``pause`` holds a trial after
its first recorded epoch until the test releases it, so the test acts on a trial that is surely
training, whatever the load. Only processes this test started are signalled: a trial's worker is
found by the pid in its record and checked to descend from this process (or its driver).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import optuna
import pytest
import yaml
from fixtures.processes import descends_from, local_ray

from rank_search import _io
from rank_search.cli import main
from rank_search.search.records import (
    FINAL_STATUSES,
    TrialRecord,
    read_records,
    record_problem,
    set_aside,
    unreadable_records,
)
from rank_search.search.runner import open_storage, repair_journal
from rank_search.search.searcher import FAULT_ENV

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TINY: dict[str, Any] = {
    "model": "resnet20",
    "data": "builtin",
    "data_options": {"val_fraction": 0.25, "max_train_samples": 120},
    "space": "cifar-resnet",
    "budget": 0.5,
    "trials": 3,
    "epochs_per_trial": 2,
    "asha": {"enabled": False},
    "resources": {"cpu": 1, "concurrency": 1},
    "seed": 0,
    "train": {"batch_size": 32, "lr": 0.05, "device": "cpu", "warmup_epochs": 0.5},
}
WAIT_S = 300.0  # generous: the machine may be busy; a test never asserts how long anything took
OPTUNA_STATE = {"completed": "COMPLETE", "stopped": "PRUNED", "failed": "FAIL", "diverged": "FAIL"}


# --- helpers ----------------------------------------------------------------------------------------


def write_study(tmp_path: Path, name: str, **changes: Any) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**TINY, "name": name, **changes}))
    return path


def study_trials(out: Path) -> list[optuna.trial.FrozenTrial]:
    manifest = json.loads((out / "search.json").read_text())
    storage = open_storage(manifest["storage"])
    return optuna.load_study(study_name=manifest["study_name"], storage=storage).trials


def assert_agree(out: Path, trials: int, left_out: tuple[int, ...] = ()) -> dict[int, TrialRecord]:
    """A finished search: every record final, each the same trial as Optuna's (state and value),
    nothing running anywhere; Optuna trials without a record are exactly ``left_out``."""
    manifest = json.loads((out / "search.json").read_text())
    assert manifest["status"] == "finished"
    records = {r.optuna_trial_number: r for r in read_records(out)}
    assert None not in records and len(records) == len(read_records(out))
    optuna_trials = {t.number: t for t in study_trials(out)}
    assert sorted(optuna_trials) == list(range(trials))
    assert sorted(set(optuna_trials) - set(records)) == sorted(left_out)
    for number, record in records.items():
        trial = optuna_trials[number]
        assert record.status in FINAL_STATUSES
        assert trial.state.name == OPTUNA_STATE[record.status], (number, record.status, trial.state)
        if record.status == "completed":
            assert record.epochs == record.epochs_planned == len(record.history)
            assert trial.value == pytest.approx(record.val_accuracy)
    assert not list(out.rglob(".*.tmp")), "a temporary file of an atomic write was left behind"
    return records


def wait_for(check: Callable[[], Any], what: str, alive: Callable[[], bool] = lambda: True) -> Any:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        assert alive(), f"the search ended before {what}"
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def paused_record(out: Path, number: int) -> Callable[[], TrialRecord | None]:
    """A check: the record of Optuna trial ``number`` once it has an epoch (the pause fault holds it)."""

    def check() -> TrialRecord | None:
        for path in (out / "trials").glob("*.json"):
            if record_problem(path) is None:
                record = TrialRecord.from_dict(json.loads(path.read_text()))
                if record.optuna_trial_number == number and record.epochs >= 1 and record.pid:
                    return record
        return None

    return check


def release(out: Path, trial_id: str) -> None:
    (out / "trials" / f"{trial_id}.continue").touch()


def search_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rank_search", "search", *args]


def one_line(text: str, start: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith(start)]
    assert len(lines) == 1, text
    assert "Traceback" not in text, text
    return lines[0]


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """One local Ray for the in-process searches of this module (or the one already running)."""
    with local_ray():
        yield


# --- no Ray: the pieces -------------------------------------------------------------------------------


def _journal(tmp_path: Path, trials: int = 3) -> Path:
    path = tmp_path / "optuna.journal"
    study = optuna.create_study(study_name="s", storage=open_storage(f"journal:{path}", writer=True))
    for _ in range(trials):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        study.tell(trial, 0.5)
    return path


def test_a_torn_journal_entry_is_cut_back_with_the_original_kept(tmp_path: Path) -> None:
    path = _journal(tmp_path)
    whole = path.read_bytes()
    last = whole.rfind(b"\n", 0, len(whole) - 1) + 1
    path.write_bytes(whole[: last + (len(whole) - last) // 2])  # the last line cut in half
    note = repair_journal(path)
    assert note is not None and str(path) in note and "optuna.journal.bak" in note and "\n" not in note
    assert (tmp_path / "optuna.journal.bak").read_bytes() == whole[: last + (len(whole) - last) // 2]
    assert path.read_bytes() == whole[:last]
    # appends go on after the last whole entry: the journal stays readable (unrepaired, the
    # next append was glued onto the torn line and Optuna's reader then raised)
    storage = open_storage(f"journal:{path}", writer=True)
    study = optuna.load_study(study_name="s", storage=storage)
    study.tell(study.ask(), 0.25)
    trials = optuna.load_study(study_name="s", storage=open_storage(f"journal:{path}")).trials
    # trial #2's tell was the torn entry: #2 stays running, #3 is whole
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "RUNNING", "COMPLETE"]
    assert repair_journal(path) is None
    path.write_bytes(b"")
    assert repair_journal(path) is None and repair_journal(tmp_path / "none") is None


def test_a_journal_cut_at_a_line_end_but_not_json_is_repaired(tmp_path: Path) -> None:
    path = _journal(tmp_path, trials=1)
    path.write_bytes(path.read_bytes() + b'{"op_code": 5, "trial\n')
    assert repair_journal(path) is not None
    assert optuna.load_study(study_name="s", storage=open_storage(f"journal:{path}")).trials


def test_unreadable_records_are_named_and_set_aside(tmp_path: Path) -> None:
    trials = tmp_path / "trials"
    trials.mkdir()
    good = TrialRecord("t1", 2, {}, 1, 2, 3)
    (trials / "t1.json").write_text(json.dumps(good.to_dict()))
    (trials / "t2.json").write_text(json.dumps(good.to_dict())[:40])
    (trials / "t3.json").write_text("[1, 2]")
    found = unreadable_records(tmp_path)
    assert [p.name for p, _ in found] == ["t2.json", "t3.json"]
    assert "not valid JSON" in found[0][1] and "not a trial record" in found[1][1]
    assert set_aside(found[0][0]) == trials / "invalid" / "t2.json"
    (trials / "t2.json").write_text("{")
    assert set_aside(trials / "t2.json") == trials / "invalid" / "t2.1.json"  # both kept
    assert [r.trial_id for r in read_records(tmp_path / "nowhere")] == []


def test_a_full_disk_leaves_the_target_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "best.json"
    target.write_text("old")

    def half_then_full(handle: IO[bytes]) -> None:
        handle.write(b'{"half": ')
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as caught:
        _io.atomic_write(target, half_then_full)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["best.json"]


def test_out_of_memory_lines_say_so() -> None:
    import torch

    from rank_search.search.trainable import failure_text

    oom = failure_text(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB\nmore"))
    assert oom.startswith("OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB (out of memory:")
    assert failure_text(MemoryError()).startswith("MemoryError: no message (out of memory:")
    assert failure_text(ValueError("x")) == "ValueError: x"


def test_sigterm_is_ctrl_c_while_a_search_runs() -> None:
    from rank_search.search.runner import _sigterm_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    sigint = signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as Python's default
    try:
        with pytest.raises(KeyboardInterrupt), _sigterm_as_interrupt(True):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises at once
    finally:
        signal.signal(signal.SIGINT, sigint)
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("enabled", [True, False])
def test_the_signal_handlers_tune_leaves_behind_are_put_back(enabled: bool) -> None:
    """Tune's ``fit`` installs SIGINT and SIGUSR1 handlers and keeps them after a normal end: a
    later Ctrl-C in the same process (a notebook) would only set a stale flag."""
    from rank_search.search.runner import _sigterm_as_interrupt

    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGUSR1, signal.SIGTERM)}

    def tunes_handler(signum: int, frame: Any) -> None:
        pass

    with _sigterm_as_interrupt(enabled):
        signal.signal(signal.SIGINT, tunes_handler)  # what Tune's fit does
        signal.signal(signal.SIGUSR1, tunes_handler)
    assert {sig: signal.getsignal(sig) for sig in kept} == kept


# --- Ray: whole searches ------------------------------------------------------------------------------


def search_with_fault_under_trial_1(
    study: Path, out: Path, faults: str, inject: Callable[[TrialRecord], None]
) -> int:
    """``rank-search search`` in this process with ``FAULT_ENV=faults`` (``1:pause`` among them):
    once trial #1 has trained an epoch and paused, ``inject(its record)`` runs in a thread."""
    done = threading.Event()

    def under_trial_1() -> None:
        inject(wait_for(paused_record(out, 1), "trial #1 trained an epoch", lambda: not done.is_set()))

    thread = threading.Thread(target=under_trial_1, daemon=True)
    mp = pytest.MonkeyPatch()
    mp.setenv(FAULT_ENV, faults)
    thread.start()
    try:
        return main(["search", str(study), "-o", str(out)])
    finally:
        done.set()
        mp.undo()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def faulty_search(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One search of 5 trials: #1 has its worker SIGKILLed while it trains, #2 runs out of GPU
    memory (the CPU stand-in), #3 out of host memory."""
    tmp = tmp_path_factory.mktemp("faulty")
    study = write_study(tmp, "faulty", trials=5)
    out = tmp / "out"
    killed: list[TrialRecord] = []

    def kill_trial_1(record: TrialRecord) -> None:
        assert record.pid is not None and descends_from(record.pid, os.getpid()), record.pid
        os.kill(record.pid, signal.SIGKILL)
        killed.append(record)

    code = search_with_fault_under_trial_1(study, out, "1:pause,2:oom,3:memory", kill_trial_1)
    assert code == 0 and killed
    return out, killed[0].trial_id


@pytest.mark.slow
def test_a_killed_worker_fails_its_trial_only(faulty_search: tuple[Path, str]) -> None:
    out, killed_id = faulty_search
    records = assert_agree(out, 5)
    killed = records[1]
    assert killed.trial_id == killed_id and killed.status == "failed" and killed.epochs == 1
    assert killed.error is not None and "worker process died" in killed.error
    assert records[0].status == records[4].status == "completed"
    assert (out / "best.json").is_file()


@pytest.mark.slow
def test_out_of_memory_trials_fail_with_the_reason(faulty_search: tuple[Path, str]) -> None:
    out, _ = faulty_search
    records = assert_agree(out, 5)
    assert records[2].status == records[3].status == "failed"
    oom = "OutOfMemoryError: CUDA out of memory (test fault) (out of memory"
    assert (records[2].error or "").startswith(oom)
    assert (records[3].error or "").startswith("MemoryError: injected (test fault) (out of memory")
    assert records[2].epochs == records[3].epochs == 1  # the first epoch's record was kept


@pytest.fixture()
def finished_search(ray_local: None, tmp_path: Path) -> tuple[Path, Path]:
    study = write_study(tmp_path, "done", epochs_per_trial=1)
    out = tmp_path / "out"
    assert main(["search", str(study), "-o", str(out)]) == 0
    return study, out


@pytest.mark.slow
def test_resume_cuts_a_torn_journal_back(
    finished_search: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    study, out = finished_search
    journal = out / "optuna.journal"
    whole = journal.read_bytes()
    last = whole.rfind(b"\n", 0, len(whole) - 1) + 1
    journal.write_bytes(whole[: last + (len(whole) - last) // 2])
    capsys.readouterr()
    assert main(["search", str(study), "-o", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    line = one_line(printed, f"rank-search: {journal}: the last entry is cut off")
    assert "optuna.journal.bak" in line
    assert (out / "optuna.journal.bak").is_file()
    assert_agree(out, 3)


@pytest.mark.slow
def test_a_damaged_record_is_named_and_left_out(
    finished_search: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    study, out = finished_search
    damaged = next(r for r in read_records(out) if r.optuna_trial_number == 1)
    path = out / "trials" / f"{damaged.trial_id}.json"
    cut = path.read_text()[:100]
    path.write_text(cut)
    capsys.readouterr()
    assert main(["analyze", str(out)]) == 2
    line = one_line(capsys.readouterr().err, "error:")
    assert str(path) in line and "malformed JSON" in line and "--resume" in line
    assert main(["search", str(study), "-o", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    line = one_line(printed, f"rank-search: {path}: not valid JSON")
    assert "trials/invalid/" in line and "left out" in line
    assert "1 left out (unreadable record" in printed
    assert (out / "trials" / "invalid" / path.name).read_text() == cut and not path.exists()
    assert_agree(out, 3, left_out=(1,))  # the ended trial is not rerun: Optuna keeps its value
    with pytest.warns(UserWarning, match=f"{damaged.trial_id}.json: an unreadable trial record set aside"):
        from rank_search.search.results import load_search

        assert len(load_search(out).trials) == 2


class DiskFull:
    """Patches the atomic writer of this process (the driver): writes whose target ``matches``
    fail half-way with ENOSPC while ``full`` is set (the real writer's clean-up runs)."""

    def __init__(self, matches: Callable[[Path], bool]) -> None:
        self.matches, self.full, self.failed = matches, True, 0
        self.original = _io.atomic_write

    def __call__(self, path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
        if not (self.full and self.matches(Path(path))):
            return self.original(path, write)

        def half(handle: IO[bytes]) -> None:
            handle.write(b"{")
            raise OSError(errno.ENOSPC, "No space left on device")

        self.failed += 1
        return self.original(path, half)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["record", "best.json"])
def test_a_full_disk_stops_the_search_and_resume_finishes_it(
    target: str,
    ray_local: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    study = write_study(tmp_path, "full", epochs_per_trial=1)
    out = tmp_path / "out"
    if target == "record":  # the driver finalizing the first trial that ends
        disk = DiskFull(lambda p: p.parent.name == "trials")
    else:
        disk = DiskFull(lambda p: p.name == "best.json")
    monkeypatch.setattr(_io, "atomic_write", disk)
    assert main(["search", str(study), "-o", str(out)]) == 3
    err = capsys.readouterr().err
    line = one_line(err, "error: search stopped: no space left on the device writing ")
    assert f"continue it with: rank-search search {study} -o {out} --resume" in line
    assert disk.failed >= 1 and not list(out.rglob(".*.tmp"))
    assert json.loads((out / "search.json").read_text())["status"] in ("running", "interrupted")
    assert not (out / "best.json").exists()
    disk.full = False  # space freed
    assert main(["search", str(study), "-o", str(out), "--resume"]) == 0
    assert_agree(out, 3)
    assert (out / "best.json").is_file()


def _image_folder(root: Path) -> None:
    """A tiny image folder (3 classes of 16x16 PNGs), the same each time it is made."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 16), ("test", 4)):
        for label in range(3):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
                pixels[..., label] = 255
                Image.fromarray(pixels).save(folder / f"{index}.png")


@pytest.mark.slow
def test_a_removed_data_root_stops_the_search(
    ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    root = tmp_path / "images"
    _image_folder(root)
    options = {"val_fraction": 0.25, "resident_max_bytes": 0, "workers": 0}  # streamed: read per batch
    study = write_study(tmp_path, "gone", data=f"imagefolder:{root}", data_options=options)
    out = tmp_path / "out"

    def remove_root(record: TrialRecord) -> None:
        shutil.rmtree(root)
        release(out, record.trial_id)

    assert search_with_fault_under_trial_1(study, out, "1:pause", remove_root) == 3
    line = one_line(capsys.readouterr().err, f"error: search stopped: the data root {root} is gone")
    assert f"continue it with: rank-search search {study} -o {out} --resume" in line
    records = {r.optuna_trial_number: r for r in read_records(out)}
    assert records[1].status == "failed" and str(root) in (records[1].error or "")
    assert 2 not in records or records[2].status == "interrupted"  # no trial launched after it
    assert json.loads((out / "search.json").read_text())["status"] == "interrupted"
    _image_folder(root)  # the data is back
    assert main(["search", str(study), "-o", str(out), "--resume"]) == 0
    records = assert_agree(out, 3)
    assert records[1].status == "failed" and records[2].status == "completed"


@pytest.mark.slow
def test_sigterm_stops_the_driver_like_ctrl_c_and_resume_reruns_a_damaged_unfinished_trial(
    tmp_path: Path,
) -> None:
    study = write_study(tmp_path, "term")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", FAULT_ENV: "1:pause"}
    log_path = tmp_path / "first.log"
    with log_path.open("wb") as log:
        driver = subprocess.Popen(search_cli(str(study), "-o", str(out)), stdout=log, stderr=log, env=env)
        try:
            running = lambda: driver.poll() is None  # noqa: E731
            record = wait_for(paused_record(out, 1), "trial #1 trained an epoch", running)
            assert record.pid is not None and descends_from(record.pid, driver.pid)
            driver.send_signal(signal.SIGTERM)
            code = driver.wait(timeout=WAIT_S)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
    printed = log_path.read_text()
    assert code == 130, printed
    assert f"continue the search with:\n  rank-search search {study} -o {out} --resume" in printed
    assert "search interrupted: 2 trials (1 completed, 1 interrupted)" in printed
    assert "Traceback" not in printed
    assert json.loads((out / "search.json").read_text())["status"] == "interrupted"
    interrupted = paused_record(out, 1)()
    assert interrupted is not None and interrupted.status == "interrupted"
    # the interrupted trial's record cut off: --resume sets it aside and reruns the trial
    path = out / "trials" / f"{interrupted.trial_id}.json"
    path.write_text(path.read_text()[:80])
    release(out, interrupted.trial_id)  # its plan still says pause: let it go on
    env.pop(FAULT_ENV)
    second = subprocess.run(
        search_cli(str(study), "-o", str(out), "--resume"), capture_output=True, env=env, timeout=600
    )
    printed = second.stdout.decode() + second.stderr.decode()
    assert second.returncode == 0, printed[-3000:]
    line = one_line(second.stdout.decode(), f"rank-search: {path}: not valid JSON")
    assert "rerun if it had not ended" in line
    records = assert_agree(out, 3)
    assert records[1].trial_id == interrupted.trial_id and records[1].status == "completed"
    assert (out / "trials" / "invalid" / path.name).is_file()


def test_a_trial_tune_errored_without_an_event_gets_a_failed_record(tmp_path: Path) -> None:
    """Tune fails a trial whose reused worker is not ready (``reset_config`` timed out under load)
    with no trial-error event: the end of the experiment records it failed, never lost."""
    from types import SimpleNamespace

    from rank_search.search.callbacks import NOT_STARTED, RecordCallback
    from rank_search.search.searcher import CONFIG_KEY

    error = tmp_path / "error.pkl"
    from ray import cloudpickle

    error.write_bytes(cloudpickle.dumps(RuntimeError("Trainable runner reuse requires reset_config() ...")))
    plan = {"layers": {}, "macs": 5, "optuna_trial_number": 7, "tags": [], "sampled": {}}
    trial = SimpleNamespace(
        trial_id="abc", status="ERROR", config={CONFIG_KEY: plan}, pickled_error_file=str(error)
    )
    callback = RecordCallback(str(tmp_path), 2, 10, 100, quiet=True)
    callback.on_experiment_end([trial])
    (record,) = read_records(tmp_path)
    assert (record.trial_id, record.status, record.optuna_trial_number) == ("abc", "failed", 7)
    assert record.error == NOT_STARTED
