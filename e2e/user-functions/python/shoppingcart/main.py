"""Entry point of the Python shopping cart user function (Statehouse e2e tests).

Serves the Cloudstate protocol with the `cloudstate` 0.1.1 Python SDK on
$HOST:$PORT (SDK defaults 127.0.0.1:8080). Run it with the venv that
e2e/user-functions/install.sh creates and with its generated protos on
PYTHONPATH; test-support's `UserFunction::start` does exactly that.
"""

import logging
import sys

from cloudstate.cloudstate import CloudState

from cart_entity import entity


def main() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    CloudState().register_event_sourced_entity(entity).start()


if __name__ == "__main__":
    main()
