"""Tiny TCP programs run *inside* simulated pods (as their own processes).

  serve HOST PORT [SEND_BYTES]   accept forever; per connection: send SEND_BYTES, read to EOF, close
  connect HOST PORT N            open N connections one after another, send 1 byte each, close; print successes
  refused HOST PORT N            N connects expected to fail; print how many failed
  hold HOST PORT SECONDS GAP     one connection exchanging 1-byte ping/pong every GAP s; print "open" once up
  download HOST PORT BYTES       connect, read BYTES bytes, close; print the count
  sink HOST PORT                 accept one connection, read to EOF (no echo), print the byte count
  send HOST PORT BYTES           connect, send exactly BYTES, wait for the peer to close; print BYTES
"""
import socket
import sys
import threading
import time


def serve(host, port, send=0):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port)))
    s.listen(128)
    print("listening", flush=True)
    chunk = b"d" * 65536

    def handle(c):
        with c:
            left = int(send)
            while left:
                left -= c.send(chunk[: min(left, len(chunk))])
            while True:
                b = c.recv(65536)
                if not b:
                    return
                c.sendall(b)  # echo: ping/pong for hold

    while True:
        c, _ = s.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()


def connect(host, port, n):
    ok = 0
    for _ in range(int(n)):
        with socket.create_connection((host, int(port)), timeout=5) as c:
            c.sendall(b"x")
            c.shutdown(socket.SHUT_WR)
            c.recv(16)
            ok += 1
    print(ok, flush=True)


def refused(host, port, n):
    failed = 0
    for _ in range(int(n)):
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError:
            failed += 1
    print(failed, flush=True)


def hold(host, port, seconds, gap):
    c = socket.create_connection((host, int(port)), timeout=5)
    print("open", flush=True)
    end = time.monotonic() + float(seconds)
    while time.monotonic() < end:
        c.sendall(b"p")
        c.recv(1)
        time.sleep(float(gap))
    c.close()
    print("closed", flush=True)


def download(host, port, nbytes):
    got = 0
    with socket.create_connection((host, int(port)), timeout=30) as c:
        while got < int(nbytes):
            b = c.recv(1 << 16)
            if not b:
                break
            got += len(b)
    print(got, flush=True)


def sink(host, port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port)))
    s.listen(8)
    print("listening", flush=True)
    c, _ = s.accept()
    n = 0
    while True:
        b = c.recv(1 << 16)
        if not b:
            break
        n += len(b)
    c.close()
    print(n, flush=True)


def send(host, port, nbytes):
    c = socket.create_connection((host, int(port)), timeout=10)
    buf = b"p" * 65536
    left = int(nbytes)
    while left:
        left -= c.send(buf[: min(left, len(buf))])
    c.shutdown(socket.SHUT_WR)
    c.recv(1)
    c.close()
    print(nbytes, flush=True)


if __name__ == "__main__":
    modes = {"serve": serve, "connect": connect, "refused": refused, "hold": hold, "download": download,
             "sink": sink, "send": send}
    modes[sys.argv[1]](*sys.argv[2:])
