"""`python -m ffnbench` is the same as the `ffnbench` console script."""

from ffnbench.bench.cli import main

raise SystemExit(main())
