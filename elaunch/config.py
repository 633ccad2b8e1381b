"""LaunchConfig and the parsing of torchrun's option values. Pure: values in, values (or ConfigError) out."""

from __future__ import annotations

import math
import re
import signal
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from elaunch.errors import ConfigError
from elaunch.hangs import DEFAULT_BACKOFF_MAX, Supervision
from elaunch.rendezvous.api import Endpoint, EtcdOptions, RendezvousConfig, RendezvousSettings
from elaunch.spec import WorkerSpec
from elaunch.values import Value, field, fields, value

if TYPE_CHECKING:
    from elaunch.numa import CpuBinding

RDZV_BACKENDS: tuple[str, ...] = ("static", "c10d", "etcd", "etcd-v2")
ETCD_BACKENDS: tuple[str, ...] = ("etcd", "etcd-v2")
"""Both names run the same protocol over an external etcd (v3 API); torchrun has two etcd backends."""
DEFAULT_C10D_PORT = 29400
DEFAULT_ETCD_PORT = 2379
DEFAULT_MASTER_PORT = 29500

# torchrun's --rdzv-conf timing keys (dynamic handler, c10d and etcd backends) and their defaults.
RDZV_CONF_DEFAULTS: dict[str, float] = {n: getattr(RendezvousSettings(), n) for n in fields(RendezvousSettings)}
RDZV_CONF_FLAGS = ("is_host", "use_libuv")
TIMEOUT_ALIAS = "timeout"
"""torch's static and etcd handlers' name for join_timeout (seconds); c10d ignores it, as torch's does."""
RDZV_CONF_STRINGS = (
    "protocol",
    "cacert",
    "cert",
    "key",
    "store_type",
    # torchrun's etcd-v2 spellings of cacert/cert/key, and its etcd backend's key prefix
    "ca_cert",
    "ssl_cert",
    "ssl_cert_key",
    "etcd_prefix",
)
ETCD_TLS_KEYS = {"cacert": "ca_cert", "cert": "ssl_cert", "key": "ssl_cert_key"}
"""etcd's TLS settings: torchrun's etcd spelling -> its etcd-v2 spelling (both accepted)."""
C10D_ONLY_KEYS = ("is_host", "use_libuv", "store_type")
ETCD_ONLY_KEYS = ("protocol", *ETCD_TLS_KEYS, *ETCD_TLS_KEYS.values(), "etcd_prefix")

EntryKind = Literal["python", "module", "run_path", "program"]
"""How the worker command runs: `python script`, `python -m`, runpy inside python, or the program itself."""
DEFAULT_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT"


@value
class StdSpec(Value):
    """Which of stdout (1) and stderr (2) go to files, per local rank; `default` for the others."""

    default: int = 0
    per_rank: Mapping[int, int] = field(default_factory=dict)

    def for_rank(self, local_rank: int) -> int:
        return self.per_rank.get(local_rank, self.default)

    @property
    def any(self) -> bool:
        """Some stream of some rank goes to a file."""
        return bool(self.default or any(self.per_rank.values()))

    def covers(self, stream: int) -> bool:
        """`stream` (1 or 2) of some rank goes to a file."""
        return bool(self.default & stream or any(v & stream for v in self.per_rank.values()))


@value
class OutputConfig(Value):
    """Where the workers' output and the run's records go (torchrun's log options and elaunch's own)."""

    log_dir: str | None = None
    redirects: StdSpec = field(default_factory=StdSpec)
    tee: StdSpec = field(default_factory=StdSpec)
    duplicate_filters: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    """Per stream (1 stdout, 2 stderr): teed lines containing any of these strings are also
    written to attempt_<k>/filtered_{stdout,stderr}.log (torchrun's --duplicate-*-filters)."""
    local_ranks_filter: frozenset[int] | None = None
    ranks_filter: frozenset[int] | None = None
    log_line_prefix: str | None = None
    """A prefix template (`${rank}` ...); None for elaunch's default."""
    live: bool | None = None
    """False: plain text even on a terminal (`--no-live`); None: live view on a terminal."""
    summary_file: str | None = None
    events_file: str | None = None

    @property
    def files(self) -> bool:
        """Some worker stream goes to a per-rank file (-r or -t)."""
        return self.redirects.any or self.tee.any


@value
class WatchConfig(Value):
    """Watching the run from outside: the HTTP endpoint (`--health-port`/`--health-addr`; port
    None = off, 0 = any free one) and progress (`--progress-interval` seconds between reports,
    stragglers slower than the median by `--straggler-factor` for `--straggler-window` seconds)."""

    health_port: int | None = None
    health_addr: str = "127.0.0.1"
    progress_interval: float = 30.0
    straggler_factor: float = 1.5
    straggler_window: float = 60.0


