#!/usr/bin/env python3
"""Merge a LoRA adapter (a ``--lora`` run's output folder or one of its checkpoints) into a standalone model.

    python merge_adapter.py ./musclebob-lora ./musclebob-lora-merged
    python test_musclebob.py --model ./musclebob-lora-merged

The base model is read from the adapter's ``adapter_config.json``. The result loads with plain
``AutoModelForCausalLM.from_pretrained`` (no PEFT). ``--merge-adapter`` on the training script does the
same at the end of a run, into ``OUTPUT_DIR/merged``. All logic lives in ``musclebob_helpers.lora``.
"""

import sys
from pathlib import Path

PROG = "merge_adapter.py"


def main(argv=None) -> int:
    from musclebob_helpers.cli import OneLineParser, fail

    p = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("adapter_dir", help="folder holding adapter_config.json")
    p.add_argument("out_dir", help="where the merged model goes (must not hold a model already)")
    args = p.parse_args(argv)
    from musclebob_helpers.lora import is_adapter_dir, merge_adapter

    if not is_adapter_dir(args.adapter_dir):
        fail(
            PROG,
            f"adapter_dir={args.adapter_dir!r} is not allowed: a folder holding adapter_config.json "
            "(the output of a --lora run)",
        )
    if (Path(args.out_dir) / "config.json").exists():
        fail(PROG, f"out_dir={args.out_dir!r} is not allowed: it already holds a model; pick an empty folder")
    merge_adapter(args.adapter_dir, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
