"""The proxies compared and the backends behind them, each configured as its
users would run it: one worker (or thread) per CPU, `SO_REUSEPORT` listeners
where the proxy has them, nothing logged per connection."""

import http.client
import json
import os
import secrets

from . import proc
from .proc import Failed

ANCHORS = ["nginx", "haproxy", "dnsdist"]
ALL_TARGETS = ["direct", "nginx", "haproxy", "dnsdist", "apisix-stream"]


def nginx_stream_module():
    """The `load_module` line nginx needs for `stream {}` ('' when built in)."""
    out = proc.version(["nginx", "-V"], lambda s: s)
    if "--with-stream=dynamic" not in out:
        return ""
    for d in ("/usr/lib/nginx/modules", "/usr/share/nginx/modules", "/usr/lib64/nginx/modules"):
        path = os.path.join(d, "ngx_stream_module.so")
        if os.path.exists(path):
            return f"load_module {path};"
    raise Failed("nginx's stream module is missing (Debian: apt-get install libnginx-mod-stream)")


class Ports:
    """Loopback ports from --port-base: backends at +1.., proxy front ends at
    +101.., apisix-stream's own APIs at +180.."""

    def __init__(self, base):
        self.base = base

    def __getattr__(self, name):
        offsets = {
            "b_iperf": 1, "b_http": 2, "b_dns": 3, "b_reply": 4, "b_sink": 5, "b_source": 6,
            "b_keep": 7, "b_redis": 8,
            "f_iperf": 101, "f_http": 102, "f_dns": 103,
            "f_hs_rsa": 111, "f_hs_ecdsa": 112, "f_up": 113, "f_down": 114,
            "f_hs_rsa4096": 115, "f_resume": 116, "f_hold": 117,
            "f_redis": 121,
            "admin": 180, "control": 190, "metrics": 191,
        }
        if name not in offsets:
            raise AttributeError(name)
        return self.base + offsets[name]

    def all(self):
        return [self.base + k for k in (1, 2, 3, 4, 5, 6, 7, 8, 101, 102, 103, 111, 112, 113,
                                        114, 115, 116, 117, 121, 180, 190, 191)]


# ------------------------------------------------------------------ nginx
def nginx_conf(work, name, body, workers="auto", modules="", nofile=65536):
    """Write an nginx.conf under work/NAME/ and return (dir, path)."""
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write(f"""{modules}
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {d}/nginx.pid;
daemon off;
error_log {d}/error.log warn;
events {{ worker_connections 32768; }}
{body}
""")
    return d, path


def start_nginx(procs, work, name, body, tcp=(), udp=(), modules="", nofile=65536):
    d, path = nginx_conf(work, name, body, modules=modules, nofile=nofile)
    p = procs.start(name, ["nginx", "-p", d + "/", "-e", f"{d}/error.log", "-c", path])
    proc.wait_listening(p, tcp=tcp, udp=udp)
    return p


