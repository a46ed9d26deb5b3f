"""The container's HEALTHCHECK: exit 0 when the bot's /healthz answers 200, else 1 (it answers
503 with the reason, or nothing while the model loads). Reads the port from METRICS_ADDR."""

import os
import sys
import urllib.error
import urllib.request

port = os.environ.get("METRICS_ADDR", "").rpartition(":")[2] or "9108"
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except urllib.error.HTTPError as error:
    print(error.read().decode("utf-8", "replace"), file=sys.stderr)
    sys.exit(1)
except OSError as error:
    print(f"/healthz did not answer: {error}", file=sys.stderr)
    sys.exit(1)
