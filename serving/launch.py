"""``bentoml`` with a Prometheus multiprocess directory of the service's own.

BentoML keeps the metric files of a service's worker processes in
``$BENTOML_HOME/prometheus_multiproc_dir`` and empties that directory whenever a
service starts (``bentoml.serving.ensure_prometheus_dir``). Every service on a machine
shares it: starting a second one (a test's, a second stack's) deleted the first one's
files, so the first one's ``/metrics`` lost its model info and counters, and showed
whatever the other service wrote. The directory can only be moved with ``BENTOML_HOME``,
which also moves the model and Bento stores that ``make package`` and
``model_source: bento`` use.

So :class:`serving.server.ServingProcess` starts the CLI through this module, which
points BentoML's container at ``$VIGIL_PROMETHEUS_DIR`` first (as BentoML's own pytest
plugin does); the workers are handed that directory in ``PROMETHEUS_MULTIPROC_DIR``.
"""

from __future__ import annotations

import os
import sys

PROMETHEUS_DIR_ENV = "VIGIL_PROMETHEUS_DIR"


def main() -> None:
    from bentoml._internal.configuration.containers import BentoMLContainer

    directory = os.environ.get(PROMETHEUS_DIR_ENV)
    if directory:
        os.makedirs(directory, exist_ok=True)
        BentoMLContainer.prometheus_multiproc_dir.set(directory)
    from bentoml_cli.cli import cli

    sys.exit(cli(prog_name="bentoml"))


if __name__ == "__main__":
    main()
