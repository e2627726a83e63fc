#!/usr/bin/env python3
"""Compare isidorus's backup engine with borg and restic on one reproducible dataset.

One invocation measures, for every tool and every run:

  first backup   of the dataset in state v1 (``make_dataset.py build``)
  incremental    after ``make_dataset.py mutate`` has turned it into v2
  store size     ``du -sb`` of the repository after both backups
  restore        of the latest snapshot (v2), checked against the source's manifest
  verify         a check that reads back all stored data
  peak memory    the largest peak RSS over those phases

Each phase is one whole process timed by GNU ``/usr/bin/time -f '%e %M'``.  The page
cache is left warm for every tool, ``sync`` runs before each timed phase, the tool
order rotates from run to run, and the table quotes medians over ``--runs``.

Only the standard library is used.  See bench/README.md for the method.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_DATASET_SCRIPT = Path("/work/shared/bench/make_dataset.py")
DEFAULT_DATA = Path("/tmp/isidorus-bench/ds")
DEFAULT_WORK = Path("/tmp/isidorus-bench/work")
GNU_TIME = "/usr/bin/time"
ALL_TOOLS = ("isidorus", "borg", "restic")
APT_PACKAGES = {"borg": "borgbackup", "restic": "restic"}
PASSPHRASE = "isidorus-bench-passphrase"
WORK_MARKER = ".isidorus-bench-work"
MiB = 1 << 20

# Phases that are timed, in the order they run within one run.
TIMED_PHASES = ("first", "incremental", "restore", "verify")
TABLE_ROWS = (
    ("first", "first backup (s)"),
    ("incremental", "incremental (s)"),
    ("store", "store size (MiB)"),
    ("restore", "restore (s)"),
    ("verify", "verify (s)"),
    ("memory", "peak memory (MiB)"),
)


class BenchError(Exception):
    """A fatal problem with the benchmark's own setup: reported on one line."""


class ToolError(Exception):
    """A tool failed one phase: that tool is skipped for the rest of the run."""


# ---------------------------------------------------------------- small utilities


def log(msg: str) -> None:
    print(msg, flush=True)


def tail(path: Path, lines: int = 3, width: int = 400) -> str:
    """The last non-empty lines of a log file, joined on one line."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
    out = " | ".join(kept)
    return out if len(out) <= width else "..." + out[-width:]


def run_quiet(cmd: Sequence[str], what: str, cwd: Path | None = None) -> str:
    """Run an untimed auxiliary command; return its stdout or raise BenchError."""
    try:
        proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise BenchError(f"{what}: cannot run {cmd[0]}: {e.strerror}") from None
    if proc.returncode != 0:
        err = " | ".join(ln for ln in proc.stderr.strip().splitlines()[-3:])
        raise BenchError(f"{what} failed (exit {proc.returncode}): {err}")
    return proc.stdout


def read_json_output(path: Path) -> dict[str, Any]:
    """A tool's --json output: one document, or JSON lines of which the last is kept."""
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return {"unparsed": ""}
    for candidate in (text, text.splitlines()[-1] if text else ""):
        try:
            doc = json.loads(candidate)
        except ValueError:
            continue
        return doc if isinstance(doc, dict) else {"value": doc}
    return {"unparsed": tail(path)}


def du_bytes(path: Path, apparent: bool = True) -> int:
    """``du -sb`` (apparent size) or allocated bytes of a tree."""
    flag = "-sb" if apparent else "-sB1"
    out = run_quiet(["du", flag, str(path)], f"du {path}")
    return int(out.split()[0])


def sync() -> None:
    subprocess.run(["sync"], check=False)


def fmt_num(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.2f}" if value < 100 else f"{value:.1f}"
    return f"{value:.1f}"


# ---------------------------------------------------------------- tools


def find_isidorus(arg: str | None) -> str:
    if arg:
        path = shutil.which(arg) or (arg if Path(arg).is_file() else None)
        if not path:
            raise BenchError(f"--isidorus {arg}: no such executable")
        return str(Path(path).resolve())
    on_path = shutil.which("isidorus")
    if on_path:
        return on_path
    venv = BENCH_DIR.parent / ".venv" / "bin" / "isidorus"
    if venv.is_file():
        return str(venv)
    raise BenchError("isidorus not found on PATH nor in ../.venv/bin: pass --isidorus PATH")


