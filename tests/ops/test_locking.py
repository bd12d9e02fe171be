"""Image locks between processes, without FUSE: the modes, the per-process registry, kill -9,
the holder named in a refusal, --force-share, check of a held image, commits that meet,
qemu's locks. The matrix with real mounts is tests/fuse/test_locking_matrix.py."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ops.conftest import KiB, MiB, cli, fill, flat, make_base, make_child, random_writes
from tests.tooling import need
from vhdfs.errors import ImageBusy
from vhdfs.maintain.journals import journal_path as journal_of
from vhdfs.sources import holders, locks
from vhdfs.sources.local import LocalFile
from vhdfs.sources.locks import Mode

PAUSE_TIMEOUT = 30.0


def vhdfs(*args: object, env: dict | None = None, timeout: float = 60,
          cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vhdfs", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=cwd)


class Paused:
    """`vhdfs ARGS` in a subprocess, held still right after it took MODE on the file named
    NAME (the test hook VHDFS_TEST_PAUSE): it is "running" with every lock it takes there."""

    def __init__(self, folder: Path, args: list[object], mode: str, name: str,
                 env: dict | None = None, cwd: Path | None = None) -> None:
        self.flag = folder / f".pause-{os.getpid()}-{time.monotonic_ns()}"
        environment = dict(env if env is not None else os.environ)
        environment[locks.ENV_PAUSE] = f"{mode}:{name}:{self.flag}"
        self.args = [str(a) for a in args]
        self.proc = subprocess.Popen([sys.executable, "-m", "vhdfs", *self.args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=environment, cwd=cwd)
        reached = Path(f"{self.flag}.reached")
        deadline = time.monotonic() + PAUSE_TIMEOUT
        while not reached.exists():
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                raise AssertionError(f"vhdfs {' '.join(self.args)} exited {self.proc.returncode} "
                                     f"before holding {mode} {name}: {out}{err}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"vhdfs {' '.join(self.args)} never took {mode} {name}")
            time.sleep(0.01)
        self.pid = self.proc.pid

    def go(self, timeout: float = 60) -> subprocess.CompletedProcess:
        """Let it finish; its result."""
        Path(f"{self.flag}.go").touch()
        out, err = self.proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(self.args, self.proc.returncode, out, err)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=30)


class Holder:
    """A plain process holding one file open through LocalFile, until `release`."""

    def __init__(self, path: Path, mode: Mode) -> None:
        code = ("import sys\nfrom vhdfs.sources.local import LocalFile\nfrom vhdfs.sources.locks "
                "import Mode\nsource = LocalFile(sys.argv[1], writable=sys.argv[2] == 'w', "
                "lock=Mode[sys.argv[3]])\nprint('held', flush=True)\nsys.stdin.read()\n")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(path), "w" if mode is Mode.EXCLUSIVE else "r",
             mode.name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        line = self.proc.stdout.readline()
        assert line == "held\n", self.proc.stderr.read()
        self.pid = self.proc.pid

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
        self.proc.wait(30)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)


@pytest.fixture
def chain(tmp_path: Path) -> dict[str, Path]:
    """base.vhd <- mid.vhd <- top.vhd, and sib.vhd (another child of mid), each with data."""
    rnd = __import__("random").Random(11)
    size = 4 * MiB
    base = make_base(tmp_path / "base.vhd", "dynamic", size, 512 * KiB)
    fill(base, random_writes(rnd, size, 8))
    mid = make_child(base, tmp_path / "mid.vhd", 512 * KiB)
    fill(mid, random_writes(rnd, size, 8))
    top = make_child(mid, tmp_path / "top.vhd", 512 * KiB)
    fill(top, random_writes(rnd, size, 8))
    sib = make_child(mid, tmp_path / "sib.vhd", 512 * KiB)
    fill(sib, random_writes(rnd, size, 8))
    assert locks.held_here() == {}
    return {"base": base, "mid": mid, "top": top, "sib": sib}


def one_error(done) -> str:
    lines = [line for line in done.stderr.splitlines() if line.startswith("vhdfs: error:")]
    assert len(lines) == 1, done.stderr
    return lines[0]


# ------------------------------------------------------------------ modes and the registry
BLOCKS = {  # held -> the modes another process is refused
    Mode.EXCLUSIVE: {Mode.EXCLUSIVE, Mode.SHARED},
    Mode.SHARED: {Mode.EXCLUSIVE},
    Mode.FORCE_SHARED: set(),
}


@pytest.mark.parametrize("held", list(Mode), ids=lambda m: m.word)
def test_modes_between_processes(tmp_path, chain, held):
    holder = Holder(chain["mid"], held)
    try:
        for wanted in Mode:
            try:
                LocalFile(chain["mid"], writable=wanted is Mode.EXCLUSIVE, lock=wanted).close()
                refused = None
            except ImageBusy as exc:
                refused = exc
            assert (refused is not None) == (wanted in BLOCKS[held]), (held, wanted)
            if refused is not None:
                assert refused.exit_code == 9
                assert f"(pid {holder.pid})" in str(refused)
                assert ("is writing it" in str(refused)) == (held is Mode.EXCLUSIVE)
        assert locks.held_here() == {}
    finally:
        holder.release()
    LocalFile(chain["mid"], writable=True).close()  # gone with the holder


def test_one_process_opens_a_file_read_then_write_and_never_meets_itself(chain):
    """As commit does: read-only first (to find the parent), then for writing, then more
    readers; another process sees one writer, then one reader, then nothing."""
    mid = chain["mid"]
    key = (mid.stat().st_dev, mid.stat().st_ino)
    reader = LocalFile(mid)
    assert locks.held_here() == {key: Mode.SHARED}
    writer = LocalFile(mid, writable=True)  # upgraded, the reader still open
    second = LocalFile(mid)
    assert locks.held_here() == {key: Mode.EXCLUSIVE}
    assert vhdfs("info", mid).returncode == 9  # another process cannot read it
    writer.close()
    assert locks.held_here() == {key: Mode.SHARED}  # downgraded in place
    assert vhdfs("info", mid).returncode == 0  # readers share
    refused = vhdfs("check", "--repair", mid)
    assert refused.returncode == 9 and f"(pid {os.getpid()})" in refused.stdout
    again = LocalFile(mid, writable=True)  # up again, this time in place
    assert locks.held_here() == {key: Mode.EXCLUSIVE}
    again.close()
    reader.close()
    second.close()
    assert locks.held_here() == {}
    assert vhdfs("check", "--repair", mid).returncode == 0


def test_a_forked_child_that_lets_go_does_not_unlock_its_parent(chain, tmp_path):
    """After a fork both processes share the lock description: a child that closes its
    copies (without adopting them, as the mount daemon does) leaves the parent's locks."""
    source = LocalFile(chain["top"], writable=True)
    try:
        pid = os.fork()
        if pid == 0:
            try:
                source.close()  # releases in the child's copy of the registry only
                LocalFile(chain["base"]).close()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        done = vhdfs("info", chain["top"])
        assert done.returncode == 9 and f"(pid {os.getpid()})" in one_error(done)
    finally:
        source.close()
    assert vhdfs("info", chain["top"]).returncode == 0


