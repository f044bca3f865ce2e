"""`megatron-sip ARGS` with one fault injected into the checkpoint writer of one rank.

    python tests/checkpoint_fault_worker.py --fault enospc --rank 1 --step 2 -- train ...
    python tests/checkpoint_fault_worker.py --fault sigkill --rank 0 --step 4 -- train ...

enospc: that rank's write of its own state file at that step raises "No space left on device".
sigkill: that rank writes half of the file, then SIGKILLs itself (a crash mid-checkpoint).
Runs as one process or under torchrun (the rank comes from RANK).
"""

from __future__ import annotations

import argparse
import errno
import io
import os
import signal
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from megatron_sip import cli  # noqa: E402
from megatron_sip.train import checkpoint  # noqa: E402


def _inject(fault: str, step: int) -> None:
    original = checkpoint.write_plain
    target = f"{checkpoint.step_dir_name(step)}.partial"

    def faulty_write(path: Path, state: dict) -> None:
        if target not in str(path) or path.parent.name != "ranks":
            return original(path, state)
        if fault == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        buffer = io.BytesIO()
        torch.save(state, buffer)
        with open(path, "wb") as stream:
            stream.write(buffer.getvalue()[: buffer.tell() // 2])
            stream.flush()
            os.fsync(stream.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.write_plain = faulty_write


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fault", choices=("enospc", "sigkill"), required=True)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--step", type=int, required=True)
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if int(os.environ.get("RANK", "0")) == args.rank:
        _inject(args.fault, args.step)
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