@value
class LaunchConfig(Value):
    """Everything a launch needs, validated (see `elaunch.options.build_config`).

    Nested by concern: `rdzv` (where the nodes meet), `output` (where output goes), the rest is
    the job on this node. `sources` says where each option's value came from (for --dry-run).
    """

    nproc_per_node: int
    entry_argv: tuple[str, ...]
    """The worker's command line before `${local_rank}` substitution."""
    entry_kind: EntryKind
    rdzv: RendezvousConfig
    output: OutputConfig = field(default_factory=OutputConfig)
    max_restarts: int = 0
    monitor_interval: float = 0.1
    role: str = "default"
    signals_to_handle: tuple[int, ...] = ()
    shutdown_timeout: float = 30.0
    exit_barrier_timeout: float = 300.0
    virtual_local_rank: bool = False
    progress_pattern: str | None = None
    health_check: str | None = None
    """`--health-check`: `builtin` or a shell command run before each round (see `elaunch.healthcheck`)."""
    health_check_timeout: float = 60.0
    """`--progress-pattern`: a regex with a `step` group (and optionally `total`) matching progress lines."""
    supervision: Supervision = field(default_factory=Supervision)
    """Hang detection and restart rules (--hang-timeout, --startup-timeout, --restart-backoff,
    --no-requeue-exit-code; the FileTimer pipe when TORCHELASTIC_ENABLE_FILE_TIMER=1)."""
    watch: WatchConfig = field(default_factory=WatchConfig)
    cpu_binding: tuple[CpuBinding, ...] = ()
    """`--numa-binding`: each local worker's CPUs, in local-rank order (empty: not bound)."""
    warnings: tuple[str, ...] = ()
    """Options given but without effect here (torchrun ignores them too); shown at start."""
    dry_run: bool = False
    sources: Mapping[str, str] = field(default_factory=dict)

    @property
    def min_nodes(self) -> int:
        return self.rdzv.min_nodes

    @property
    def max_nodes(self) -> int:
        return self.rdzv.max_nodes

    @property
    def run_id(self) -> str:
        return self.rdzv.run_id

    @property
    def single_node(self) -> bool:
        return self.rdzv.single_node

    def worker_spec(self, env: Mapping[str, str]) -> WorkerSpec:
        """What this node runs, with `env` (the agent's environment) as every worker's base.

        As torchrun's launcher (torch/distributed/launcher/api.py sets it in its own environment,
        which the workers inherit), the base carries `TORCHELASTIC_SIGNALS_TO_HANDLE`: the signals
        the agent handles, by name.
        """
        handled = ",".join(signal.Signals(s).name for s in self.signals_to_handle)
        return WorkerSpec(
            role=self.role,
            local_world_size=self.nproc_per_node,
            entrypoint=self.entry_argv[0],
            args=self.entry_argv[1:],
            kind=self.entry_kind,
            max_restarts=self.max_restarts,
            shutdown_timeout=self.shutdown_timeout,
            exit_barrier_timeout=self.exit_barrier_timeout,
            virtual_local_rank=self.virtual_local_rank,
            env={**env, "TORCHELASTIC_SIGNALS_TO_HANDLE": handled},
            cpu_binding=self.cpu_binding,
        )


MAX_NODES = 1 << 20
"""Most nodes a job may name (--nnodes): far above any cluster, far below what overflows a count."""
MAX_NPROC = 1 << 16
"""Most workers per node (--nproc-per-node): more processes than a node's pid space allows."""


def parse_nnodes(value: str) -> tuple[int, int]:
    """`N` or `MIN:MAX` with 0 < MIN <= MAX."""
    parts = value.strip().split(":")
    if len(parts) not in (1, 2) or not all(re.fullmatch(r"\d+", p.strip()) for p in parts):
        raise ConfigError(f"--nnodes must be N or MIN:MAX with whole numbers, got {value!r}")
    lo, hi = int(parts[0]), int(parts[-1])
    if hi > MAX_NODES:
        raise ConfigError(f"--nnodes: at most {MAX_NODES} nodes, got {value!r}")
    if lo <= 0:
        raise ConfigError(f"--nnodes: the minimum number of nodes must be at least 1, got {value!r}")
    if lo > hi:
        raise ConfigError(f"--nnodes: MIN must not exceed MAX, got {value!r}")
    return lo, hi


