"""``python -m model_server``: see `model_server.server.main`."""

import sys

from model_server.server import main

if __name__ == "__main__":
    sys.exit(main())
