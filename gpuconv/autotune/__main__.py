"""``python -m gpuconv.autotune --shapes resnet50``: see :mod:`gpuconv.autotune.cli`."""

from .cli import main

raise SystemExit(main())
