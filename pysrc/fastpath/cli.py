"""The `fastpath` command: a thin layer over the library (fastpath.replay, fastpath.explain)."""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING, NoReturn, TextIO

from fastpath import __version__

if TYPE_CHECKING:
    from fastpath.atomicfile import PreparedOutput

# Everything else is imported where it is used: a replay whose compiled dump comes from the cache
# imports neither the cluster model nor the compiler nor PyYAML (see fastpath.clustercache).

PROG = "fastpath"

REPLAY_DESCRIPTION = """\
Replay a capture through the Service dataplane of one node.

Every packet of CAPTURE (pcap or pcapng) goes through the compiled dataplane built from the
Kubernetes objects in --cluster: packets to a Service frontend are DNATed to an endpoint,
replies from endpoints are translated back, everything else passes untouched, and dropped
packets are left out of OUT (a rejected one is replaced by the ICMP port unreachable sent back,
ICMPv6 for IPv6). IPv4 and IPv6 are both routed: a dual-stack Service has frontends and
endpoints in each family.
A summary (verdicts, per-service and per-backend packet counts, conntrack, packets/s) is printed
at the end.

--trace FILE.jsonl records every decision: one JSON object per input packet, in input order:
  {"frame": 2, "time": "1714641247.123456000", "verdict": "DNAT", "reason": "NEW_FLOW",
   "service": "default/web:http", "frontend": "ClusterIP", "backend": "10.244.1.12:8080",
   "masquerade": null}
frame is the packet's 1-based number in CAPTURE; time its timestamp in seconds with nine
decimals, as a string (exact); service, frontend (ClusterIP, NodePort, LoadBalancer,
ExternalIP), backend ("ip:port", "[ip]:port" for IPv6) and masquerade (the node address of the
flow's family it is SNATed to) are null when they do not apply; REJECT lines add
"reply": "icmp-port-unreachable".
"""

REPLAY_EPILOG = """\
exit status: 0 on success, 1 on a failure (unreadable or invalid capture or cluster file),
2 on a usage error.

examples:
  fastpath replay pcaps/demo.pcap --cluster pcaps/demo-cluster.yaml -o /tmp/out.pcap
  fastpath replay pcaps/demo.pcap --cluster pcaps/demo-cluster.yaml --trace /tmp/trace.jsonl
  fastpath replay pcaps/demo.pcap --cluster pcaps/demo-cluster.yaml --trace - -q \\
      | jq -c 'select(.verdict == "REJECT")'
"""

EXPLAIN_DESCRIPTION = """\
Explain where one flow would go on a node's Service dataplane, and why. No capture needed.

The flow's first packet (a TCP SYN, or a UDP datagram) is built and run through a fresh
dataplane compiled from --cluster, so the verdict and the endpoint are the ones a replay of that
5-tuple gets. The answer says which frontend the destination is (kind and service port), the
policy in force (traffic policy, whether the source counts as a pod, the node or other, and
whether the flow is masqueraded, each with the reason), every endpoint of the service port with
its conditions (ready, serving, terminating), node and zone, which of them are candidates and
which one this flow picks; or the rule that makes it DROP or REJECT; or that the destination is
not a service address and the packet passes untouched.
"""

EXPLAIN_EPILOG = """\
The endpoint picked depends on the whole 5-tuple: give the source port (--src IP:PORT) to get
the answer for one connection; without it, source port 40000 is assumed.

IPv6 addresses are written as such, in brackets when a port follows: --src fd00:10:244::5 or
--src [fd00:10:244::5]:41001, --dst [fd00:10:96::10]:80.

exit status: 0 whatever the verdict, 1 on bad input (an address, or an unreadable or invalid
cluster file), 2 on a usage error.

examples:
  fastpath explain --cluster pcaps/demo-cluster.yaml --src 10.244.0.5:41001 --dst 10.96.0.10:80
  fastpath explain --cluster pcaps/demo-cluster.yaml --node fp-node \\
      --src 10.244.0.5 --dst 10.96.0.53:53 --proto udp --json
  fastpath explain --cluster cluster.yaml --src [2001:db8::7]:50000 --dst [fd00:10:96::10]:80
"""


