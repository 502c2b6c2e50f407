"""`python -m service.evaluation ...`: the same as `sctir eval ...`."""

from service.evaluation.command import main

main()
