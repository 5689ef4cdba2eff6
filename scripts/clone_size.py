#!/usr/bin/env python3
"""How large a full clone of this repository is, against Slicer's ExtensionsIndex limit: the index's build clones the
whole history and refuses a repository over 100 MiB. Exits 1 above the limit less a margin.

Usage::

    python scripts/clone_size.py [REPOSITORY]

The estimate is the pack a clone receives — every object reachable from a ref (branches, tags, a stash: it errs
high), packed as ``git`` packs it for sending — plus the files HEAD checks out. Objects no ref reaches (a file added
and then reset, a rewritten commit) are left out: no clone gets them, and how many lie loose differs from one copy of
the repository to another (``git count-objects`` counted them and a copied checkout measured 5 MiB more than its
clone). A shallow clone holds too little history to tell.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

LIMIT_MIB = 100.0  # what the ExtensionsIndex accepts
MARGIN_MIB = 5.0  # room to act before the index refuses the extension
ROOT = Path(__file__).resolve().parents[1]


def git(repository: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repository), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def clone_size_mib(repository: Path = ROOT) -> tuple[float, float]:
    """(history, checkout) in MiB: the pack a clone receives, and the files of HEAD as they land on disk."""
    reachable = subprocess.run(["git", "-C", str(repository), "rev-list", "--objects", "--all"], capture_output=True,
                               check=True).stdout
    pack = subprocess.run(["git", "-C", str(repository), "pack-objects", "--stdout", "-q"], input=reachable,
                          capture_output=True, check=True).stdout
    checkout = sum(int(line.split()[3]) for line in git(repository, "ls-tree", "-r", "-l", "HEAD").splitlines()
                   if line.split()[1] == "blob")
    return len(pack) / 2**20, checkout / 2**20


def main(argv: list[str] | None = None) -> int:
    repository = Path((argv or sys.argv[1:] or [str(ROOT)])[0])
    if git(repository, "rev-parse", "--is-shallow-repository") == "true":
        print(f"{repository}: a shallow clone; the size of the full history cannot be told here", file=sys.stderr)
        return 2
    history, checkout = clone_size_mib(repository)
    total = history + checkout
    print(f"full clone ≈ {total:.1f} MiB (history {history:.1f} + checkout {checkout:.1f}); the ExtensionsIndex "
          f"refuses more than {LIMIT_MIB:.0f} MiB, this check more than {LIMIT_MIB - MARGIN_MIB:.0f}")
    return 0 if total < LIMIT_MIB - MARGIN_MIB else 1


if __name__ == "__main__":
    sys.exit(main())