# ------------------------------------------------------------------ apisix-stream
class ApisixStream:
    """apisix-stream with a local store, configured through its Admin API as
    a user would: `config.yaml` lists the listeners, routes and SSL objects
    are PUT."""

    def __init__(self, procs, work, binary, ports):
        self.procs, self.work, self.binary, self.ports = procs, work, binary, ports
        self.key = "bench-" + secrets.token_hex(8)

    def start(self, tcp=(), udp=(), tls=(), ssl=None, extra=""):
        """Start it with these listeners; `ssl` holds `apisix.ssl` keys
        (strings), `extra` is YAML text added at the top level."""
        d = os.path.join(self.work, "apisix-stream")
        os.makedirs(d, exist_ok=True)
        listeners = [f'      - "127.0.0.1:{p}"' for p in tcp]
        listeners += [f'      - {{addr: "127.0.0.1:{p}", tls: true}}' for p in tls]
        udp_block = ""
        if udp:
            udp_block = "    udp:\n" + "\n".join(f'      - "127.0.0.1:{p}"' for p in udp)
        ssl_block = ""
        if ssl:
            ssl_block = "  ssl:\n" + "".join(f"    {k}: {v}\n" for k, v in ssl.items())
        cfg = os.path.join(d, "config.yaml")
        with open(cfg, "w") as f:
            f.write(f"""apisix:
  proxy_mode: stream
{ssl_block}  stream_proxy:
    tcp:
{chr(10).join(listeners)}
{udp_block}
  enable_control: true
  control: {{ip: 127.0.0.1, port: {self.ports.control}}}
deployment:
  role: traditional
  role_traditional:
    config_provider: local
  local:
    data_dir: "{d}/data"
  admin:
    admin_key:
      - {{name: admin, key: '{self.key}', role: admin}}
    admin_listen: {{ip: 127.0.0.1, port: {self.ports.admin}}}
    allow_admin: [127.0.0.0/24]
plugin_attr:
  prometheus:
    export_addr: {{ip: 127.0.0.1, port: {self.ports.metrics}}}
{extra}""")
        p = self.procs.start("apisix-stream", [self.binary, "serve", "-c", cfg])
        proc.wait_listening(p, tcp=[self.ports.admin], seconds=30)
        return p

    def get(self, port, path):
        """GET http://127.0.0.1:`port``path` (Control API, metrics): the body."""
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", path)
            res = conn.getresponse()
            text = res.read().decode(errors="replace")
        except OSError as e:
            raise Failed(f"apisix-stream: GET {path}: {e}") from e
        finally:
            conn.close()
        if res.status != 200:
            raise Failed(f"apisix-stream: GET {path} answered {res.status}: {text[:200]}")
        return text

    def stats(self):
        """`GET /v1/stream/stats` of the Control API, parsed."""
        try:
            return json.loads(self.get(self.ports.control, "/v1/stream/stats"))
        except ValueError as e:
            raise Failed(f"apisix-stream: /v1/stream/stats is not JSON ({e})") from e

    def put(self, path, body):
        conn = http.client.HTTPConnection("127.0.0.1", self.ports.admin, timeout=10)
        try:
            conn.request("PUT", f"/apisix/admin/{path}", body=json.dumps(body),
                         headers={"X-API-KEY": self.key, "Content-Type": "application/json"})
            res = conn.getresponse()
            text = res.read().decode(errors="replace")
        except OSError as e:
            raise Failed(f"apisix-stream: PUT {path}: {e}") from e
        finally:
            conn.close()
        if res.status not in (200, 201):
            raise Failed(f"apisix-stream: PUT {path} answered {res.status}: {text[:200]}")

    def route(self, rid, port, node, scheme=None, protocol=None):
        up = {"type": "roundrobin", "nodes": {f"127.0.0.1:{node}": 1}}
        if scheme:
            up["scheme"] = scheme
        body = {"server_port": port, "upstream": up}
        if protocol:
            body["protocol"] = protocol
        self.put(f"stream_routes/{rid}", body)


