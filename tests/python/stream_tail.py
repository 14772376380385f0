"""Tails Ledgerline's live stream with the `websockets` library, as a browser-like client
would: the key in the URL (`?key=`), no Authorization header.

Usage: stream_tail.py <ws-url> <count>

Prints one JSON line when subscribed, then, after <count> events, one line
{"events": [...]} with the events as received, and exits 0. Exits 1 with a JSON line
naming the problem on an error message, a close, or a timeout of 60 s.

With <count> 0 it follows: every message is printed as a JSON line as it arrives, until
the server closes the stream or Ctrl-C.
"""

import asyncio
import json
import sys

import websockets


async def main(url: str, count: int) -> int:
    events = []
    async with websockets.connect(url, max_size=4 * 1024 * 1024) as socket:
        while True:
            try:
                text = await asyncio.wait_for(socket.recv(), timeout=None if count == 0 else 60)
            except (asyncio.TimeoutError, websockets.ConnectionClosed) as error:
                print(json.dumps({"error": repr(error), "events": events}), flush=True)
                return 1
            message = json.loads(text)
            kind = message.get("type")
            if count == 0:
                print(json.dumps(message), flush=True)
                continue
            if kind == "subscribed":
                print(json.dumps(message), flush=True)
            elif kind == "event":
                events.append(message["event"])
                if len(events) >= count:
                    print(json.dumps({"events": events}), flush=True)
                    return 0
            elif kind in ("error", "lagged", "gap"):
                print(json.dumps({"error": message, "events": events}), flush=True)
                return 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], int(sys.argv[2]))))