def test_kill_9_of_a_holder_releases_its_locks_at_once(chain):
    holder = Holder(chain["top"], Mode.EXCLUSIVE)
    done = vhdfs("info", chain["top"])
    assert done.returncode == 9 and f"(pid {holder.pid})" in one_error(done)
    holder.kill9()
    done = vhdfs("set-parent", chain["top"], chain["mid"])  # a writer, right after
    assert done.returncode == 0, done.stderr
    # Its record is left behind but never named again, and the next refusal sweeps it.
    other = Holder(chain["top"], Mode.SHARED)
    try:
        done = vhdfs("commit", chain["top"])
        assert done.returncode == 9
        text = one_error(done)
        assert f"(pid {other.pid})" in text and f"pid {holder.pid}" not in text
    finally:
        other.release()


def test_kill_9_of_a_commit_lets_the_next_commit_resume(chain, tmp_path):
    expected = flat(chain["top"])
    env = dict(os.environ, VHDFS_FAULT_KILL_AFTER="6")
    killed = vhdfs("commit", chain["top"], env=env)
    assert killed.returncode == -signal.SIGKILL
    assert journal_of(chain["mid"]).exists()  # it died mid-commit
    done = vhdfs("commit", chain["top"])  # its locks died with it
    assert done.returncode == 0, done.stderr
    assert "resumed" in done.stdout
    assert flat(chain["mid"]) == expected


