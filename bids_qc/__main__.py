"""``python -m bids_qc``: the same command line as ``bids_qc``."""

from bids_qc.cli import main

if __name__ == "__main__":
    main()
