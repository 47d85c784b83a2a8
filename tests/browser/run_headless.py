"""Execute a notebook with papermill in this interpreter's environment and report, per code cell, how long
it took and how often the runner wrote to the kernel's shell socket on behalf of an ``Output`` widget.

    python run_headless.py NOTEBOOK OUT TIMEOUT '{"param": value}'  ->  one JSON line on stdout

nbclient stands in for the frontend of ``Output`` widgets: when a cell's output is captured by one, it sends
the widget's new ``outputs`` back to the kernel on the shell channel, from the task reading IOPub, while
another task waits on that same socket for the cell's ``execute_reply``. Counting those writes shows whether a
cell's widget code can meet the missed-reply stall (see ``musclebob_helpers.plots.set_output``).
"""

import json
import sys
import time

import nbformat
import papermill
from nbclient import output_widget


def main() -> None:
    src, out, timeout, params = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
    writes = {"n": 0}
    original = output_widget.OutputWidget.send

    def counting_send(self, *args, **kwargs):
        writes["n"] += 1
        return original(self, *args, **kwargs)

    output_widget.OutputWidget.send = counting_send
    per_cell = []
    from papermill.clientwrap import PapermillNotebookClient

    original_exec = PapermillNotebookClient.execute_cell  # papermill calls the sync one, cell by cell

    def timed(self, cell, cell_index, *args, **kwargs):
        before, start = writes["n"], time.monotonic()
        try:
            return original_exec(self, cell, cell_index, *args, **kwargs)
        finally:
            if cell.cell_type == "code":
                per_cell.append(
                    {
                        "index": cell_index,
                        "source": cell.source,
                        "shell_writes": writes["n"] - before,
                        "seconds": round(time.monotonic() - start, 3),
                    }
                )

    PapermillNotebookClient.execute_cell = timed
    papermill.execute_notebook(
        src, out, parameters=params, kernel_name="python3", execution_timeout=timeout, progress_bar=False
    )
    errors = [
        o.get("ename")
        for c in nbformat.read(out, as_version=4).cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "error"
    ]
    print(json.dumps({"cells": per_cell, "errors": errors}))


if __name__ == "__main__":
    main()