# ------------------------------------------------------------------ refusals name the holder
def test_a_commit_holds_child_and_parent_and_is_named(chain):
    before = {name: flat(path) for name, path in chain.items()}
    running = Paused(chain["top"].parent, ["commit", chain["top"]], "exclusive", "mid.vhd")
    try:
        for args in (["info", chain["top"]], ["info", chain["mid"]], ["convert", chain["sib"],
                     chain["top"].parent / "x.raw", "--to", "raw"],
                     ["set-parent", chain["top"], chain["mid"]]):
            done = vhdfs(*args)
            assert done.returncode == 9, (args, done.stderr)
            text = one_error(done)
            assert f"vhdfs commit {chain['top']} (pid {running.pid})" in text, text
            assert "is writing it; wait for that commit to finish" in text
        assert not (chain["top"].parent / "x.raw").exists()  # refused before any output
    finally:
        result = running.go()
    assert result.returncode == 0, result.stderr
    assert flat(chain["mid"]) == before["top"]
    assert flat(chain["top"]) == before["top"]
    assert flat(chain["base"]) == before["base"]


def test_a_reader_is_named_when_a_writer_is_refused(chain, tmp_path):
    out = tmp_path / "copy.raw"
    reading = Paused(tmp_path, ["convert", chain["sib"], out, "--to", "raw"], "shared",
                     "base.vhd")
    try:
        # Committing top into mid would change what the sibling's convert reads.
        done = vhdfs("commit", chain["top"])
        assert done.returncode == 9
        text = one_error(done)
        assert text.startswith(f"vhdfs: error: {chain['mid']}: in use: vhdfs convert ")
        assert f"(pid {reading.pid}) is reading it; writing needs it alone; wait for it to " \
            "finish" in text
        assert vhdfs("info", chain["top"]).returncode == 0  # readers share
    finally:
        assert reading.go().returncode == 0
    assert out.read_bytes() == flat(chain["sib"])
    assert vhdfs("commit", chain["top"]).returncode == 0  # and then it may


def test_records_and_messages_carry_no_secret(chain, tmp_path):
    """A holder's command line reaches refusals (from its record, or from /proc for a reader
    that writes none) and records only without its SAS signature."""
    secret = "SIGMARKER0123456789abcdef"
    out = f"out?sv=2024&sig={secret}.raw"  # relative: the command line stays short
    reading = Paused(tmp_path, ["convert", "top.vhd", out, "--to", "raw"], "shared",
                     "base.vhd", cwd=tmp_path)
    try:
        done = vhdfs("set-parent", chain["top"], chain["mid"])
        assert done.returncode == 9 and secret not in done.stderr
        assert f"vhdfs convert top.vhd 'out?sv=2024&sig=REDACTED' --to raw (pid " \
            f"{reading.pid}) is reading it" in one_error(done)
    finally:
        assert reading.go().returncode == 0
    search = f"gone?sig={secret}"
    writing = Paused(tmp_path, ["commit", "top.vhd", "--search", search], "exclusive", "mid.vhd",
                     cwd=tmp_path)
    try:
        done = vhdfs("info", chain["top"])
        assert done.returncode == 9 and secret not in done.stderr
        assert f"vhdfs commit top.vhd --search 'gone?sig=REDACTED' (pid {writing.pid})" in \
            one_error(done)
        records = [p for folder in holders.record_dirs() if folder.is_dir()
                   for p in folder.glob(f"*-{writing.pid}.json")]
        assert len(records) == 2, "the commit should have a record per file it writes"
        for record in records:
            text = record.read_text()
            assert secret not in text and json.loads(text)["pid"] == writing.pid
    finally:
        assert writing.go().returncode == 0


def test_a_stale_record_is_never_named_and_is_removed(chain, tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    info = chain["top"].stat()
    folder = next(f for f in holders.record_dirs() if holders.usable_dir(f))
    stale = folder / f"{info.st_dev}-{info.st_ino}-{dead_pid}.json"
    stale.write_text(json.dumps({"pid": dead_pid, "start": "1", "mode": "exclusive",
                                 "command": "vhdfs mount --rw ghost", "mountpoint": "/ghost"}))
    holder = Holder(chain["top"], Mode.EXCLUSIVE)
    try:
        text = one_error(vhdfs("info", chain["top"]))
        assert f"(pid {holder.pid})" in text and "ghost" not in text
        assert not stale.exists()
    finally:
        holder.release()


# ------------------------------------------------------------------ the data-loss cases
def test_two_commits_at_once_and_two_siblings_into_one_parent(chain):
    """Issue 11: both could exit 0 with neither child's data in the parent, and with
    --delete-child the child was deleted and the parent's trailing footer was zeros."""
    before = {name: flat(path) for name, path in chain.items()}
    running = Paused(chain["top"].parent, ["commit", chain["top"]], "exclusive", "mid.vhd")
    try:
        for args in (["commit", chain["top"]], ["commit", chain["top"], "--delete-child"],
                     ["commit", chain["sib"]], ["commit", chain["sib"], "--delete-child"]):
            done = vhdfs(*args)
            assert done.returncode == 9, (args, done.stdout, done.stderr)
            assert f"(pid {running.pid})" in one_error(done)
    finally:
        result = running.go()
    assert result.returncode == 0, result.stderr
    assert chain["top"].exists() and chain["sib"].exists()
    assert flat(chain["mid"]) == before["top"]
    assert cli("check", chain["mid"]).returncode == 0


def test_check_repair_during_a_commit_is_refused_and_rolls_nothing_back(chain):
    """Issue 11: check --repair "rolled back" a live commit. Here the commit is really half
    way (its journal and mark written, blocks being copied, each write slowed down)."""
    before = flat(chain["top"])
    env = dict(os.environ, VHDFS_FAULT_DELAY="0.25")
    running = subprocess.Popen([sys.executable, "-m", "vhdfs", "commit", str(chain["top"])],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    journal = journal_of(chain["mid"])
    deadline = time.monotonic() + PAUSE_TIMEOUT
    while not (journal.exists() and '"copying"' in journal.read_text()):
        assert running.poll() is None and time.monotonic() < deadline, running.communicate()
        time.sleep(0.02)
    try:
        repair = vhdfs("check", "--repair", chain["mid"])
        assert repair.returncode == 9, repair.stdout + repair.stderr
        assert f"vhdfs commit {chain['top']} (pid {running.pid}) is writing it" in repair.stdout
        assert "repaired" not in repair.stdout and "clean" not in repair.stdout
        looked = vhdfs("check", chain["mid"], "--json")
        report = json.loads(looked.stdout)
        assert looked.returncode == 9 and report["status"] == "in-use"
        assert f"(pid {running.pid})" in report["layers"][0]["in_use"]
    finally:
        out, err = running.communicate(timeout=120)
    assert running.returncode == 0, err
    assert not journal.exists()
    assert flat(chain["mid"]) == before
    assert cli("check", chain["mid"]).returncode == 0


def test_set_parent_during_a_commit_is_refused(chain):
    running = Paused(chain["top"].parent, ["commit", chain["top"]], "exclusive", "mid.vhd")
    try:
        done = vhdfs("set-parent", chain["top"], chain["mid"])
        assert done.returncode == 9 and f"(pid {running.pid})" in one_error(done)
        done = vhdfs("set-parent", chain["sib"], chain["mid"])  # its parent is being written
        assert done.returncode == 9
    finally:
        assert running.go().returncode == 0


# ------------------------------------------------------------------ --force-share, check
def test_force_share_reads_what_a_writer_holds_with_one_warning(chain):
    running = Paused(chain["top"].parent, ["commit", chain["top"]], "exclusive", "mid.vhd")
    try:
        for args in (["info", chain["top"], "--force-share"], ["--force-share", "info",
                     chain["top"]], ["-U", "info", chain["top"]]):
            done = vhdfs(*args)
            assert done.returncode == 0, done.stderr
            warnings = [line for line in done.stderr.splitlines() if "warning" in line]
            assert len(warnings) == 2, done.stderr  # one per file the commit writes
            assert all(f"(pid {running.pid}) is writing it; --force-share reads it anyway: "
                       "what is read may be inconsistent" in line for line in warnings)
        for args in (["commit", chain["top"], "--force-share"],
                     ["set-parent", chain["top"], chain["mid"], "-U"],
                     ["check", "--repair", chain["top"], "--force-share"],
                     ["mount", "--rw", chain["top"], chain["top"].parent, "--force-share"]):
            done = vhdfs(*args)
            assert done.returncode == 2, (args, done.stderr)  # writers have no override
            assert "--force-share is for reading" in one_error(done)
    finally:
        assert running.go().returncode == 0
    assert vhdfs("info", chain["top"], "--force-share").stderr == ""  # nobody writes now


def test_check_of_an_image_a_writer_holds_says_so_and_never_clean(chain):
    running = Paused(chain["top"].parent, ["commit", chain["top"]], "exclusive", "mid.vhd")
    try:
        done = vhdfs("check", chain["top"])
        assert done.returncode == 9
        assert f"not checked: {chain['top']}: in use: vhdfs commit {chain['top']} (pid " \
            f"{running.pid}) is writing it" in done.stdout
        assert "clean" not in done.stdout and done.stdout.rstrip().endswith(
            "in use by another process, not checked (exit 9)")
        shared = vhdfs("check", chain["top"], "--force-share")
        assert shared.returncode == 0, shared.stdout + shared.stderr
        # top and mid: never a bare "clean" (base, which nobody writes, is clean)
        assert shared.stdout.count(f"(pid {running.pid}) is writing it: read with "
                                   "--force-share") == 2
        assert shared.stdout.count("  clean, as read under a writer\n") == 2
        assert shared.stdout.count("  clean\n") == 1
        assert shared.stdout.splitlines()[-1].endswith(
            f"clean (as read while vhdfs commit {chain['top']} (pid {running.pid}) wrote it: "
            "what was read may be inconsistent) (exit 0)")
        report = json.loads(vhdfs("check", chain["top"], "--force-share", "--json").stdout)
        assert [bool(layer.get("written_by")) for layer in report["layers"]] == [True, True, False]
    finally:
        assert running.go().returncode == 0


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL])
def test_a_file_system_without_ofd_locks_is_used_unlocked_and_said_once(chain, monkeypatch,
                                                                         code):
    """Some network and FUSE file systems answer F_OFD_SETLK with ENOLCK, EOPNOTSUPP or EINVAL:
    the commands still work there (as qemu's do, with its locking=auto), each file says once
    that it is not locked, and nothing is left in the registry."""
    def no_locks(fd: int, kind: int, start: int) -> None:
        raise OSError(code, os.strerror(code))

    said: list[str] = []
    heard = logging.Handler(logging.WARNING)
    heard.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("vhdfs").addHandler(heard)
    monkeypatch.setattr(locks, "_setlk", no_locks)
    monkeypatch.setattr(locks, "_blocker", no_locks)
    before = flat(chain["top"])
    try:
        said.clear()
        done = cli("commit", chain["top"])
    finally:
        logging.getLogger("vhdfs").removeHandler(heard)
    assert done.returncode == 0, done.stderr
    assert locks.held_here() == {}
    assert flat(chain["mid"]) == before  # committed, unlocked
    unlocked = [line for line in said if "cannot be locked" in line]
    named = sorted(line.split(": cannot")[0] for line in unlocked)
    assert named == sorted(set(named)), unlocked  # once per file
    assert {Path(n).name for n in named} >= {"top.vhd", "mid.vhd"}
    assert all(f"({os.strerror(code)})" in line for line in unlocked)
    monkeypatch.undo()
    LocalFile(chain["mid"], writable=True, lock=Mode.EXCLUSIVE).close()  # really unlocked