class CliError(Exception):
    """A failure to report as one line on stderr (exit 1)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="A Kubernetes Service dataplane with a compiled fast path; "
        "replays captures through it and explains its decisions.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    replay = commands.add_parser(
        "replay",
        help="replay a capture through the dataplane",
        description=REPLAY_DESCRIPTION,
        epilog=REPLAY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    replay.add_argument("capture", metavar="CAPTURE", help="input capture (pcap or pcapng)")
    replay.add_argument(
        "--cluster", metavar="PATH", action="append", required=True,
        help="Kubernetes objects as `kubectl get -o yaml|json` prints them: a file or a folder "
        "(read recursively); repeat for several",
    )
    replay.add_argument("--node", metavar="NAME", help="the node whose dataplane this is")
    _add_cache_option(replay)
    replay.add_argument(
        "-o", "--output", metavar="OUT",
        help="write the translated capture here (same format, link type and timestamps as "
        "CAPTURE; dropped packets left out); written atomically",
    )
    replay.add_argument("--stats", metavar="FILE.json", help="also write the summary as JSON")
    replay.add_argument(
        "--trace", metavar="FILE.jsonl",
        help="also write one JSON line per input packet: frame, time, verdict, reason, service, "
        "frontend, backend, masquerade (see above); written atomically; - for stdout (the "
        "summary then goes to stderr)",
    )
    replay.add_argument(
        "--ct-capacity", metavar="N", type=_positive_int, default=None,
        help="conntrack table capacity in entries (default 524288; 64 bytes each, allocated at "
        "start); when it is full, a flow "
        "not seen recently is evicted (CLOCK, an approximation of least recently used)",
    )
    replay.add_argument(
        "--new-flow-rate", metavar="N", type=_flow_rate, default=0,
        help="new-flow rate guard: when conntrack is full, at most N new flows per second of "
        "capture time may evict a tracked flow; the others are dropped (DROP_FLOW_RATE), so a "
        "SYN flood cannot push established flows out (default 0: off, as kube-proxy)",
    )
    replay.add_argument(
        "--batch", metavar="N", type=_positive_int, default=None,
        help="packets per batch handed to the core (default 65536)",
    )
    replay.add_argument(
        "--one-thread", action="store_true",
        help="read, process and write on one thread (default: when the capture, the output "
        "and the trace are regular files, one worker thread per CPU, up to three, each "
        "carrying a chunk from its read to its write, every stage taking the chunks in "
        "capture order; the output is the same)",
    )
    replay.add_argument(
        "--core", choices=("compiled", "reference"), default="compiled",
        help="compiled core (default) or the slow pure-Python twin, for cross-checking",
    )
    replay.add_argument("-q", "--quiet", action="store_true", help="print no summary")
    replay.add_argument(
        "--progress", choices=("auto", "always", "never"), default="auto",
        help="progress bar on stderr (auto: only when stderr is a terminal)",
    )
    replay.set_defaults(run=run_replay)

    explain = commands.add_parser(
        "explain",
        help="explain where one flow would go, and why",
        description=EXPLAIN_DESCRIPTION,
        epilog=EXPLAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    explain.add_argument(
        "--cluster", metavar="PATH", action="append", required=True,
        help="Kubernetes objects as `kubectl get -o yaml|json` prints them: a file or a folder "
        "(read recursively); repeat for several",
    )
    explain.add_argument("--node", metavar="NAME", help="the node whose dataplane this is")
    _add_cache_option(explain)
    explain.add_argument("--src", metavar="IP[:PORT]", required=True,
                         help="the client: an IPv4 or IPv6 address, with its port if known "
                         "(IP:PORT, [IPv6]:PORT)")
    explain.add_argument("--dst", metavar="IP:PORT", required=True,
                         help="where the client sends to: a ClusterIP, node, load-balancer or "
                         "external IP and port, or any other address ([IPv6]:PORT for IPv6)")
    explain.add_argument("--proto", choices=("tcp", "udp", "sctp"), default="tcp",
                         help="transport protocol (default tcp)")
    explain.add_argument("--json", action="store_true",
                         help="print the explanation as one JSON object instead of text")
    explain.add_argument(
        "--core", choices=("compiled", "reference"), default="compiled",
        help="compiled core (default) or the pure-Python twin",
    )
    explain.set_defaults(run=run_explain)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_cache_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-cache", dest="cache", action="store_false",
        help="parse and compile --cluster afresh; by default the parsed dump (and for replay "
        "its compiled maps) is cached (FASTPATH_CACHE_DIR, else ~/.cache/fastpath) and reused "
        "while its files are unchanged",
    )


def _load_cluster(args: argparse.Namespace):
    from fastpath.clustercache import load_cluster_cached
    from fastpath.model import load_cluster

    return load_cluster_cached(args.cluster) if args.cache else load_cluster(args.cluster)


def _flow_rate(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 1_000_000_000:
        raise argparse.ArgumentTypeError(
            f"expected new flows per second from 0 (off) to 1000000000, got {text!r}")
    return value


def _replay_dataplane(args: argparse.Namespace):
    """The dataplane to replay through, and the dump it was compiled from (its `sources` and
    `skipped` are reported): a ClusterState, or with the cache the CompiledDump."""
    from fastpath.dataplane import Dataplane

    options = {"node": args.node, "core": args.core, "new_flow_rate": args.new_flow_rate}
    if args.ct_capacity:
        options["ct_capacity"] = args.ct_capacity
    if not args.cache:
        from fastpath.model import load_cluster

        state = load_cluster(args.cluster)
        return Dataplane(state, **options), state
    from fastpath.clustercache import CompiledDump, compile_cluster_cached

    class CachedDataplane(Dataplane):
        """Takes from a CompiledDump what Dataplane takes from compile_maps' result."""

        def _compile(self, cluster):
            if not isinstance(cluster, CompiledDump):
                return super()._compile(cluster)
            self.node = cluster.node or self.node
            self.notes = cluster.notes
            self.timeouts_s = dict(cluster.timeouts_s)
            return cluster.maps

    compiled = compile_cluster_cached(args.cluster, args.node)
    return CachedDataplane(compiled, **options), compiled  # type: ignore[arg-type]