def parse_nproc(value: str, devices: Mapping[str, int | None]) -> int:
    """An int > 0, or `cpu`/`gpu`/`xpu`/`auto` resolved from `devices` (counts found by the caller).

    `devices` maps "cpu", "gpu", "xpu" to a count, or None when that kind cannot be counted.
    """
    v = value.strip().lower()
    if re.fullmatch(r"[+-]?\d+", v):
        n = int(v)
        if n <= 0:
            raise ConfigError(f"--nproc-per-node must be at least 1, got {value!r}")
        if n > MAX_NPROC:
            raise ConfigError(f"--nproc-per-node: at most {MAX_NPROC} workers per node, got {value!r}")
        return n
    if v == "cpu":
        return int(devices.get("cpu") or 1)
    if v in ("gpu", "xpu"):
        n_dev = devices.get(v)
        if not n_dev:
            name = "CUDA GPUs" if v == "gpu" else "XPUs"
            raise ConfigError(f"--nproc-per-node {v}: no {name} found on this node")
        return n_dev
    if v == "auto":
        for kind in ("gpu", "xpu"):
            n_dev = devices.get(kind)
            if n_dev:
                return n_dev
        return int(devices.get("cpu") or 1)
    raise ConfigError(f"--nproc-per-node must be a number, cpu, gpu, xpu or auto, got {value!r}")


def parse_endpoint(value: str, default_port: int) -> Endpoint | None:
    """`host[:port]`; IPv6 in brackets (`[::1]:29400`). Empty means none."""
    v = value.strip()
    if not v:
        return None
    m = re.fullmatch(r"\[([0-9A-Fa-f:.%\w]+)\](?::(\d*))?", v)
    if m:
        host, port_s = m.group(1), m.group(2)
    else:
        if v.count(":") > 1:
            raise ConfigError(f"--rdzv-endpoint {value!r}: write IPv6 addresses in brackets, e.g. [::1]:29400")
        host, _, port_s = v.partition(":")
        if ":" in v and not port_s:
            raise ConfigError(f"--rdzv-endpoint {value!r}: the port after ':' is missing")
    if not host or not re.fullmatch(r"[\w.\-:%]+", host):
        raise ConfigError(f"--rdzv-endpoint {value!r}: not a valid host name or address")
    if not port_s:
        return Endpoint(host, default_port)
    if not port_s.isdigit():
        raise ConfigError(f"--rdzv-endpoint {value!r}: port must be a number")
    port = int(port_s)
    check_port(port, "--rdzv-endpoint", allow_zero=True)
    return Endpoint(host, port)


def parse_count(value: object, option: str, *, default: int | None = None, high: int = 2**31 - 1) -> int | None:
    """A whole number from 0 to `high`; None/empty gives `default`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    text = str(value).strip()
    if not re.fullmatch(r"[+-]?\d+", text):
        raise ConfigError(f"{option}: expected a whole number, got {value!r}")
    n = int(text)
    if not 0 <= n <= high:
        raise ConfigError(f"{option}: must be between 0 and {high}, got {value!r}")
    return n


def check_port(port: int, option: str, allow_zero: bool = False) -> int:
    lo = 0 if allow_zero else 1
    if not lo <= port <= 65535:
        raise ConfigError(f"{option}: port must be between {lo} and 65535, got {port}")
    return port


def _unquote(text: str) -> str:
    """`'a'` or `"a"` -> `a`: quotes that reached us literally (a Makefile, a list of argv in Python)."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1].strip()
    return text


def rdzv_conf_keys() -> list[str]:
    """Every --rdzv-conf key some backend reads."""
    return sorted([*RDZV_CONF_DEFAULTS, TIMEOUT_ALIAS, *RDZV_CONF_FLAGS, *RDZV_CONF_STRINGS])


def parse_rdzv_conf(value: str, warnings: list[str] | None = None) -> dict[str, object]:
    """`k=v,k=v` as torchrun reads it: numbers must be positive, flags true/false/1/0.

    Quotes around the whole value or around one value are dropped (torchrun's own launcher tests
    pass `--rdzv-conf='join_timeout=5,...'`). A key no backend reads is not refused, as torchrun
    keeps any key: it is left out and named in `warnings`, with the closest known key.
    Raises ConfigError for what torchrun refuses too (an item that is not `key=value`).
    """
    conf: dict[str, object] = {}
    v = _unquote(value)
    if not v:
        return conf
    for item in v.split(","):
        key, eq, raw = item.partition("=")
        key, raw = _unquote(key), _unquote(raw)
        if not eq or not key:
            raise ConfigError(f"--rdzv-conf: expected key=value pairs separated by commas, got {item!r}")
        if key in RDZV_CONF_DEFAULTS or key == TIMEOUT_ALIAS:
            num = parse_seconds(raw, f"--rdzv-conf {key}")
            conf[key] = max(1, int(num)) if key == "keep_alive_max_attempt" else num
        elif key in RDZV_CONF_FLAGS:
            low = raw.lower()
            if low not in ("1", "0", "true", "false", "yes", "no"):
                raise ConfigError(f"--rdzv-conf {key}: expected true or false, got {raw!r}")
            conf[key] = low in ("1", "true", "yes")
        elif key in RDZV_CONF_STRINGS:
            conf[key] = raw
        elif warnings is not None:
            import difflib  # only for this message

            close = difflib.get_close_matches(key, rdzv_conf_keys(), n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(rdzv_conf_keys())})"
            warnings.append(f"--rdzv-conf {key}: no backend reads this key; ignored{hint}")
    return conf


