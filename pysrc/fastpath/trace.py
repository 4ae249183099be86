"""Per-packet decision traces: one JSON object per input packet (JSON Lines).

    with TraceWriter("trace.jsonl", dataplane.maps) as trace:     # atomic, like the output capture
        for batch in reader.batches():
            result = dataplane.process(batch, reader.linktype, trace=True)
            trace.write_batch(batch, result)
    # trace.jsonl appears only here, complete; on an exception it never appears.

Every line describes one packet of the input capture, in input order:

    {"frame": 12, "time": "1714641247.123456000", "verdict": "DNAT", "reason": "NEW_FLOW",
     "service": "default/web:http", "frontend": "ClusterIP", "backend": "10.244.1.12:8080",
     "masquerade": null}

frame       1-based number of the packet in the input capture (Wireshark's frame.number).
time        the capture timestamp as a decimal string of seconds since the epoch with nine
            fractional digits ("1714641247.123456000", like tshark's frame.time_epoch): exact,
            whatever the capture's resolution, and safe from float rounding in any JSON reader.
verdict     a fastpath.verdicts.Verdict name: PASS, DNAT, REVNAT, DROP, REJECT.
reason      a fastpath.verdicts.Reason name (NEW_FLOW, CT_REPLY, REJECT_NO_ENDPOINT, ...).
service     the service port the packet was attributed to, "namespace/name:port-name"
            ("namespace/name" for an unnamed port), or null. Both halves of a dual-stack
            service port have the same name: the addresses tell the families apart.
frontend    the kind of frontend the flow came in through: "ClusterIP", "NodePort",
            "LoadBalancer", "ExternalIP", or null.
backend     the endpoint, "ip:port" ("[ip]:port" for IPv6), or null.
masquerade  the node address the flow is SNATed to (its primary IP of the flow's family), or
            null.
reply       REJECT lines only: "icmp-port-unreachable" (the port unreachable written right after
            the rejected packet in the output capture: ICMP for IPv4, ICMPv6 for IPv6), or null
            if none could be built.

Which of service/frontend/backend/masquerade a reason fills is the core's "Per-packet trace"
contract (fastpath.reference): NEW_FLOW, CT_ESTABLISHED, CT_REPLY, DROP_NO_LOCAL_ENDPOINT,
DROP_SOURCE_RANGE and REJECT_NO_ENDPOINT fill what they know, every other reason gives nulls.
"""
from __future__ import annotations

import io
import json
import os
from typing import IO, Any, Union

from fastpath.atomicfile import AtomicWriter, open_beside
from fastpath.maps import Maps, family_of, format_address, format_endpoint
from fastpath.verdicts import TRACE_MASQUERADED, FrontendKind, Reason, Verdict

__all__ = ["REPLY_PORT_UNREACHABLE", "TraceWriter", "format_time", "trace_fields"]

PathLike = Union[str, "os.PathLike[str]"]

REPLY_PORT_UNREACHABLE = "icmp-port-unreachable"
FRONTEND_KIND_MASK = 0x07
_NS_PER_S = 1_000_000_000
_BUFFER = 1 << 20


def format_time(ts_ns: int) -> str:
    """A timestamp in ns as the trace writes it: seconds with nine fractional digits."""
    seconds, fraction = divmod(ts_ns, _NS_PER_S)
    return f"{seconds}.{fraction:09d}"


def _name(enum: type[Verdict] | type[Reason], number: int) -> str:
    try:
        return enum(number).name
    except ValueError:  # a core newer than this module's vocabulary
        return f"{enum.__name__.upper()}_{number}"


