#!/usr/bin/env python3
"""Off-site copies of a store to a home over a shaped link: isidorus beside rsync and restic.

The home is a network namespace joined to this host by a veth pair, running its own sshd
(tests/integration/homes.py); both ends of the veth are shaped with a token bucket
(``--rate``, default 50mbit). One invocation measures, for every tool and every run:

  first copy     the local store, holding one snapshot of the dataset in state v1, copied
                 to an empty place at the home
  incremental    after ``make_dataset.py mutate`` (v2) and a second backup into the local
                 store, the same copy again
  on the wire    bytes through the home's veth during each phase (both directions, whole
                 Ethernet frames: ssh, TCP/IP and Ethernet overhead included for all)
  at the home    ``du -sb`` of the copy after both phases

The tools:

  isidorus       ``isidorus backup sync STORE ssh+isidorus://USER@home1/store`` to an
                 account whose forced command is ``isidorus backup serve --stdio ...
                 --append-only``; no passphrase
  isidorus-sftp  ``isidorus backup sync STORE ssh://USER@home1/PATH`` (plain SFTP), when
                 this isidorus supports ssh:// stores
  rsync          ``rsync -a --delete`` of the same isidorus store
  restic         ``restic copy`` from a local restic repository (made by ``restic backup``
                 of the same dataset states, untimed) to an ``sftp:`` repository
  borg           ``borg create`` straight to an ``ssh://`` repository at the home: a
                 backup, not a copy (borg 1.x cannot copy between repositories)

Each phase is one whole process (two for restic's first copy: ``init`` then ``copy``) timed
by GNU ``/usr/bin/time``; the tool order rotates from run to run and the table quotes
medians over ``--runs``.  Needs root (namespaces, accounts, tc).

Only the standard library is used, with the project's own test fixture for the homes and
backup_bench.py's dataset handling.  See bench/README.md for the method.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from backup_bench import (  # noqa: E402  (a sibling script, found through sys.path)
    GNU_TIME,
    PASSPHRASE,
    WORK_MARKER,
    BenchError,
    Dataset,
    du_bytes,
    find_isidorus,
    is_gnu_time,
    log,
    median,
    read_json_output,
    sync,
    tail,
    tool_version,
    write_json,
)

DEFAULT_DATASET_SCRIPT = Path("/work/shared/bench/make_dataset.py")
DEFAULT_DATA = Path("/tmp/isidorus-bench/offsite-ds")
DEFAULT_WORK = Path("/tmp/isidorus-bench/offsite-work")
ALL_TOOLS = ("isidorus", "isidorus-sftp", "rsync", "restic", "borg")
LABELS = {
    "isidorus": "isidorus",
    "isidorus-sftp": "isidorus sftp",
    "rsync": "rsync",
    "restic": "restic copy",
    "borg": "borg create*",
}
# where each tool's copy goes in the home's storage ("store": the URL's path for serve)
DEST_NAMES = {
    "isidorus": "store",
    "isidorus-sftp": "sftp-store",
    "rsync": "rsync-copy",
    "restic": "restic-copy",
    "borg": "borg-repo",
}
# the tools that copy a store: isidorus's "best peer" is the best of these
COPY_PEERS = ("rsync", "restic")
APT_PACKAGES = {"rsync": "rsync", "restic": "restic", "borg": "borgbackup"}
HOME_NAME = "home1"
MiB = 1 << 20
OBJECT_DIRS = ("keys", "snapshots", "index", "data")  # a store's objects, besides config
TARGET_WIRE_PER_NEW = 1.1  # incremental bytes on the wire / new data in the store
TARGET_VS_RSYNC = 1.0  # isidorus's incremental time / rsync's

TABLE_ROWS = (
    ("first", "first copy (s)"),
    ("first_wire", "first, on the wire (MiB)"),
    ("incremental", "incremental (s)"),
    ("incremental_wire", "incremental, on the wire (MiB)"),
    ("home", "copy at the home (MiB)"),
)


class ToolError(Exception):
    """A tool failed one phase: that tool is skipped for the rest of the run."""


# ---------------------------------------------------------------- the link


@dataclass
class Counters:
    tx: int
    rx: int


def read_counters(veth: str) -> Counters:
    base = Path("/sys/class/net", veth, "statistics")
    return Counters(
        tx=int((base / "tx_bytes").read_text()), rx=int((base / "rx_bytes").read_text())
    )


# ---------------------------------------------------------------- tools


@dataclass
class Place:
    """What the tools need to know about the home."""

    user: str
    storage: str  # the home's directory for copies, as seen from both sides
    ssh_config: str
    ssh_command: str  # "ssh -F CONFIG"
    isidorus: str  # the isidorus a forced command runs at the home


@dataclass
class Tool:
    """How to drive one tool; local files live under ``work/<name>``."""

    name: str
    exe: str
    base: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.base / "logs"

    @property
    def home_dir(self) -> Path:
        return self.base / "home"

    def dest_dir(self, place: Place) -> Path:
        """The copy's directory at the home."""
        return Path(place.storage) / DEST_NAMES[self.name]

    def forced_command(self, place: Place) -> str | None:
        """The home account's forced command while this tool runs (None: a plain login)."""
        if self.name == "isidorus":
            return f"{place.isidorus} backup serve --stdio {place.storage} --append-only"
        return None

    def commands(self, phase: str, place: Place, store: Path, data: Path) -> list[list[str]]:
        """The process(es) of one phase, run one after the other."""
        dest = self.dest_dir(place)
        host = f"{place.user}@{HOME_NAME}"
        if self.name == "isidorus":
            return [
                [self.exe, "backup", "sync", str(store), f"ssh+isidorus://{host}/store", "--json"]
            ]
        if self.name == "isidorus-sftp":
            return [[self.exe, "backup", "sync", str(store), f"ssh://{host}{dest}", "--json"]]
        if self.name == "rsync":
            ssh = place.ssh_command
            return [[self.exe, "-a", "--delete", "-e", ssh, f"{store}/", f"{host}:{dest}/"]]
        if self.name == "restic":
            repo = [
                self.exe,
                "-r",
                f"sftp:{host}:{dest}",
                "-o",
                f"sftp.command={place.ssh_command} {host} -s sftp",
                "--password-file",
                str(self.base / "passphrase"),
            ]
            source = ["--from-repo", str(self.base / "local"), "--from-password-file"]
            source.append(str(self.base / "passphrase"))
            copy = [*repo, "copy", *source]
            if phase == "first":
                return [[*repo, "init", "--copy-chunker-params", *source], copy]
            return [copy]
        # borg: a backup of the data straight to the home (borg 1.x has no copy)
        repo = f"ssh://{host}{dest}"
        archive = f"{repo}::{'a1' if phase == 'first' else 'a2'}"
        create = [self.exe, "create", "--compression", "zstd,3", archive, str(data)]
        if phase == "first":
            return [[self.exe, "init", "-e", "repokey-blake2", repo], create]
        return [create]


