"""TLS programs for the tests, Python's ssl module (OpenSSL), run inside simulated pods.

  serve HOST PORT CERT KEY DELAY_MS N   accept N connections, each a full handshake whose
                                        ClientHello processing (the SNI callback) sleeps
                                        DELAY_MS; print "listening", then "served OK FAILED"
  silent HOST PORT                      accept connections and never answer (until killed)
  connect HOST PORT N CAFILE MODE       after "go" on stdin, N full handshakes (a new
                                        connection and SSL each); MODE: blocking,
                                        nonblocking (do_handshake() retried until done),
                                        reject (verify against the system CAs: the
                                        self-signed server fails) or timeout (give up
                                        after 0.5 s, for a silent server); print "ready"
                                        first, then "done OK FAILED RETRIES"

The server name is always "tls-test" (the test certificate's SAN).
"""
from __future__ import annotations

import select
import socket
import ssl
import sys
import time

NAME = "tls-test"


def serve(host: str, port: int, cert: str, key: str, delay_ms: int, n: int) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.sni_callback = lambda *_: time.sleep(delay_ms / 1000)
    srv = socket.create_server((host, port))
    print("listening", flush=True)
    ok = failed = 0
    for _ in range(n):
        conn, _ = srv.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True) as s:
                s.sendall(s.recv(1))
                ok += 1
        except (ssl.SSLError, OSError):
            failed += 1
    print("served", ok, failed, flush=True)


def silent(host: str, port: int) -> None:
    srv = socket.create_server((host, port))
    print("listening", flush=True)
    held = []
    while True:
        held.append(srv.accept()[0])


def connect(host: str, port: int, n: int, cafile: str, mode: str) -> None:
    ctx = ssl.create_default_context() if mode == "reject" else ssl.create_default_context(cafile=cafile)
    print("ready", flush=True)
    sys.stdin.readline()
    ok = failed = retries = 0
    for _ in range(n):
        raw = socket.create_connection((host, port))
        if mode == "timeout":
            raw.settimeout(0.5)
        try:
            if mode == "nonblocking":
                raw.setblocking(False)
                s = ctx.wrap_socket(raw, server_hostname=NAME, do_handshake_on_connect=False)
                while True:
                    try:
                        s.do_handshake()
                        break
                    except ssl.SSLWantReadError:
                        retries += 1
                        select.select([s], [], [], 5)
                    except ssl.SSLWantWriteError:
                        retries += 1
                        select.select([], [s], [], 5)
                s.setblocking(True)
            else:
                s = ctx.wrap_socket(raw, server_hostname=NAME)
            s.sendall(b"x")
            s.recv(1)
            s.close()
            ok += 1
        except (ssl.SSLError, TimeoutError):
            raw.close()
            failed += 1
    print("done", ok, failed, retries, flush=True)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "serve":
        serve(args[0], int(args[1]), args[2], args[3], int(args[4]), int(args[5]))
    elif cmd == "silent":
        silent(args[0], int(args[1]))
    elif cmd == "connect":
        connect(args[0], int(args[1]), int(args[2]), args[3], args[4])
    else:
        sys.exit(f"unknown command {cmd}")
