"""A python3 server with signal handlers for testprogs/tests/servers.rs.

argv: HTTP_PORT STREAM_PORT WORKDIR. HTTP: GET /inc adds one to a counter
and answers it, GET /stat answers "count=N usr1=U". SIGUSR1 (a handler of
the signal module) adds one to U; SIGTERM writes "TERM count=N usr1=U" to
WORKDIR/term and exits 0. The stream port: each connection sends numbered
lines 1, 2, 3, ... and "end", and is answered "got=G bad=B last=L" (B
counts values that were not the one after the last). The server's own PID
goes to WORKDIR/pid.
"""
import os
import signal
import socket
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

http_port, stream_port, workdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
lock = threading.Lock()
count = 0
usr1 = 0


def on_usr1(signum, frame):
    global usr1
    usr1 += 1


def on_term(signum, frame):
    with open(os.path.join(workdir, "term.tmp"), "w") as f:
        f.write(f"TERM count={count} usr1={usr1}\n")
    os.rename(os.path.join(workdir, "term.tmp"), os.path.join(workdir, "term"))
    os._exit(0)


signal.signal(signal.SIGUSR1, on_usr1)
signal.signal(signal.SIGTERM, on_term)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are two writes: without this, Nagle's algorithm and
    # the client's delayed ACK hold every answer 40 ms.
    disable_nagle_algorithm = True

    def do_GET(self):
        global count
        if self.path == "/inc":
            with lock:
                count += 1
                body = f"{count}\n"
        elif self.path == "/stat":
            body = f"count={count} usr1={usr1}\n"
        else:
            self.send_error(404)
            return
        b = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)

    def log_message(self, *args):
        pass


def stream(conn):
    last = got = bad = 0
    with conn, conn.makefile("rb") as f:
        for raw in f:
            line = raw.strip()
            if line == b"end":
                conn.sendall(b"got=%d bad=%d last=%d\n" % (got, bad, last))
                return
            n = int(line) if line.isdigit() else -1
            if n == last + 1:
                got += 1
            else:
                bad += 1
                print(f"stream: got {line!r} after {last}", flush=True)
            last = n
    if last:
        print(f"stream: ended without end after {last}", flush=True)


def streams():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", stream_port))
    s.listen(16)
    while True:
        c, _ = s.accept()
        threading.Thread(target=stream, args=(c,), daemon=True).start()


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self):
        # HTTPServer's own asks the resolver for the host's full name, and a
        # pod reaches no DNS server: that lookup would take 10 s.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "pod", self.server_address[1]


threading.Thread(target=streams, daemon=True).start()
server = Server(("0.0.0.0", http_port), Handler)
with open(os.path.join(workdir, "pid"), "w") as f:
    f.write(f"{os.getpid()}\n")
print("LISTENING", flush=True)
server.serve_forever()
