"""`python -m proj.fit [flags]`: train, then report the best checkpoint's accuracy on the 10,000 test images.

The same as `python -m proj fit --test_after_fit true`; `--test_after_fit false` skips the test.
"""

from __future__ import annotations

import sys

from proj.cli import main as cli_main


def main(args: list[str] | None = None) -> None:
    cli_main(["fit", "--test_after_fit=true", *(sys.argv[1:] if args is None else args)])


if __name__ == "__main__":
    main()