def trace_fields(maps: Maps, verdict: int, reason: int, service: int, backend: int, flags: int,
                 reply: bool = True) -> dict[str, Any]:
    """The fields of one trace line after frame and time, from one packet's core output.

    `reply`: whether an ICMP reply was built (used on REJECT lines only). Ids outside the maps
    give null.
    """
    kind = flags & FRONTEND_KIND_MASK
    fields: dict[str, Any] = {
        "verdict": _name(Verdict, verdict),
        "reason": _name(Reason, reason),
        "service": maps.services[service - 1].name if 1 <= service <= len(maps.services) else None,
        "frontend": FrontendKind(kind).name if 1 <= kind <= len(FrontendKind) else None,
        "backend": None,
        "masquerade": None,
    }
    family = 4
    if 1 <= service <= len(maps.services):
        family = maps.services[service - 1].family
    if 1 <= backend <= len(maps.backends):
        entry = maps.backends[backend - 1]
        fields["backend"] = format_endpoint(entry.ip, entry.port)
        family = family_of(entry.ip)
    if flags & TRACE_MASQUERADED:
        # The masquerade address is the node's primary IP of the flow's family.
        address = maps.node.primary_ip6 if family == 6 else maps.node.primary_ip
        if address:
            fields["masquerade"] = format_address(address)
    if verdict == Verdict.REJECT:
        fields["reply"] = REPLY_PORT_UNREACHABLE if reply else None
    return fields


class TraceWriter(AtomicWriter):
    """Writes a JSON Lines trace of a replay, one line per packet, a batch at a time.

    destination: a path (written atomically: a temporary file beside it, renamed over it on
    commit(); close() without commit() or an exception in `with` leaves nothing behind and a
    pre-existing file untouched; a target that is not a regular file, like /dev/stdout, is written
    in place), or an open writable file object, text or binary (written as is, flushed on
    commit, never closed: the caller owns it).

    maps: the maps the packets were processed with (service and backend ids index them); call
    set_maps() after Dataplane.update() so later lines use the new names.
    """

    _what = "trace writer"
    _file: Any

    def __init__(self, destination: PathLike | IO[str] | IO[bytes], maps: Maps) -> None:
        super().__init__()
        self.lines_written = 0
        self._maps = maps
        self._suffixes: dict[tuple[int, int, int, int, int, bool], str] = {}
        self._binary = False
        if hasattr(destination, "write"):
            self.path = None
            self._owned = False
            self._file = destination
            self._binary = not isinstance(destination, io.TextIOBase) and (
                isinstance(destination, (io.RawIOBase, io.BufferedIOBase))
                or "b" in str(getattr(destination, "mode", ""))
            )
        else:
            self.path = os.fspath(destination)  # type: ignore[arg-type]
            fd, self._tmp = open_beside(self.path)
            self.regular_file = self._tmp is not None
            self._file = os.fdopen(fd, "w", encoding="utf-8", buffering=_BUFFER)

    def set_maps(self, maps: Maps) -> None:
        """Use these maps (names of service and backend ids) for the packets written from now on."""
        if maps is not self._maps:
            self._maps = maps
            self._suffixes.clear()

    def write_batch(self, batch: Any, result: Any) -> int:
        """Write one line per packet of `batch` (a fastpath.capture.Batch, or anything with a
        `timestamps_ns` array) from its BatchResult, which must come from
        Dataplane.process(..., trace=True). Returns the number of lines written."""
        self._check_open()
        count = len(result.verdicts)
        if result.services is None or result.backends is None or result.flags is None:
            raise ValueError("the batch was processed without trace=True: no trace arrays")
        if len(batch.timestamps_ns) != count:
            raise ValueError(f"{count} verdicts for {len(batch.timestamps_ns)} packets")
        suffixes = self._suffixes
        replies = result.replies
        reject = Verdict.REJECT
        lines = []
        append = lines.append
        frame = self.lines_written
        for index, ts, verdict, reason, service, backend, flags in zip(
            range(count), batch.timestamps_ns, result.verdicts, result.reasons,
            result.services, result.backends, result.flags,
        ):
            frame += 1
            key = (verdict, reason, service, backend, flags, verdict == reject and index in replies)
            suffix = suffixes.get(key)
            if suffix is None:
                suffix = self._suffix(key)
            seconds, fraction = divmod(ts, _NS_PER_S)
            append(f'{{"frame": {frame}, "time": "{seconds}.{fraction:09d}", {suffix}\n')
        text = "".join(lines)
        self._file.write(text.encode() if self._binary else text)
        self.lines_written = frame
        return count

    def _suffix(self, key: tuple[int, int, int, int, int, bool]) -> str:
        # The line's text after `{"frame": N, "time": "T", ` (the same for many packets).
        suffix = json.dumps(trace_fields(self._maps, *key), ensure_ascii=False)[1:]
        self._suffixes[key] = suffix
        return suffix