def version_of(name: str, exe: str) -> str:
    if name == "restic":
        return tool_version([exe, "version"])
    v = tool_version([exe, "--version"])
    return " ".join(v.split()[:3]) if name == "rsync" else v


def make_tool(name: str, exe: str, work: Path, place: Place) -> Tool:
    base = work / name
    tool = Tool(name=name, exe=exe, base=base)
    home = tool.home_dir
    # A clean environment per tool: no inherited BORG_*/RESTIC_*/ISIDORUS_* settings, and
    # caches/config under work/<tool>/home so nothing survives from one run to the next.
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("BORG_", "RESTIC_", "ISIDORUS_"))
    }
    env.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local/share"),
        XDG_STATE_HOME=str(home / ".local/state"),
        LC_ALL="C.UTF-8",
        LANG="C.UTF-8",
    )
    if name.startswith("isidorus"):
        # no passphrase: sync copies sealed objects; no configuration file but ours
        env["ISIDORUS_CONFIG"] = str(base / "isidorus.toml")
        env["ISIDORUS_SSH_COMMAND"] = place.ssh_command
    elif name == "borg":
        env["BORG_PASSPHRASE"] = PASSPHRASE
        env["BORG_RSH"] = place.ssh_command
    tool.env = env
    return tool


# ---------------------------------------------------------------- measurements


@dataclass
class Proc:
    cmd: list[str]
    wall_s: float
    max_rss_kib: int
    tx_bytes: int
    rx_bytes: int


@dataclass
class Phase:
    procs: list[Proc]

    @property
    def wall_s(self) -> float:
        return round(sum(p.wall_s for p in self.procs), 2)

    @property
    def wire_bytes(self) -> int:
        return sum(p.tx_bytes + p.rx_bytes for p in self.procs)


