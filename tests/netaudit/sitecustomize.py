"""Test-only: record every outgoing connection and name lookup of this Python process.

Loaded by every Python process of the federation because the no-phone-home test puts this folder on
PYTHONPATH; each record is one JSON line appended to $FEDSHIELD_NETAUDIT_LOG.
"""

import json
import os
import socket
import sys

_LOG = os.environ.get("FEDSHIELD_NETAUDIT_LOG")


def _record(kind, target):
    if not _LOG:
        return
    line = json.dumps({"pid": os.getpid(), "argv": sys.argv[:2], "kind": kind, "target": repr(target)}) + "\n"
    fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


if _LOG:
    _connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def connect(self, address):
        _record("connect", address)
        return _connect(self, address)

    def connect_ex(self, address):
        _record("connect", address)
        return _connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        _record("resolve", host)
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.getaddrinfo = getaddrinfo