# ------------------------------------------------------------------ L4 set-up
class L4:
    """Backends and proxies of the plain TCP/UDP suite."""

    def __init__(self, procs, work, ports, binary, workers_cpu):
        self.procs, self.work, self.ports, self.binary = procs, work, ports, binary
        self.cpus = workers_cpu
        self.modules = nginx_stream_module()
        self.nofile = proc_nofile()

    def start_backends(self):
        www = os.path.join(self.work, "www")
        os.makedirs(www, exist_ok=True)
        with open(os.path.join(www, "64b"), "w") as f:
            f.write("x" * 63 + "\n")
        for name, size in (("64k.bin", 65536), ("1m.bin", 1 << 20)):
            with open(os.path.join(www, name), "wb") as f:
                f.write(os.urandom(size))
        os.chmod(self.work, 0o755)
        for dirpath, dirs, files in os.walk(www):
            os.chmod(dirpath, 0o755)
            for x in files:
                os.chmod(os.path.join(dirpath, x), 0o644)
        p = self.ports
        start_nginx(self.procs, self.work, "backend-http", f"""http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  default_type application/octet-stream;
  open_file_cache max=16;
  server {{ listen 127.0.0.1:{p.b_http} backlog=4096; root {www}; }}
}}""", tcp=[p.b_http], nofile=self.nofile)
        it = self.procs.start("backend-iperf3", ["iperf3", "-s", "-B", "127.0.0.1",
                                                 "-p", str(p.b_iperf)])
        proc.wait_listening(it, tcp=[p.b_iperf])
        dm = self.procs.start("backend-dnsmasq", [
            dnsmasq(), "--keep-in-foreground", "--conf-file=/dev/null",
            "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={p.b_dns}",
            "--no-resolv", "--no-hosts", "--host-record=bench.test,127.0.0.1",
            f"--pid-file={self.work}/dnsmasq.pid", "--log-facility=-"])
        proc.wait_listening(dm, udp=[p.b_dns])

    def front(self, target):
        """(iperf, http, dns) ports the workloads use for `target`."""
        p = self.ports
        if target == "direct":
            return p.b_iperf, p.b_http, p.b_dns
        return p.f_iperf, p.f_http, p.f_dns

    def start(self, target):
        """Start `target` in front of the backends; its process (None for direct)."""
        p = self.ports
        if target == "direct":
            return None
        if target == "nginx":
            return start_nginx(self.procs, self.work, "nginx", f"""stream {{
  # stream{{}} logs nothing per session unless access_log is configured
  server {{ listen 127.0.0.1:{p.f_iperf} reuseport backlog=4096; proxy_pass 127.0.0.1:{p.b_iperf}; }}
  server {{ listen 127.0.0.1:{p.f_http} reuseport backlog=4096; proxy_pass 127.0.0.1:{p.b_http}; }}
  server {{
    listen 127.0.0.1:{p.f_dns} udp reuseport;
    proxy_pass 127.0.0.1:{p.b_dns};
    proxy_responses 1;
    proxy_timeout 10s;
  }}
}}""", tcp=[p.f_iperf, p.f_http], udp=[p.f_dns], modules=self.modules, nofile=self.nofile)
        if target == "haproxy":
            cfg = os.path.join(self.work, "haproxy.cfg")
            with open(cfg, "w") as f:
                f.write(f"""global
  nbthread {self.cpus}
  maxconn {max(1000, (self.nofile - 200) // 3)}
defaults
  mode tcp
  timeout connect 5s
  timeout client 300s
  timeout server 300s
listen iperf
  bind 127.0.0.1:{p.f_iperf}
  server s1 127.0.0.1:{p.b_iperf}
listen http
  bind 127.0.0.1:{p.f_http}
  server s1 127.0.0.1:{p.b_http}
""")
            h = self.procs.start("haproxy", ["haproxy", "-db", "-f", cfg])
            proc.wait_listening(h, tcp=[p.f_iperf, p.f_http])
            return h
        if target == "dnsdist":
            cfg = os.path.join(self.work, "dnsdist.conf")
            lines = [f"setLocal('127.0.0.1:{p.f_dns}', {{reusePort=true}})"]
            lines += [f"addLocal('127.0.0.1:{p.f_dns}', {{reusePort=true}})"] * (self.cpus - 1)
            lines += ["setACL({'127.0.0.0/8'})",
                      f"newServer({{address='127.0.0.1:{p.b_dns}', checkName='bench.test.'}})"]
            with open(cfg, "w") as f:
                f.write("\n".join(lines) + "\n")
            d = self.procs.start("dnsdist", ["dnsdist", "--supervised", "--disable-syslog",
                                             "-C", cfg])
            proc.wait_listening(d, udp=[p.f_dns])
            return d
        if target == "apisix-stream":
            a = ApisixStream(self.procs, self.work, self.binary, p)
            proxy = a.start(tcp=[p.f_iperf, p.f_http], udp=[p.f_dns])
            a.route(1, p.f_iperf, p.b_iperf)
            a.route(2, p.f_http, p.b_http)
            a.route(3, p.f_dns, p.b_dns, scheme="udp")
            proc.wait_listening(proxy, tcp=[p.f_iperf, p.f_http], udp=[p.f_dns])
            return proxy
        raise Failed(f"unknown target {target}")


def dnsmasq():
    for d in os.environ.get("PATH", "").split(":") + ["/usr/sbin", "/sbin"]:
        path = os.path.join(d, "dnsmasq")
        if os.access(path, os.X_OK):
            return path
    return "dnsmasq"


def proc_nofile():
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft
