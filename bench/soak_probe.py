"""What bench/soak.py reads about a running RPC server from /proc: which process it is, its
resident memory, its child processes, and the work folders it leaves in its own TMPDIR.

Linux only, no tvm. Under qemu-user the server process is the qemu process running it, so its
VmRSS includes qemu's translated code; each session the server forks is a real child process.
"""

import os
import time
from pathlib import Path

from bimatting.deploy.device.emulator import listening_sockets


def listen_inode(port):
    """Socket inode of the LISTEN socket on `port`, or None."""
    return next((inode for listening, inode in listening_sockets() if listening == port), None)


def _ppid_and_state(pid):
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid ...
    return int(fields[1]), fields[0]


def server_pid(candidates, port):
    """The process serving `port`: among `candidates`, the topmost one holding its LISTEN socket.

    The Python server's listener is a worker below the launcher, and the session processes it
    forks inherit the socket too: the holder whose parent is not a holder is the server."""
    inode = listen_inode(port)
    if inode is None:
        return None
    link = f"socket:[{inode}]"
    holders = set()
    for pid in candidates:
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == link for fd in os.listdir(f"/proc/{pid}/fd")):
                holders.add(pid)
        except OSError:
            continue  # ended meanwhile
    top = [pid for pid in holders if _safe_ppid(pid) not in holders]
    return min(top) if top else None


def _safe_ppid(pid):
    try:
        return _ppid_and_state(pid)[0]
    except OSError:
        return None


def rss_mb(pid):
    """VmRSS of `pid` in MB (None when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def children(pid):
    """Child processes of `pid`, zombies included (an unreaped session is a leak too)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if _ppid_and_state(entry.name)[0] == pid:
                    found.append(int(entry.name))
            except (OSError, ValueError):
                continue
    return sorted(found)


def folders(tmpdir):
    """What the server left in its TMPDIR (its work folders live there and nowhere else)."""
    try:
        return sorted(os.listdir(tmpdir))
    except OSError:
        return []


def settle(pid, tmpdir, baseline_children, timeout):
    """Waits up to `timeout` s for sessions that are still ending (a killed client's session ends
    when the server notices the closed socket, or when a running call returns); returns
    (children, folders) as they are then."""
    deadline = time.monotonic() + timeout
    while True:
        kids, left = children(pid), folders(tmpdir)
        if (len(kids) <= baseline_children and not left) or time.monotonic() > deadline:
            return kids, left
        time.sleep(0.2)
