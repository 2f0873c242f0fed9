"""Pack the shared lossy CIFAR-10 JPEG copy into one archive that travels with the working tree to a lent GPU machine.

    python bench/pack_cifar_jpeg.py                 # ../shared/data/cifar10-jpeg -> bench_data/cifar10-jpeg.tar.gz
    python bench/pack_cifar_jpeg.py --src DIR --out DIR

A lent machine gets only the working tree (at most 64 MiB, ignored folders named one by one), not ``../shared``; 60,000
small files are also slow to copy. The 57 MB of JPEGs gzip to about 20 MB: most of each tiny JPEG is the same header
tables, which gzip finds in the files before it. ``bench_data/`` is git-ignored; ``bench/gpu_check.sh`` unpacks the
archive into a temporary folder for the Li et al. headline (``bench/li_headline.py``). Beside it goes ``COMMIT``: the
commit the tree was at (``git rev-parse HEAD``, ``-dirty`` when tracked files differ), since the copy has no ``.git``.
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, shared_data
from utils.core.provenance import git_commit

ARCHIVE = "cifar10-jpeg.tar.gz"
LIMIT_MIB = 40  # the carry limit is 64 MiB for everything that travels; leave room for the tree itself


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--src", default=None, help="the ImageFolder tree (default: <shared data>/cifar10-jpeg)")
    p.add_argument("--out", default=str(REPO / "bench_data"), help="where the archive and COMMIT are written")
    p.add_argument("--limit-mib", type=float, default=LIMIT_MIB, help="refuse an archive larger than this")
    return p


def pack(src: Path, out: Path, *, arcname: str = "cifar10-jpeg") -> Path:
    """``out/cifar10-jpeg.tar.gz`` holding ``src`` as ``arcname/``: files in sorted order, owner and times zeroed, so
    the same folder gives the same members."""
    out.mkdir(parents=True, exist_ok=True)
    target, partial = out / ARCHIVE, out / (ARCHIVE + ".partial")
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith("."))
    with tarfile.open(partial, "w:gz", compresslevel=9) as tar:
        for path in files:
            info = tarfile.TarInfo(f"{arcname}/{path.relative_to(src).as_posix()}")
            data = path.read_bytes()
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    partial.replace(target)
    return target


def main(args: argparse.Namespace) -> int:
    src = Path(args.src) if args.src else shared_data() / "cifar10-jpeg"
    if not (src / "train").is_dir() or not (src / "test").is_dir():
        print(f"error: {src}: no train/ and test/ folders (the shared cifar10-jpeg copy; --src names another)",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    archive = pack(src, out)
    mib = archive.stat().st_size / 2**20
    (out / "COMMIT").write_text(git_commit() + "\n")
    print(f"{archive}: {mib:.1f} MiB from {src}; commit {git_commit()}")
    if mib > args.limit_mib:
        print(f"error: {archive} is {mib:.1f} MiB, over {args.limit_mib} MiB: it would not travel beside the tree",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