def is_gnu_time() -> bool:
    if not Path(GNU_TIME).is_file():
        return False
    proc = subprocess.run([GNU_TIME, "--version"], capture_output=True, text=True, check=False)
    return "GNU" in proc.stdout + proc.stderr


def ensure_tools(tools: Sequence[str]) -> None:
    """Install borg, restic and GNU time with apt-get when they are missing."""
    missing = [APT_PACKAGES[t] for t in tools if t in APT_PACKAGES and not shutil.which(t)]
    if not is_gnu_time():
        missing.append("time")
    if not missing:
        return
    if not shutil.which("apt-get"):
        raise BenchError(f"missing {', '.join(missing)} and no apt-get to install them")
    if os.geteuid() != 0:
        raise BenchError(
            f"missing {', '.join(missing)}: run `apt-get install {' '.join(missing)}`"
            " as root (or run this benchmark as root)"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", *missing]):
        log(f"$ {' '.join(cmd)}")
        if subprocess.run(cmd, env=env, check=False).returncode != 0:
            raise BenchError(f"`{' '.join(cmd)}` failed")
    for t in tools:
        if t in APT_PACKAGES and not shutil.which(t):
            raise BenchError(f"{t} is still missing after apt-get install")
    if not is_gnu_time():
        raise BenchError(f"{GNU_TIME} is still not GNU time after apt-get install")


def tool_version(cmd: Sequence[str]) -> str:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if proc.returncode == 0 and text else "unknown"


@dataclass
class Tool:
    """How to drive one backup program; paths live under ``work/<name>``."""

    name: str
    exe: str
    home: Path
    store: Path
    target: Path
    logs: Path
    env: dict[str, str] = field(default_factory=dict)
    restic_sparse: bool = False

    def version(self) -> str:
        if self.name == "restic":
            return tool_version([self.exe, "version"])
        v = tool_version([self.exe, "--version"])
        if v == "unknown" and self.name == "isidorus":
            v = tool_version([self.exe, "version"])
        return v

    def commands(self, phase: str, data_root: Path) -> tuple[list[str], Path | None]:
        """The command line of one phase and the directory it runs in."""
        s, t = str(self.store), str(self.target)
        if self.name == "isidorus":
            return {
                "init": [self.exe, "backup", "init", s],
                "first": [self.exe, "backup", "create", s, str(data_root), "--json"],
                "incremental": [self.exe, "backup", "create", s, str(data_root), "--json"],
                "restore": [self.exe, "backup", "restore", s, "latest", t],
                "verify": [self.exe, "backup", "verify", s],
            }[phase], None
        if self.name == "borg":
            return {
                "init": [self.exe, "init", "-e", "repokey-blake2", s],
                "first": [
                    self.exe,
                    "create",
                    "--compression",
                    "zstd,3",
                    f"{s}::a1",
                    str(data_root),
                ],
                "incremental": [
                    self.exe,
                    "create",
                    "--compression",
                    "zstd,3",
                    f"{s}::a2",
                    str(data_root),
                ],
                # borg stores paths without the leading slash and extracts into the cwd
                "restore": [self.exe, "extract", "--sparse", f"{s}::a2"],
                "verify": [self.exe, "check", "--verify-data", s],
            }[phase], (self.target if phase == "restore" else None)
        restore = [self.exe, "restore", "latest", "--target", t]
        if self.restic_sparse:
            restore.append("--sparse")
        return {
            "init": [self.exe, "init"],
            "first": [self.exe, "backup", "--compression", "auto", str(data_root)],
            "incremental": [self.exe, "backup", "--compression", "auto", str(data_root)],
            "restore": restore,
            "verify": [self.exe, "check", "--read-data"],
        }[phase], None


def make_tool(name: str, exe: str, work: Path) -> Tool:
    base = work / name
    home = base / "home"
    tool = Tool(
        name=name,
        exe=exe,
        home=home,
        store=base / "store",
        target=base / "restore",
        logs=base / "logs",
    )
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
    if name == "isidorus":
        env["ISIDORUS_PASSPHRASE"] = PASSPHRASE
    elif name == "borg":
        env["BORG_PASSPHRASE"] = PASSPHRASE
    else:
        env["RESTIC_PASSWORD"] = PASSPHRASE
        env["RESTIC_REPOSITORY"] = str(tool.store)
        help_text = subprocess.run(
            [exe, "restore", "--help"], capture_output=True, text=True, check=False
        ).stdout
        tool.restic_sparse = "--sparse" in help_text
    tool.env = env
    return tool


# ---------------------------------------------------------------- measurements


@dataclass
class Phase:
    cmd: list[str]
    wall_s: float
    max_rss_kib: int
    exit: int


@dataclass
class ToolRun:
    phases: dict[str, Phase] = field(default_factory=dict)
    store_bytes_first: int | None = None
    store_bytes: int | None = None
    cache_bytes: int | None = None
    restored_allocated_bytes: int | None = None
    restored_root: str | None = None
    restore_manifest: str | None = None
    restore_ok: bool | None = None
    create_json: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def value(self, row: str) -> float | None:
        if row == "store":
            return None if self.store_bytes is None else self.store_bytes / MiB
        if row == "memory":
            rss = [self.phases[p].max_rss_kib for p in TIMED_PHASES if p in self.phases]
            return max(rss) / 1024 if len(rss) == len(TIMED_PHASES) else None
        ph = self.phases.get(row)
        return None if ph is None else ph.wall_s


def timed(tool: Tool, phase: str, data_root: Path) -> Phase:
    """Run one phase of one tool under GNU time; raise ToolError if it fails."""
    cmd, cwd = tool.commands(phase, data_root)
    tool.logs.mkdir(parents=True, exist_ok=True)
    tfile = tool.logs / f"{phase}.time"
    out, err = tool.logs / f"{phase}.out", tool.logs / f"{phase}.err"
    sync()  # the previous phase's dirty pages are not flushed on this tool's clock
    with out.open("wb") as fo, err.open("wb") as fe:
        try:
            proc = subprocess.run(
                [GNU_TIME, "-f", "%e %M", "-o", str(tfile), *cmd],
                cwd=cwd,
                env=tool.env,
                stdout=fo,
                stderr=fe,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except OSError as e:
            raise ToolError(f"cannot run {GNU_TIME}: {e.strerror}") from None
    if proc.returncode != 0:
        why = tail(err) or tail(out) or "(no output)"
        raise ToolError(f"{phase} failed (exit {proc.returncode}): {why}")
    try:  # GNU time may put "Command exited with non-zero status N" first
        wall, rss = tfile.read_text().strip().splitlines()[-1].split()
        return Phase(cmd=cmd, wall_s=float(wall), max_rss_kib=int(rss), exit=proc.returncode)
    except (OSError, ValueError, IndexError):
        raise ToolError(f"{phase}: unreadable timing file {tfile}") from None


# ---------------------------------------------------------------- dataset


class Dataset:
    """The pristine v1 dataset at --data and the make_dataset.py that builds it."""

    def __init__(self, script: Path, root: Path, scale: float) -> None:
        self.script, self.root, self.scale = script, root, scale
        self.marker = root.with_name(root.name + ".bench.json")
        self.info = root.with_name(root.name + ".info.json")

    def _gen(self, *args: str) -> list[str]:
        return [sys.executable, str(self.script), *args]

    def generator_sha256(self) -> str:
        return hashlib.sha256(self.script.read_bytes()).hexdigest()

    def manifest(self, root: Path) -> str:
        """make_dataset.py's digest line: '<sha256>  files=N bytes=M'."""
        out = run_quiet(self._gen("manifest", "--root", str(root)), f"manifest of {root}")
        lines = [ln for ln in out.splitlines() if ln.strip()]
        if not lines:
            raise BenchError(f"manifest of {root} printed nothing")
        return lines[-1].strip()

    def _state(self) -> str:
        try:
            return (self.root / ".dataset-state").read_text().strip()
        except OSError:
            return "?"

    def ensure(self) -> dict[str, Any]:
        """Build v1 unless a complete build at this scale is already there."""
        if not self.script.is_file():
            raise BenchError(f"dataset generator {self.script} not found (--dataset-script)")
        sha = self.generator_sha256()
        if self.marker.is_file():
            try:
                meta: dict[str, Any] = json.loads(self.marker.read_text())
            except (OSError, ValueError):
                meta = {}
            if (
                meta.get("scale") == self.scale
                and meta.get("generator_sha256") == sha
                and self._state() == "v1"
                and (self.root / "server").is_dir()
            ):
                log(f"dataset: reusing {self.root} (scale {self.scale}, v1 {meta['v1_manifest']})")
                return meta
            why = "scale" if meta.get("scale") != self.scale else "generator or state"
            log(f"dataset: {self.root} differs ({why}): rebuilding")
            self.marker.unlink()
            shutil.rmtree(self.root, ignore_errors=True)
            self.info.unlink(missing_ok=True)
        elif self.root.exists() and any(self.root.iterdir()):
            return self._adopt(sha)
        self.root.parent.mkdir(parents=True, exist_ok=True)
        if self.root.exists():
            self.root.rmdir()  # empty
        log(f"dataset: building {self.root} at scale {self.scale}")
        t0 = time.monotonic()
        cmd = self._gen(
            "build", "--root", str(self.root), "--scale", str(self.scale), "--mixed", ""
        )
        if subprocess.run(cmd, stdout=subprocess.DEVNULL, check=False).returncode != 0:
            raise BenchError(f"dataset build failed: {' '.join(cmd)}")
        built = round(time.monotonic() - t0, 1)
        meta = {
            "scale": self.scale,
            "generator": str(self.script),
            "generator_sha256": sha,
            "built_seconds": built,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "v1_manifest": self.manifest(self.root),
        }
        self.marker.write_text(json.dumps(meta, indent=1) + "\n")
        log(f"dataset: built in {built} s, v1 {meta['v1_manifest']}")
        return meta

    def _adopt(self, sha: str) -> dict[str, Any]:
        """Use, read-only, a v1 dataset built by make_dataset.py directly."""
        try:
            info = json.loads(self.info.read_text())
        except (OSError, ValueError):
            info = {}
        if info.get("scale") != self.scale or self._state() != "v1":
            raise BenchError(
                f"{self.root} exists but is not a v1 dataset at scale {self.scale} "
                f"built by this benchmark (no {self.marker.name}): remove it or "
                "choose another --data"
            )
        log(f"dataset: using {self.root} built by make_dataset.py (read-only)")
        return {
            "scale": self.scale,
            "generator": str(self.script),
            "generator_sha256": sha,
            "adopted": True,
            "v1_manifest": self.manifest(self.root),
        }

    def copy_to(self, dest: Path) -> float:
        """A mutable v1 copy (holes kept sparse, reflinked where the fs can)."""
        t0 = time.monotonic()
        run_quiet(
            ["cp", "-a", "--reflink=auto", "--sparse=always", str(self.root), str(dest)],
            f"copy of {self.root}",
        )
        return time.monotonic() - t0

    def mutate(self, root: Path) -> None:
        # mutate sizes its changes by --scale: it must be the scale of the build
        run_quiet(
            self._gen("mutate", "--root", str(root), "--scale", str(self.scale)),
            f"mutate of {root}",
        )


def find_restored_root(target: Path) -> Path | None:
    """The directory holding server/ and disk.img inside a restore target.

    isidorus, borg (path without leading '/') and restic (full absolute path)
    each lay the restored tree out differently under the target."""
    for dirpath, dirnames, filenames in os.walk(target):
        if "server" in dirnames and "disk.img" in filenames:
            return Path(dirpath)
        dirnames.sort()
        if len(Path(dirpath).relative_to(target).parts) > 12:
            dirnames.clear()
    return None


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
    (work / WORK_MARKER).write_text("scratch space of bench/backup_bench.py, wiped per run\n")


def one_run(
    run: int, order: list[str], exes: dict[str, str], ds: Dataset, work: Path, keep: bool
) -> dict[str, Any]:
    prepare_work(work)
    data_root = work / "data"
    copy_s = ds.copy_to(data_root)
    sync()
    log(f"[run {run + 1}] order {', '.join(order)}; v1 copied in {copy_s:.1f} s")
    tools = {name: make_tool(name, exes[name], work) for name in order}
    results = {name: ToolRun() for name in order}
    record: dict[str, Any] = {"run": run + 1, "order": order, "copy_seconds": round(copy_s, 2)}

    def step(name: str, phase: str) -> None:
        tool, res = tools[name], results[name]
        if res.error:
            return
        try:
            ph = timed(tool, phase, data_root)
        except ToolError as e:
            res.error = f"run {run + 1}: {name} {e}"
            log(f"error: {res.error}")
            return
        res.phases[phase] = ph
        if phase in ("first", "incremental"):
            try:
                res.store_bytes = du_bytes(tool.store)
            except BenchError as e:
                res.error = f"run {run + 1}: {name} {phase}: no store at {tool.store}: {e}"
                log(f"error: {res.error}")
                return
            if phase == "first":
                res.store_bytes_first = res.store_bytes
            if name == "isidorus":
                res.create_json[phase] = read_json_output(tool.logs / f"{phase}.out")
        if phase == "init":
            return
        extra = (
            f", store {res.store_bytes / MiB:.1f} MiB"
            if phase in ("first", "incremental") and res.store_bytes is not None
            else ""
        )
        log(f"  {name:9s} {phase:12s} {ph.wall_s:8.2f} s  {ph.max_rss_kib / 1024:7.1f} MiB{extra}")

    for name in order:
        tools[name].home.mkdir(parents=True, exist_ok=True)
        if name != "restic":  # restic init creates its repository directory itself
            tools[name].store.parent.mkdir(parents=True, exist_ok=True)
        step(name, "init")
    for name in order:
        step(name, "first")
    ds.mutate(data_root)
    sync()
    source = ds.manifest(data_root)  # also leaves v2 in the page cache for everyone
    record["v2_manifest"] = source
    log(f"  v2 source  {source}")
    for name in order:
        step(name, "incremental")
    for name in order:
        tools[name].target.mkdir(parents=True, exist_ok=True)
        step(name, "restore")
        res = results[name]
        if "restore" not in res.phases:
            continue
        root = find_restored_root(tools[name].target)
        res.restored_allocated_bytes = du_bytes(tools[name].target, apparent=False)
        if root is None:
            res.restore_ok = False
            res.restore_manifest = "no directory with server/ and disk.img in the restore target"
        else:
            res.restored_root = str(root)
            try:
                res.restore_manifest = ds.manifest(root)
            except BenchError as e:
                res.restore_manifest = str(e)
            res.restore_ok = res.restore_manifest == source
        if not res.restore_ok:
            log(f"  FAILED: {name} restore differs from source: {res.restore_manifest}")
        if not keep:
            shutil.rmtree(tools[name].target, ignore_errors=True)
    for name in order:
        step(name, "verify")
    for name in order:
        home = tools[name].home
        results[name].cache_bytes = du_bytes(home) if home.exists() else None
    record["tools"] = {name: asdict(res) for name, res in results.items()}
    record["_results"] = results
    return record


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(tools: list[str], runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Median of each table row per tool, over the runs where the tool succeeded."""
    out: dict[str, dict[str, Any]] = {}
    for name in tools:
        per: list[ToolRun] = [r["_results"][name] for r in runs]
        med: dict[str, Any] = {}
        for row, _ in TABLE_ROWS:
            vals = [v for v in (t.value(row) for t in per) if v is not None]
            med[row] = median(vals)
            med[f"{row}_n"] = len(vals)
        med["restore_ok"] = [t.restore_ok for t in per]
        med["errors"] = [t.error for t in per if t.error]
        out[name] = med
    return out


def render_table(tools: list[str], meds: dict[str, dict[str, Any]], runs: int) -> str:
    peers = [t for t in tools if t != "isidorus"]
    ratio = "isidorus" in tools and bool(peers)
    head = ["", *tools] + (["isidorus / best peer"] if ratio else [])
    rows: list[list[str]] = [head]
    for row, label in TABLE_ROWS:
        unit = "s" if label.endswith("(s)") else "MiB"
        cells = [label]
        for t in tools:
            m = meds[t]
            cell = fmt_num(m[row], unit)
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
    check = ["restore matches source"]
    for t in tools:
        oks = meds[t]["restore_ok"]
        if any(ok is False for ok in oks):
            check.append(f"FAILED ({sum(ok is False for ok in oks)}/{runs})")
        elif all(ok is True for ok in oks):
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


def write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    tmp.replace(path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Benchmark isidorus's backup engine against borg and restic.",
        epilog="Example: bench/run --scale 0.05 --runs 1 --tools borg,restic",
    )
    ap.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="dataset size factor for make_dataset.py (default 1.0; 0.05 is quick)",
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
        help=f"stores, restore targets and the mutable copy, wiped per run "
        f"(default {DEFAULT_WORK})",
    )
    ap.add_argument(
        "--tools",
        default=",".join(ALL_TOOLS),
        help="comma-separated subset of isidorus,borg,restic",
    )
    ap.add_argument(
        "--isidorus",
        metavar="PATH",
        help="isidorus executable (default: on PATH, else ../.venv/bin/isidorus)",
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
        help="keep the last run's work directory (stores, restores, logs)",
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
    a.data, a.work = a.data.resolve(), a.work.resolve()
    if a.work == a.data or a.data.is_relative_to(a.work) or a.work.is_relative_to(a.data):
        ap.error("--work and --data must not contain one another")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    tools: list[str] = a.tools
    ensure_tools(tools)
    exes = {
        t: (find_isidorus(a.isidorus) if t == "isidorus" else shutil.which(t) or t) for t in tools
    }
    versions = {t: make_tool(t, exes[t], a.work).version() for t in tools}
    for t in tools:
        log(f"{t:9s} {versions[t]}  ({exes[t]})")
    ds = Dataset(a.dataset_script.resolve(), a.data, a.scale)
    dataset = ds.ensure()
    free = shutil.disk_usage(a.work.parent if not a.work.exists() else a.work).free
    need = 2 * (len(tools) + 1) * du_bytes(a.data, apparent=False)
    if free < need:
        log(
            f"warning: {free / MiB:.0f} MiB free under {a.work}, about {need / MiB:.0f} MiB "
            "may be needed"
        )

    doc: dict[str, Any] = {
        "meta": {
            "argv": sys.argv,
            "scale": a.scale,
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
            "method": "warm page cache, sync before each timed phase, whole-process "
            "/usr/bin/time -f '%e %M', tool order rotated per run, medians",
        },
        "runs": [],
    }
    runs: list[dict[str, Any]] = []
    for r in range(a.runs):
        order = tools[r % len(tools) :] + tools[: r % len(tools)]
        rec = one_run(r, order, exes, ds, a.work, a.keep)
        runs.append(rec)
        doc["runs"] = [{k: v for k, v in x.items() if k != "_results"} for x in runs]
        if a.json:
            write_json(a.json, doc)

    meds = summarize(tools, runs)
    doc["medians"] = meds
    if a.json:
        write_json(a.json, doc)
    if not a.keep:
        shutil.rmtree(a.work, ignore_errors=True)

    print()
    print(
        f"isidorus backup benchmark: scale {a.scale}, median of {a.runs} run(s), "
        f"warm cache, {os.cpu_count()} CPUs"
    )
    for t in tools:
        print(f"  {t:9s} {versions[t]}")
    print()
    print(render_table(tools, meds, a.runs))
    print()
    if "isidorus" in tools and len(tools) > 1:
        print("Ratio < 1: isidorus is faster / smaller than the best of the others.")
    failed = False
    for t in tools:
        for err in meds[t]["errors"]:
            print(f"error: {err}")
            failed = True
        if any(ok is False for ok in meds[t]["restore_ok"]):
            print(f"FAILED: {t}: a restore did not match its source")
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