def run_replay(args: argparse.Namespace) -> int:
    from fastpath.atomicfile import PreparedOutput

    output = _prepared_output(args)  # first: its space is allocated while the rest loads
    bar = None
    try:
        from fastpath.replaying import DEFAULT_BATCH_PACKETS, replay

        dataplane, dump = _replay_dataplane(args)
        show_progress = args.progress == "always" or (
            args.progress == "auto" and sys.stderr.isatty())
        bar = ProgressBar(sys.stderr) if show_progress else None
        trace_to_stdout = args.trace == "-"
        stats = replay(
            args.capture, output, dataplane,
            batch_packets=args.batch or DEFAULT_BATCH_PACKETS,
            progress=bar.update if bar else None,
            trace=sys.stdout if trace_to_stdout else args.trace,
            threads=not args.one_thread,
        )
    finally:
        if bar:
            bar.close()
        if isinstance(output, PreparedOutput):
            output.discard()  # (nothing left to do once the replay took it over)
    if trace_to_stdout:
        sys.stdout.flush()
    if stats.truncated_tail:
        print(f"{PROG}: warning: {stats.truncated_tail}", file=sys.stderr)
    if args.stats:
        document = stats.to_dict()
        document["cluster"] = {"sources": [str(s) for s in dump.sources],
                               "skipped": dict(dump.skipped)}
        _write_json_atomically(args.stats, document)
    if not args.quiet:
        out = sys.stderr if trace_to_stdout else sys.stdout
        print_summary(stats, out)
        print_cluster(dump, dataplane, out)
    return 0


def _prepared_output(args: argparse.Namespace) -> str | PreparedOutput | None:
    """The replay's output: with threads, a PreparedOutput whose space the other core
    allocates while this one loads the cluster (on tmpfs, two thirds of what the writes would
    otherwise cost); the path as given for --one-thread, a device or a FIFO."""
    if args.output is None or args.one_thread:
        return args.output
    from fastpath.atomicfile import prepare_output

    try:
        size = os.path.getsize(args.capture)
    except OSError:
        return args.output  # the replay says what is wrong with the capture
    return prepare_output(args.output, size) or args.output


def run_explain(args: argparse.Namespace) -> int:
    from fastpath.explain import ExplainError, explain

    state = _load_cluster(args)
    try:
        answer = explain(state, args.src, args.dst, args.proto, node=args.node, core=args.core)
    except ExplainError as error:
        raise CliError(str(error)) from None
    if args.json:
        import json

        json.dump(answer.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(answer.render())
    return 0


def _write_json_atomically(path: str, document: dict) -> None:
    import json

    from fastpath.atomicfile import discard, move_into_place, open_beside

    temporary = None
    handle = None
    try:
        fd, temporary = open_beside(path)
        handle = os.fdopen(fd, "w", encoding="utf-8")
        json.dump(document, handle, indent=2)
        handle.write("\n")
        move_into_place(handle, temporary, path)
    except OSError as error:
        discard(handle, temporary)
        raise CliError(f"cannot write stats to {path}: {error.strerror or error}") from None


class ProgressBar:
    """A one-line progress bar on a terminal, redrawn at most ten times a second."""

    WIDTH = 30

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.started = time.perf_counter()
        self.last_draw = 0.0
        self.drawn = False

    def update(self, done: int, total: int, packets: int) -> None:
        now = time.perf_counter()
        if now - self.last_draw < 0.1 and done < total:
            return
        self.last_draw = now
        fraction = min(done / total, 1.0) if total else 1.0
        filled = int(fraction * self.WIDTH)
        rate = packets / (now - self.started) if now > self.started else 0.0
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {fraction:6.1%}  "
            f"{packets:,} packets  {rate:,.0f} packets/s"
        )
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()


