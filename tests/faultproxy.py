"""A TCP proxy that can cut a server off: while `down`, connections are refused (accepted and
closed at once) and open ones are cut. Used to take S3 away from a running loader. With
`delay`, every byte the server sends reaches the client that many seconds late (order kept):
a server slow to answer."""

import queue
import socket
import threading
import time


class FaultProxy:
    def __init__(self, target_host, target_port, delay=0.0):
        self.target = (target_host, target_port)
        self.delay = delay
        self.down = False
        self._lock = threading.Lock()
        self._open = set()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(256)
        self.port = self._sock.getsockname()[1]
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def set_down(self, down):
        self.down = down
        if down:
            with self._lock:
                conns, self._open = self._open, set()
            for c in conns:
                _close(c)

    def stop(self):
        self._stopped = True
        _close(self._sock)

    def _accept(self):
        while not self._stopped:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            if self.down:
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._open.update((client, upstream))
            for a, b, delay in ((client, upstream, 0.0), (upstream, client, self.delay)):
                threading.Thread(target=self._pipe, args=(a, b, delay), daemon=True).start()

    def _pipe(self, src, dst, delay):
        late = None
        if delay:
            late = queue.Queue()
            threading.Thread(target=self._send_late, args=(late, src, dst), daemon=True).start()
        try:
            while data := src.recv(65536):
                if late is None:
                    dst.sendall(data)
                else:
                    late.put((time.monotonic() + delay, data))
        except OSError:
            pass
        if late is None:
            self._forget(src, dst)
        else:
            late.put(None)  # the sender closes both once the rest is sent

    def _send_late(self, late, src, dst):
        try:
            while (item := late.get()) is not None:
                due, data = item
                time.sleep(max(0.0, due - time.monotonic()))
                dst.sendall(data)
        except OSError:
            pass
        self._forget(src, dst)

    def _forget(self, *socks):
        for s in socks:
            with self._lock:
                self._open.discard(s)
            _close(s)


def _close(s):
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
