"""`python -m detector` runs the shadowai command."""

from detector.cli import main

main()
