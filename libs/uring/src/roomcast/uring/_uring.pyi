from collections.abc import Sequence

from typing_extensions import Buffer

HAVE_IO_URING: int

class Ring:
    def __init__(self, entries: int = 256) -> None: ...
    @property
    def entries(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    @property
    def setup_flags(self) -> int: ...
    def send_all(
        self,
        fds: Sequence[int] | Buffer,
        data: Buffer,
        *,
        release_gil: bool = False,
    ) -> list[tuple[int, int]]: ...
    def send_many(
        self, items: Sequence[tuple[Sequence[int] | Buffer, Buffer]]
    ) -> list[tuple[int, int, int]]: ...
    def close(self) -> None: ...

def write_all(fds: Sequence[int] | Buffer, data: Buffer) -> list[tuple[int, int]]: ...
