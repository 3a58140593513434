"""What an unprivileged local user learns and gets from a federation's processes (stdlib only, no FedShield).

tests/test_e2e_local_isolation.py copies this file to a folder every user can read and runs it as ``nobody``
with the system Python. Argument: JSON ``{"pids": [...], "headers": {...}, "token_header": "..."}``: the
process ids of one federation (what ``ps`` shows anyone), and the Runtime API's public version headers.
It reads each process's command line as ``ps`` does, collects task tokens (``--token``), secret files
and the local APIs' addresses (``--port``, ``--runtime-api-address``), then calls each API: ``AcquireTask``
bare, and ``GetNodes`` with every token it found. Prints JSON: what it read, and each answer's status
and body (hex).
"""

from __future__ import annotations

import http.client
import json
import ssl
import sys
from pathlib import Path


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def value_after(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args[:-1] else None


def call(address: str, tls: bool, path: str, headers: dict[str, str]) -> dict[str, object]:
    host, _, port = address.rpartition(":")
    try:
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(host, int(port), timeout=10, context=context)
        else:
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("POST", path, body=b"", headers={"Content-Type": "application/protobuf", **headers})
        response = conn.getresponse()
        body = response.read(65536)
        conn.close()
        return {"status": response.status, "body": body.hex()}
    except OSError as exc:
        return {"status": None, "error": repr(exc)}


def main() -> None:
    given = json.loads(sys.argv[1])
    seen = {pid: cmdline(pid) for pid in given["pids"]}
    tokens, secret_files, apis = set(), {}, {}
    for args in seen.values():
        if token := value_after(args, "--token"):
            tokens.add(token)
        if path := value_after(args, "--superexec-auth-secret-file"):
            try:
                Path(path).read_bytes()
                secret_files[path] = "read"
            except OSError as exc:
                secret_files[path] = type(exc).__name__
        joined = " ".join(args)
        if ("superlink_main" in joined or "supernode_main" in joined) and (port := value_after(args, "--port")):
            host = value_after(args, "--host") or "127.0.0.1"
            address = f"{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"
            apis[address] = apis.get(address, False) or "--ssl-certfile" in args
        if address := value_after(args, "--runtime-api-address"):
            apis[address] = apis.get(address, False) or "--root-certificates" in args
    answers = []
    for address, tls in sorted(apis.items()):
        answers.append({"address": address, "tls": tls, "call": "acquire-task",
                        **call(address, tls, "/v1/runtime/acquire-task", given["headers"])})
        for token in sorted(tokens):
            answers.append({"address": address, "tls": tls, "call": "get-nodes",
                            **call(address, tls, "/v1/runtime/get-nodes",
                                   {**given["headers"], given["token_header"]: token})})
    print(json.dumps({"cmdlines": {str(k): v for k, v in seen.items()}, "tokens": sorted(tokens),
                      "secret_files": secret_files, "answers": answers}))


if __name__ == "__main__":
    main()
