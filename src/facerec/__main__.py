"""`python -m facerec ...` (and `torchrun -m facerec ...`) runs the command line."""

from facerec.cli import main

raise SystemExit(main())
