"""``dj-orchestrate`` (the console script) and ``python -m dj_orchestrate``.

DataJoint validates its configuration (``DJ_*``, datajoint.json) as it is imported, and
the commands import it: it is checked here first, so a bad value is one line and exit 2,
not a traceback, and importing ``dj_orchestrate.cli`` has no such side effect."""

from __future__ import annotations

import sys


def main() -> None:
    from . import db
    from .entry import report
    from .errors import UsageError

    db.quiet_datajoint()  # before DataJoint is imported: its config warnings are not ours to show
    try:
        db.import_datajoint()
    except UsageError as err:
        report(err, "--debug" in sys.argv)
        sys.exit(err.exit_code)
    from .cli import main as commands

    commands()


if __name__ == "__main__":
    main()
