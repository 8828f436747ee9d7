"""Entry point for `accelerate launch -m lorastudio.training.launch CONFIG.json` (one per process)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lorastudio.training.api import train
from lorastudio.training.config import training_config


def main(argv: list[str]) -> None:
    # Through training_config, as every entry point: a bad or newer file is an error naming the field.
    config = training_config(json.loads(Path(argv[0]).read_text(encoding="utf-8")))
    result = train(config, on_event=lambda e: print(f"[{e.kind}] {e.step}/{e.total_steps} {e.message}", flush=True)
                   if e.kind != "progress" or e.step % 10 == 0 else None)
    print(f"LoRA: {result.lora_path}")


if __name__ == "__main__":
    main(sys.argv[1:])