def parse_etcd_conf(conf: Mapping[str, object], backend: str = "etcd-v2") -> EtcdOptions:
    """The etcd settings in a parsed --rdzv-conf; ConfigError for what etcd cannot honour.

    TLS keys are accepted in both torchrun spellings (etcd: cacert/cert/key; etcd-v2:
    ca_cert/ssl_cert/ssl_cert_key) and need protocol=https: certificates given for plain http
    would be silently unused. c10d's keys (is_host, ...) are refused: etcd is an external server.
    """
    for k in C10D_ONLY_KEYS:
        if k in conf:
            raise ConfigError(
                f"--rdzv-conf {k}: only for --rdzv-backend c10d (with {backend}, etcd is an external server)"
            )
    protocol = str(conf.get("protocol", "http")).strip().lower()
    if protocol not in ("http", "https"):
        raise ConfigError(f"--rdzv-conf protocol: must be http or https, got {conf['protocol']!r}")
    tls: dict[str, str | None] = {}
    for short, long in ETCD_TLS_KEYS.items():
        a, b = conf.get(short), conf.get(long)
        if a is not None and b is not None and a != b:
            raise ConfigError(f"--rdzv-conf {short} and {long} name the same setting but differ: {a!r}, {b!r}")
        value = a if a is not None else b
        if value is not None and not str(value).strip():
            raise ConfigError(f"--rdzv-conf {short if a is not None else long}: expected a file path, got nothing")
        tls[short] = None if value is None else str(value).strip()
    given = [k for k, v in tls.items() if v is not None]
    if given and protocol != "https":
        raise ConfigError(
            f"--rdzv-conf {given[0]}: TLS files need protocol=https (etcd would be reached over plain http)"
        )
    if tls["key"] is not None and tls["cert"] is None:
        raise ConfigError("--rdzv-conf key: a client key needs its certificate (cert=...)")
    prefix = str(conf.get("etcd_prefix", "")).strip().rstrip("/")
    if prefix and not prefix.startswith("/"):
        prefix = "/" + prefix
    return EtcdOptions(
        protocol="https" if protocol == "https" else "http",
        ca_cert=tls["cacert"],
        cert=tls["cert"],
        key=tls["key"],
        prefix=prefix,
    )


def parse_rdzv_settings(conf: Mapping[str, object], backend: str) -> RendezvousSettings:
    """The timings of a parsed --rdzv-conf over torch's defaults (`RendezvousSettings`).

    `timeout` is join_timeout for the static and etcd backends (torch's static and etcd handlers
    read it); an explicit join_timeout wins. Values were checked by `parse_rdzv_conf`.
    """
    values: dict[str, float] = {k: float(v) for k, v in conf.items() if k in RDZV_CONF_DEFAULTS}  # type: ignore[arg-type]
    if backend in ("static", *ETCD_BACKENDS) and TIMEOUT_ALIAS in conf:
        values.setdefault("join_timeout", float(conf[TIMEOUT_ALIAS]))  # type: ignore[arg-type]
    return RendezvousSettings(
        **{k: v for k, v in values.items() if k != "keep_alive_max_attempt"},
        keep_alive_max_attempt=int(values.get("keep_alive_max_attempt", 3)),
    )


def parse_std_spec(value: str, option: str) -> StdSpec:
    """torchrun's `-r/-t` forms: a bitmask 0-3 for all ranks, or `local_rank:mask,...`."""
    v = value.strip() or "0"
    if re.fullmatch(r"[0-3]", v):
        return StdSpec(default=int(v))
    per: dict[int, int] = {}
    for item in v.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*:\s*([0-3])\s*", item)
        if not m:
            raise ConfigError(f"{option}: expected 0-3 or LOCAL_RANK:0-3 pairs like 0:3,1:1, got {value!r}")
        per[int(m.group(1))] = int(m.group(2))
    return StdSpec(default=0, per_rank=per)


