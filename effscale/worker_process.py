"""`python -m effscale.worker_process I OVERRIDES…`: worker I of `search.workers=N` (effscale/workers.py).

A module of its own so that a Ctrl-C reaching the worker while it still imports torch and Optuna
ends it as quietly as one during training does, not with an import traceback.
"""

import signal
import sys
import warnings

if __name__ == "__main__":
    # The search passes its stops on as SIGINT, which a search started in the background by a script
    # (`effscale search … &`) would have passed down ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from effscale.errors import warning_line

    warnings.showwarning = warning_line(f"search: worker {sys.argv[1]}")
    try:
        from effscale.workers import main
    except KeyboardInterrupt:  # nothing was started yet
        print(f"effscale search: worker {sys.argv[1]}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(main(sys.argv[1:]))
