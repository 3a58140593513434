"""``fl-server audit verify DIR``: check an audit log's chain and signatures, name the first bad entry."""

from __future__ import annotations

from pathlib import Path

import typer

from fedshield.common.cli_support import console, guarded

audit_app = typer.Typer(help="Check the signed, hash-chained audit logs (federation, run and site folders).",
                        no_args_is_help=True, add_completion=False)


@audit_app.command("verify")
@guarded
def verify(
    folder: Path = typer.Argument(..., help="A federation folder, a run folder or a site's state folder "
                                  "(the folder holding audit.jsonl)."),
    public_key: Path | None = typer.Option(None, "--public-key", help="The audit public key to check against "
                                           "(default: the folder's audit.pub; pin a copy kept elsewhere, since "
                                           "whoever can write the folder can replace it)."),
) -> None:
    """Check every entry's hash, signature, number and order, and the signed head; exit 0 and one line if
    the log is intact, 1 and the first entry that was altered, removed or reordered otherwise."""
    from fedshield.common.audit_verify import verify_log

    report = verify_log(folder, public_key)
    if not report.intact:
        console.print(f"{report.path}: TAMPERED: {report.problem}", soft_wrap=True, markup=False)
        raise typer.Exit(1)
    late = f"; {report.beyond_head} entry(ies) after the signed head (a writer stopped mid-append)" \
        if report.beyond_head else ""
    console.print(f"{report.path}: intact, {report.entries} entries, signed by {report.key_fingerprint}{late}",
                  soft_wrap=True, markup=False)


def register(app: typer.Typer) -> None:
    """Add ``fl-server audit`` to ``fl-server``."""
    app.add_typer(audit_app, name="audit")
