"""Typed interface of the compiled core (fastpath/core.pyx); behaviour in fastpath.reference."""
from collections.abc import Mapping, Sequence
from typing import Any

from fastpath.maps import Backend, Maps, Service
from fastpath.verdicts import Reason, Verdict

DEBUG_BUILD: bool
DEFAULT_CT_CAPACITY: int
DEFAULT_TIMEOUTS_S: dict[str, int]
MAX_NEW_FLOW_RATE: int
REASON_NUMBERS: dict[str, int]
VERDICT_NUMBERS: dict[str, int]

def verdict_of_reason(reason: int) -> int: ...
def objects_from_columns(cls: type, names: tuple[str, ...], columns: list[list[Any]]) -> list[Any]: ...

class Engine:
    def __init__(
        self,
        maps: Maps,
        ct_capacity: int = ...,
        timeouts_s: Mapping[str, float] | None = ...,
        new_flow_rate: int = ...,
    ) -> None: ...
    @property
    def ct_capacity(self) -> int: ...
    def load(self, maps: Maps) -> None: ...
    def update_service(self, service: Service, new_backends: Sequence[Backend] = ()) -> None: ...
    def process(
        self,
        buf: Any,
        offsets: Any,
        lengths: Any,
        timestamps_ns: Any,
        verdicts: Any,
        reasons: Any,
        linktype: int = 1,
        services: Any = None,
        backends: Any = None,
        flags: Any = None,
    ) -> None: ...
    def process_packet(
        self, data: bytes, ts_ns: int = 0, linktype: int = 1
    ) -> tuple[Verdict, Reason, bytes]: ...
    def counters(self) -> dict[str, Any]: ...
