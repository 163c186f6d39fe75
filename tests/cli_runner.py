"""Running the ``fastmmu`` command in-process, for the CLI tests."""

from __future__ import annotations

from fastmmu import cli


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``fastmmu ARGV``: (exit status, stdout, stderr)."""
    try:
        status = cli.main(list(argv))
    except SystemExit as exc:  # argparse exits on --help and on usage errors
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err