@dataclass
class ToolRun:
    phases: dict[str, Phase] = field(default_factory=dict)
    sync_json: dict[str, Any] = field(default_factory=dict)
    home_bytes: int | None = None
    copy_ok: bool | None = None
    copy_check: str | None = None
    error: str | None = None

    def value(self, row: str) -> float | None:
        if row == "home":
            return None if self.home_bytes is None else self.home_bytes / MiB
        phase = self.phases.get(row.removesuffix("_wire"))
        if phase is None:
            return None
        return phase.wire_bytes / MiB if row.endswith("_wire") else phase.wall_s


def run_bounded(
    cmd: Sequence[str], env: dict[str, str], out: Path, err: Path, timeout: float
) -> int:
    """Run a process in its own group; kill the group if it outlives `timeout`."""
    with out.open("ab") as fo, err.open("ab") as fe:
        proc = subprocess.Popen(
            list(cmd),
            env=env,
            stdout=fo,
            stderr=fe,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise ToolError(f"killed after {timeout:.0f} s: {shlex.join(cmd)}") from None
        except BaseException:  # interrupted: the tool goes too, before the home does
            kill_group(proc)
            raise


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def settle(veth: str, quiet_s: float = 0.3, limit_s: float = 5.0) -> None:
    """Wait until the link has been quiet for `quiet_s` (the last ACKs and FINs of a
    phase are counted in it, and the next one starts on a silent link)."""
    deadline = time.monotonic() + limit_s
    last = read_counters(veth)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = read_counters(veth)
        if now == last:
            return
        last = now


def timed(
    tool: Tool, phase: str, place: Place, store: Path, data: Path, veth: str, timeout: float
) -> Phase:
    """Run one phase of one tool under GNU time, counting the bytes through the veth."""
    tool.logs.mkdir(parents=True, exist_ok=True)
    procs = []
    out, err = tool.logs / f"{phase}.out", tool.logs / f"{phase}.err"
    out.write_bytes(b"")
    err.write_bytes(b"")
    for i, cmd in enumerate(tool.commands(phase, place, store, data)):
        tfile = tool.logs / f"{phase}.{i}.time"
        sync()  # the previous phase's dirty pages are not flushed on this tool's clock
        settle(veth)
        before = read_counters(veth)
        timed_cmd = [GNU_TIME, "-f", "%e %M", "-o", str(tfile), *cmd]
        code = run_bounded(timed_cmd, tool.env, out, err, timeout)
        settle(veth)
        after = read_counters(veth)
        if code != 0:
            why = tail(err) or tail(out) or "(no output)"
            raise ToolError(f"{phase} failed (exit {code}): {why}")
        try:  # GNU time may put "Command exited with non-zero status N" first
            wall, rss = tfile.read_text().strip().splitlines()[-1].split()
        except (OSError, ValueError, IndexError):
            raise ToolError(f"{phase}: unreadable timing file {tfile}") from None
        procs.append(
            Proc(
                cmd=cmd,
                wall_s=float(wall),
                max_rss_kib=int(rss),
                tx_bytes=after.tx - before.tx,
                rx_bytes=after.rx - before.rx,
            )
        )
    return Phase(procs=procs)


def store_objects(store: Path) -> dict[str, int]:
    """A store's objects (config, keys, snapshots, index, packs) and their sizes."""
    out: dict[str, int] = {}
    if (store / "config").is_file():
        out["config"] = (store / "config").stat().st_size
    for kind in OBJECT_DIRS:
        folder = store / kind
        if not folder.is_dir():
            continue
        for p in folder.rglob("*"):
            if p.is_file() and not p.name.startswith("."):
                out[f"{kind}/{p.name}"] = p.stat().st_size
    return out


# ---------------------------------------------------------------- local sources


@dataclass
class Sources:
    """The local stores the copies start from: isidorus's and restic's."""

    isidorus: str
    restic: str
    work: Path
    store: Path = field(init=False)
    restic_repo: Path = field(init=False)
    passphrase: Path = field(init=False)
    logs: Path = field(init=False)
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.store = self.work / "isidorus" / "local-store"
        self.restic_repo = self.work / "restic" / "local"
        self.passphrase = self.work / "restic" / "passphrase"
        self.logs = self.work / "sources"
        home = self.work / "sources-home"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("BORG_", "RESTIC_", "ISIDORUS_"))
        }
        env.update(
            HOME=str(home),
            XDG_CACHE_HOME=str(home / ".cache"),
            XDG_CONFIG_HOME=str(home / ".config"),
            LC_ALL="C.UTF-8",
            LANG="C.UTF-8",
            ISIDORUS_PASSPHRASE=PASSPHRASE,
            ISIDORUS_CONFIG=str(self.work / "sources-isidorus.toml"),
            RESTIC_PASSWORD=PASSPHRASE,
        )
        self.env = env

    def _run(self, cmd: list[str], what: str) -> str:
        try:
            proc = subprocess.run(
                cmd, env=self.env, capture_output=True, text=True, check=False, timeout=3600
            )
        except subprocess.TimeoutExpired:
            raise BenchError(f"{what}: still running after 3600 s") from None
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / "commands.log").open("a") as f:
            f.write(f"$ {shlex.join(cmd)}\n{proc.stdout}{proc.stderr}\n")
        if proc.returncode != 0:
            err = " | ".join(proc.stderr.strip().splitlines()[-3:])
            raise BenchError(f"{what} failed (exit {proc.returncode}): {err}")
        return proc.stdout

    def init(self, tools: Sequence[str]) -> None:
        if any(t in tools for t in ("isidorus", "isidorus-sftp", "rsync")):
            self.store.parent.mkdir(parents=True, exist_ok=True)
            self._run([self.isidorus, "backup", "init", str(self.store)], "isidorus init")
        if "restic" in tools:
            self.passphrase.parent.mkdir(parents=True, exist_ok=True)
            self.passphrase.write_text(PASSPHRASE + "\n")
            self._run([self.restic, "-r", str(self.restic_repo), "init"], "restic init")

    def backup(self, tools: Sequence[str], data: Path) -> dict[str, Any]:
        """One backup of `data` into each local store; what it added to isidorus's."""
        rec: dict[str, Any] = {}
        if self.store.is_dir():
            before = store_objects(self.store)
            out = self._run(
                [self.isidorus, "backup", "create", str(self.store), str(data), "--json"],
                "isidorus backup create",
            )
            after = store_objects(self.store)
            new = {k: v for k, v in after.items() if k not in before}
            rec["isidorus_create"] = read_json_text(out)
            rec["isidorus_new_objects"] = len(new)
            rec["isidorus_new_bytes"] = sum(new.values())
            rec["isidorus_new_pack_bytes"] = sum(v for k, v in new.items() if k.startswith("data/"))
            rec["isidorus_store_bytes"] = sum(after.values())
        if "restic" in tools:
            self._run(
                [self.restic, "-r", str(self.restic_repo), "backup", "--compression", "auto"]
                + [str(data)],
                "restic backup",
            )
            rec["restic_local_bytes"] = du_bytes(self.restic_repo)
        return rec


