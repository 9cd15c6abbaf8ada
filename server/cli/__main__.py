"""python -m server.cli: kms-server, as the supervisor starts its workers (sys.executable, no script path)."""

from server.cli import main

raise SystemExit(main())