@pytest.mark.parametrize("held", [Mode.EXCLUSIVE, Mode.SHARED], ids=lambda m: m.word)
def test_create_or_convert_force_never_replaces_an_image_in_use(chain, tmp_path, held):
    """--force replaces a file by renaming a new one over its name: a mount still writing the
    old one would write to a file no name reaches (its writes lost without a word)."""
    before = chain["top"].read_bytes()
    holder = Holder(chain["top"], held)
    try:
        for args in (["create", chain["top"], "--size", "4M", "--force"],
                     ["convert", chain["sib"], chain["top"], "--to", "dynamic", "--force"]):
            done = vhdfs(*args)
            assert done.returncode == 9, done.stderr
            assert one_error(done).startswith(f"vhdfs: error: {chain['top']}: in use: ")
            assert f"(pid {holder.pid})" in done.stderr
            assert chain["top"].read_bytes() == before
            assert os.stat(chain["top"]).st_ino == holder_inode(holder)
    finally:
        holder.release()
    assert not list(tmp_path.glob("*.vhdfs-partial"))
    done = vhdfs("convert", chain["sib"], chain["top"], "--to", "dynamic", "--force")
    assert done.returncode == 0, done.stderr  # nobody holds it any more: replaced
    assert flat(chain["top"]) == flat(chain["sib"])


