"""Processes the benchmark starts, and what they cost: CPU, memory, the
machine's other load.

Every program runs as a child of this process, logs to a file in the work
folder and is stopped (TERM, then KILL) when the run ends, Ctrl-C included.
"""

import os
import signal
import socket
import subprocess
import time

TICK = os.sysconf("SC_CLK_TCK")


class Failed(Exception):
    """A step of the benchmark could not run; the message says why."""


# ------------------------------------------------------------------ /proc
def _stat_fields(pid):
    """Fields of /proc/PID/stat after the command name, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(root):
    """`root` and every process below it."""
    kids = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(name)
            if fields:
                kids.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def cpu_seconds(root, with_reaped=False):
    """User + system CPU seconds of `root` and the processes below it;
    `with_reaped` adds children that have already exited and been waited for
    (all CPU this benchmark has caused, when `root` is this process)."""
    total = 0
    for pid in descendants(root):
        fields = _stat_fields(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])  # utime, stime
            if with_reaped or pid != root:
                total += int(fields[13]) + int(fields[14])  # cutime, cstime
    return total / TICK


def rss_kib(root):
    """Resident memory of `root` and the processes below it, in KiB."""
    total = 0
    for pid in descendants(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def machine_ticks():
    """(busy, steal, total) CPU ticks of the whole machine so far. Busy is
    user + nice + system; interrupt time is left out (loopback traffic puts
    the benchmark's own packets there)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    v += [0] * (10 - len(v))
    return v[0] + v[1] + v[2], v[7], sum(v[:8])


class LoadMeter:
    """How much CPU the rest of the machine took while we measured: busy
    ticks not spent by this process tree, and time stolen by the hypervisor,
    both as percent of all CPUs."""

    def __init__(self):
        self.busy0, self.steal0, self.total0 = machine_ticks()
        self.ours0 = cpu_seconds(os.getpid(), with_reaped=True)

    def read(self):
        """(others_pct, steal_pct) since the meter started."""
        busy, steal, total = machine_ticks()
        ours = (cpu_seconds(os.getpid(), with_reaped=True) - self.ours0) * TICK
        span = max(1, total - self.total0)
        others = max(0.0, (busy - self.busy0) - ours)
        return round(100 * others / span, 1), round(100 * (steal - self.steal0) / span, 1)


def busy_now(seconds=0.5):
    """Percent of all CPUs busy over the next `seconds` while the benchmark
    itself is idle: load from elsewhere that will compete with the next
    measurement."""
    b0, s0, t0 = machine_ticks()
    time.sleep(seconds)
    b1, s1, t1 = machine_ticks()
    return round(100 * ((b1 - b0) + (s1 - s0)) / max(1, t1 - t0), 1)


# ------------------------------------------------------------------ ports
def listening(port, udp=False):
    """True when something on this machine listens on 127.0.0.1:`port`."""
    path = "/proc/net/udp" if udp else "/proc/net/tcp"
    want_state = "07" if udp else "0A"
    try:
        with open(path) as f:
            next(f)
            for line in f:
                parts = line.split()
                local, state = parts[1], parts[3]
                if state == want_state and int(local.split(":")[1], 16) == port:
                    return True
    except OSError:
        pass
    return False


def port_free(port):
    """True when 127.0.0.1:`port` can be bound for TCP and UDP."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        s = socket.socket(socket.AF_INET, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def established_to(port):
    """ESTABLISHED IPv4 TCP sockets whose remote port is `port`."""
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[3] == "01" and int(parts[2].split(":")[1], 16) == port:
                n += 1
    return n


# ------------------------------------------------------------------ processes
class Procs:
    """The programs this run started; `stop_all` ends them, newest first."""

    def __init__(self, logs):
        self.logs = logs
        self.running = []

    def start(self, name, argv, cwd=None, env=None):
        """Start `argv` in the background with its output in logs/NAME.log."""
        log = open(os.path.join(self.logs, f"{name}.log"), "ab")
        try:
            p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                 env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            raise Failed(f"{name}: cannot start {argv[0]}: {e}") from e
        finally:
            log.close()
        p.bench_name = name
        self.running.append(p)
        return p

    def stop(self, p):
        """TERM, then KILL after 3 s."""
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p in self.running:
            self.running.remove(p)

    def stop_all(self):
        for p in reversed(list(self.running)):
            self.stop(p)

    def stop_all_but(self, keep):
        """Stop everything started after the processes in `keep`."""
        for p in reversed(list(self.running)):
            if p not in keep:
                self.stop(p)

    def log_tail(self, name, lines=3):
        try:
            with open(os.path.join(self.logs, f"{name}.log"), errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-lines:])
        except OSError:
            return ""


def wait_listening(p, tcp=(), udp=(), seconds=10.0):
    """Wait until `p` listens on every port; Failed if it exits or times out."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if p.poll() is not None:
            raise Failed(f"{p.bench_name} exited with status {p.returncode}")
        if all(listening(x) for x in tcp) and all(listening(x, udp=True) for x in udp):
            return
        time.sleep(0.05)
    raise Failed(f"{p.bench_name} did not listen on {list(tcp) + list(udp)} within {seconds:.0f} s")


def run(argv, timeout, out_path=None):
    """Run a load generator to completion; returns its output as text."""
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as e:
        raise Failed(f"{argv[0]} did not finish within {timeout:.0f} s") from e
    except OSError as e:
        raise Failed(f"cannot run {argv[0]}: {e}") from e
    text = r.stdout.decode(errors="replace")
    if out_path:
        with open(out_path, "w") as f:
            f.write(text)
    if r.returncode != 0:
        last = text.strip().splitlines()[-1:] or ["no output"]
        raise Failed(f"{argv[0]} exited with status {r.returncode}: {last[0]}")
    return text


def version(argv, pick):
    """The version a program reports, or '?' when it cannot say."""
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=10, check=False)
        return pick(r.stdout.decode(errors="replace")) or "?"
    except (OSError, subprocess.TimeoutExpired, IndexError, ValueError):
        return "?"
