#!/usr/bin/env python3
"""Peak memory of isidorus against the size of the store: 100 k chunks, then 1 M.

The chunk index lives on disk (an SQLite B-tree with a small page cache), so `create`,
`verify`, `prune` and `gc` should use about the same memory whatever the number of chunks.
To reach a million chunks without a terabyte of data, the stores use tiny chunks (FastCDC
min 256 B, average ~768 B, max 1 KiB): 1 M chunks is ~0.8 GB of random data.

Each command runs as its own process under GNU time (`/usr/bin/time -f '%e %M'`); the table
prints wall seconds and peak RSS for both sizes, and the ratio of peak memory 1 M / 100 k.

    python3 bench/memory_scale.py [--work DIR] [--sizes 100000,1000000]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PY = os.path.join(HERE, "..", ".venv", "bin", "python")
ISIDORUS = os.path.join(HERE, "..", ".venv", "bin", "isidorus")
CHUNKER = {"min_size": 256, "avg_size": 512, "max_size": 1024}
AVG = 768  # FastCDC's real average is avg_size + min_size
FILE_SIZE = 8 << 10  # ~10 chunks a file, so trees stay as small as in real stores


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    out = subprocess.run(
        ["/usr/bin/time", "-f", "%e %M", *cmd], env=env, capture_output=True, text=True
    )
    if out.returncode not in (0,):
        sys.exit(f"error: {' '.join(cmd[:3])} failed: {out.stderr.strip()[-400:]}")
    secs, kib = out.stderr.strip().splitlines()[-1].split()
    return float(secs), int(kib)


def make_tree(root: str, chunks: int, seed: int) -> None:
    rng = random.Random(seed)
    total = chunks * AVG
    os.makedirs(root, exist_ok=True)
    n = 0
    while total > 0:
        size = min(FILE_SIZE, total)
        d = os.path.join(root, f"d{n // 200:04d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{n:06d}"), "wb") as f:
            f.write(rng.randbytes(size))
        total -= size
        n += 1


def run_size(work: str, chunks: int, env: dict[str, str]) -> dict[str, tuple[float, int]]:
    base = os.path.join(work, f"s{chunks}")
    shutil.rmtree(base, ignore_errors=True)
    store, data = os.path.join(base, "store"), os.path.join(base, "data")
    make_tree(data, chunks, seed=chunks)
    subprocess.run(
        [
            PY,
            "-c",
            (
                "import sys; from isidorus.backup.repository import Repository;"
                "from isidorus.backup.remote.local import LocalBackend;"
                "from isidorus.backup.crypto import KdfParams;"
                f"Repository.init(LocalBackend({store!r}), lambda: b'bench',"
                f" kdf=KdfParams(1, 8192, 1), chunker={CHUNKER!r})"
            ),
        ],
        check=True,
        env=env,
    )
    env = {**env, "ISIDORUS_CACHE_DIR": os.path.join(base, "cache")}
    res = {}
    res["first backup"] = timed([ISIDORUS, "backup", "create", store, data, "--tag", "a"], env)
    # a small change, then an incremental: every chunk is looked up in the index
    with open(os.path.join(data, "d0000", "f000000"), "r+b") as f:
        f.write(os.urandom(4096))
    res["incremental"] = timed([ISIDORUS, "backup", "create", store, data, "--tag", "b"], env)
    res["verify (all data)"] = timed([ISIDORUS, "backup", "verify", store], env)
    res["prune"] = timed([ISIDORUS, "backup", "prune", store, "--keep-last", "1"], env)
    res["gc"] = timed([ISIDORUS, "backup", "gc", store], env)
    shutil.rmtree(data)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/isidorus-bench/memory")
    ap.add_argument("--sizes", default="100000,1000000")
    a = ap.parse_args()
    if not os.path.exists("/usr/bin/time"):
        subprocess.run(["apt-get", "install", "-y", "-q", "time"], check=True)
    env = {**os.environ, "ISIDORUS_PASSPHRASE": "bench"}
    sizes = [int(s) for s in a.sizes.split(",")]
    results = {n: run_size(a.work, n, env) for n in sizes}
    small, big = sizes[0], sizes[-1]
    print(
        f"{'phase':20} "
        + " ".join(f"{f'{n:,} chunks':>26}" for n in sizes)
        + f" {'peak ratio':>11}"
    )
    for phase in results[small]:
        cells = " ".join(
            f"{results[n][phase][0]:9.1f} s {results[n][phase][1] / 1024:9.1f} MiB" for n in sizes
        )
        ratio = results[big][phase][1] / results[small][phase][1]
        print(f"{phase:20} {cells} {ratio:10.2f}x")


if __name__ == "__main__":
    main()