def holder_inode(holder: Holder) -> int:
    """The inode the holder has open (its first regular file below /proc/PID/fd)."""
    for fd in Path(f"/proc/{holder.pid}/fd").iterdir():
        target = Path(os.readlink(fd))
        if target.suffix == ".vhd":
            return os.stat(fd).st_ino
    raise AssertionError("the holder has no image open")


# ------------------------------------------------------------------ qemu's locks
def test_qemu_and_vhdfs_see_each_others_locks(chain):
    need("qemu-img")
    need("qemu-io")
    mid = chain["mid"]
    running = Paused(mid.parent, ["commit", chain["top"]], "exclusive", "mid.vhd")
    try:
        done = subprocess.run(["qemu-img", "info", mid], capture_output=True, text=True)
        assert done.returncode != 0 and 'Failed to get shared "write" lock' in done.stderr
        done = subprocess.run(["qemu-img", "info", "-U", mid], capture_output=True, text=True)
        assert done.returncode == 0 and "file format: vpc" in done.stdout
    finally:
        assert running.go().returncode == 0

    # qemu-io writing the image (as a VM would): vhdfs readers and writers are refused.
    writer = subprocess.Popen(["qemu-io", "-f", "vpc", "-c", "sleep 20000", str(mid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_qemu_lock(mid, writer)
        done = vhdfs("info", chain["top"])
        assert done.returncode == 9
        text = one_error(done)
        assert f"(pid {writer.pid}) is writing it (qemu's write lock)" in text
        assert "qemu-io -f vpc" in text
        assert vhdfs("info", chain["top"], "-U").returncode == 0
    finally:
        writer.kill()
        writer.wait(30)

    # qemu-io reading without -U: vhdfs reads along, but may not write.
    reader = subprocess.Popen(["qemu-io", "-r", "-f", "vpc", "-c", "sleep 20000", str(mid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_qemu_lock(mid, reader)
        assert vhdfs("info", chain["top"]).returncode == 0
        done = vhdfs("commit", chain["top"])
        assert done.returncode == 9
        assert f"(pid {reader.pid}) is reading it (qemu's lock: no writer allowed); writing " \
            "needs it alone" in one_error(done)
    finally:
        reader.kill()
        reader.wait(30)
    assert vhdfs("commit", chain["top"]).returncode == 0


def _wait_for_qemu_lock(path: Path, proc: subprocess.Popen) -> None:
    """Until qemu holds its byte 100 on the file (seen from /proc/locks)."""
    inode = f":{path.stat().st_ino} "
    deadline = time.monotonic() + PAUSE_TIMEOUT
    while not any(inode in line and " 100 " in line
                  for line in Path("/proc/locks").read_text().splitlines()):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "qemu-io never locked the image"
        time.sleep(0.02)
