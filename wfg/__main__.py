"""`python -m wfg` runs the `wfg` command."""

from wfg.cli import main

if __name__ == "__main__":
    main()