def read_json_text(text: str) -> dict[str, Any]:
    for candidate in (text.strip(), (text.strip().splitlines() or [""])[-1]):
        try:
            doc = json.loads(candidate)
        except ValueError:
            continue
        return doc if isinstance(doc, dict) else {"value": doc}
    return {"unparsed": text[-400:]}


# ---------------------------------------------------------------- checks


def check_copy(tool: Tool, place: Place, sources: Sources) -> tuple[bool, str]:
    """Does the home hold the whole copy after the incremental phase?"""
    dest = tool.dest_dir(place)
    if tool.name in ("isidorus", "isidorus-sftp", "rsync"):
        mine, theirs = store_objects(sources.store), store_objects(dest)
        if mine == theirs:
            return True, f"{len(mine)} objects, as in the local store"
        lacking = sorted(set(mine) - set(theirs))
        differ = sorted(k for k in mine if k in theirs and mine[k] != theirs[k])
        return False, f"lacks {len(lacking)} objects {lacking[:3]}, {len(differ)} differ"
    if tool.name == "restic":
        # the copy is on this machine's disk too: read it there, off the link
        proc = subprocess.run(
            [tool.exe, "-r", str(dest), "--password-file", str(sources.passphrase)]
            + ["--no-lock", "snapshots", "--json"],
            env=tool.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        try:
            snaps = json.loads(proc.stdout) if proc.returncode == 0 else None
        except ValueError:
            snaps = None
        if not isinstance(snaps, list):
            return False, f"restic snapshots failed: {proc.stderr.strip()[-200:]}"
        return len(snaps) == 2, f"{len(snaps)} snapshots"
    # borg: two archives in the repository at the home
    env = dict(tool.env, BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")
    proc = subprocess.run(
        [tool.exe, "list", "--bypass-lock", "--short", str(dest)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    names = proc.stdout.split()
    if proc.returncode != 0:
        return False, f"borg list failed: {proc.stderr.strip()[-200:]}"
    return names == ["a1", "a2"], f"archives {names}"


# ---------------------------------------------------------------- the benchmark


def prepare_work(work: Path) -> None:
    """Wipe the work directory, refusing one this benchmark did not create."""
    if work.exists():
        if any(work.iterdir()) and not (work / WORK_MARKER).exists():
            raise BenchError(
                f"--work {work} is not empty and has no {WORK_MARKER}: refusing to wipe it"
            )
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / WORK_MARKER).write_text("scratch space of bench/offsite_bench.py, wiped per run\n")


def one_run(
    run: int,
    order: list[str],
    exes: dict[str, str],
    ds: Dataset,
    a: argparse.Namespace,
    homes: Any,
    place: Place,
) -> dict[str, Any]:
    work: Path = a.work
    prepare_work(work)
    home = homes[HOME_NAME]
    home.reset()  # link up, sshd running, storage empty
    home.shape(a.rate)
    data_root = work / "data"
    copy_s = ds.copy_to(data_root)
    sources = Sources(isidorus=place.isidorus, restic=exes.get("restic", "restic"), work=work)
    tools = {name: make_tool(name, exes[name], work, place) for name in order}
    for t in tools.values():
        t.home_dir.mkdir(parents=True, exist_ok=True)
    sources.init(order)
    v1 = sources.backup(order, data_root)
    sync()
    log(
        f"[run {run + 1}] order {', '.join(order)}; v1 copied in {copy_s:.1f} s, "
        f"local store {v1.get('isidorus_store_bytes', 0) / MiB:.1f} MiB"
    )
    results = {name: ToolRun() for name in order}
    record: dict[str, Any] = {
        "run": run + 1,
        "order": order,
        "copy_seconds": round(copy_s, 2),
        "local_v1": v1,
    }

    def step(name: str, phase: str) -> None:
        tool, res = tools[name], results[name]
        if res.error:
            return
        home.authorize(homes.key_pub, command=tool.forced_command(place))
        try:
            ph = timed(tool, phase, place, sources.store, data_root, home.host_veth, a.timeout)
        except ToolError as e:
            res.error = f"run {run + 1}: {name} {e}"
            log(f"error: {res.error}")
            return
        res.phases[phase] = ph
        if name.startswith("isidorus"):
            res.sync_json[phase] = read_json_output(tool.logs / f"{phase}.out")
        up = sum(p.tx_bytes for p in ph.procs)
        log(
            f"  {name:13s} {phase:12s} {ph.wall_s:8.2f} s  wire {ph.wire_bytes / MiB:8.2f} MiB"
            f" (up {up / MiB:.2f})"
        )

    for name in order:
        step(name, "first")
    ds.mutate(data_root)
    sync()
    v2 = sources.backup(order, data_root)
    record["v2_manifest"] = ds.manifest(data_root)  # also leaves v2 in the page cache
    record["local_v2"] = v2
    sync()
    if "isidorus_new_bytes" in v2:
        log(
            f"  second backup: {v2['isidorus_new_objects']} new objects, "
            f"{v2['isidorus_new_bytes'] / MiB:.2f} MiB new data in the local store"
        )
    for name in order:
        step(name, "incremental")
    for name in order:
        res, tool = results[name], tools[name]
        if res.error:
            continue
        dest = tool.dest_dir(place)
        res.home_bytes = du_bytes(dest) if dest.exists() else None
        res.copy_ok, res.copy_check = check_copy(tool, place, sources)
        if not res.copy_ok:
            log(f"  FAILED: {name}'s copy at the home is not complete: {res.copy_check}")
    record["tools"] = {
        name: dict(
            asdict(res),
            wall_s={k: p.wall_s for k, p in res.phases.items()},
            wire_bytes={k: p.wire_bytes for k, p in res.phases.items()},
        )
        for name, res in results.items()
    }
    record["_results"] = results
    return record


def summarize(tools: list[str], runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Median of each table row per tool, over the runs where the tool succeeded."""
    out: dict[str, dict[str, Any]] = {}
    for name in tools:
        per: list[ToolRun] = [r["_results"][name] for r in runs if name in r["_results"]]
        med: dict[str, Any] = {}
        for row, _ in TABLE_ROWS:
            vals = [v for v in (t.value(row) for t in per) if v is not None]
            med[row] = median(vals)
            med[f"{row}_n"] = len(vals)
        med["copy_ok"] = [t.copy_ok for t in per]
        med["errors"] = [t.error for t in per if t.error]
        out[name] = med
    return out


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.2f}" if value < 100 else f"{value:.1f}"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def render_table(tools: list[str], meds: dict[str, dict[str, Any]], runs: int) -> str:
    peers = [t for t in tools if t in COPY_PEERS]
    ratio = "isidorus" in tools and bool(peers)
    head = ["", *(LABELS[t] for t in tools)] + (["isidorus / best peer"] if ratio else [])
    rows: list[list[str]] = [head]
    for row, label in TABLE_ROWS:
        unit = "s" if label.endswith("(s)") else "MiB"
        cells = [label]
        for t in tools:
            m = meds[t]
            cell = fmt(m[row], unit)
            if m[row] is None and m["errors"]:
                cell = "ERROR"
            elif m[row] is not None and m[f"{row}_n"] < runs:
                cell += f" ({m[f'{row}_n']}/{runs})"
            cells.append(cell)
        if ratio:
            mine = meds["isidorus"][row]
            best = [meds[p][row] for p in peers if meds[p][row] is not None]
            cells.append(
                f"{mine / min(best):.2f}x" if mine is not None and best and min(best) > 0 else "-"
            )
        rows.append(cells)
    check = ["copy complete"]
    for t in tools:
        oks = meds[t]["copy_ok"]
        if any(ok is False for ok in oks):
            check.append(f"FAILED ({sum(ok is False for ok in oks)}/{runs})")
        elif oks and all(ok is True for ok in oks):
            check.append("ok")
        else:
            check.append("ERROR" if meds[t]["errors"] else "-")
    if ratio:
        check.append("")
    rows.append(check)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for r in rows:
        first = r[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        lines.append("  ".join([first, *rest]).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def targets(tools: list[str], runs: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """isidorus against its targets, as medians of per-run ratios: its incremental's bytes
    on the wire / the new data of the second backup, and its incremental time / rsync's."""
    if "isidorus" not in tools:
        return {}, []
    per_new, per_rsync, new_bytes = [], [], []
    for r in runs:
        mine: ToolRun = r["_results"]["isidorus"]
        inc = mine.phases.get("incremental")
        new = r["local_v2"].get("isidorus_new_bytes")
        if new:
            new_bytes.append(new)
        if inc is None:
            continue
        if new:
            per_new.append(inc.wire_bytes / new)
        theirs = r["_results"].get("rsync")
        if theirs is not None and "incremental" in theirs.phases:
            per_rsync.append(inc.wall_s / theirs.phases["incremental"].wall_s)
    doc = {
        "new_bytes": new_bytes,
        "wire_per_new": per_new,
        "time_vs_rsync": per_rsync,
        "target_wire_per_new": TARGET_WIRE_PER_NEW,
        "target_time_vs_rsync": TARGET_VS_RSYNC,
    }
    lines = []
    if new_bytes:
        new = median(new_bytes) or 0
        lines.append(f"new compressed data in the local store (second backup): {new / MiB:.2f} MiB")
    if per_new:
        ratio = median(per_new) or 0
        verdict = "ok" if ratio <= TARGET_WIRE_PER_NEW else "MISSED"
        lines.append(
            f"isidorus incremental on the wire / new data: {ratio:.2f} "
            f"(target <= {TARGET_WIRE_PER_NEW}: {verdict})"
        )
    if per_rsync:
        ratio = median(per_rsync) or 0
        verdict = "ok" if ratio <= TARGET_VS_RSYNC else "MISSED"
        lines.append(
            f"isidorus incremental time / rsync's: {ratio:.2f} "
            f"(target <= {TARGET_VS_RSYNC}: {verdict})"
        )
    if len(runs) > 1 and lines:
        lines.append("(medians of the ratios of each run)")
    return doc, lines


# ---------------------------------------------------------------- set-up


def ensure_tools(tools: Sequence[str]) -> None:
    """Install rsync, restic, borg and GNU time with apt-get when they are missing."""
    missing = [APT_PACKAGES[t] for t in tools if t in APT_PACKAGES and not shutil.which(t)]
    if not is_gnu_time():
        missing.append("time")
    for exe, pkg in (("/usr/sbin/sshd", "openssh-server"), ("tc", "iproute2")):
        if not shutil.which(exe):
            missing.append(pkg)
    if not missing:
        return
    if not shutil.which("apt-get"):
        raise BenchError(f"missing {', '.join(missing)} and no apt-get to install them")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", *missing]):
        log(f"$ {' '.join(cmd)}")
        if subprocess.run(cmd, env=env, check=False, timeout=1800).returncode != 0:
            raise BenchError(f"`{' '.join(cmd)}` failed")
    for t in tools:
        if t in APT_PACKAGES and not shutil.which(t):
            raise BenchError(f"{t} is still missing after apt-get install")


def sftp_supported(isidorus: str, env: dict[str, str], url: str) -> str | None:
    """None when this isidorus opens ssh:// stores, else why not."""
    proc = subprocess.run(
        [isidorus, "backup", "list", url],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    text = proc.stdout + proc.stderr
    if "not supported" in text:
        return " ".join(text.split())[-200:]
    return None


@contextlib.contextmanager
def the_home(isidorus: str) -> Iterator[Any]:
    """One home (tests/integration/homes.py), removed at the end, also after a failure."""
    sys.path.insert(0, str(REPO_ROOT))
    from tests.integration import homes as homes_module

    # the homes' forced commands run this isidorus (the module's default is the one beside
    # the running interpreter, which is not ours when this script runs on the system python)
    homes_module.ISIDORUS = isidorus
    with homes_module.running_homes((HOME_NAME,)) as homes:
        yield homes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Off-site copies of a store to a home over a shaped link: "
        "isidorus beside rsync and restic copy (needs root).",
        epilog="Example (quick): bench/offsite_bench.py --scale 0.02 --runs 1",
    )
    ap.add_argument(
        "--scale",
        type=float,
        default=0.1,
        help="dataset size factor for make_dataset.py (default 0.1; 1.0 is the full set)",
    )
    ap.add_argument(
        "--rate",
        default="50mbit",
        help="the link's rate in each direction, as tc tbf reads it (default 50mbit)",
    )
    ap.add_argument("--runs", type=int, default=3, help="runs to take medians over (default 3)")
    ap.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help=f"pristine v1 dataset root, built if needed (default {DEFAULT_DATA})",
    )
    ap.add_argument(
        "--work",
        type=Path,
        default=DEFAULT_WORK,
        help=f"local stores and the mutable copy, wiped per run (default {DEFAULT_WORK})",
    )
    ap.add_argument(
        "--tools",
        default=",".join(ALL_TOOLS),
        help=f"comma-separated subset of {','.join(ALL_TOOLS)} (isidorus-sftp is left out "
        "by itself when this isidorus has no ssh:// stores)",
    )
    ap.add_argument(
        "--isidorus",
        metavar="PATH",
        help="isidorus executable (default: on PATH, else ../.venv/bin/isidorus)",
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=3600,
        help="seconds a process of a phase may take before it is killed (default 3600)",
    )
    ap.add_argument(
        "--dataset-script",
        type=Path,
        default=DEFAULT_DATASET_SCRIPT,
        help=f"make_dataset.py to use (default {DEFAULT_DATASET_SCRIPT})",
    )
    ap.add_argument("--json", type=Path, metavar="OUT", help="write all raw figures to OUT")
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep the last run's work directory (local stores, logs)",
    )
    a = ap.parse_args(argv)
    tools = [t.strip() for t in a.tools.split(",") if t.strip()]
    bad = [t for t in tools if t not in ALL_TOOLS]
    if bad or not tools or len(set(tools)) != len(tools):
        ap.error(f"--tools: expected a subset of {','.join(ALL_TOOLS)}, got {a.tools!r}")
    a.tools = tools
    if a.runs < 1:
        ap.error("--runs must be at least 1")
    if a.scale <= 0:
        ap.error("--scale must be positive")
    if a.timeout <= 0:
        ap.error("--timeout must be positive")
    a.data, a.work = a.data.resolve(), a.work.resolve()
    if a.work == a.data or a.data.is_relative_to(a.work) or a.work.is_relative_to(a.data):
        ap.error("--work and --data must not contain one another")
    return a


def interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so that the home is removed, as after Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    # SIGTERM (and SIGINT, even when a shell started us in the background) tear down too
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    if os.geteuid() != 0:
        raise BenchError("the homes need root (network namespaces, accounts, tc): run as root")
    tools: list[str] = a.tools
    ensure_tools(tools)
    isidorus = find_isidorus(a.isidorus)
    exes = {t: isidorus if t.startswith("isidorus") else shutil.which(t) or t for t in tools}
    versions = {t: version_of(t, exes[t]) for t in tools}
    for t in tools:
        log(f"{t:13s} {versions[t]}  ({exes[t]})")
    ds = Dataset(a.dataset_script.resolve(), a.data, a.scale)
    dataset = ds.ensure()

    doc: dict[str, Any] = {
        "meta": {
            "argv": sys.argv,
            "scale": a.scale,
            "rate": a.rate,
            "runs": a.runs,
            "tools": tools,
            "versions": versions,
            "executables": exes,
            "dataset": dataset,
            "data": str(a.data),
            "work": str(a.work),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "method": "one home (netns + veth + sshd), tc tbf on both veth ends; whole-process "
            "/usr/bin/time -f '%e %M'; bytes = tx+rx of the host's veth per phase; "
            "tool order rotated per run, medians",
        },
        "runs": [],
    }
    runs: list[dict[str, Any]] = []
    with the_home(isidorus) as homes:
        home = homes[HOME_NAME]
        place = Place(
            user=home.user,
            storage=home.storage,
            ssh_config=homes.ssh_config,
            ssh_command=homes.ssh_command,
            isidorus=isidorus,
        )
        doc["meta"]["link"] = {"veth": home.host_veth, "home_address": home.address}
        if "isidorus-sftp" in tools:
            home.authorize(homes.key_pub)  # a plain login, for SFTP
            probe = make_tool("isidorus-sftp", isidorus, a.work, place)
            url = f"ssh://{home.user}@{HOME_NAME}{home.storage}/probe"
            why = sftp_supported(isidorus, probe.env, url)
            if why:
                log(f"isidorus-sftp left out: {why}")
                doc["meta"]["left_out"] = {"isidorus-sftp": why}
                tools.remove("isidorus-sftp")
                doc["meta"]["tools"] = tools
        for r in range(a.runs):
            order = tools[r % len(tools) :] + tools[: r % len(tools)]
            rec = one_run(r, order, exes, ds, a, homes, place)
            runs.append(rec)
            doc["runs"] = [{k: v for k, v in x.items() if k != "_results"} for x in runs]
            if a.json:
                write_json(a.json, doc)

    meds = summarize(tools, runs)
    doc["medians"] = meds
    doc["targets"], target_lines = targets(tools, runs)
    if a.json:
        write_json(a.json, doc)
    if not a.keep:
        shutil.rmtree(a.work, ignore_errors=True)

    print()
    print(
        f"isidorus off-site benchmark: scale {a.scale}, link {a.rate} (tc tbf), "
        f"median of {a.runs} run(s), {os.cpu_count()} CPUs"
    )
    for t in tools:
        print(f"  {LABELS[t]:13s} {versions[t]}")
    print()
    print(render_table(tools, meds, a.runs))
    print()
    for line in target_lines:
        print(line)
    if "isidorus" in tools and any(t in COPY_PEERS for t in tools):
        print("Ratio < 1: isidorus is faster / sends less than the best of rsync and restic.")
    if "borg" in tools:
        print("* borg create: a backup of the data straight to the home, not a copy.")
    if "isidorus-sftp" in doc["meta"].get("left_out", {}):
        print("isidorus sftp left out: this isidorus has no ssh:// stores.")
    failed = False
    for t in tools:
        for err in meds[t]["errors"]:
            print(f"error: {err}")
            failed = True
        if any(ok is False for ok in meds[t]["copy_ok"]):
            print(f"FAILED: {t}: a copy at the home was not complete")
            failed = True
    if a.json:
        print(f"raw figures: {a.json}")
    if a.keep:
        print(f"kept: {a.work}")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