def print_summary(stats, out: TextIO) -> None:
    from fastpath.capture import linktype_name

    target = stats.output or "(no output)"
    out.write(f"{stats.capture} -> {target}  [{stats.format}, {linktype_name(stats.linktype)}]\n")
    if stats.trace:
        out.write(f"trace        {stats.trace} ({stats.packets:,} lines)\n")
    out.write(
        f"packets      {stats.packets:,} in, {stats.packets_written:,} written, "
        f"{stats.elapsed_s:.3f} s, {stats.packets_per_second:,.0f} packets/s\n"
    )
    out.write("verdicts     " + "  ".join(f"{k} {v:,}" for k, v in stats.verdicts.items()) + "\n")
    reasons = [(k, v) for k, v in stats.reasons.items() if v]
    out.write("reasons      " + ("  ".join(f"{k} {v:,}" for k, v in reasons) or "-") + "\n")
    _table(out, "service port", stats.services)
    _table(out, "backend", stats.backends)
    ct = stats.conntrack
    out.write("conntrack    " + "  ".join(f"{k} {v:,}" for k, v in ct.items()) + "\n")


def print_cluster(dump, dataplane, out: TextIO) -> None:
    """The cluster line and the compile notes; `dump` has the `sources` and `skipped` of the
    ClusterState (or CompiledDump) the dataplane was built from."""
    maps = dataplane.maps
    skipped = ", ".join(f"{kind} {n}" for kind, n in sorted(dump.skipped.items()))
    node = f"node {dataplane.node}" if dataplane.node else "no node"
    ipv6 = sum(service.family == 6 for service in maps.services)
    ports = f"{len(maps.services)} service ports" + (f" ({ipv6} of them IPv6)" if ipv6 else "")
    out.write(
        f"cluster      {node}; {ports}, {len(maps.frontends)} "
        f"frontends, {len(maps.backends)} backends from {len(dump.sources)} file(s)"
        + (f"; skipped {skipped}" if skipped else "") + "\n"
    )
    for note in dataplane.notes:
        out.write(f"note         {note}\n")


def _table(out: TextIO, title: str, counts: dict[str, int]) -> None:
    if not counts:
        out.write(f"{title + 's':<12} -\n")
        return
    width = max(len(title), *(len(name) for name in counts))
    lines = [f"{title:<{width}}  packets"]
    lines += [f"{name:<{width}}  {count:>7,}" for name, count in sorted(counts.items())]
    out.write("\n".join(lines) + "\n")  # one write: 10,000 backends are 10,000 lines


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:
        # The reader of our stdout went away (`| head`): stop quietly, like a SIGPIPE'd tool.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; no output written", file=sys.stderr)
        return 130
    except Exception as error:
        if isinstance(error, _input_errors()):
            print(f"{PROG}: error: {error}", file=sys.stderr)
        elif isinstance(error, OSError):
            where = f"{error.filename}: " if error.filename else ""
            print(f"{PROG}: error: {where}{error.strerror or error}", file=sys.stderr)
        elif isinstance(error, MemoryError):  # e.g. a --ct-capacity beyond the machine
            print(f"{PROG}: error: out of memory: {error or 'no detail'}", file=sys.stderr)
        else:
            raise
    return 1


def run() -> NoReturn:
    """The `fastpath` command: main(), then exit without the interpreter's teardown.

    Everything main() writes is committed or discarded, and closed, by the time it returns;
    tearing the interpreter down after that (freeing the maps' objects one by one, and every
    module) would only add 15-20 ms to each command on the standard workload.
    """
    code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # as in main(): the reader went away
        code = 141
    try:
        sys.stderr.flush()
    except BrokenPipeError:
        pass
    os._exit(code)


def _input_errors() -> tuple[type[Exception], ...]:
    """The errors reported as one line: ours, and bad cluster or capture input. Their modules
    are looked up, not imported: an error of a module the command never loaded cannot have been
    raised."""
    errors: list[type[Exception]] = [CliError]
    for module, name in (("fastpath.model", "ClusterError"), ("fastpath.capture", "CaptureError")):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


if __name__ == "__main__":
    run()
