"""Print every method's agreement with the PyTorch peers on the committed golden data.

    .venv/bin/python tools/peer_agreement.py

For each stored peer map (tests/data/peers.npz) the table of tests/test_peer_golden.py
says how ours is compared; this prints the max relative error per case (max over images
of max |ours - theirs| / max |theirs|) and, for the maps not compared there, the reason.
No torch needed.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import test_peer_golden as golden  # noqa: E402


def main() -> None:
    errors: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    for case, score, library, name in golden.COMPARED:
        errors[library, name, score][case] = golden.peer_error(case, score, library, name)
    cases = sorted(golden.CASES)
    print(f"{'library':<17} {'peer method':<22} {'ours':<18} {'score':<12}", *cases, "tol")
    for (library, name, score), per in sorted(errors.items()):
        peer = golden.PEERS[library, name]
        cells = [f"{per[c]:.1e}" if c in per else "-" for c in cases]
        print(f"{library:<17} {name:<22} {peer.ours:<18} {score:<12}", *cells, f"{peer.rtol:.0e}")
    print("\nNot compared here:")
    for library, name in sorted({(lib, n) for _, _, lib, n in golden.STORED}):
        peer = golden.PEERS[library, name]
        if peer.transform is None or peer.skip_cases:
            where = f" on {', '.join(peer.skip_cases)}" if peer.skip_cases else ""
            print(f"  {library} {name}{where}: {peer.reason}")


if __name__ == "__main__":
    main()
