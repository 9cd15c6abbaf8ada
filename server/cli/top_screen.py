"""The full-screen view of `kms-server top` (prompt_toolkit: imported only when it opens).

The Observe stream is read on a thread; each Overview it brings is drawn as
it comes (server/cli/top_view.py turns it into lines). The window asked for
follows the screen: the terminal's height, the pane scrolled, the filter.
Keys: q quits, / filters agents and keys by name (Enter applies, Esc
cancels), Tab and Shift-Tab move between panes, the arrows, PgUp, PgDn and
Home scroll the agents or keys pane.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import grpc
from prompt_toolkit.application import Application
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.filters import Condition, Filter
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.layout import ConditionalContainer, HSplit, Layout, VSplit, Window
from prompt_toolkit.layout.controls import BufferControl, FormattedTextControl
from prompt_toolkit.layout.dimension import Dimension

from kms.errors import KmsError
from kms.v1 import monitor_pb2
from server.cli.admin_client import AdminClient
from server.cli.top import request_for
from server.cli.top_view import PANES, Line, agent_lines, event_lines, header_lines, key_lines, layout_for

__all__ = ["run"]

_FOOTER = " q quit   / filter   Tab next pane   ↑ ↓ PgUp PgDn Home scroll "


class _Stream:
    """The Observe stream on a thread: the newest Overview, or the error that ended it."""

    def __init__(
        self, client: AdminClient, first: monitor_pb2.ObserveRequest, changed: Callable[[], None]
    ) -> None:
        self._client = client
        self._requests: queue.Queue[monitor_pb2.ObserveRequest | None] = queue.Queue()
        self._requests.put(first)
        self._changed = changed
        self.latest: monitor_pb2.Overview | None = None
        self.error: KmsError | None = None
        self._call = client.observe(self._each())
        self._thread = threading.Thread(target=self._read, name="top-stream", daemon=True)
        self._thread.start()

    def _each(self) -> Iterator[monitor_pb2.ObserveRequest]:
        while (request := self._requests.get()) is not None:
            yield request

    def _read(self) -> None:
        try:
            for overview in self._call:
                self.latest = overview
                self._changed()
        except grpc.RpcError as exc:
            if exc.code() is not grpc.StatusCode.CANCELLED:
                self.error = self._client.error_of(exc)
        self._changed()

    def send(self, request: monitor_pb2.ObserveRequest) -> None:
        self._requests.put(request)

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()  # type: ignore[attr-defined]
        self._thread.join(timeout=2)


def _joined(lines: list[Line]) -> StyleAndTextTuples:
    out: StyleAndTextTuples = []
    for i, line in enumerate(lines):
        if i:
            out.append(("", "\n"))
        out.extend(line)
    return out


class _Top:
    """The screen's state (focused pane, offsets, filter) and the request it makes of it."""

    def __init__(self, client: AdminClient, where: str, filter_text: str, interval: float) -> None:
        self.where = where
        self.filter = filter_text
        self.interval = interval
        self.focus = 0
        self.offsets = {"agents": 0, "keys": 0}
        self.filtering = False
        self.buffer = Buffer(multiline=False)
        self.app: Application[int] = self._application()
        self._sent = self._request()
        self.stream = _Stream(client, self._sent, self._from_thread)

    def _rows(self) -> int:
        return self.app.output.get_size().rows

    def _columns(self) -> int:
        return self.app.output.get_size().columns

    def _request(self) -> monitor_pb2.ObserveRequest:
        shape = layout_for(self._rows())
        return request_for(
            self.filter,
            self.interval,
            agent_offset=self.offsets["agents"],
            agent_limit=shape.agents,
            key_offset=self.offsets["keys"],
            key_limit=shape.keys,
            soon_limit=shape.soon,
            event_limit=shape.events,
        )

    def resend(self) -> None:
        """Asks for the window the screen shows now, if it is not the one asked for last."""
        request = self._request()
        if request != self._sent:
            self._sent = request
            self.stream.send(request)

    def _from_thread(self) -> None:
        loop = self.app.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._changed)

    def _changed(self) -> None:
        future = self.app.future
        if self.stream.error is not None and future is not None and not future.done():
            self.app.exit(exception=self.stream.error)
        self.app.invalidate()

    def _pane(self, lines: Callable[[monitor_pb2.Overview], list[Line]]) -> Callable[[], StyleAndTextTuples]:
        def text() -> StyleAndTextTuples:
            overview = self.stream.latest
            return [("", " waiting for the server...")] if overview is None else _joined(lines(overview))

        return text

    def _application(self) -> Application[int]:
        header = self._pane(lambda o: header_lines(o, self.where, self._columns()))
        agents = self._pane(lambda o: agent_lines(o, self.offsets["agents"], self.focus == 0, self.filter))
        keys = self._pane(lambda o: key_lines(o, self.offsets["keys"], self.focus == 1))
        events = self._pane(lambda o: event_lines(o.events, self.focus == 2))
        self.body = Window(FormattedTextControl(agents, focusable=True), width=Dimension(weight=3))
        self.filter_window = Window(BufferControl(self.buffer), height=1)
        filtering = Condition(lambda: self.filtering)
        root = HSplit(
            [
                Window(FormattedTextControl(header), height=2),
                VSplit(
                    [
                        self.body,
                        Window(width=1, char="│"),
                        Window(FormattedTextControl(keys), width=Dimension(weight=2)),
                    ],
                    height=lambda: layout_for(self._rows()).top,
                ),
                Window(height=1, char="─"),
                Window(FormattedTextControl(events)),
                ConditionalContainer(
                    VSplit(
                        [
                            Window(FormattedTextControl("filter (Enter applies, Esc cancels): "), width=40),
                            self.filter_window,
                        ]
                    ),
                    filter=filtering,
                ),
                Window(FormattedTextControl(_FOOTER), height=1, style="reverse"),
            ]
        )
        app: Application[int] = Application(
            layout=Layout(root, focused_element=self.body),
            key_bindings=self._keys(filtering),
            full_screen=True,
        )
        app.after_render += lambda _: self.resend()
        return app

    def _scroll(self, rows: int | None) -> None:
        """Moves the focused pane's window (None: to the top), never past its last row."""
        pane, latest = PANES[self.focus], self.stream.latest
        if pane not in self.offsets:
            return
        matching = (
            0 if latest is None else latest.agents_matching if pane == "agents" else latest.keys_matching
        )
        offset = 0 if rows is None else self.offsets[pane] + rows
        self.offsets[pane] = max(0, min(offset, matching - 1))
        self.resend()

    def _keys(self, filtering: Condition) -> KeyBindings:
        kb, normal = KeyBindings(), ~filtering
        page = lambda: layout_for(self._rows()).agents  # noqa: E731

        @kb.add("q", filter=normal)
        @kb.add("c-c")
        def _quit(event: KeyPressEvent) -> None:
            event.app.exit(result=0)

        @kb.add("/", filter=normal)
        def _filter(event: KeyPressEvent) -> None:
            self.filtering = True
            self.buffer.text = self.filter
            event.app.layout.focus(self.filter_window)

        @kb.add("enter", filter=filtering)
        @kb.add("escape", filter=filtering)
        def _done(event: KeyPressEvent) -> None:
            if event.key_sequence[0].key != "escape":
                self.filter = self.buffer.text.strip()
                self.offsets = dict.fromkeys(self.offsets, 0)
            self.filtering = False
            event.app.layout.focus(self.body)
            self.resend()

        @kb.add("tab", filter=normal)
        @kb.add("s-tab", filter=normal)
        def _next(event: KeyPressEvent) -> None:
            step = -1 if event.key_sequence[0].key == "s-tab" else 1
            self.focus = (self.focus + step) % len(PANES)

        for keys, rows in ((("down",), 1), (("up",), -1), (("pagedown",), None), (("pageup",), None)):
            self._bind_scroll(kb, normal, keys[0], rows, page)
        kb.add("home", filter=normal)(lambda event: self._scroll(None))
        return kb

    def _bind_scroll(
        self, kb: KeyBindings, normal: Filter, key: str, rows: int | None, page: Callable[[], int]
    ) -> None:
        sign = -1 if key == "pageup" else 1

        def scroll(event: KeyPressEvent) -> None:
            self._scroll(rows if rows is not None else sign * page())

        kb.add(key, filter=normal)(scroll)


def run(client: AdminClient, where: str, filter_text: str, interval: float) -> int:
    """Draws until q; raises the error that ended the stream (the server stopped, say)."""
    top = _Top(client, where, filter_text, interval)
    try:
        return top.app.run()
    finally:
        top.stream.close()