def parse_filter_list(value: str) -> tuple[str, ...]:
    """torchrun's comma-separated list: `a,b` -> ("a", "b"); a double comma is a literal comma."""
    if not value:
        return ()
    items = value.replace(",,", "\0").split(",")
    return tuple(item.replace("\0", ",") for item in items if item)


def parse_rank_set(value: str, option: str) -> frozenset[int] | None:
    """`0,1,5-7` -> {0,1,5,6,7}; empty means no filter."""
    v = value.strip()
    if not v:
        return None
    out: set[int] = set()
    for item in v.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", item)
        if not m:
            raise ConfigError(f"{option}: expected ranks like 0,1,4-7, got {value!r}")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        if hi < lo:
            raise ConfigError(f"{option}: range {item.strip()!r} runs backwards")
        out.update(range(lo, hi + 1))
    return frozenset(out)


def parse_signals(value: str) -> tuple[int, ...]:
    """`SIGTERM,SIGINT` (or without the SIG prefix) -> signal numbers."""
    sigs: list[int] = []
    for item in value.split(","):
        name = item.strip().upper()
        if not name:
            continue
        if not name.startswith("SIG"):
            name = "SIG" + name
        try:
            sig = signal.Signals[name]
        except KeyError:
            raise ConfigError(f"--signals-to-handle: unknown signal {item.strip()!r}") from None
        if sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
            raise ConfigError(f"--signals-to-handle: {name} cannot be handled")
        sigs.append(int(sig))
    return tuple(dict.fromkeys(sigs))


MAX_SECONDS = 10**9
"""Longest accepted duration (about 31 years): larger values overflow the OS's timers."""
MIN_SECONDS = 0.001
"""Shortest non-zero duration: below it, timedelta and c10d round a timeout to 0 (which means none)."""


def parse_seconds(value: str | float, option: str, *, allow_zero: bool = False) -> float:
    """A finite duration in seconds, at least MIN_SECONDS (or 0 with `allow_zero`) and at most MAX_SECONDS."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{option}: expected a number of seconds, got {value!r}") from None
    if not math.isfinite(f) or f > MAX_SECONDS:
        raise ConfigError(f"{option}: expected a finite number of seconds up to {MAX_SECONDS}, got {value!r}")
    if f < 0 or (f == 0 and not allow_zero):
        raise ConfigError(f"{option}: must be {'0 or more' if allow_zero else 'greater than 0'} seconds, got {value!r}")
    if 0 < f < MIN_SECONDS:
        raise ConfigError(
            f"{option}: must be 0 or at least {MIN_SECONDS:g} seconds, got {value!r}"
            if allow_zero
            else f"{option}: must be at least {MIN_SECONDS:g} seconds, got {value!r}"
        )
    return f


def parse_factor(value: str, option: str) -> float:
    """A finite number greater than 1 (how many times slower)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{option}: expected a number greater than 1, got {value!r}") from None
    if not math.isfinite(f) or f <= 1:
        raise ConfigError(f"{option}: expected a number greater than 1, got {value!r}")
    return f


def parse_progress_pattern(value: str | None) -> str | None:
    """`--progress-pattern`: a regular expression with a named group `step` (and optionally `total`)
    that a worker's progress lines match, e.g. `step (?P<step>\\d+)/(?P<total>\\d+)`; None = not given.

    Returned as the source text (compiled where it is used). Raises ConfigError for a regex that does
    not compile or has no `step` group.
    """
    if value is None or value == "":
        return None
    try:
        groups = re.compile(value).groupindex
    except re.error as exc:
        raise ConfigError(f"--progress-pattern: not a regular expression ({exc}): {value!r}") from None
    if "step" not in groups:
        raise ConfigError(f"--progress-pattern: needs a named group (?P<step>...) for the step number: {value!r}")
    return value


def parse_backoff(value: str | None) -> tuple[float, float]:
    """`--restart-backoff BASE[:MAX]` seconds -> (base, max); `0` (the default) is off."""
    text = (value or "0").strip()
    base_text, _, cap_text = text.partition(":")
    base = parse_seconds(base_text, "--restart-backoff", allow_zero=True)
    cap = parse_seconds(cap_text, "--restart-backoff (MAX)") if cap_text else max(DEFAULT_BACKOFF_MAX, base)
    if cap < base:
        raise ConfigError(f"--restart-backoff: MAX must not be less than BASE, got {value!r}")
    return base, cap


def substitute_local_rank(args: tuple[str, ...], local_rank: int) -> tuple[str, ...]:
    """torchrun's `${local_rank}` macro in script arguments."""
    return tuple(a.replace("${local_rank}", str(local_rank)) for a in args)
